"""Searching an index whose folder is read-only while its ``-wal`` holds commits (an
``edgeclip index --watch`` is running, or a writer was killed): real files, real SQLite, a
real read-only mount.

chmod does not make a folder read-only for root (as CI runs), so each search runs in a private
mount namespace where the index's folder is bound read-only (``unshare -m``, or ``unshare -r
-m`` for a user without root). The mount exists only in that process and is gone with it. Where
neither is allowed (a container without the capability), the tests are skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from test_index import make_tree

from edgeclip.index import Index

_UNSHARE = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-r", "-m"]
# sh -c SCRIPT sh FOLDER MOUNTPOINT COMMAND...: bind FOLDER read-only at MOUNTPOINT, then run
_READONLY_VIEW = 'mount --bind "$1" "$2" && mount -o remount,bind,ro "$2" && shift 2 && exec "$@"'


def _in_readonly_view(folder: Path, view: Path, *command: str) -> subprocess.CompletedProcess:
    view.mkdir(exist_ok=True)
    return subprocess.run(
        [*_UNSHARE, "sh", "-c", _READONLY_VIEW, "sh", str(folder), str(view), *command],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture()
def readonly_view(tmp_path):
    """``view(folder, *command)``: run command where ``tmp_path/ro`` is ``folder``, read-only."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to make a folder read-only for this user")
    probe = _in_readonly_view(tmp_path, tmp_path / "ro", "sh", "-c", '! touch "$0/probe"', str(tmp_path / "ro"))
    if probe.returncode != 0:
        pytest.skip(f"no private read-only bind mount here ({probe.stderr.strip()[:200]})")
    return lambda folder, *command: _in_readonly_view(folder, tmp_path / "ro", *command)


def _search(db: Path) -> list[str]:
    return [sys.executable, "-m", "edgeclip", "search", "a red circle", "--db", str(db), "-k", "5", "--json"]


def _hits(result: subprocess.CompletedProcess) -> list[tuple[str, float]]:
    assert result.returncode == 0, result.stderr
    return [(h["path"], h["score"]) for h in json.loads(result.stdout)]


def test_a_read_only_folder_shows_the_commits_in_a_running_writers_wal(tmp_path, micro_bundle, readonly_view):
    make_tree(tmp_path / "photos", n=6)
    folder = tmp_path / "index"
    folder.mkdir()
    db = folder / "lib.db"
    writer = Index(db, micro_bundle)  # kept open, as `edgeclip index --watch` keeps it
    try:
        writer.update([tmp_path / "photos"])
        expected = [(h.path, round(h.score, 6)) for h in writer.search("a red circle", k=5)]
        immutable = sqlite3.connect(db.as_uri() + "?mode=ro&immutable=1", uri=True)
        with pytest.raises(sqlite3.OperationalError, match="no such table"):  # all in the -wal
            immutable.execute("SELECT count(*) FROM files")
        immutable.close()
        assert _hits(readonly_view(folder, *_search(tmp_path / "ro" / "lib.db"))) == expected

        # A -wal without its -shm (copied, or the -shm lost) cannot be read from a read-only
        # folder: said so, with the fix, never "corrupt".
        (tmp_path / "copy").mkdir()
        for name in ("lib.db", "lib.db-wal", "lib.db.vectors-1"):
            shutil.copyfile(folder / name, tmp_path / "copy" / name)
        refused = readonly_view(tmp_path / "copy", *_search(tmp_path / "ro" / "lib.db"))
        assert refused.returncode == 2 and refused.stdout == ""
        assert "lib.db-wal holds commits not yet folded into lib.db" in refused.stderr, refused.stderr
        assert "Search it through a writable path" in refused.stderr
        assert "corrupt" not in refused.stderr and "delete" not in refused.stderr
        copied = subprocess.run(_search(tmp_path / "copy" / "lib.db"), capture_output=True, text=True)
        assert _hits(copied) == expected  # from a writable path the same files are healthy
    finally:
        writer.close()
    assert not (folder / "lib.db-wal").exists()  # folded in at close: no -wal left to read
    assert _hits(readonly_view(folder, *_search(tmp_path / "ro" / "lib.db"))) == expected
