"""``edgeclip search --preview``: thumbnails drawn inline with the kitty and iTerm2 image
protocols, decoded back from a real process's output; auto-detection on a real pseudo-terminal;
a photo gone since indexing says so and the others still draw."""

from __future__ import annotations

import base64
import io
import os
import pty
import re
import subprocess
import sys

import pytest
from PIL import Image
from test_index import _shapes

from edgeclip.index import Index
from edgeclip.index.terminal_images import PREVIEW_PX

KITTY = re.compile(r"\033_G([^;]*);([^\033]*)\033\\")
ITERM = re.compile(r"\033\]1337;File=([^:]*):([^\a]*)\a")


@pytest.fixture(scope="module")
def library(tmp_path_factory, micro_bundle):
    root = tmp_path_factory.mktemp("preview")
    album = root / "album"
    album.mkdir()
    for i, im in enumerate(_shapes(4)):
        im.resize((400, 300)).save(album / f"img{i}.jpg", quality=90)
    db = root / "photos.db"
    with Index(db, str(micro_bundle)) as ix:
        ix.update([album])
    return album, db


def _search(db, *extra: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeclip", "search", "a shape", "--db", str(db),
                           "-k", "4", *extra], capture_output=True, text=True, env=env, timeout=120)  # fmt: skip


def _kitty_images(out: str) -> list[Image.Image]:
    images, data = [], ""
    for control, chunk in KITTY.findall(out):
        keys = dict(kv.split("=") for kv in control.split(","))
        data += chunk
        if keys["m"] == "0":
            images.append(Image.open(io.BytesIO(base64.b64decode(data))))
            data = ""
    return images


def test_kitty_previews_are_pngs_of_each_hit_in_order(library):
    album, db = library
    res = _search(db, "--preview", "kitty")
    assert res.returncode == 0, res.stderr
    images = _kitty_images(res.stdout)
    paths = re.findall(r"^-?\d\.\d{4}  (.+)$", res.stdout, re.M)
    assert len(images) == len(paths) == 4 and all(p.startswith(str(album)) for p in paths)
    assert all(im.format == "PNG" and im.size == (PREVIEW_PX, PREVIEW_PX * 3 // 4) for im in images)
    first = Image.open(paths[0]).convert("RGB").resize(images[0].size)
    drawn = images[0].convert("RGB")
    diff = max(abs(a - b) for a, b in zip(first.getpixel((96, 72)), drawn.getpixel((96, 72))))
    assert diff < 40  # the first preview is the first hit's photo


def test_iterm_previews_are_jpegs_named_after_the_file(library):
    _, db = library
    res = _search(db, "--preview", "iterm")
    assert res.returncode == 0, res.stderr
    found = ITERM.findall(res.stdout)
    assert len(found) == 4
    for params, data in found:
        fields = dict(kv.split("=", 1) for kv in params.split(";"))
        assert base64.b64decode(fields["name"]).decode().startswith("img") and fields["inline"] == "1"
        im = Image.open(io.BytesIO(base64.b64decode(data)))
        assert im.format == "JPEG" and max(im.size) == PREVIEW_PX and int(fields["size"]) == len(base64.b64decode(data))


def test_auto_detects_kitty_on_a_real_terminal_and_refuses_a_pipe(library):
    _, db = library
    env = {**os.environ, "TERM": "xterm-kitty"}
    res = _search(db, "--preview", env=env)  # stdout is a pipe here
    assert res.returncode == 2 and "the output is not a terminal" in res.stderr
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "edgeclip", "search", "a shape", "--db", str(db),
                             "-k", "2", "--preview"], stdout=follower, stderr=subprocess.PIPE, env=env)  # fmt: skip
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=120)
    os.close(leader)
    assert proc.returncode == 0, proc.stderr.read()
    assert len(_kitty_images(out.decode())) == 2


def test_a_photo_gone_since_indexing_says_so_and_the_others_draw(library, tmp_path):
    album, db = library
    gone = album / "img0.jpg"
    kept = gone.read_bytes()
    gone.unlink()
    try:
        res = _search(db, "--preview", "kitty")
    finally:
        gone.write_bytes(kept)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("(no preview:") == 1 and "img0.jpg" in res.stdout
    assert len(_kitty_images(res.stdout)) == 3


def test_preview_does_not_go_with_json_or_paths(library):
    _, db = library
    for flag in ("--json", "--paths"):
        res = _search(db, "--preview", "kitty", flag)
        assert res.returncode == 2 and f"does not go with {flag}" in res.stderr
