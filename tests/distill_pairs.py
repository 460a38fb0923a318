"""A CSV of image-caption pairs for the distillation tests."""

from __future__ import annotations

from pathlib import Path


def pairs_with_two_missing(folder: Path) -> Path:
    """``folder/pairs.csv``: eight image-caption rows whose images exist, then two whose images
    do not (what a scraped CSV looks like); the distillation tests count the skips."""
    from PIL import Image

    rows = ["image,caption"]
    for k in range(8):
        Image.new("RGB", (40, 40), (25 * k, 100, 0)).save(folder / f"{k}.png")
        rows.append(f"{k}.png,picture {k}")
    path = folder / "pairs.csv"
    path.write_text("\n".join(rows + ["missing1.png,gone", "missing2.png,gone"]) + "\n")
    return path
