"""Where the index lives and how a run stops: a ``--db`` that is a folder, under a file, in a
missing or read-only folder, next to read-only side files; Ctrl-C (a real SIGINT) and a full
disk (a real file-size limit) in the middle of a real ``edgeclip index`` process.

Each must end with a message that names the path and the fix, keep every committed file, and
let the same command resume. Real files, real SQLite, the micro bundle."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_index import _encoded_jpeg, make_tree
from test_index_crash import shared_dir, unprivileged  # noqa: F401  (shared_dir: a fixture)

from edgeclip.index import Index
from edgeclip.index.cli import main as cli

N_FILES = 120
_COMMITTED = re.compile(r"(\d+) files from this run were committed \((\d+) photos are searchable")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgeclip", *args]


def _ok_rows(db: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT count(*) FROM files WHERE status = 'ok'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def _slow_tree(root: Path) -> Path:
    root.mkdir()
    data = _encoded_jpeg()  # 1600x1200: with --no-draft a run lasts seconds, long enough to stop
    for i in range(N_FILES):
        (root / f"IMG {i:04d}.jpg").write_bytes(data)
    return root


def _args(tree: Path, db: Path, bundle: Path, *extra: str) -> list[str]:
    return ["index", str(tree), "--db", str(db), "--model", str(bundle), "--no-draft",
            "--commit-every", "4", "--batch-size", "4", "--workers", "1", *extra]  # fmt: skip


def _consistent(db: Path) -> None:
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows, paths, with_slot, slots = con.execute(
            "SELECT count(*), count(DISTINCT path), count(slot), count(DISTINCT slot) FROM files"
        ).fetchone()
        assert rows == paths and with_slot == slots  # no duplicate rows, no shared vectors
    finally:
        con.close()


def _resume(tree: Path, db: Path, bundle: Path, committed: int) -> None:
    """The same command again: only what was not committed is embedded."""
    again = subprocess.run(_cli(*_args(tree, db, bundle, "--json")), capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert (report["unchanged"], report["embedded"]) == (committed, N_FILES - committed)
    _consistent(db)
    assert _ok_rows(db) == N_FILES


@pytest.mark.parametrize("sig, status, said", [
    (signal.SIGINT, 130, "interrupted"),  # Ctrl-C
    (signal.SIGTERM, 143, "terminated (SIGTERM)"),  # systemctl stop, kill, a cron timeout
])  # fmt: skip
def test_ctrl_c_or_sigterm_says_what_was_committed_and_the_same_command_resumes(
    tmp_path, micro_bundle, sig, status, said
):
    tree, db = _slow_tree(tmp_path / "Camera Roll"), tmp_path / "lib.db"
    # A shell without job control (CI's background jobs) starts children with SIGINT ignored,
    # and Python keeps that: give the run the disposition a terminal's Ctrl-C meets.
    run = subprocess.Popen(_cli(*_args(tree, db, micro_bundle, "--json")),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while _ok_rows(db) < 8 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert run.poll() is None, "the run ended before it could be interrupted"
        run.send_signal(sig)
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == status and "Traceback" not in err, err
    assert err.startswith(f"edgeclip index: {said}\n")
    found = _COMMITTED.search(err)
    assert found and "run the same command again to resume" in err, err
    committed = int(found.group(1))
    assert 8 <= committed < N_FILES and int(found.group(2)) == committed == _ok_rows(db)
    report = json.loads(out)  # --json still gets the report, marked interrupted
    assert report["interrupted"] is True and report["committed"] == committed
    _consistent(db)
    _resume(tree, db, micro_bundle, committed)


def _file_size_limit(limit: int):
    def apply() -> None:  # in the child: writes past `limit` bytes fail (EFBIG), as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_mid_run_is_named_keeps_the_committed_files_and_resumes(tmp_path, micro_bundle):
    """Python ignores SIGXFSZ, so past the limit every write fails like one on a full disk:
    SQLite's WAL hits it first. Before, this was a traceback (or "corrupt: delete it")."""
    tree, db = _slow_tree(tmp_path / "photos"), tmp_path / "lib.db"
    env = {**os.environ, "EDGECLIP_HOME": str(tmp_path / "home")}
    full = subprocess.run(_cli(*_args(tree, db, micro_bundle)), capture_output=True, text=True,
                          timeout=300, env=env, preexec_fn=_file_size_limit(250_000))  # fmt: skip
    err = full.stderr
    assert full.returncode == 2 and "Traceback" not in err, err
    assert f"cannot read or write the index {db}" in err or f"cannot write the index {db}" in err
    assert "disk may be full" in err or "the disk is full" in err, err
    assert "corrupt" not in err and "delete it" not in err  # the advice must not lose the index
    found = _COMMITTED.search(err)
    assert found, err
    committed = int(found.group(1))
    assert 4 <= committed < N_FILES and committed == _ok_rows(db)
    _consistent(db)
    _resume(tree, db, micro_bundle, committed)


