"""open_clip checkpoints as open_clip itself writes them, not as our key tables imagine them.

The state dict comes from open_clip's own model code, unpacked from its wheel (``pip download
--no-deps``; not installed, since its package pulls torchvision): ``open_clip.model.CLIP`` is
built with each fixture architecture, its ``state_dict()`` saved the way open_clip's training
saves checkpoints, converted by ``converters.checkpoints.load_checkpoint``, and the embeddings of
open_clip's own ``encode_image`` / ``encode_text`` compared with the converted model's and the
bundle's."""

from __future__ import annotations

import json
import subprocess
import sys
import types
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

OPEN_CLIP = "open_clip_torch==3.3.0"


@pytest.fixture(scope="module")
def open_clip_model_module(tmp_path_factory):
    """``open_clip.model`` from the wheel, with only torchvision's one symbol it imports stubbed."""
    from edgeclip.paths import edgeclip_home

    wheels = edgeclip_home() / "test-wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob("open_clip_torch-3.3.0-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", OPEN_CLIP,
                        "-d", str(wheels)], check=True, timeout=300)  # fmt: skip
        found = sorted(wheels.glob("open_clip_torch-3.3.0-*.whl"))
    root = tmp_path_factory.mktemp("open_clip")
    with zipfile.ZipFile(found[0]) as whl:
        whl.extractall(root)
    # utils.py imports torchvision's FrozenBatchNorm2d (for ResNet towers only): a stand-in
    # class keeps torchvision, and the CUDA torch it would pull, out of this environment.
    misc = types.ModuleType("torchvision.ops.misc")
    misc.FrozenBatchNorm2d = type("FrozenBatchNorm2d", (torch.nn.Module,), {})
    stubs = {"torchvision": types.ModuleType("torchvision"),
             "torchvision.ops": types.ModuleType("torchvision.ops"), "torchvision.ops.misc": misc}  # fmt: skip
    package = types.ModuleType("open_clip")  # the package without its __init__ (factory, transforms)
    package.__path__ = [str(root / "open_clip")]
    saved = {k: sys.modules.get(k) for k in [*stubs, "open_clip"]}
    sys.modules.update(stubs)
    sys.modules["open_clip"] = package
    try:
        import importlib

        yield importlib.import_module("open_clip.model")
    finally:
        for name in [n for n in sys.modules if n == "open_clip" or n.startswith("open_clip.")]:
            del sys.modules[name]
        for name, module in saved.items():
            if module is not None:
                sys.modules[name] = module
            else:
                sys.modules.pop(name, None)


def _inputs(cfg: dict, n: int = 3):
    size, ctx = cfg["vision_cfg"]["image_size"], cfg["text_cfg"]["context_length"]
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((n, 3, size, size)).astype(np.float32)
    ids = np.zeros((n, ctx), np.int64)
    for row in range(n):
        k = 3 + 4 * row
        ids[row, 0], ids[row, 1:k], ids[row, k] = 49406, rng.integers(1, 49000, k - 1), 49407
    return pixels, ids


def _cos(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("arch", ["micro", "odd"])
def test_real_open_clip_checkpoint_converts_exactly(open_clip_model_module, arch, tmp_path):
    import edgeclip
    from converters.bundle_writer import convert
    from converters.checkpoints import load_checkpoint, torch_embeddings
    from converters.fixtures import arch_config

    cfg = arch_config(arch)
    torch.manual_seed(0)
    reference = open_clip_model_module.CLIP(
        cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"], quick_gelu=cfg.get("quick_gelu", False)
    ).eval()
    with torch.no_grad():  # open_clip zero-inits some biases; make every weight count
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ckpt = tmp_path / f"{arch}.pt"
    torch.save({"epoch": 1, "name": arch,
                "state_dict": {"module." + k: v for k, v in reference.state_dict().items()}}, ckpt)  # fmt: skip
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    pixels, ids = _inputs(cfg)
    with torch.inference_mode():
        want_i = reference.encode_image(torch.from_numpy(pixels)).numpy()
        want_t = reference.encode_text(torch.from_numpy(ids)).numpy()
    model, info = load_checkpoint(ckpt)
    got = torch_embeddings(model, pixels, ids)
    assert info["kind"] == "open_clip-checkpoint"
    assert _cos(got["image"], want_i).min() > 0.99999 and _cos(got["text"], want_t).min() > 0.99999
    bundle = convert(ckpt, tmp_path / "bundle", progress=False, log=lambda _: None)
    runtime = edgeclip.load(bundle, backend="onnx", precision="fp32", verify=False)
    img = runtime._image(pixels, 8)
    txt = runtime._text(ids, 8)
    assert _cos(img, want_i).min() > 0.9999 and _cos(txt, want_t).min() > 0.9999
    scale = float(reference.logit_scale.exp().clamp(max=100))
    assert runtime.logit_scale == pytest.approx(scale, rel=1e-5)
