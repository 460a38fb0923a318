"""On-device checks against what the runtime itself decides: a graph this host's runtime cannot
build a session for fails its check (never a traceback out of ``load``), and a variable that
narrows the runtime's kernels (``ONEDNN_MAX_CPU_ISA``) is part of the host a verdict belongs to.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

import edgeclip
from edgeclip.bundle import write_manifest
from edgeclip.verify import VerificationError, cpu_identity

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def int8_bundle(micro_bundle, micro_hf_checkpoint, tmp_path_factory):
    from converters.add_variants import add_variants

    bundle = tmp_path_factory.mktemp("verify-rt") / "micro"
    shutil.copytree(micro_bundle, bundle)
    add_variants(bundle, micro_hf_checkpoint, backends="onnx", precisions="int8-dynamic",
                 n_calib=8, n_eval=16, keep_failed=True, log=lambda _: None)  # fmt: skip
    return bundle


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECLIP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EDGECLIP_PROBE", "0")
    return tmp_path / "home"


def _unbuildable_copy(src, dst):
    """The int8 image graph with one node renamed to an op no runtime has; manifest re-hashed, so
    only building the session can tell (like an OpenVINO graph a narrowed ISA cannot compile)."""
    shutil.copytree(src, dst)
    path = dst / "onnx-int8-dynamic" / "image.onnx"
    model = onnx.load(str(path))
    model.graph.node[0].op_type = "EdgeclipNoSuchOp"
    onnx.save(model, str(path))
    write_manifest(dst, json.loads((dst / "manifest.json").read_text()))
    return dst


def test_a_graph_the_runtime_cannot_build_fails_its_check(int8_bundle, home, tmp_path):
    broken = _unbuildable_copy(int8_bundle, tmp_path / "unbuildable")
    with pytest.raises(VerificationError) as err:
        edgeclip.load(broken, backend="onnx", precision="int8-dynamic")
    assert "failed to run" in str(err.value) and "EdgeclipNoSuchOp" in str(err.value)
    auto = edgeclip.load(broken)  # the rest of the bundle still serves
    assert auto.variant.id != "onnx-int8-dynamic"
    assert auto.encode_text(["a cat"]).shape[0] == 1
    run = subprocess.run([sys.executable, "-m", "edgeclip", "verify", str(broken)],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    row = next(line for line in run.stdout.splitlines() if line.startswith("onnx-int8-dynamic"))
    assert "  failed" in row


def test_a_narrowed_isa_is_another_host(int8_bundle, home, monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    plain = cpu_identity()
    assert "kernel_overrides" not in plain
    first = edgeclip.load(int8_bundle, backend="onnx", precision="fp32").verification
    assert edgeclip.load(int8_bundle, backend="onnx", precision="fp32").verification.cached
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cpu_identity()["kernel_overrides"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    narrowed = edgeclip.load(int8_bundle, backend="onnx", precision="fp32").verification
    assert not narrowed.cached and narrowed.state == first.state == "passed"
    assert narrowed.host["kernel_overrides"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert edgeclip.load(int8_bundle, backend="onnx", precision="fp32").verification.cached
