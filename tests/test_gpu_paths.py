"""The GPU code paths, checked where they can be: on this CPU-only build, asking for CUDA or
TensorRT is a clear error, never a CPU run labelled as GPU; auto never picks TensorRT; engine
caches are keyed on the graph; the one prepared GPU script runs end to end and says why it
measured no GPU row."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeclip.errors import InputError

ort = pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parents[1]
CPU_ONLY = "CUDAExecutionProvider" not in ort.get_available_providers()


@pytest.mark.skipif(not CPU_ONLY, reason="this host has CUDA: the refusal is for CPU-only builds")
def test_cuda_on_a_cpu_build_is_a_clear_error(micro_bundle, tmp_path, monkeypatch):
    import edgeclip
    from edgeclip.backends import get_backend

    monkeypatch.setenv("EDGECLIP_HOME", str(tmp_path))
    backend = get_backend("onnx")
    assert "TensorrtExecutionProvider" not in backend._providers("auto", Path("x"), "fp32")
    for device in ("cuda", "tensorrt"):
        with pytest.raises(InputError, match="is not available here; available providers"):
            edgeclip.load(micro_bundle, backend="onnx", precision="fp32", device=device).warm()
    model = edgeclip.load(micro_bundle, backend="onnx", precision="fp32")
    assert model.verification.host["device_used"] == "CPUExecutionProvider"


def test_tensorrt_engine_cache_is_keyed_on_the_graph(micro_bundle, tmp_path, monkeypatch):
    from edgeclip.backends.onnxruntime import tensorrt_options

    monkeypatch.setenv("EDGECLIP_HOME", str(tmp_path))
    graph = tmp_path / "image.onnx"
    shutil.copyfile(micro_bundle / "onnx-fp32" / "image.onnx", graph)
    first = tensorrt_options(graph, "fp32")
    assert first["trt_engine_cache_enable"] == "True" and first["trt_fp16_enable"] == "False"
    assert tensorrt_options(graph, "fp16")["trt_fp16_enable"] == "True"
    assert tensorrt_options(graph, "fp32") == first  # same graph, same GPU: same cache
    graph.write_bytes(graph.read_bytes() + b"\0")  # another graph: another engine folder
    assert tensorrt_options(graph, "fp32")["trt_engine_cache_path"] != first["trt_engine_cache_path"]
    assert Path(first["trt_engine_cache_path"]).is_relative_to(tmp_path / "trt")


@pytest.mark.skipif(not CPU_ONLY, reason="on a GPU host this measures for minutes")
def test_gpu_script_runs_and_says_why_there_is_no_gpu_row(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "gpu"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_run", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["throughput"] == [] and any("GPU path skipped" in n for n in res["notes"])
    assert json.loads((out / "device.json").read_text())["cpu"]["model"]
