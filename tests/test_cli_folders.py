"""``edgeclip classify FOLDER`` answers for the images under it (as ``edgeclip index`` finds
them), streaming in chunks, each row equal to the library's; ``edgeclip embed FOLDER`` is refused
(before, the folder's name was silently embedded as text)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import edgeclip
from edgeclip.cli import CLASSIFY_CHUNK

LABELS = ["red", "green", "blue"]


def _run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeclip", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)  # fmt: skip


@pytest.fixture()
def album(tmp_path):
    """CLASSIFY_CHUNK + 3 pictures in nested folders, one broken, one without a suffix, plus
    files that are not images and a hidden folder."""
    root = tmp_path / "album"
    (root / "2024" / "june").mkdir(parents=True)
    (root / ".thumbnails").mkdir()
    rng = np.random.default_rng(7)
    for i in range(CLASSIFY_CHUNK + 1):
        folder = root / "2024" / "june" if i % 2 else root
        Image.fromarray(rng.integers(0, 255, (20, 28, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    shutil.copy(root / "00.png", root / "scan_without_suffix")
    shutil.copy(root / "00.png", root / ".thumbnails" / "cached.png")
    (root / "2024" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "notes.txt").write_text("shopping list")
    return root


def test_classify_a_folder_answers_every_image_under_it_and_reports_the_broken_one(micro_bundle, album):
    res = _run("classify", "album", "--labels", *LABELS, "--top-k", "3", "--model", str(micro_bundle),
               "--json", cwd=album.parent)  # fmt: skip
    assert res.returncode == 1, res.stderr  # one input failed, the rest answered
    rows = {r["input"]: r for r in json.loads(res.stdout)}
    expected = {f"album/{i:02d}.png" if i % 2 == 0 else f"album/2024/june/{i:02d}.png"
                for i in range(CLASSIFY_CHUNK + 1)} | {"album/scan_without_suffix", "album/2024/broken.jpg"}  # fmt: skip
    assert set(rows) == expected  # hidden folder and the text file left out
    assert "broken.jpg" in rows["album/2024/broken.jpg"]["error"]
    model = edgeclip.load(micro_bundle)
    for name in ("album/00.png", "album/2024/june/31.png", "album/scan_without_suffix"):
        want = model.classify(str(album.parent / name), LABELS, top_k=3)
        got = [(t["label"], t["prob"]) for t in rows[name]["top"]]
        assert [label for label, _ in got] == [label for label, _ in want]
        np.testing.assert_allclose([p for _, p in got], [p for _, p in want], atol=1e-5)


def test_a_folder_without_images_is_refused_before_the_model_loads(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("no pictures here")
    res = _run("classify", str(tmp_path / "docs"), "--labels", "a", "b", "--model", "no-such-model")
    assert res.returncode == 2
    assert "docs is a folder with no images" in res.stderr and "no-such-model" not in res.stderr


def test_embed_refuses_a_folder_instead_of_embedding_its_name(micro_bundle, album, tmp_path):
    out = tmp_path / "e.npy"
    res = _run("embed", str(album), "-o", str(out), "--model", str(micro_bundle))
    assert res.returncode == 2 and not out.exists()
    assert f"{album} is a folder" in res.stderr and "edgeclip index" in res.stderr
    res = _run("embed", str(album), "--text", "-o", str(out), "--model", str(micro_bundle))
    assert res.returncode == 0, res.stderr
    assert "1 text, in input order" in res.stdout
    model = edgeclip.load(micro_bundle)
    np.testing.assert_allclose(np.load(out)[0], model.encode_text(str(album))[0], atol=1e-5)
