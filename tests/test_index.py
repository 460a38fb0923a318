"""``edgeclip.index`` on a real file tree with the random micro bundle: incremental runs, bad
files, exact search, model refusal, bad databases, the writer lock, kill -9 and resume.

Counts are read from the tool's own report. The trained-model search quality is in
``test_index_search.py``.
"""

from __future__ import annotations

import io
import os
import shutil
import sqlite3
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeclip.index import Index, IndexFileError, IndexLockedError, ModelMismatchError
from edgeclip.index.cli import main as cli
from edgeclip.index.store import WriterLock


def _shapes(n: int, size: int = 64, seed: int = 0) -> list[Image.Image]:
    from converters.calibration import synthetic_pairs

    return synthetic_pairs(n, size, seed)[0]


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height pixels, with almost no data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def make_tree(root: Path, n: int = 24) -> dict[str, Path]:
    """Procedural photos in several formats, plus every kind of file an index must survive."""
    formats = [("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP"), ("gif", "GIF"), ("tif", "TIFF")]
    paths = {}
    for i, im in enumerate(_shapes(n)):
        ext, fmt = formats[i % len(formats)]
        p = root / ("album" if i % 2 else "album/2024") / f"img{i:03d}.{ext}"
        p.parent.mkdir(parents=True, exist_ok=True)
        im.save(p, fmt)
        paths[f"img{i}"] = p
    good = root / "album" / "img001.jpg"
    data = good.read_bytes()
    (root / "album" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "album" / "random.jpg").write_bytes(os.urandom(2000))
    (root / "album" / "empty.jpg").write_bytes(b"")
    (root / "album" / "bomb.png").write_bytes(_bomb_png(12000, 12000))
    (root / "album" / "notes.txt").write_text("not a photo")
    shutil.copyfile(paths["img0"], root / "album" / "copy-of-img0.png")  # a planted duplicate
    os.symlink("..", root / "album" / "2024" / "loop")  # a symlink loop
    (root / ".thumbnails").mkdir()
    _shapes(1, seed=9)[0].save(root / ".thumbnails" / "thumb.png")  # hidden: never indexed
    return paths


GOOD = 24 + 1  # the procedural photos and the copy
BAD = {"truncated.jpg": "truncated", "random.jpg": "not JPEG, PNG", "empty.jpg": "empty (0 bytes)",
       "bomb.png": "decompression bomb"}  # fmt: skip


@pytest.fixture()
def tree(tmp_path) -> Path:
    root = tmp_path / "photos"
    make_tree(root)
    return root


def test_first_run_reports_every_file_and_later_runs_only_the_changes(tree, tmp_path, micro_bundle):
    db = tmp_path / "lib.db"
    with Index(db, micro_bundle) as ix:
        first = ix.update([tree])
        assert first.embedded == GOOD and first.unchanged == 0 and first.other == 1
        reasons = {Path(p).name: r for p, r in first.failures}
        assert set(reasons) == set(BAD)
        for name, words in BAD.items():
            assert words in reasons[name], (name, reasons[name])
        assert len(ix) == GOOD

        again = ix.update([tree])
        assert (again.embedded, again.unchanged, again.failures and len(again.failures)) == (0, GOOD + 1, len(BAD))

        album = tree / "album"
        _shapes(1, seed=5)[0].save(album / "img003.gif", "GIF")  # changed content
        os.utime(album / "img003.gif", ns=(1, 10**18))
        _shapes(1, seed=6)[0].save(album / "new.png")  # new
        os.rename(album / "img005.png", album / "renamed.png")  # renamed: keeps its vector
        os.remove(album / "img009.tif")  # deleted
        third = ix.update([tree])
        assert (third.embedded, third.moved, third.missing) == (2, 1, 1)
        found = {Path(h.path).name for h in ix.search(Path(album / "renamed.png"), k=GOOD + 5)}
        assert "renamed.png" in found and "img005.png" not in found and "img009.tif" not in found
        top = ix.search(Path(album / "renamed.png"), k=1)[0]
        assert top.path.endswith("renamed.png") and top.score > 0.999

        pruned = ix.update([tree], prune=True)
        assert pruned.pruned == 1 and pruned.embedded == 0
        assert ix.store.row(str(album / "img009.tif")) is None
        assert ix.store.integrity() == "ok"


def test_hash_mode_skips_touched_files_and_reuses_vectors_of_copies(tree, tmp_path, micro_bundle):
    with Index(tmp_path / "lib.db", micro_bundle) as ix:
        ix.update([tree], use_hash=True)
        img = tree / "album" / "img001.jpg"
        os.utime(img, ns=(1, 10**18))  # touched: same bytes, new mtime
        shutil.copyfile(img, tree / "album" / "another-copy.jpg")
        report = ix.update([tree], use_hash=True)
        assert report.embedded == 0 and report.moved == 1 and report.unchanged == GOOD
        os.utime(img, ns=(1, 2 * 10**18))
        assert ix.update([tree]).embedded == 1  # without --hash the new mtime means re-embed


def test_the_first_hash_run_on_an_index_built_without_it_hashes_instead_of_embedding(
    tree, tmp_path, micro_bundle
):
    with Index(tmp_path / "lib.db", micro_bundle) as ix:
        ix.update([tree])
        slots = ix.committed_slots()
        assert not any(r.sha256 for r in ix.store.rows("ok"))
        report = ix.update([tree], use_hash=True)
        assert (report.embedded, report.moved, report.unchanged) == (0, 0, GOOD)
        assert ix.committed_slots() == slots  # no vector appended: every row kept its own
        assert all(r.sha256 for r in ix.store.rows("ok"))  # the hashes are recorded ...
        os.utime(tree / "album" / "img001.jpg", ns=(1, 10**18))
        touched = ix.update([tree], use_hash=True)  # ... and then recognise a touched file
        assert (touched.embedded, touched.unchanged) == (0, GOOD) and ix.committed_slots() == slots


