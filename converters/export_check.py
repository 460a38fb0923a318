"""The export check's inputs and measurement: synthetic pictures and captions that differ from
the export's dummy batch, and the exported graphs' parity with transformers' own features."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.errors import InputError
from edgeclip.gate import export_parity
from edgeclip.tokenizer import EOT_ID, SOT_ID

__all__ = ["CAPTIONS", "parity_inputs", "measure_parity"]

CAPTIONS = (
    "a photo of a cat",
    "a photo of a dog",
    "a diagram of a bridge",
    "a red car parked on a street at night",
    "two people playing chess in a park",
    "a bowl of ramen with an egg",
    "an astronaut riding a horse",
    "the coffee is hot ☕ and the café is open",
    "Zürich, São Paulo and 東京 at dawn",
    "3 apples & 12 oranges &amp; 1 banana",
    "",
    "A BLURRY PHOTO OF A MOTORCYCLE!!!",
    "satellite image of farmland",
    "a sketch of a teddy bear",
    "a close-up photo of a rocket engine " * 8,  # longer than the context: truncated
    "x",
)


def _synthetic_images(n: int, seed: int = 0) -> list[np.ndarray]:
    """Gradients, checkerboards, discs and noise at various sizes and aspect ratios (HWC uint8)."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        h, w = int(rng.integers(40, 300)), int(rng.integers(40, 300))
        yy, xx = np.mgrid[0:h, 0:w]
        yy, xx = yy[..., None] / h, xx[..., None] / w
        a, b = rng.random(3), rng.random(3)
        kind = i % 4
        if kind == 0:
            im = a * xx + b * (1 - yy)
        elif kind == 1:
            cells = int(rng.integers(2, 12))
            im = np.where(((xx * cells).astype(int) + (yy * cells).astype(int)) % 2 == 0, a, b)
        elif kind == 2:
            cy, cx, r = rng.random(), rng.random(), 0.05 + 0.3 * rng.random()
            im = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < r * r, a, b)
        else:
            im = rng.random((h, w, 3))
        images.append(np.clip(im * 255, 0, 255).astype(np.uint8))
    return images


def parity_inputs(
    preprocess_cfg: dict[str, Any], context_length: int, n_images: int = 8, n_texts: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel values and token ids for parity: synthetic pictures (+ noise) and real captions."""
    size = int(preprocess_cfg["image_size"])
    n_pictures = (n_images + 1) // 2
    try:
        from edgeclip.preprocess import Preprocessor

        result = Preprocessor(preprocess_cfg)(_synthetic_images(n_pictures))
        pictures = result[0]
    except ImportError:  # runtime without its preprocessing module: noise only
        pictures = np.zeros((0, 3, size, size), np.float32)
    rng = np.random.default_rng(1)
    noise = rng.standard_normal((n_images - len(pictures), 3, size, size)).astype(np.float32)
    pixels = np.concatenate([pictures, noise]).astype(np.float32)
    captions = [
        CAPTIONS[i % len(CAPTIONS)] + ("" if i < len(CAPTIONS) else f" {i}") for i in range(n_texts)
    ]
    try:
        from edgeclip.tokenizer import tokenize

        ids = tokenize(captions, context_length=context_length)
    except ImportError:  # no tokenizer: random ids with CLIP's start/end tokens
        ids = np.zeros((n_texts, context_length), np.int64)
        for row in range(n_texts):
            n = int(rng.integers(1, context_length - 1))
            ids[row, 0], ids[row, n] = SOT_ID, EOT_ID
            ids[row, 1:n] = rng.integers(1, SOT_ID, n - 1)
    return pixels, np.asarray(ids, np.int64)


def measure_parity(model: Any, root: Path, variant: dict[str, Any], pixels, ids) -> dict[str, Any]:
    """``edgeclip.gate.export_parity`` of the exported graphs (through the runtime's towers)
    against transformers' ``get_image_features`` / ``get_text_features``.

    Batch 1 then the rest: both differ from the export's dummy batch, so dynamic batch is tested.
    """
    from edgeclip.bundle import Variant
    from edgeclip.towers import open_towers

    from .checkpoints import torch_embeddings

    ref = torch_embeddings(model, pixels, ids)
    _refuse_degenerate(ref)
    image, text = open_towers(root, Variant.from_dict(variant))
    got_i = np.concatenate([image(pixels[:1], 1), image(pixels[1:], len(pixels))]) if len(pixels) > 1 else image(pixels, 1)
    got_t = np.concatenate([text(ids[:1], 1), text(ids[1:], len(ids))]) if len(ids) > 1 else text(ids, 1)
    return export_parity(got_i, got_t, ref["image"], ref["text"])


def _refuse_degenerate(ref: dict[str, np.ndarray]) -> None:
    """A torch model whose own embeddings are zero or non-finite has nothing to export."""
    for tower, emb in ref.items():
        norms = np.linalg.norm(emb, axis=1)
        bad = int((~np.isfinite(norms) | (norms == 0)).sum())
        if bad:
            raise InputError(
                f"the checkpoint's own {tower} tower (torch) gives zero or non-finite embeddings "
                f"for {bad} of {len(emb)} test inputs: its weights are not a usable model (e.g. "
                f"an all-zero {tower} projection). No bundle was written."
            )
