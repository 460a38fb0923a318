"""An index remembers its model by name; when that model's bundle folder has moved (or is gone),
a search without ``--model`` says the model came from the index and how to go on, and an
``edgeclip index`` run given the same bundle at its new place records it, so later searches
need no ``--model`` again. Real bundle folders, real CLI runs."""

from __future__ import annotations

import shutil
import subprocess
import sys

from test_index import _shapes


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeclip", *args], capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_a_moved_bundle_is_named_as_the_index_model_and_its_new_place_is_kept(micro_bundle, tmp_path):
    album = tmp_path / "album"
    album.mkdir()
    for i, shot in enumerate(_shapes(3)):
        shot.save(album / f"{i}.png")
    old, new, db = tmp_path / "models" / "micro", tmp_path / "moved" / "micro", str(tmp_path / "p.db")
    shutil.copytree(micro_bundle, old)
    assert _cli("index", str(album), "--db", db, "--model", str(old), "--quiet").returncode == 0
    new.parent.mkdir()
    old.rename(new)

    res = _cli("search", "a shape", "--db", db)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"the index {db} was built with the model {old}" in res.stderr, res.stderr
    assert "--model" in res.stderr and "--reindex" in res.stderr

    res = _cli("index", str(album), "--db", db, "--model", str(new), "--quiet")
    assert res.returncode == 0 and res.stdout.startswith("0 embedded, 3 unchanged"), res.stderr
    res = _cli("search", "a shape", "--db", db, "--paths")  # no --model: the new place is known
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.split()) == sorted(str(p) for p in album.iterdir())
