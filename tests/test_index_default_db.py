"""Without ``--db``, ``edgeclip index`` / ``search`` / ``dupes`` and ``serve --index`` share the
user's own index: ``$EDGECLIP_DB``, else ``$XDG_DATA_HOME/edgeclip/photos.db`` (data, not cache).
Real processes, real files, the micro bundle."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from test_index import _shapes

from edgeclip.serve.cli import _photo_index


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGECLIP_DB"}
    return {**env, "XDG_DATA_HOME": str(tmp_path / "data"), **extra}


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeclip", *args], capture_output=True,
                          text=True, env=env, timeout=300)  # fmt: skip


def _album(root: Path) -> Path:
    root.mkdir()
    for i, im in enumerate(_shapes(6)):
        im.save(root / f"img{i}.png")
    shutil.copy(root / "img0.png", root / "copy-of-img0.png")
    return root


def test_index_then_search_and_dupes_without_db_use_the_data_folder(micro_bundle, tmp_path,
                                                                   monkeypatch):
    env = _env(tmp_path)
    db = tmp_path / "data" / "edgeclip" / "photos.db"
    res = _run(env, "search", "a red circle")
    assert res.returncode == 2 and f"no index at {db}" in res.stderr, res.stderr
    assert not db.exists()  # a search never creates an index
    album = _album(tmp_path / "album")
    res = _run(env, "index", str(album), "--model", str(micro_bundle), "--quiet")
    assert res.returncode == 0, res.stderr
    assert db.is_file()  # its folder was made
    res = _run(env, "search", "a red circle", "-k", "3", "--json")
    assert res.returncode == 0, res.stderr
    hits = json.loads(res.stdout)
    assert len(hits) == 3 and all(Path(h["path"]).parent == album for h in hits)
    res = _run(env, "dupes", "--json")
    assert res.returncode == 0, res.stderr
    groups = json.loads(res.stdout)
    assert any({Path(h["path"]).name for h in g} >= {"img0.png", "copy-of-img0.png"} for g in groups)
    monkeypatch.delenv("EDGECLIP_DB", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", env["XDG_DATA_HOME"])
    assert _photo_index(True) == db  # `serve --index` alone serves the same file


def test_edgeclip_db_names_the_index_and_an_explicit_db_wins(micro_bundle, tmp_path):
    chosen = tmp_path / "chosen.db"
    env = _env(tmp_path, EDGECLIP_DB=str(chosen))
    album = _album(tmp_path / "album")
    res = _run(env, "index", str(album), "--model", str(micro_bundle), "--quiet")
    assert res.returncode == 0, res.stderr
    assert chosen.is_file() and not (tmp_path / "data").exists()
    explicit = tmp_path / "explicit.db"
    res = _run(env, "search", "a circle", "--db", str(explicit))
    assert res.returncode == 2 and f"no index at {explicit}" in res.stderr


def test_a_data_folder_that_cannot_be_made_is_named_with_the_fix(micro_bundle, tmp_path):
    (tmp_path / "data").write_text("a file where the folder should be")
    res = _run(_env(tmp_path), "index", str(_album(tmp_path / "album")), "--model", str(micro_bundle))
    assert res.returncode == 2
    assert f"cannot make {tmp_path / 'data' / 'edgeclip'}" in res.stderr and "EDGECLIP_DB" in res.stderr
