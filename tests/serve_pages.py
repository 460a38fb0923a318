"""What the web-page tests share: a small photo index of procedural shapes (their headless
Chromium is conftest's ``browser`` fixture)."""

from __future__ import annotations

from pathlib import Path

from edgeclip.index import Index


def indexed_shapes(folder: Path, micro_bundle: Path, n: int, seed: int) -> Path:
    """``n`` shape pictures in ``folder/tree`` ("shape 0.png", ...: names with a space),
    indexed with the micro bundle into ``folder/photos.db``; returns the db's path."""
    from converters.calibration import synthetic_pairs

    (folder / "tree").mkdir()
    for i, im in enumerate(synthetic_pairs(n, 64, seed)[0]):
        im.save(folder / "tree" / f"shape {i}.png")
    with Index(folder / "photos.db", str(micro_bundle)) as ix:
        assert not ix.update([folder / "tree"]).failures
    return folder / "photos.db"
