"""``EDGECLIP_ORT_SPINNING``: how ONNX Runtime's threads wait. Real sessions of the micro bundle
under each mode carry the documented options, and compute the same vectors: the mode changes
when threads sleep, never what they compute. The speed and CPU cost of each mode are measured in
``benchmarks/ort_settings.py`` (``benchmarks/results/<host>/ort_settings.md``)."""

from __future__ import annotations

import numpy as np
import pytest

import edgeclip

# mode -> (allow_spinning, force_spinning_stop) that the sessions must carry
EXPECTED = {"run": ("1", "1"), "1": ("1", ""), "0": ("0", "1"), None: ("1", "1")}


def _entry(opts, key: str) -> str:
    try:
        return opts.get_session_config_entry(key)
    except RuntimeError:  # ONNX Runtime raises for a key never set
        return ""


def _options(model) -> dict[str, str]:
    (session,) = model._image._sessions.values()  # edgeclip's OrtSession of the image tower
    opts = session._session.get_session_options()  # the real InferenceSession's options
    return {k: _entry(opts, k) for k in ("session.intra_op.allow_spinning",
            "session.inter_op.allow_spinning", "session.force_spinning_stop")}  # fmt: skip


@pytest.mark.parametrize("mode", list(EXPECTED))
def test_each_spinning_mode_sets_its_options_and_changes_no_vector(micro_bundle, monkeypatch, mode):
    monkeypatch.delenv("EDGECLIP_ORT_SPINNING", raising=False)
    reference = edgeclip.load(micro_bundle, backend="onnx", precision="fp32", threads=2)
    pixels = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    want_image, want_text = reference.encode_pixels(pixels), reference.encode_text(["a cat", "a dog"])
    if mode is not None:
        monkeypatch.setenv("EDGECLIP_ORT_SPINNING", mode)
    model = edgeclip.load(micro_bundle, backend="onnx", precision="fp32", threads=2)
    np.testing.assert_array_equal(model.encode_pixels(pixels), want_image)
    np.testing.assert_array_equal(model.encode_text(["a cat", "a dog"]), want_text)
    spin, stop = EXPECTED[mode]
    got = _options(model)
    assert got["session.intra_op.allow_spinning"] == got["session.inter_op.allow_spinning"] == spin
    assert got["session.force_spinning_stop"] == stop
