"""A reader that goes away (`edgeclip search ... --paths | head -1`) ends any command quietly
with exit 0, forwarded ones (index, search, dupes) included: no BrokenPipeError traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from PIL import Image


def _into_closed_pipe(*args: str, cwd) -> subprocess.CompletedProcess:
    """Run ``edgeclip ARGS`` with stdout a pipe whose reader is closed before it writes, so
    every write fails (deterministic, unlike racing `| true`)."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, "-m", "edgeclip", *args], stdout=write,
                              stderr=subprocess.PIPE, text=True, cwd=cwd, timeout=300)  # fmt: skip
    finally:
        os.close(write)


@pytest.fixture(scope="module")
def photo_db(micro_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipes")
    (root / "lib").mkdir()
    for i, colour in enumerate([(200, 20, 20), (20, 200, 20), (20, 20, 200)]):
        Image.new("RGB", (48, 40), colour).save(root / "lib" / f"{i}.png")
    db = root / "photos.db"
    done = subprocess.run([sys.executable, "-m", "edgeclip", "index", str(root / "lib"), "--db", str(db),
                           "--model", str(micro_bundle), "--quiet"], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return root, db


@pytest.mark.parametrize("args", [
    ("models",),
    ("search", "a red square", "--paths"),
    ("dupes", "--json"),
    ("index", "lib", "--json"),
])  # fmt: skip
def test_a_closed_pipe_ends_the_command_quietly(photo_db, args):
    root, db = photo_db
    extra = () if args[0] == "models" else ("--db", str(db))
    done = _into_closed_pipe(*args, *extra, cwd=root)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
