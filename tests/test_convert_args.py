"""`python -m converters convert|fixture` refuses bad arguments before any work, with a message
that names the input and the fix, and never deletes what is not a bundle. Real fixture
checkpoints, real files, the real command line (converters/__main__.py, output_dir.py,
variants.check_requested, calibration.check_calibration_args, checkpoints.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

for _mod in ("torch", "transformers", "safetensors", "onnx", "onnxruntime"):
    pytest.importorskip(_mod)

from converters.__main__ import main  # noqa: E402
from converters.fixtures import write_random_checkpoint  # noqa: E402
from edgeclip.bundle import MANIFEST  # noqa: E402


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def _leftovers(folder: Path) -> list[str]:
    """Bundles or half-built staging folders a refused conversion might have left."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or (p / MANIFEST).exists())


@pytest.mark.parametrize("flag, value, named", [
    ("--backend", "onnx,tensorrtx", "tensorrtx"),
    ("--backend", ",", "names no backend"),
    ("--precision", "fp32,int4", "int4"),
    ("--precision", " ", "names no precision"),
])  # fmt: skip
def test_unknown_or_empty_lists_are_refused_before_the_checkpoint_is_read(
    capsys, tmp_path, flag, value, named
):
    missing = tmp_path / "no-such-checkpoint"  # never opened: the list is refused first
    code, err = _run(capsys, "convert", str(missing), "-o", str(tmp_path / "b"), flag, value)
    assert code == 2 and named in err and "Traceback" not in err, err
    assert "no-such-checkpoint" not in err  # the argument, not the checkpoint, is what is named
    assert not (tmp_path / "b").exists() and _leftovers(tmp_path) == []


def test_calibration_arguments_are_checked_first(capsys, micro_hf_checkpoint, tmp_path):
    out = str(tmp_path / "b")
    caps = tmp_path / "captions.txt"
    caps.write_text("a cat\n")
    code, err = _run(capsys, "convert", str(micro_hf_checkpoint), "-o", out, "--captions", str(caps))
    assert code == 2 and "--calibration IMAGE_DIR" in err and "--captions" in err
    code, err = _run(capsys, "convert", str(micro_hf_checkpoint), "-o", out,
                     "--calibration", str(tmp_path / "photos"))  # fmt: skip
    assert code == 2 and "photos does not exist" in err and "synthetic" in err
    (tmp_path / "photos").mkdir()
    code, err = _run(capsys, "convert", str(micro_hf_checkpoint), "-o", out,
                     "--calibration", str(tmp_path / "photos"), "--captions", str(tmp_path / "none.txt"))  # fmt: skip
    assert code == 2 and "none.txt does not exist" in err
    assert not Path(out).exists() and _leftovers(tmp_path) == []


def test_overwrite_never_deletes_a_folder_that_is_not_a_bundle(capsys, micro_hf_checkpoint, tmp_path):
    photos = tmp_path / "Pictures"
    photos.mkdir()
    (photos / "holiday.jpg").write_bytes(b"\xff\xd8 not much of a photo")
    code, err = _run(capsys, "convert", str(micro_hf_checkpoint), "-o", str(photos), "--overwrite")
    assert code == 2 and "not an edgeclip bundle" in err and "another output folder" in err
    assert (photos / "holiday.jpg").read_bytes() == b"\xff\xd8 not much of a photo"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    code, err = _run(capsys, "convert", str(micro_hf_checkpoint), "-o", str(a_file), "--overwrite")
    assert code == 2 and "is a file" in err and a_file.read_text() == "keep me"
    code, err = _run(capsys, "convert", str(micro_hf_checkpoint), "-o", str(a_file / "sub" / "b"))
    assert code == 2 and "cannot create the folder" in err and "writable folder" in err
    assert _leftovers(tmp_path) == []


def test_an_empty_existing_folder_is_a_fine_output_and_a_bundle_is_replaced_only_on_request(
    capsys, micro_hf_checkpoint, tmp_path
):
    out = tmp_path / "made-by-mkdir"
    out.mkdir()
    code, err = _run(capsys, "convert", str(micro_hf_checkpoint), "-o", str(out))
    assert code == 0, err
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["variants"][0]["id"] == "onnx-fp32"
    code, err = _run(capsys, "convert", str(micro_hf_checkpoint), "-o", str(out))
    assert code == 2 and "already exists" in err and "--overwrite" in err
    code, err = _run(capsys, "convert", str(micro_hf_checkpoint), "-o", str(out), "--overwrite")
    assert code == 0 and (out / MANIFEST).is_file() and _leftovers(tmp_path) == ["made-by-mkdir"]


def test_fixture_refuses_a_folder_that_holds_files(capsys, tmp_path):
    ckpt = tmp_path / "my-trained-model"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"weeks of training")
    code, err = _run(capsys, "fixture", str(ckpt))
    assert code == 2 and "random weights" in err and "new folder" in err
    assert (ckpt / "model.safetensors").read_bytes() == b"weeks of training"


def _edited_checkpoint(tmp_path: Path, edit) -> Path:
    """A micro checkpoint whose state dict ``edit`` changed in place (a damaged training run)."""
    from safetensors.torch import load_file, save_file

    ckpt = write_random_checkpoint(tmp_path / "ckpt", "micro", "hf", 0)
    weights = Path(ckpt) / "model.safetensors"
    state = load_file(weights)
    edit(state)
    save_file(state, weights)
    return Path(ckpt)


def test_nan_weights_are_refused_naming_the_tensor(capsys, tmp_path):
    def poison(state):
        key = next(k for k in state if k.endswith("text_projection.weight"))
        state[key][0, 0] = float("nan")

    ckpt = _edited_checkpoint(tmp_path, poison)
    code, err = _run(capsys, "convert", str(ckpt), "-o", str(tmp_path / "b"))
    assert code == 2 and "NaN or infinite" in err and "text_projection.weight" in err, err
    assert not (tmp_path / "b").exists() and _leftovers(tmp_path) == []


def test_an_all_zero_projection_is_refused_as_no_usable_model(capsys, tmp_path):
    def zero(state):
        key = next(k for k in state if k.endswith("visual_projection.weight"))
        state[key].zero_()

    ckpt = _edited_checkpoint(tmp_path, zero)
    code, err = _run(capsys, "convert", str(ckpt), "-o", str(tmp_path / "b"))
    assert code == 2 and "image tower" in err and "zero or non-finite" in err, err
    assert not (tmp_path / "b").exists() and _leftovers(tmp_path) == []


def test_a_config_from_another_model_names_the_first_mismatching_tensor(capsys, tmp_path):
    ckpt = write_random_checkpoint(tmp_path / "ckpt", "micro", "hf", 0)
    config = Path(ckpt) / "config.json"
    cfg = json.loads(config.read_text())
    cfg["projection_dim"] = cfg["projection_dim"] * 2
    config.write_text(json.dumps(cfg))
    code, err = _run(capsys, "convert", str(ckpt), "-o", str(tmp_path / "b"))
    assert code == 2 and "size mismatch for" in err and "projection" in err, err
    assert "different models" in err and "Traceback" not in err
