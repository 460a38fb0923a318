"""How the paths of an index and of its photos are spelt: a ``--db`` through a symlink, folders
reached through links, and a ``--db`` file that is empty. Real files, SQLite, the micro bundle."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_index import _shapes

from edgeclip.index import Index, IndexLockedError
from edgeclip.index.cli import main as cli
from edgeclip.index.store import WriterLock


def _photos(folder: Path, n: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img{i:02d}.png" for i in range(n)]
    for path, im in zip(paths, _shapes(n, seed=seed)):
        im.save(path)
    return paths


def test_a_db_reached_through_a_symlink_is_one_index_with_one_lock(tmp_path, micro_bundle):
    _photos(tmp_path / "p", 3)
    (tmp_path / "real").mkdir()
    (tmp_path / "links").mkdir()
    real, link = tmp_path / "real" / "lib.db", tmp_path / "links" / "lib.db"
    os.symlink(real, link)  # dangling until the first run creates the index
    with Index(link, micro_bundle) as ix:
        assert ix.update([tmp_path / "p"]).embedded == 3
    assert os.listdir(tmp_path / "links") == ["lib.db"]  # vectors and lock sit by the real file
    assert {"lib.db", "lib.db.vectors-1", "lib.db.lock"} <= set(os.listdir(tmp_path / "real"))
    with Index(link, readonly=True) as reader:
        assert reader.path == real
    with WriterLock(real), Index(link, micro_bundle) as ix:  # a writer on the real path ...
        with pytest.raises(IndexLockedError):  # ... excludes one through the link
            ix.update([tmp_path / "p"])
    with Index(real, micro_bundle) as ix:
        again = ix.update([tmp_path / "p"])
        assert (again.embedded, again.unchanged) == (0, 3)
        assert len(ix.search("a red circle", k=5)) == 3


def test_a_root_reached_through_a_link_in_another_is_stored_under_its_own_path(
    tmp_path, micro_bundle
):
    album = _photos(tmp_path / "photos" / "2024", 2)
    other = _photos(tmp_path / "other", 2, seed=1)
    os.symlink(tmp_path / "other", tmp_path / "photos" / "0-other")
    os.symlink(tmp_path / "photos" / "2024", tmp_path / "photos" / "0-latest")
    roots = [tmp_path / "photos", tmp_path / "other"]
    with Index(tmp_path / "lib.db", micro_bundle) as ix:
        assert ix.update(roots).embedded == 4
        assert sorted(r.path for r in ix.store.rows()) == sorted(map(str, album + other))
        swapped = ix.update(roots[::-1])  # the other order finds the same four files
        assert (swapped.embedded, swapped.unchanged, swapped.missing) == (0, 4, 0)


def test_a_root_given_through_a_symlink_is_stored_the_same_in_either_order(
    tmp_path, micro_bundle
):
    album = _photos(tmp_path / "photos" / "2024", 2)
    os.symlink(tmp_path / "photos" / "2024", tmp_path / "latest")  # a link outside the roots
    for roots in ([tmp_path / "latest", tmp_path / "photos"], [tmp_path / "photos", tmp_path / "latest"]):
        db = tmp_path / f"{roots[0].name}.db"
        with Index(db, micro_bundle) as ix:
            assert ix.update(roots).embedded == 2
            assert sorted(r.path for r in ix.store.rows()) == sorted(map(str, album)), roots
            again = ix.update(roots[::-1])
            assert (again.embedded, again.unchanged, again.missing) == (0, 2, 0)


def test_search_on_a_zero_byte_db_says_there_is_no_index_yet(tmp_path, micro_bundle, capsys):
    db = tmp_path / "lib.db"
    db.touch()
    for command in (["search", "a red circle"], ["dupes"]):
        assert cli([*command, "--db", str(db)]) == 2
        err = capsys.readouterr().err
        assert f"no index at {db} yet" in err and f"`edgeclip index DIR --db {db}`" in err, err
        assert "corrupt" not in err and db.stat().st_size == 0  # said, and the file left alone
    _photos(tmp_path / "p", 1)
    assert cli(["index", str(tmp_path / "p"), "--db", str(db), "--model", str(micro_bundle),
                "--quiet"]) == 0  # fmt: skip
    capsys.readouterr()
    assert cli(["search", "a red circle", "--db", str(db), "--paths"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "p" / "img00.png")
