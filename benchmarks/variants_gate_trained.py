"""Gate numbers of every variant on a CLIP trained here (random weights make top-1 meaningless).

    .venv/bin/python -m benchmarks.variants_gate_trained [--steps 500] [--work DIR]

Trains a small CLIP from scratch for a few CPU minutes on ``converters.calibration``'s
procedural shapes (colour × shape captions), reports its own zero-shot accuracy on held-out
pictures (so the probe has decisive margins), converts it, adds every backend × precision
(failed variants kept and marked, so all are listed), and writes each variant's parity and
gate verdict to ``benchmarks/results/variants_gate_trained.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.hosts import host_label, measured_on

OUT = Path(__file__).resolve().parent / "results" / "variants_gate_trained.json"
ARCH = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 2},
}


def _data(n: int, size: int, seed: int):
    from converters.calibration import synthetic_pairs
    from edgeclip.preprocess import Preprocessor
    from edgeclip.tokenizer import Tokenizer

    images, captions, labels = synthetic_pairs(n, size, seed)
    pixels, _, _ = Preprocessor({"image_size": size})(images)
    return pixels, Tokenizer()(captions), labels


def train(steps: int, batch: int, seed: int = 0):
    """A CLIPModel trained with the symmetric InfoNCE loss on procedural pairs."""
    import torch

    from converters.fixtures import random_model
    from converters.gate import torch_towers
    from edgeclip.distill.losses import clip_loss

    torch.manual_seed(seed)
    model = random_model(ARCH, seed=seed).train()
    size = ARCH["vision_cfg"]["image_size"]
    pixels, ids, _ = _data(steps * batch // 4, size, seed + 100)  # each pair seen ~4 times
    # Captions are short: training on the first 16 positions gives the same EOT-pooled output
    # as the full 77 (causal attention, zero padding after EOT) at a fifth of the text cost.
    assert (ids[:, 16:] == 0).all()
    ids = np.ascontiguousarray(ids[:, :16])
    image, text = torch_towers(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    rng = np.random.default_rng(seed)
    for step in range(steps):
        idx = rng.choice(len(pixels), batch, replace=False)
        img, txt = image(torch.from_numpy(pixels[idx])), text(torch.from_numpy(ids[idx]))
        loss = clip_loss(img, txt, model.logit_scale.exp().clamp(max=100))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step}: loss {loss.item():.3f}", flush=True)
    return model.eval()


def zero_shot_accuracy(model, n: int = 480) -> float:
    """Top-1 over the 48 colour × shape labels on fresh procedural pictures."""
    import torch

    from converters.calibration import synthetic_labels
    from converters.gate import torch_towers
    from edgeclip.tokenizer import Tokenizer

    pixels, _, labels = _data(n, ARCH["vision_cfg"]["image_size"], seed=999)
    names = synthetic_labels()
    image, text = torch_towers(model)
    with torch.inference_mode():
        img = torch.nn.functional.normalize(image(torch.from_numpy(pixels)), dim=-1)
        txt = torch.nn.functional.normalize(
            text(torch.from_numpy(Tokenizer()([f"a photo of a {x}" for x in names]))), dim=-1
        )
    pred = (img @ txt.T).argmax(1).numpy()
    return float(np.mean([names[p] == lab for p, lab in zip(pred, labels)]))


def save(model, out: Path) -> Path:
    from safetensors.torch import save_file

    from converters.fixtures import _preprocessor_config

    out.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out)
    save_file(
        {k: v.detach().contiguous() for k, v in model.state_dict().items()},
        str(out / "model.safetensors"),
    )
    (out / "preprocessor_config.json").write_text(
        json.dumps(_preprocessor_config(ARCH["vision_cfg"]["image_size"]))
    )
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads for training (shared host)"
    )
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)

    import torch

    from converters.add_variants import add_variants
    from converters.bundle_writer import convert

    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="variants-gate-"))
    t0 = time.perf_counter()
    model = train(args.steps, args.batch)
    train_s = time.perf_counter() - t0
    acc = zero_shot_accuracy(model)
    print(f"trained in {train_s:.0f} s; zero-shot top-1 on 48 labels: {acc:.1%}", flush=True)
    ckpt = save(model, work / "ckpt")
    bundle = convert(ckpt, work / "bundle", name="trained-shapes", overwrite=True, progress=False)
    manifest = add_variants(
        bundle, ckpt, backends="onnx,openvino,litert,torch",
        precisions="fp32,fp16,int8,int8-dynamic,int8-static,int8-weights",
        n_calib=64, n_eval=96, keep_failed=True, builder_options={"litert": {"batch_sizes": [1, 8]}},
    )  # fmt: skip
    keys = ("image_cosine_mean", "image_cosine_min", "text_cosine_mean", "text_cosine_min",
            "top1_agreement", "top1_agreement_tie_tolerant", "n_images", "n_probe_labels")  # fmt: skip
    rows = [
        {"id": v["id"], "passed": v["gate"].get("passed"), "reason": v["gate"].get("reason"),
         "config": (v.get("options") or {}).get("config"),
         "search": (v.get("options") or {}).get("search"),
         **{k: (v.get("parity") or {}).get(k) for k in keys}}
        for v in manifest["variants"]
    ]  # fmt: skip
    result = {
        "what": "gate numbers per variant on a CLIP trained here on procedural shapes (CPU minutes)",
        # The verdicts depend on the CPU: OpenVINO runs fp16 IR in bf16 on AMX, INT8 kernels differ.
        "host": host_label(), **measured_on(), "train_threads": args.threads,
        "arch": ARCH, "steps": args.steps, "batch": args.batch, "train_seconds": round(train_s, 1),
        "zero_shot_top1_48_labels": round(acc, 4), "calibration": manifest.get("calibration"),
        "variants": rows,
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
