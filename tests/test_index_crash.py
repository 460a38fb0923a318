"""Real processes against one index: kill -9 mid-run then resume, a second indexer at the same
time, an unreadable file and a read-only index folder (run unprivileged when we are root)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from test_index import _encoded_jpeg, make_tree

N_SLOW = 120


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgeclip", *args]


def _committed(db: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT count(*) FROM files WHERE status = 'ok'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def test_kill9_mid_run_leaves_a_consistent_index_and_resume_finishes_it(tmp_path, micro_bundle):
    tree = tmp_path / "camera"
    tree.mkdir()
    data = _encoded_jpeg()  # 1600x1200, decoded at full size (--no-draft) to make the run slow
    for i in range(N_SLOW):
        (tree / f"IMG_{i:04d}.jpg").write_bytes(data)
    db = tmp_path / "lib.db"
    args = ["index", str(tree), "--db", str(db), "--model", str(micro_bundle), "--no-draft",
            "--commit-every", "8", "--batch-size", "4", "--workers", "1", "--quiet", "--json"]  # fmt: skip
    first = subprocess.Popen(_cli(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while _committed(db) < 8 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the indexer finished before it could be killed"
        # A second indexer on the same index is refused at once, naming the holder.
        second = subprocess.run(_cli(*args), capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert f"pid {first.pid}" in second.stderr and "--wait" in second.stderr
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    before = _committed(db)
    assert 8 <= before < N_SLOW

    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT count(*) - count(DISTINCT path) FROM files").fetchone()[0] == 0
    slots = int(con.execute("SELECT value FROM meta WHERE key = 'slots'").fetchone()[0])
    assert con.execute("SELECT max(slot) FROM files").fetchone()[0] < slots
    con.close()

    resumed = subprocess.run(_cli(*args), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["embedded"] == N_SLOW - before and report["unchanged"] == before
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT count(*), count(DISTINCT path), count(DISTINCT slot) FROM files").fetchone() == (N_SLOW,) * 3
    con.close()


@pytest.fixture()
def shared_dir():
    """A folder another user can use (pytest's tmp dirs are private to us)."""
    path = Path(tempfile.mkdtemp(prefix="edgeclip-index-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def unprivileged():
    """Run as 'nobody' when we are root: root reads any file and writes any folder.

    Only the effective ids change (and change back); the interpreter lives under /root, so a
    child process as nobody could not even start.
    """
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def test_unreadable_file_and_read_only_index_folder(shared_dir, micro_bundle):
    from edgeclip.index import Index, IndexFileError

    bundle = shared_dir / "bundle"
    shutil.copytree(micro_bundle, bundle)
    make_tree(shared_dir / "photos", n=6)
    locked = shared_dir / "photos" / "album" / "private.png"
    shutil.copyfile(shared_dir / "photos" / "album" / "img001.jpg", locked)
    for p in [shared_dir, *shared_dir.rglob("*")]:
        p.chmod(0o777 if p.is_dir() else 0o666)
    locked.chmod(0o000)
    readonly = shared_dir / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    ix = Index(shared_dir / "lib.db", bundle)
    ix.add([shared_dir / "photos" / "album" / "img001.jpg"])  # imports and opens all it needs
    for p in shared_dir.glob("lib.db*"):
        p.chmod(0o666)
    with unprivileged():
        report = ix.update([shared_dir / "photos"])
        with pytest.raises(IndexFileError, match="read-only.*--db somewhere writable"):
            Index(readonly / "lib.db", bundle)
    ix.close()
    reasons = {Path(p).name: r for p, r in report.failures}
    assert "Permission denied" in reasons["private.png"] and "permissions" in reasons["private.png"]
    assert report.embedded == 6


def test_prune_keeps_the_rows_of_a_folder_it_could_not_list(shared_dir, micro_bundle):
    """A lost mount or a changed permission hides files; it does not delete them."""
    from edgeclip.index import Index

    bundle = shared_dir / "bundle"
    shutil.copytree(micro_bundle, bundle)
    make_tree(shared_dir / "photos", n=6)
    for p in [shared_dir, *shared_dir.rglob("*")]:
        p.chmod(0o777 if p.is_dir() else 0o666)
    ix = Index(shared_dir / "lib.db", bundle)
    first = ix.update([shared_dir / "photos"])
    before = ix.store.counts()
    for p in shared_dir.glob("lib.db*"):
        p.chmod(0o666)
    nested = shared_dir / "photos" / "album" / "2024"
    under = sum(1 for r in ix.store.rows() if r.path.startswith(str(nested) + os.sep))
    nested.chmod(0o000)
    try:
        with unprivileged():
            report = ix.update([shared_dir / "photos"], prune=True)
    finally:
        nested.chmod(0o777)
    after = ix.store.counts()
    ix.close()
    assert first.embedded == 7 and under == 3  # 6 photos and a copy; 3 of them in 2024/
    assert report.pruned == 0 and report.missing == 0 and after == before
    assert any("2024: cannot list it (Permission denied)" in e for e in report.walk_errors)
