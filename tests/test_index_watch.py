"""``edgeclip index DIR --watch SECONDS``: a real process keeps a real index fresh. New photos
are embedded by a later pass and searchable from another process at once; a broken file is
retried each pass but reported once; SIGTERM between passes exits 0 with a summary."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_index import _shapes

from edgeclip.index import Index

DEADLINE_S = 120  # a bound on the whole test, never a speed claim


class Lines:
    """stdout of a child, one line at a time, each within the test's bound."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.sel, self.buf = proc, selectors.DefaultSelector(), b""
        self.sel.register(proc.stdout, selectors.EVENT_READ)
        self.end = time.monotonic() + DEADLINE_S

    def next(self) -> str:
        while b"\n" not in self.buf:
            left = self.end - time.monotonic()
            assert left > 0 and self.proc.poll() is None, "the watcher stopped or said nothing"
            if self.sel.select(timeout=min(left, 1.0)):
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                assert chunk, "the watcher closed its output"
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()


def test_watch_embeds_new_photos_reports_a_broken_one_once_and_stops_cleanly(micro_bundle, tmp_path):
    album = tmp_path / "album"
    album.mkdir()
    shots = _shapes(5)
    for i in range(3):
        shots[i].save(album / f"img{i}.png")
    db = tmp_path / "photos.db"
    proc = subprocess.Popen([sys.executable, "-m", "edgeclip", "index", str(album), "--db", str(db),
                             "--model", str(micro_bundle), "--quiet", "--watch", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    lines = Lines(proc)
    try:
        assert lines.next().startswith("3 embedded")  # the first pass's summary
        shots[3].save(album / "new3.png")
        shots[4].save(album / "new4.png")
        (album / "broken.jpg").write_bytes(b"\xff\xd8\xff half a copy")
        said = [lines.next()]
        while not said[-1].endswith("5 photos searchable"):
            said.append(lines.next())
        assert sum(int(line.split()[1]) for line in said) == 2  # "<time> N embedded ..."
        assert "1 unreadable" in " ".join(said)
        with Index(db, str(micro_bundle), readonly=True) as ix:  # another process's view
            found = {Path(h.path).name for h in ix.search("a shape", k=10)}
        assert {"new3.png", "new4.png"} <= found and len(found) == 5
        time.sleep(2.5)  # two more passes retry broken.jpg; nothing new to say
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    err = err.decode()
    assert proc.returncode == 0, err
    assert "stopped watching after" in err
    assert err.count("broken.jpg") == 1, err  # retried every pass, reported once
    assert lines.buf + out == b"", out  # the passes after it found nothing new: silent


def test_watch_needs_folders_and_seconds(micro_bundle, tmp_path):
    db = str(tmp_path / "photos.db")
    for args, says in ((["--watch"], "--watch needs the folders"),
                       ([str(tmp_path), "--watch", "0"], "expected seconds"),
                       ([str(tmp_path), "--watch", "inf"], "expected seconds")):  # fmt: skip
        res = subprocess.run([sys.executable, "-m", "edgeclip", "index", *args, "--db", db,
                              "--model", str(micro_bundle)], capture_output=True, text=True,
                             timeout=120)  # fmt: skip
        assert res.returncode == 2 and says in res.stderr, res.stderr