def test_exact_search_equals_numpy_brute_force(tree, tmp_path, micro_bundle, monkeypatch):
    from edgeclip.index import vectors

    with Index(tmp_path / "lib.db", micro_bundle) as ix:
        ix.update([tree])
        stored = np.asarray(ix.vectors.matrix(ix.committed_slots()), np.float32)
        stored /= np.linalg.norm(stored, axis=1, keepdims=True)  # cosine over the stored rows
        live = {r.slot: r.path for r in ix.store.rows("ok")}
        rng = np.random.default_rng(0)
        for _ in range(5):
            q = rng.standard_normal(stored.shape[1]).astype(np.float32)
            q /= np.linalg.norm(q)
            scores = stored @ q
            order = sorted(live, key=lambda s: (-scores[s], s))[:10]
            hits = ix.search_vector(q, 10, exact=True)
            assert [h.path for h in hits] == [live[s] for s in order]
            np.testing.assert_allclose([h.score for h in hits], scores[order], rtol=1e-6)
        # The HNSW path (forced on by a low threshold) agrees with exact search on a small set.
        monkeypatch.setattr(vectors, "ANN_MIN_VECTORS", 5)
        ix.update([tree])
        assert ix.stats()["ann_vectors"] == ix.committed_slots()
        for _ in range(3):
            q = rng.standard_normal(stored.shape[1]).astype(np.float32)
            assert ix.search_vector(q, 10) == ix.search_vector(q, 10, exact=True)


def test_another_model_is_refused_until_reindex(tree, tmp_path, micro_bundle, odd_bundle):
    db = tmp_path / "lib.db"
    with Index(db, micro_bundle) as ix:
        ix.update([tree])
    with Index(db, odd_bundle) as other:
        with pytest.raises(ModelMismatchError, match="--reindex"):
            other.search("a red circle")
        with pytest.raises(ModelMismatchError, match="not comparable"):
            other.update([tree])
    assert cli(["search", "a red circle", "--db", str(db), "--model", str(odd_bundle)]) == 2
    with Index(db) as own:  # no model given: the index's own, with its backend and precision
        assert len(own.search("a red circle", k=3)) == 3
    with Index(db, odd_bundle, reindex=True) as rebuilt:
        assert rebuilt.update([tree]).embedded == GOOD
        assert rebuilt.store.get_json("model")["name"] == str(odd_bundle)


def test_files_that_are_not_indexes_are_refused_untouched(tmp_path, micro_bundle):
    text = tmp_path / "notes.db"
    text.write_text("my notes")
    with pytest.raises(IndexFileError, match="not an edgeclip index"):
        Index(text, micro_bundle)
    assert text.read_text() == "my notes"

    foreign = tmp_path / "app.db"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE users (name TEXT)")
    con.commit()
    con.close()
    with pytest.raises(IndexFileError, match="SQLite database but not an edgeclip index"):
        Index(foreign, micro_bundle)
    tables = sqlite3.connect(foreign).execute("SELECT name FROM sqlite_master").fetchall()
    assert tables == [("users",)]

    broken = tmp_path / "broken.db"
    broken.write_bytes(b"SQLite format 3\x00" + os.urandom(4000))
    with pytest.raises(IndexFileError, match="corrupt"):
        Index(broken, micro_bundle)
    assert cli(["search", "x", "--db", str(broken)]) == 2
    assert cli(["search", "x", "--db", str(tmp_path / "none.db")]) == 2


def test_a_second_writer_waits_then_is_refused_clearly(tree, tmp_path, micro_bundle):
    db = tmp_path / "lib.db"
    with WriterLock(Path(db)):
        with Index(db, micro_bundle, wait=0.3) as ix:
            with pytest.raises(IndexLockedError, match=rf"pid {os.getpid()}.*after waiting 0.3 s"):
                ix.update([tree])
    with Index(db, micro_bundle) as ix:  # the lock is gone with its holder
        assert ix.update([tree]).embedded == GOOD


def test_cli_index_search_dupes_and_exit_codes(tree, tmp_path, micro_bundle, capsys):
    import json

    db = str(tmp_path / "lib.db")
    assert cli(["index", str(tree), "--db", db, "--model", str(micro_bundle), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["embedded"] == GOOD and len(report["failures"]) == len(BAD)
    assert cli(["index", str(tree), "--db", db, "--exclude", "*.jpg", "--quiet"]) == 1  # bomb.png
    out = capsys.readouterr().out
    assert "0 embedded" in out and "missing (run with --prune" in out

    assert cli(["search", "a red circle", "--db", db, "-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(Path(line.split(None, 1)[1]).exists() for line in lines)
    assert cli(["search", "--image", str(tree / "album" / "2024" / "img000.png"), "--db", db, "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert {Path(h["path"]).name for h in hits[:2]} == {"img000.png", "copy-of-img0.png"}
    assert hits[0]["score"] > 0.999

    assert cli(["dupes", "--db", db, "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)
    assert {"img000.png", "copy-of-img0.png"} <= {Path(h["path"]).name for h in groups[0]}

    assert cli(["index", str(tmp_path / "nowhere"), "--db", db]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert cli(["search", "--db", db]) == 2
    assert cli(["index", "--prune", "--db", db]) == 0


def _encoded_jpeg() -> bytes:
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, 1600 * 1200 * 3).reshape(1200, 1600, 3)
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()
