"""What a user types or leaves lying around: a bad ``search --image``, an index whose metadata
was edited by hand, and a terminal that reports no size. Real files, SQLite, the micro bundle."""

from __future__ import annotations

import os
import pty
import select
import sqlite3
from pathlib import Path

import pytest
from test_index import make_tree

from edgeclip.index.cli import main as cli
from edgeclip.index.progress import Progress


@pytest.fixture()
def indexed(tmp_path, micro_bundle) -> tuple[Path, str]:
    tree = tmp_path / "photos"
    make_tree(tree, n=4)
    db = str(tmp_path / "lib.db")
    assert cli(["index", str(tree), "--db", db, "--model", str(micro_bundle), "--quiet"]) == 1
    return tree, db


def test_search_by_a_bad_image_names_the_file_and_what_is_wrong(indexed, tmp_path, capsys):
    tree, db = indexed
    capsys.readouterr()
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    cases = {
        notes: f"cannot search by image '{notes}': it is not an image (JPEG, PNG, WebP, GIF, TIFF or BMP).",
        tree: f"--image {tree}: is a folder; give one image file.",
        tree / "album" / "empty.jpg": "the file is empty (0 bytes).",
        tree / "album" / "truncated.jpg": "the file is truncated (",
    }
    for image, message in cases.items():
        assert cli(["search", "--image", str(image), "--db", db]) == 2
        out, err = capsys.readouterr()
        assert out == "" and message in err, err
        assert "..\n" not in err and ": .\n" not in err  # no reason left empty or doubled dots
    assert cli(["search", "--image", str(tree / "album" / "img001.jpg"), "--db", db, "-k", "1"]) == 0
    assert capsys.readouterr().out.startswith("1.0000")


@pytest.mark.parametrize(("key", "value"), [("slots", "abc"), ("fingerprint", "{bad"), ("dim", "")])
def test_metadata_edited_by_hand_is_reported_not_a_traceback(indexed, capsys, key, value):
    _, db = indexed
    con = sqlite3.connect(db)
    con.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))
    con.commit()
    con.close()
    capsys.readouterr()
    for command in (["search", "a red circle"], ["dupes"]):
        assert cli([*command, "--db", db]) == 2
        err = capsys.readouterr().err
        assert f"the index {Path(db)} is corrupt" in err and f"its {key} is {value!r}" in err, err
    con = sqlite3.connect(db)  # only reported: the file is as it was
    assert con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone() == (value,)
    con.close()


def test_progress_bar_draws_on_a_terminal_that_reports_no_size():
    """A serial console or a bare pty reports 0 x 0; tqdm then drew nothing for the whole run."""
    master, slave = pty.openpty()
    try:
        assert tuple(os.get_terminal_size(slave)) == (0, 0)
        with os.fdopen(os.dup(slave), "w") as tty:
            progress = Progress(tty)
            for done in range(1, 11):
                progress(done, 10, True)
            progress.close()
        drawn = b""
        while select.select([master], [], [], 0)[0]:  # all that was written, in as many reads
            drawn += os.read(master, 65536)
        drawn = drawn.decode(errors="replace")
    finally:
        os.close(master)
        os.close(slave)
    assert "indexing" in drawn and "10/10" in drawn and "100%" in drawn, drawn
