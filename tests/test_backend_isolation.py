"""A backend installed alone loads its variants: ONNX Runtime, OpenVINO and LiteRT run with torch,
transformers, the converters' packages and the other backends made unimportable (a meta-path
hook in a subprocess), through the public ``edgeclip.load`` path, on-device check included."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")  # the fixture bundle is converted here

ROOT = Path(__file__).resolve().parents[1]
# Everything a runtime-only install lacks; each backend's test unblocks its own runtime.
HEAVY = ["torch", "transformers", "onnx", "onnxruntime", "onnxscript", "nncf", "litert_torch",
         "ai_edge_quantizer", "jax", "tensorflow", "torchao", "safetensors", "converters"]  # fmt: skip
RUNTIMES = {"onnx": ["onnxruntime"], "openvino": ["openvino"],
            "litert": ["ai_edge_litert", "tflite_runtime"]}  # fmt: skip
#: what converting each backend's variants needs on top of torch
CONVERT = {"onnx": "onnxruntime", "openvino": "nncf", "litert": "litert_torch"}

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np

    BLOCKED = set(json.loads(sys.argv[1]))

    class Block:
        # Raise at lookup, as for a package that is not installed.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, Block())
    import edgeclip

    backend, precision, bundle = sys.argv[2], sys.argv[3], sys.argv[4]
    avail = edgeclip.available_backends()
    assert backend in avail, f"backend {backend} not available; available: {avail}"
    # fp32 goes through the on-device check too; an INT8 variant's fate on random weights
    # depends on the CPU, and this test is about imports, so it skips the check.
    m = edgeclip.load(bundle, backend=backend, precision=precision, threads=1,
                      verify=precision == "fp32")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40, 48, 3), dtype=np.uint8) for _ in range(3)]
    img = m.encode_image(images)
    txt = m.encode_text(["a photo of a cat", "a red square", "a blue circle"])
    probs = m.classify(images[0], ["cat", "dog"])
    leaked = sorted(n for n in sys.modules if n.split(".")[0] in BLOCKED)
    print(json.dumps({"variant": m.variant.id, "image": img.tolist(), "text": txt.tolist(),
                      "leaked": leaked, "classify": str(probs)[:200]}))
    """
)


@pytest.fixture(scope="module")
def bundle(micro_bundle, micro_hf_checkpoint, tmp_path_factory):
    from converters.add_variants import add_variants

    out = tmp_path_factory.mktemp("isolation") / "micro"
    shutil.copytree(micro_bundle, out)
    backends = [b for b in ("openvino", "litert") if importlib.util.find_spec(CONVERT[b])]
    if not backends:
        return out
    add_variants(out, micro_hf_checkpoint, backends=",".join(backends),
                 precisions="fp32,int8-dynamic,int8-weights", n_calib=4, n_eval=8,
                 builder_options={"litert": {"batch_sizes": [2]}}, keep_failed=True,
                 log=lambda _: None)  # fmt: skip
    return out


def _reference(bundle: Path):
    """Embeddings from the onnx-fp32 variant in this (unblocked) process."""
    import edgeclip

    m = edgeclip.load(bundle, backend="onnx", precision="fp32")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40, 48, 3), dtype=np.uint8) for _ in range(3)]
    return m.encode_image(images), m.encode_text(
        ["a photo of a cat", "a red square", "a blue circle"]
    )


@pytest.mark.parametrize(
    "backend,precision",
    [
        ("onnx", "fp32"),
        ("openvino", "fp32"),
        ("openvino", "int8-weights"),
        ("litert", "fp32"),
        ("litert", "int8-dynamic"),
    ],
)
def test_backend_runs_without_torch_or_other_backends(bundle, backend, precision):
    for module in (RUNTIMES[backend][0], CONVERT[backend]):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: the {backend} extra is not part of this run")
    blocked = [m for m in HEAVY if m not in RUNTIMES[backend]]
    blocked += [m for b, mods in RUNTIMES.items() if b != backend for m in mods]
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(blocked), backend, precision, str(bundle)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["variant"] == f"{backend}-{precision}"
    assert out["leaked"] == []
    ref_img, ref_txt = _reference(bundle)
    img, txt = np.array(out["image"], np.float32), np.array(out["text"], np.float32)
    assert np.isfinite(img).all() and np.isfinite(txt).all()
    if precision == "fp32":  # normalised embeddings: the row-wise dot product is the cosine
        assert np.sum(img * ref_img, 1).min() > 0.9999
        assert np.sum(txt * ref_txt, 1).min() > 0.9999


def test_blocking_really_blocks(bundle):
    """The hook works: with openvino blocked too, loading the openvino variant fails cleanly."""
    blocked = HEAVY + ["openvino", "ai_edge_litert", "tflite_runtime"]
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(blocked), "openvino", "fp32", str(bundle)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "backend openvino not available; available: []" in proc.stderr
