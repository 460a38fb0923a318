"""Teacher/student pairings that cannot share pixels are refused by name, through the real command."""

from __future__ import annotations

import json
import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

from edgeclip.distill.cli import main  # noqa: E402


def _teacher_with(tmp_path, teacher_dir, **pre):
    other = tmp_path / "teacher"
    shutil.copytree(teacher_dir, other)
    cfg = json.loads((other / "preprocessor_config.json").read_text())
    (other / "preprocessor_config.json").write_text(json.dumps({**cfg, **pre}))
    return other


RUN = ["--steps", "1", "--batch-size", "8", "--procedural-size", "16", "--eval-held-out", "1", "--no-progress"]


@pytest.mark.parametrize("mode", [["--student", "micro"], ["--auto-inherit"]])
def test_a_teacher_normalising_pixels_otherwise_is_refused(tmp_path, teacher_dir, capsys, mode):
    # before: trained silently, feeding a [0.5]-normalised teacher CLIP-normalised pixels
    teacher = _teacher_with(tmp_path, teacher_dir, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    out = tmp_path / "out"
    assert main(["distill", "--teacher", str(teacher), *mode, *RUN, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "preprocessor_config.json normalises pixels with image_mean [0.5, 0.5, 0.5]" in err
    assert "not CLIP's [0.48145466" in err and not (out / "model.safetensors").exists()


def test_a_teacher_with_clips_normalisation_rounded_is_taken(tmp_path, teacher_dir):
    teacher = _teacher_with(tmp_path, teacher_dir, image_mean=[0.4815, 0.4578, 0.4082],
                            image_std=[0.2686, 0.2613, 0.2758])  # fmt: skip
    out = tmp_path / "out"
    assert main(["distill", "--teacher", str(teacher), "--student", "micro", *RUN, "-o", str(out)]) == 0
    assert (out / "model.safetensors").is_file()


def test_an_unreadable_teacher_preprocessor_config_is_named(tmp_path, teacher_dir, capsys):
    teacher = _teacher_with(tmp_path, teacher_dir)
    (teacher / "preprocessor_config.json").write_text("{not json")
    assert main(["distill", "--teacher", str(teacher), "--student", "micro", *RUN, "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "teacher preprocessor config" in err and "is not readable" in err and "Traceback" not in err
