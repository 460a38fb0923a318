"""Zero-shot evaluation on the procedural held-out colour-shape compositions."""

from __future__ import annotations

import numpy as np
import torch

from edgeclip.tokenizer import tokenize

from . import dist
from .procedural import COLOURS, HELD_OUT, SHAPES, class_prompts, eval_set
from .students import encode_image, encode_text

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def to_pixels(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, S, S, 3) uint8 → (N, 3, S, S) float32 normalised with CLIP's mean and std."""
    x = (
        torch.from_numpy(np.ascontiguousarray(images))
        .to(device)
        .permute(0, 3, 1, 2)
        .float()
        .div_(255.0)
    )
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def embed_images(model, images: np.ndarray, device="cpu", batch: int = 512) -> torch.Tensor:
    """L2-normalised image embeddings of uint8 images."""
    out = [
        encode_image(model, to_pixels(images[i : i + batch], device))
        for i in range(0, len(images), batch)
    ]
    return torch.nn.functional.normalize(torch.cat(out).float(), dim=-1)


@torch.no_grad()
def embed_texts(model, texts: list[str], context_length: int, device="cpu") -> torch.Tensor:
    ids = torch.from_numpy(tokenize(texts, context_length)).to(device)
    return torch.nn.functional.normalize(encode_text(model, ids).float(), dim=-1)


def zero_shot(
    model, ev: dict | None = None, device="cpu", template: str = "a photo of a {colour} {shape}"
) -> dict:
    """Top-1 accuracies (%) among the 64 colour-shape prompts.

    Keys: ``held_out`` (held-out pairs, 64-way), ``seen`` (seen pairs, 64-way),
    ``held_out_shape`` (held-out images, 8 shape prompts), ``held_out_colour_right``.
    """
    was_training = model.training
    model.eval()
    if ev is None:
        ev = eval_set(image_size=model.config.vision_config.image_size)
    ctx = model.config.text_config.max_position_embeddings
    prompts, _ = class_prompts(template)
    img = embed_images(model, ev["images"], device)
    pred = (img @ embed_texts(model, prompts, ctx, device).T).argmax(1).cpu().numpy()
    shape_prompts = [f"a photo of a {s}" for s in SHAPES]
    pred_shape = (img @ embed_texts(model, shape_prompts, ctx, device).T).argmax(1).cpu().numpy()
    model.train(was_training)
    ho = ev["held_out"]

    def acc(mask, p, y):
        return float(100.0 * np.mean(p[mask] == y[mask])) if mask.any() else float("nan")

    return {
        "held_out": acc(ho, pred, ev["label"]),
        "seen": acc(~ho, pred, ev["label"]),
        "held_out_shape": acc(ho, pred_shape, ev["shape"]),
        "held_out_colour_right": acc(ho, pred // len(SHAPES), ev["colour"]),
    }


def eval_images(cfg) -> int:
    """How many images rank 0 embeds per evaluation of run ``cfg`` (known to every process)."""
    if not (cfg.eval_every or cfg.data == "procedural"):
        return 0
    n_pairs = len(SHAPES) * len(COLOURS)
    return len(HELD_OUT) * cfg.eval_held_out + (n_pairs - len(HELD_OUT)) * cfg.eval_seen


def rank0_eval_set(cfg, rank: int, image_size: int) -> dict | None:
    """The evaluation images, drawn on rank 0 only (``None`` elsewhere or when none is needed).

    The other processes wait for it with a timeout sized to it: with a large ``--eval-held-out``
    drawing takes longer than ``--dist-timeout``, and they gave up in the first step's gather.
    """
    n = eval_images(cfg)
    with dist.rank0_alone(dist.final_wait_s(cfg.dist_timeout, n, 0.0, 0)):
        if rank == 0 and n:
            return eval_set(cfg.eval_held_out, cfg.eval_seen, image_size=image_size)
    return None
