"""``edgeclip.index`` against damage from outside: file names that are not UTF-8, folders whose
names differ only in case, and a vectors file that lost rows. Real files, the micro bundle."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeclip.index import Index
from edgeclip.index.cli import main as cli


def _photos(folder: Path, n: int, seed: int = 0) -> list[Path]:
    from converters.calibration import synthetic_pairs

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(synthetic_pairs(n, 64, seed)[0]):
        paths.append(folder / f"img{i:02d}.png")
        im.save(paths[-1])
    return paths


def test_a_name_that_is_not_utf8_is_reported_and_the_rest_indexed(tmp_path, micro_bundle, capsys):
    good = _photos(tmp_path / "p", 2)
    bad = os.path.join(os.fsencode(tmp_path / "p"), b"z_\xff.png")  # latin-1 byte, not UTF-8
    shutil.copyfile(good[0], bad)
    os.mkdir(os.path.join(os.fsencode(tmp_path / "p"), b"caf\xe9"))
    shutil.copyfile(good[1], os.path.join(os.fsencode(tmp_path / "p"), b"caf\xe9", b"x.png"))
    db = tmp_path / "lib.db"
    code = cli(["index", str(tmp_path / "p"), "--db", str(db), "--model", str(micro_bundle)])
    err = capsys.readouterr().err
    assert code == 1  # some inputs could not be indexed; no traceback
    assert "z_\\xff.png: the name is not valid UTF-8" in err and "rename it" in err
    assert "caf\\xe9: the name is not valid UTF-8" in err
    with Index(db, micro_bundle) as ix:
        assert sorted(Path(r.path).name for r in ix.store.rows()) == ["img00.png", "img01.png"]
        with pytest.raises(Exception, match="not valid UTF-8.*rename it"):
            ix.add([os.fsdecode(bad)])


def test_folders_differing_only_in_case_are_separate_roots(tmp_path, micro_bundle):
    upper = _photos(tmp_path / "Photos", 1)
    lower = _photos(tmp_path / "photos", 2, seed=1)
    with Index(tmp_path / "lib.db", micro_bundle) as ix:
        assert ix.update([tmp_path / "Photos", tmp_path / "photos"]).embedded == 3
        again = ix.update([tmp_path / "Photos"], prune=True)
        assert again.pruned == 0 and again.missing == 0 and again.unchanged == 1
        assert {r.path for r in ix.store.rows()} == {str(p) for p in upper + lower}
        assert ix.remove([tmp_path / "Photos"]) == 1
        assert {r.path for r in ix.store.rows()} == {str(p) for p in lower}


@pytest.mark.parametrize("keep_rows", [0, 3])
def test_a_vectors_file_that_lost_rows_is_refilled_by_the_next_run(tmp_path, micro_bundle, keep_rows):
    photos = _photos(tmp_path / "p", 6)
    db = tmp_path / "lib.db"
    with Index(db, micro_bundle) as ix:
        ix.update([tmp_path / "p"])
        vectors = ix.vectors.path
        reference = np.asarray(ix.vectors.matrix(6), np.float32).copy()
        query = reference[4]
    with open(vectors, "r+b") as f:  # deleted, truncated, or restored from an older backup
        f.truncate(keep_rows * reference.shape[1] * 2)
    with Index(db, micro_bundle) as ix:
        with pytest.warns(UserWarning, match=f"held {keep_rows} of the index's 6 vectors"):
            report = ix.update([tmp_path / "p"])
        assert report.embedded == 6 - keep_rows and report.unchanged == keep_rows
        hits = ix.search_vector(query, k=6)
        assert hits[0].path == str(photos[4]) and hits[0].score == pytest.approx(1.0, abs=2e-3)
        assert all(h.score != 0.0 for h in hits)
        assert ix.stats()["slots"] == 6
