"""A small CLIP trained here on procedural shapes, as a bundle: searches by text then mean something.

    .venv/bin/python -m benchmarks.index_model OUT_DIR [--steps 300]

Used by ``tests/test_index*.py`` (a session fixture) and ``benchmarks/index_bench.py``. The
data is ``converters.calibration.synthetic_pairs``: one coloured shape on a noisy ground with
a caption such as "a photo of a red circle" (8 colours x 6 shapes). Needs torch + transformers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

ARCH = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 96, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}
LR = 3e-3
#: 2: synthetic_pairs draws all 48 colour x shape pairs (it drew 16 before)
DATA_VERSION = 2
_TEXT_POSITIONS = 16  # captions are short: EOT-pooled output equals the full 77 (causal mask)


def _data(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from converters.calibration import synthetic_pairs
    from edgeclip.preprocess import Preprocessor
    from edgeclip.tokenizer import Tokenizer

    images, captions, _ = synthetic_pairs(n, size, seed)
    pixels, _, _ = Preprocessor({"image_size": size})(images)
    ids = Tokenizer()(captions)
    assert (ids[:, _TEXT_POSITIONS:] == 0).all()
    return pixels, np.ascontiguousarray(ids[:, :_TEXT_POSITIONS])


def train(steps: int = 300, batch: int = 64, seed: int = 0, threads: int = 1) -> Any:
    """A transformers ``CLIPModel`` trained with the symmetric InfoNCE loss."""
    import torch

    from converters.fixtures import random_model
    from edgeclip.distill.losses import clip_loss

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = random_model(ARCH, seed=seed).train()
    # Fixed random token embeddings are enough for a 56-word vocabulary, and skip AdamW's dense
    # update of 49408 x 64 weights each step (most of a step's cost at this size).
    model.text_model.embeddings.token_embedding.weight.requires_grad_(False)
    pixels, ids = _data(max(steps * batch // 4, batch), ARCH["vision_cfg"]["image_size"], seed + 100)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps, pct_start=0.1)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.choice(len(pixels), batch, replace=False)
        img = _features(model.get_image_features(pixel_values=torch.from_numpy(pixels[idx])))
        txt = _features(model.get_text_features(input_ids=torch.from_numpy(ids[idx])))
        loss = clip_loss(img, txt, model.logit_scale.exp().clamp(max=100))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def _features(out: Any) -> Any:
    import torch

    # transformers 5 returns a model output from get_*_features; 4.x returned the tensor.
    x = out if isinstance(out, torch.Tensor) else out.pooler_output
    return torch.nn.functional.normalize(x, dim=-1)


def save_checkpoint(model: Any, out: Path) -> Path:
    from safetensors.torch import save_file

    from edgeclip.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    out.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    size = ARCH["vision_cfg"]["image_size"]
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_resize": True,
        "size": {"shortest_edge": size}, "resample": 3, "do_center_crop": True,
        "crop_size": {"height": size, "width": size}, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(OPENAI_CLIP_MEAN),
        "image_std": list(OPENAI_CLIP_STD), "do_convert_rgb": True,
    }))  # fmt: skip
    return out


def trained_bundle(out: Path, steps: int = 300, seed: int = 0) -> tuple[Path, float]:
    """Train, save and convert; returns (bundle dir, training seconds). Reuses a finished one."""
    from converters.bundle_writer import convert

    bundle = out / "bundle"
    stamp = out / "trained.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("steps") == steps:
        return bundle, float(json.loads(stamp.read_text())["train_seconds"])
    t0 = time.perf_counter()
    model = train(steps, seed=seed)
    seconds = time.perf_counter() - t0
    ckpt = save_checkpoint(model, out / "ckpt")
    convert(ckpt, bundle, name="index-shapes", overwrite=True, progress=False)
    stamp.write_text(json.dumps({"steps": steps, "train_seconds": round(seconds, 1)}))
    return bundle, seconds


def cached_bundle(steps: int) -> Path:
    """The bundle trained with this recipe, kept under EDGECLIP_HOME/test-models by the recipe's
    hash (CI runs pytest without its cache), so tests and benchmarks share one model."""
    import hashlib

    from edgeclip.paths import edgeclip_home

    recipe = json.dumps({"arch": ARCH, "lr": LR, "steps": steps, "data": DATA_VERSION}, sort_keys=True)
    key = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    out = edgeclip_home() / "test-models" / f"edgeclip-index-model-{key}"
    out.mkdir(parents=True, exist_ok=True)
    return trained_bundle(out, steps=steps)[0]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args(argv)
    bundle, seconds = trained_bundle(args.out, args.steps)
    print(f"{bundle} (trained in {seconds:.0f} s)")


if __name__ == "__main__":
    main()
