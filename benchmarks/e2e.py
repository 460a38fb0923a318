"""End-to-end image rate from JPEG files: decode + preprocess + image tower, through EdgeClip.

Shown next to the model-only rate so a user sees whether preprocessing is the bottleneck.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np


def write_jpegs(
    directory: Path, n: int, size: tuple[int, int] = (640, 480), seed: int = 0
) -> list[Path]:
    """``n`` camera-sized JPEGs with smooth random content (decode cost like real photos)."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    paths = []
    for i in range(n):
        small = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
        p = directory / f"img_{i:04d}.jpg"
        img.save(p, quality=90)
        paths.append(p)
    return paths


def open_model(bundle: Any, variant: Any, threads: int | None, device: str = "cpu") -> Any:
    """An ``EdgeClip`` on exactly this variant (``edgeclip.load`` picks by backend/precision)."""
    from edgeclip.model import EdgeClip
    from edgeclip.towers import variant_opener

    opener = variant_opener(bundle.root, variant, threads, device)
    return EdgeClip(bundle, variant, opener).warm()


def end_to_end(model: Any, paths: list[Path], batch: int, repeats: int = 2) -> dict[str, Any]:
    """images/s of ``model.encode_image(paths)`` and of preprocessing alone (best of ``repeats``)."""
    files = [str(p) for p in paths]
    model.encode_image(files[:batch], batch_size=batch)  # warm-up
    best_e2e = best_pre = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.encode_image(files, batch_size=batch)
        best_e2e = min(best_e2e, time.perf_counter() - t0)
        t0 = time.perf_counter()
        model.preprocessor(files)
        best_pre = min(best_pre, time.perf_counter() - t0)
    return {
        "batch_size": batch,
        "n_images": len(files),
        "images_per_s": len(files) / best_e2e,
        "preprocess_images_per_s": len(files) / best_pre,
    }
