"""``edgeclip search`` / ``dupes`` / ``index`` output with odd file names (newline, tab, ESC,
emoji, a 255-byte name), through real CLI runs on a real index. People's lines show control
characters as escapes (a name can neither split a line nor drive the terminal); ``--paths``
never prints a name that would read as two paths, ``--null`` keeps every name whole, and
``--json`` gives every name exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_index import _shapes

NAMES = ["plain.png", "new\nline.png", "tab\there.png", "esc\x1b]2;pwned\x07.png", "emoji😀.png",
         "x" * 251 + ".png"]  # fmt: skip


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeclip", *args], capture_output=True,
                          timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def odd_index(micro_bundle, tmp_path_factory) -> tuple[Path, Path]:
    album = tmp_path_factory.mktemp("odd") / "album"
    album.mkdir()
    for name, shot in zip(NAMES, _shapes(len(NAMES))):
        shot.save(album / name)
    (album / "broken\nname.jpg").write_bytes(b"not a jpeg")
    db = album.parent / "photos.db"
    res = _cli("index", str(album), "--db", str(db), "--model", str(micro_bundle), "--quiet")
    assert res.returncode == 1, res.stderr  # the broken one is reported
    err = res.stderr.decode()
    assert any(line.startswith(f"  {album}/broken\\nname.jpg: named like an image")
               for line in err.splitlines()), err  # one line, the name escaped
    return album, db


def test_json_and_null_give_every_name_whole(odd_index):
    album, db = odd_index
    want = {str(album / n) for n in NAMES}
    res = _cli("search", "a shape", "--db", str(db), "-k", "20", "--json")
    assert {h["path"] for h in json.loads(res.stdout)} == want
    res = _cli("search", "a shape", "--db", str(db), "-k", "20", "--null")
    assert res.returncode == 0 and res.stdout.endswith(b"\0")
    assert set(res.stdout.decode()[:-1].split("\0")) == want


def test_paths_leave_out_a_name_that_would_read_as_two_and_say_so(odd_index):
    album, db = odd_index
    res = _cli("search", "a shape", "--db", str(db), "-k", "20", "--paths")
    assert res.returncode == 0
    lines = res.stdout.decode().splitlines()
    assert sorted(lines) == sorted(str(album / n) for n in NAMES if "\n" not in n)
    assert all(Path(line).is_file() for line in lines)
    err = res.stderr.decode()
    assert f"left out {album}/new\\nline.png" in err and "--null" in err, err


def test_lines_for_people_escape_control_characters(odd_index):
    album, db = odd_index
    res = _cli("search", "a shape", "--db", str(db), "-k", "20")
    out = res.stdout.decode()
    assert "\x1b" not in out and "\x07" not in out
    lines = out.splitlines()
    assert len(lines) == len(NAMES)  # one line a hit, whatever its name
    shown = {line.split("  ", 1)[1] for line in lines}
    assert f"{album}/new\\nline.png" in shown and f"{album}/esc\\x1b]2;pwned\\x07.png" in shown
    assert f"{album}/emoji😀.png" in shown and f"{album}/{'x' * 251}.png" in shown
    res = _cli("dupes", "--db", str(db), "--threshold", "0.01")
    assert res.returncode == 0 and b"\x1b" not in res.stdout
    assert f"{album}/tab\\there.png" in res.stdout.decode()


def test_null_refuses_json_and_preview(odd_index):
    _, db = odd_index
    for extra, says in ((["--json"], "does not go with --json"),
                        (["--preview", "kitty"], "does not go with --null")):  # fmt: skip
        res = _cli("search", "a shape", "--db", str(db), "--null", *extra)
        assert res.returncode == 2 and says in res.stderr.decode(), res.stderr
        assert res.stdout == b""