def test_a_db_path_that_cannot_be_an_index_file_names_the_path_and_the_fix(tmp_path, micro_bundle, capsys):
    make_tree(tmp_path / "photos", n=2)
    (tmp_path / "a file").write_text("x")
    folder = tmp_path / "indexes"
    folder.mkdir()
    cases = {
        str(folder): f"--db {folder} is a folder; give the index's file name, for example --db {folder}/photos.db",
        str(tmp_path / "a file" / "lib.db"): f"{tmp_path / 'a file'} is a file, not a folder; pass another --db path",
        str(tmp_path / "no such" / "lib.db"): f"the folder {tmp_path / 'no such'} does not exist; create it (mkdir -p",
    }
    for db, message in cases.items():
        assert cli(["index", str(tmp_path / "photos"), "--db", db, "--model", str(micro_bundle)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    for command in (["search", "a red circle"], ["dupes"]):
        assert cli([*command, "--db", str(folder)]) == 2
        assert f"--db {folder} is a folder" in capsys.readouterr().err
    assert list(folder.iterdir()) == [] and (tmp_path / "a file").read_text() == "x"


def _private_home(folder: Path, monkeypatch) -> None:
    """Runtime caches in a folder the unprivileged user can write (ours is under /root)."""
    home = folder / "edgeclip-home"
    home.mkdir(mode=0o777)
    home.chmod(0o777)
    monkeypatch.setenv("EDGECLIP_HOME", str(home))


def _shared_setup(folder: Path, micro_bundle: Path, monkeypatch) -> Path:
    """A copy of the bundle and 4 photos in a folder every user may write: the bundle copy."""
    _private_home(folder, monkeypatch)
    bundle = folder / "bundle"
    shutil.copytree(micro_bundle, bundle)
    make_tree(folder / "photos", n=4)
    for p in [folder, *folder.rglob("*")]:
        p.chmod(0o777 if p.is_dir() else 0o666)
    return bundle


def test_read_only_folder_and_files_are_named_and_search_still_works(shared_dir, micro_bundle, capsys, monkeypatch):  # noqa: F811
    """An existing index in a folder made read-only: the folder is named (it once named the
    index file). A read-only vectors file is refused up front, before an hour of embedding."""
    bundle = _shared_setup(shared_dir, micro_bundle, monkeypatch)
    home = shared_dir / "lib"
    home.mkdir(mode=0o777)
    home.chmod(0o777)
    db, photos = home / "lib.db", str(shared_dir / "photos")
    with Index(db, bundle) as ix:  # as ourselves: imports and opens all it needs
        ix.update([photos])
    for p in home.iterdir():
        p.chmod(0o666)
    vectors = next(home.glob("lib.db.vectors-*"))
    try:
        home.chmod(0o555)
        with unprivileged():
            assert cli(["index", photos, "--db", str(db)]) == 2
            err = capsys.readouterr().err
            assert f"cannot write the index {db}: its folder {home} is read-only" in err, err
            assert cli(["search", "a red circle", "--db", str(db), "-k", "2"]) == 0
            assert len(capsys.readouterr().out.splitlines()) == 2
        home.chmod(0o777)
        vectors.chmod(0o444)
        with unprivileged():
            assert cli(["index", photos, "--db", str(db)]) == 2
            err = capsys.readouterr().err
            assert f"{vectors} is read-only for this user" in err and "chmod u+w" in err, err
    finally:
        home.chmod(0o777)
        vectors.chmod(0o666)


def test_a_search_while_the_index_was_read_only_does_not_block_the_next_writer(shared_dir, micro_bundle, capsys, monkeypatch):  # noqa: F811
    """SQLite gives -wal and -shm the database's mode: a search while photos.db was read-only
    left them read-only, and the next `edgeclip index` failed at its first commit, after all
    its embedding, with "attempt to write a readonly database" and a traceback."""
    bundle = _shared_setup(shared_dir, micro_bundle, monkeypatch)
    db, photos = shared_dir / "lib.db", str(shared_dir / "photos")
    with Index(db, bundle) as ix:
        ix.update([photos])
    for p in shared_dir.glob("lib.db*"):
        os.chown(p, os.geteuid() if os.geteuid() else 65534, -1)
    with unprivileged():
        db.chmod(0o444)  # "protect" the index
        assert cli(["search", "a red circle", "--db", str(db), "-k", "1"]) == 0
        capsys.readouterr()
        assert [os.stat(f"{db}{s}").st_mode & 0o777 for s in ("-wal", "-shm")] == [0o444, 0o444]
        db.chmod(0o644)
        (shared_dir / "photos" / "new.png").write_bytes((shared_dir / "photos" / "album" / "img001.jpg").read_bytes())
        assert cli(["index", photos, "--db", str(db), "--json"]) == 1  # the tree's bad files
    report = json.loads(capsys.readouterr().out)
    assert report["embedded"] == 1 and report["committed"] >= 1
    _consistent(db)
