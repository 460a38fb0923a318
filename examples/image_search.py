"""Text-to-image search over a folder: embed every image once, then rank by a text query.

    python examples/image_search.py FOLDER "a red circle" [--model tinyclip-8m] [--top 5]

The image embeddings are saved next to the folder (``FOLDER.edgeclip.npz``) and reused while the
folder's file list is unchanged, so later queries only embed the text.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import edgeclip

SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def index(model: edgeclip.EdgeClip, folder: Path) -> tuple[list[str], np.ndarray]:
    files = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES)
    cache = folder.with_suffix(".edgeclip.npz")
    if cache.exists():
        saved = np.load(cache, allow_pickle=False)
        if saved["files"].tolist() == files and str(saved["model"]) == model.bundle.name:
            return files, saved["embeddings"]
    try:
        emb = model.encode_image(files)
    except edgeclip.BatchError as err:
        print(f"skipping {len(err.failures)} unreadable image(s):\n{err}")
        emb = err.results
    np.savez(cache, files=np.array(files), embeddings=emb, model=model.bundle.name)
    return files, emb


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("folder", type=Path)
    ap.add_argument("query")
    ap.add_argument("--model", default="tinyclip-8m")
    ap.add_argument("--top", type=int, default=5)
    args = ap.parse_args()

    model = edgeclip.load(args.model)
    files, emb = index(model, args.folder)
    scores = np.nan_to_num(emb @ model.encode_text(args.query)[0], nan=-1.0)
    for i in np.argsort(-scores)[: args.top]:
        print(f"{scores[i]:.3f}  {files[i]}")


if __name__ == "__main__":
    main()
