"""OpenVINO session settings: dynamic quantization of int8 variants, and the verdict key."""

from __future__ import annotations

import pytest

from edgeclip.backends.openvino import Backend
from edgeclip.errors import InputError
from edgeclip.verify import host_identity

pytest.importorskip("openvino")


def _graph(micro_bundle):
    return next((micro_bundle / "onnx-fp32").glob("image*.onnx"))


def test_int8_sessions_get_the_dynamic_quantization_group(micro_bundle, monkeypatch):
    graph = _graph(micro_bundle)
    monkeypatch.delenv("EDGECLIP_OV_DYNAMIC_QUANT", raising=False)
    session = Backend().open(graph, threads=1, precision="int8")
    assert session._compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE") == 256
    monkeypatch.setenv("EDGECLIP_OV_DYNAMIC_QUANT", "0")
    session = Backend().open(graph, threads=1, precision="int8-weights")
    assert session._compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE") == 0


def test_a_bad_group_size_is_named(micro_bundle, monkeypatch):
    monkeypatch.setenv("EDGECLIP_OV_DYNAMIC_QUANT", "big")
    with pytest.raises(InputError, match="EDGECLIP_OV_DYNAMIC_QUANT='big'.*0 to turn"):
        Backend().open(_graph(micro_bundle), threads=1, precision="int8")


def test_a_verdict_made_under_other_session_settings_is_not_reused(monkeypatch):
    monkeypatch.delenv("EDGECLIP_OV_DYNAMIC_QUANT", raising=False)
    default = host_identity("openvino", "auto")
    monkeypatch.setenv("EDGECLIP_OV_DYNAMIC_QUANT", "0")
    assert host_identity("openvino", "auto") != default
    assert host_identity("onnx", "auto")["session_settings"]["EDGECLIP_ORT_SPINNING"] == "run"


def test_the_runtime_imports_openvino_without_its_converter(micro_bundle):
    """A fresh process serving an OpenVINO variant never loads openvino.tools.ovc, and
    ``openvino.convert_model`` still works there afterwards (imported on first access)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from edgeclip.backends.openvino import Backend\n"
        f"s = Backend().open(__import__('pathlib').Path({str(_graph(micro_bundle))!r}), threads=1)\n"
        "print('ovc', 'openvino.tools.ovc' in sys.modules, s.input_names)\n"
        "import openvino\n"
        f"g = openvino.convert_model({str(_graph(micro_bundle))!r})\n"
        "print('converted', len(g.inputs), 'openvino.tools.ovc' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0] == "ovc False ['pixel_values']"
    assert lines[1] == "converted 1 True"


def test_batch_buckets_pad_to_a_power_of_two_and_return_the_rows_asked(micro_bundle, monkeypatch):
    import numpy as np

    from edgeclip.backends.openvino import bucket

    assert [bucket(n) for n in (1, 2, 3, 5, 9, 32, 33)] == [1, 2, 4, 8, 16, 32, 64]
    session = Backend().open(_graph(micro_bundle), threads=1, precision="fp32")
    size = session._ports[0][1].get_partial_shape()[2].get_length()
    pixels = np.random.default_rng(0).standard_normal((5, 3, size, size)).astype(np.float32)
    feeds = {session.input_names[0]: pixels}
    monkeypatch.setenv("EDGECLIP_OV_BATCH_BUCKETS", "0")
    exact = session.run(feeds)
    monkeypatch.setenv("EDGECLIP_OV_BATCH_BUCKETS", "1")
    padded = session.run(feeds)  # runs as a batch of 8
    assert padded.shape == exact.shape and padded.shape[0] == 5
    np.testing.assert_allclose(padded, exact, atol=1e-5)
