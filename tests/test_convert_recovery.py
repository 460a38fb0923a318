"""converters/: a run after a killed conversion recovers, and a calibration folder given as a
relative path, with odd and broken images in it, converts with every good image."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

for _mod in ("torch", "transformers", "safetensors", "onnx", "onnxruntime"):
    pytest.importorskip(_mod)

from converters.output_dir import check_output, staging_dir  # noqa: E402
from edgeclip.bundle import MANIFEST, Bundle  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# Dies (SIGKILL) in the middle of the --overwrite swap: the previous bundle has been moved
# aside and the new one is complete in its staging folder, not yet renamed into place.
_KILL_IN_SWAP = """
import os, signal, sys
import converters.output_dir as od

real = od.os.replace
def replace(src, dst):
    if os.path.basename(str(src)).startswith(".bundle.partial-"):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst)

od.os.replace = replace
from converters.bundle_writer import convert
convert(sys.argv[1], sys.argv[2], overwrite=True, progress=False, n_parity_images=2,
        n_parity_texts=2)
"""


def _cli(*args: str, cwd: Path, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGECLIP_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "edgeclip", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_run_after_a_conversion_killed_mid_swap_restores_and_cleans_up(
    micro_bundle, micro_hf_checkpoint, tmp_path
):
    out = tmp_path / "bundle"
    shutil.copytree(micro_bundle, out)
    before = (out / MANIFEST).read_text()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", _KILL_IN_SWAP, str(micro_hf_checkpoint), str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == -9, done.stderr
    assert not out.exists()  # the previous bundle is in the hidden .old- folder
    hidden = _hidden(tmp_path)
    assert [n.split("-")[0] for n in hidden] == [".bundle.old", ".bundle.partial"], hidden
    # Before: the leftovers stayed for ever (a full bundle each) and the old bundle was lost.
    assert check_output(out, overwrite=True) == out.resolve()
    assert (out / MANIFEST).read_text() == before  # the previous bundle is back
    assert _hidden(tmp_path) == []
    Bundle.open(out)


def test_a_rerun_removes_a_killed_runs_half_bundle_but_not_a_live_ones(
    micro_hf_checkpoint, tmp_path
):
    out = tmp_path / "bundle"
    live = staging_dir(out.resolve())  # this process is alive: its folder must stay
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    stale = tmp_path / live.name.replace(f"-{os.getpid()}-", f"-{dead}-")
    (stale / "onnx-fp32").mkdir(parents=True)
    (stale / "onnx-fp32" / "image.onnx").write_bytes(b"half a graph")
    older = tmp_path / ".bundle.partial-abc123"  # no owner in the name: left alone
    older.mkdir()
    done = _cli("convert", str(micro_hf_checkpoint), "-o", "bundle", cwd=tmp_path,
                home=tmp_path / "home")  # fmt: skip
    assert done.returncode == 0, done.stderr
    Bundle.open(out)
    assert live.is_dir() and older.is_dir() and not stale.exists()
    shutil.rmtree(live)


def _odd_images(folder: Path) -> tuple[list[str], list[str]]:
    """(good, bad) file names: odd modes that must be read, and broken files that must not."""
    import numpy as np
    from PIL import Image

    from edgeclip.probeset import synthetic_pairs

    folder.mkdir()
    images, _, _ = synthetic_pairs(4, 48)
    good = [f"shape{i}.jpg" for i in range(4)]
    for name, im in zip(good, images):
        im.save(folder / name)
    images[0].convert("CMYK").save(folder / "cmyk.jpg")
    grey = np.random.default_rng(0).integers(0, 65535, (40, 50)).astype(np.uint16)
    Image.fromarray(grey).save(folder / "grey16.png")
    Image.new("RGBA", (30, 30), (200, 0, 0, 100)).save(folder / "rgba.png")
    Image.new("P", (30, 30)).save(folder / "palette.gif")
    good += ["cmyk.jpg", "grey16.png", "rgba.png", "palette.gif"]
    Image.new("1", (12000, 8000)).save(folder / "huge.png")  # 96 MP: a possible bomb
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG" * 8)
    (folder / "empty.png").write_bytes(b"")
    data = (folder / "shape0.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    return good, ["huge.png", "corrupt.jpg", "empty.png", "truncated.jpg"]


def test_relative_calibration_folder_with_odd_images_keeps_every_good_one(
    micro_hf_checkpoint, tmp_path
):
    good, bad = _odd_images(tmp_path / "photos")
    done = _cli("convert", str(micro_hf_checkpoint), "-o", "bundle", "--calibration", "photos",
                cwd=tmp_path, home=tmp_path / "home")  # fmt: skip
    # Before: ValueError traceback from Path.relative_to (relative folder, absolute files).
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    summary = json.loads((tmp_path / "bundle" / MANIFEST).read_text())["calibration"]
    assert summary["source"] == f"folder:{tmp_path / 'photos'}"
    assert summary["skipped_images"] == len(bad)
    assert summary["n_calib_images"] + summary["n_eval_images"] == len(good)
    skipped = done.stdout.split("calibration: skipped", 1)[1].splitlines()[0]
    assert all(name in skipped for name in bad) and not any(name in skipped for name in good)
