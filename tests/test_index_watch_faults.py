"""``edgeclip index DIR --watch``: what the world does to a running watcher. Another writer
holding the index at a pass's start skips that pass (said once) instead of ending the watch; a
watched folder that vanishes (renamed, deleted, its drive pulled) is said once, its photos are
hidden until it is back, and the other folders are still watched. Real processes, a real
``flock`` and real folders; every wait is on observable state, under one deadline."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from test_index import _shapes
from test_index_watch import DEADLINE_S, Lines

from edgeclip.index import Index


@contextlib.contextmanager
def _watching(micro_bundle: Path, db: Path, err: Path, *dirs: Path) -> Iterator[tuple]:
    """A running ``edgeclip index DIRS --watch 1`` and its stdout lines; killed if the test
    fails before stopping it, and its stderr checked for errors once it has stopped."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeclip", "index", *map(str, dirs), "--db", str(db),
         "--model", str(micro_bundle), "--quiet", "--watch", "1"],
        stdout=subprocess.PIPE, stderr=err.open("wb"),
    )  # fmt: skip
    try:
        yield proc, Lines(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "error" not in err.read_text(), err.read_text()


def _wait_for_stderr(err: Path, text: str, proc: subprocess.Popen) -> str:
    end = time.monotonic() + DEADLINE_S
    while text not in err.read_text():
        assert proc.poll() is None, f"the watcher ended: {err.read_text()}"
        assert time.monotonic() < end, f"never said {text!r}: {err.read_text()}"
        time.sleep(0.05)
    return err.read_text()


def _line_ending(lines: Lines, tail: str) -> str:
    line = lines.next()
    while not line.endswith(tail):
        line = lines.next()
    return line


def _stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=DEADLINE_S)
    return proc.returncode


def test_a_pass_that_finds_another_writer_is_skipped_and_the_watch_goes_on(micro_bundle, tmp_path):
    album, db, err = tmp_path / "album", tmp_path / "photos.db", tmp_path / "err"
    album.mkdir()
    shots = _shapes(2)
    shots[0].save(album / "a.png")
    with _watching(micro_bundle, db, err, album) as (proc, lines):
        assert lines.next().startswith("1 embedded")
        # Another writer (a one-off `edgeclip index`, `--forget`) takes the index's lock.
        fd = os.open(f"{db}.lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.pwrite(fd, b"424242", 0)
            said = _wait_for_stderr(err, "Skipping this pass", proc)
            assert "pid 424242" in said
            shots[1].save(album / "b.png")
            time.sleep(2.5)  # more passes find the lock held: none may say it again
        finally:
            os.close(fd)  # releases the flock
        assert _line_ending(lines, "2 photos searchable").split()[1] == "1"  # "<time> 1 embedded"
        assert _stop(proc) == 0, err.read_text()
    assert err.read_text().count("Skipping this pass") == 1, err.read_text()


def test_a_vanished_folder_is_said_once_hidden_and_back_when_it_returns(micro_bundle, tmp_path):
    home, other = tmp_path / "home", tmp_path / "card"
    home.mkdir()
    other.mkdir()
    db, err = tmp_path / "photos.db", tmp_path / "err"
    shots = _shapes(3)
    shots[0].save(home / "h.png")
    shots[1].save(other / "c.png")
    with _watching(micro_bundle, db, err, home, other) as (proc, lines):
        assert lines.next().startswith("2 embedded")
        other.rename(tmp_path / "card-away")  # the card's folder is gone: renamed, or pulled
        assert "1 missing" in _line_ending(lines, "1 photos searchable")
        said = _wait_for_stderr(err, "the folder is gone", proc)
        assert str(other) in said
        with Index(db, str(micro_bundle), readonly=True) as ix:
            assert [Path(h.path).name for h in ix.search("a shape", k=5)] == ["h.png"]
        shots[2].save(home / "new.png")  # the other folder is still watched
        assert _line_ending(lines, "2 photos searchable").split()[1] == "1"
        (tmp_path / "card-away").rename(other)
        back = _line_ending(lines, "3 photos searchable")
        assert back.split()[1] == "0" and "3 unchanged" in back  # back without re-embedding
        assert _stop(proc) == 0, err.read_text()
    assert err.read_text().count("the folder is gone") == 1, err.read_text()
