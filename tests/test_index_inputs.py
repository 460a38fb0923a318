"""What a user types or leaves lying around: a bad ``search --image``, an index whose metadata
was edited by hand, and a terminal that reports no size. Real files, SQLite, the micro bundle."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
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


def test_a_dim_edited_by_hand_is_reported_not_a_usearch_assertion(indexed, capsys):
    _, db = indexed
    con = sqlite3.connect(db)
    real = int(con.execute("SELECT value FROM meta WHERE key = 'dim'").fetchone()[0])
    # half the real width: the vectors file's size still fits it, so only the model can tell
    con.execute("UPDATE meta SET value = ? WHERE key = 'dim'", (str(real // 2),))
    con.commit()
    con.close()
    capsys.readouterr()
    for command in (["search", "a red circle"], ["search", "a red circle", "--exact"], ["dupes"]):
        assert cli([*command, "--db", db]) == 2
        err = capsys.readouterr().err
        assert f"the index {Path(db)} is corrupt" in err, err
        assert f"its dim is '{real // 2}', but its model embeds {real} values" in err, err
        assert "Traceback" not in err and "AssertionError" not in err


def test_an_index_with_no_model_yet_is_searched_without_loading_one(tmp_path, capsys, monkeypatch):
    # Offline with an empty cache: loading the default model would fail at once.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    db = str(tmp_path / "lib.db")
    assert cli(["index", "--prune", "--db", db]) == 0  # creates the index, records no model
    capsys.readouterr()
    assert cli(["search", "a red circle", "--db", db]) == 0
    out, err = capsys.readouterr()
    assert out == "" and f"holds no searchable photos yet; add some with `edgeclip index DIR --db {db}`" in err
    assert cli(["dupes", "--db", db]) == 0
    assert capsys.readouterr().out.startswith("no near-duplicates")


def test_dupes_compares_stored_vectors_without_the_model(tmp_path, micro_bundle, capsys, monkeypatch):
    bundle = tmp_path / "model"
    shutil.copytree(micro_bundle, bundle)
    make_tree(tmp_path / "photos", n=4)  # with a byte copy of one photo
    db = str(tmp_path / "lib.db")
    assert cli(["index", str(tmp_path / "photos"), "--db", db, "--model", str(bundle), "--quiet"]) == 1
    shutil.rmtree(bundle)  # the model it was built with is gone, and nothing can be fetched
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    capsys.readouterr()
    assert cli(["dupes", "--db", db, "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)
    assert [sorted(Path(h["path"]).name for h in g) for g in groups] == [["copy-of-img0.png", "img000.png"]]


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
