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
from converters.add_variants import add_variants  # noqa: E402
from converters.fixtures import write_random_checkpoint  # noqa: E402
from edgeclip.bundle import MANIFEST  # noqa: E402
from edgeclip.errors import InputError  # noqa: E402

CORRUPT_JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00 the rest of this photo was never copied"


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
    assert code == 2 and named in err and "choose from:" in err and "Traceback" not in err, err
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


def _photos(folder: Path, n_good: int, bad: dict[str, bytes]) -> Path:
    """``n_good`` real PNGs (PIL) and the ``bad`` files, as a camera card might hold them."""
    import numpy as np
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n_good):
        pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"good{i}.png")
    for name, data in bad.items():
        (folder / name).write_bytes(data)
    return folder


def test_unreadable_calibration_images_are_named_and_the_rest_used(
    capsys, micro_hf_checkpoint, tmp_path
):
    photos = _photos(tmp_path / "photos", 4, {"broken.jpg": CORRUPT_JPEG})
    out = tmp_path / "b"
    code, err = _run(capsys, "convert", str(micro_hf_checkpoint), "-o", str(out),
                     "--calibration", str(photos))  # fmt: skip
    assert code == 0, err
    assert "skipped 1 unreadable image(s)" in err and "broken.jpg (" in err, err
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["calibration"]["skipped_images"] == 1
    assert manifest["calibration"]["source"] == f"folder:{photos}"
    assert (photos / "broken.jpg").read_bytes() == CORRUPT_JPEG  # read, never touched


def test_a_calibration_folder_with_under_two_readable_images_is_refused_naming_them(
    capsys, micro_hf_checkpoint, tmp_path
):
    photos = _photos(tmp_path / "photos", 1, {"broken.jpg": CORRUPT_JPEG, "empty.png": b""})
    out = tmp_path / "b"
    code, err = _run(capsys, "convert", str(micro_hf_checkpoint), "-o", str(out),
                     "--calibration", str(photos))  # fmt: skip
    assert code == 2 and "1 of 3 image files could be read, at least 2" in err, err
    assert "broken.jpg (" in err and "empty.png (" in err
    assert "Replace or remove them" in err and "omit --calibration" in err
    assert not out.exists() and _leftovers(tmp_path) == []
    assert sorted(p.name for p in photos.iterdir()) == ["broken.jpg", "empty.png", "good0.png"]


def test_empty_strings_and_bad_counts_name_the_flag(capsys, tmp_path):
    missing = str(tmp_path / "no-such-checkpoint")
    out = str(tmp_path / "b")
    code, err = _run(capsys, "convert", missing, "-o", out, "--calibration", "")
    assert code == 2 and "--calibration is an empty string" in err, err
    code, err = _run(capsys, "convert", missing, "-o", out, "--calibration", str(tmp_path),
                     "--captions", " ")  # fmt: skip
    assert code == 2 and "--captions is an empty string" in err, err
    code, err = _run(capsys, "convert", missing, "-o", "")
    assert code == 2 and "output folder is an empty string" in err and "-o BUNDLE_DIR" in err
    code, err = _run(capsys, "convert", missing, "-o", out, "--parity-images", "0")
    assert code == 2 and "--parity-images" in err and "positive integer" in err, err
    assert not Path(out).exists() and _leftovers(tmp_path) == []


def test_overwrite_refuses_a_folder_whose_manifest_json_is_not_edgeclips(
    capsys, micro_hf_checkpoint, tmp_path
):
    site = tmp_path / "my-web-app"  # manifest.json is a common name (web app manifests)
    site.mkdir()
    (site / MANIFEST).write_text('{"name": "My app", "icons": []}')
    (site / "index.html").write_text("<h1>hello</h1>")
    code, err = _run(capsys, "convert", str(micro_hf_checkpoint), "-o", str(site), "--overwrite")
    assert code == 2 and "not an edgeclip manifest" in err and "another output folder" in err, err
    assert sorted(p.name for p in site.iterdir()) == ["index.html", MANIFEST]
    (site / MANIFEST).write_text("{ truncated")
    code, err = _run(capsys, "convert", str(micro_hf_checkpoint), "-o", str(site), "--overwrite")
    assert code == 2 and "not readable JSON" in err and (site / "index.html").is_file(), err
    assert _leftovers(tmp_path) == [site.name]  # the web app itself, and no staging folder


def test_fixture_writes_into_an_empty_folder_but_not_onto_a_file(capsys, tmp_path):
    empty = tmp_path / "new-fixture"
    empty.mkdir()
    code, err = _run(capsys, "fixture", str(empty), "--arch", "micro")
    assert code == 0, err
    assert (empty / "config.json").is_file() and (empty / "model.safetensors").is_file()
    a_file = tmp_path / "weights.pt"
    a_file.write_bytes(b"a real checkpoint")
    code, err = _run(capsys, "fixture", str(a_file), "--arch", "micro")
    assert code == 2 and "not an empty folder" in err and a_file.read_bytes() == b"a real checkpoint"


def test_an_os_error_is_one_line_naming_the_file(capsys, tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    target = a_file / "fixture"  # a file where a folder should be: a real NotADirectoryError
    code, err = _run(capsys, "fixture", str(target), "--arch", "micro")
    assert code == 2, err
    assert err.splitlines() == [f"error: {target}: Not a directory"], err
    assert a_file.read_text() == "keep me"


def test_edgeclip_convert_checks_its_arguments_before_resolving_the_checkpoint(
    capsys, micro_hf_checkpoint, tmp_path
):
    from edgeclip.cli import main as edgeclip_main

    out = str(tmp_path / "b")
    # Not a path and not a zoo name: the bad --backend is still what is reported (no zoo lookup).
    code = edgeclip_main(["convert", "no-such-zoo-model", "-o", out, "--backend", "onnx,tensorrtx"])
    err = capsys.readouterr().err
    assert code == 2 and "edgeclip: error:" in err and "tensorrtx" in err, err
    assert "no-such-zoo-model" not in err
    photos = _photos(tmp_path / "Pictures", 1, {})
    code = edgeclip_main(["convert", str(micro_hf_checkpoint), "-o", str(photos), "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2 and "not an edgeclip bundle" in err, err
    assert [p.name for p in photos.iterdir()] == ["good0.png"]
    assert not Path(out).exists() and _leftovers(tmp_path) == []


def test_add_variants_checks_its_arguments_before_loading_the_checkpoint(micro_bundle, tmp_path):
    before = (micro_bundle / MANIFEST).read_bytes()
    missing = tmp_path / "no-such-checkpoint"  # loading it would be a ModelNotFoundError
    with pytest.raises(InputError, match="unknown backend 'tensorrtx'; choose from"):
        add_variants(micro_bundle, missing, backends="onnx,tensorrtx")
    with pytest.raises(InputError, match="names no precision"):
        add_variants(micro_bundle, missing, precisions=[])
    caps = tmp_path / "captions.txt"
    caps.write_text("a cat\n")
    with pytest.raises(InputError, match="add --calibration IMAGE_DIR"):
        add_variants(micro_bundle, missing, captions=caps)
    with pytest.raises(InputError, match="photos does not exist"):
        add_variants(micro_bundle, missing, calibration_dir=tmp_path / "photos")
    assert (micro_bundle / MANIFEST).read_bytes() == before
    staged = [p for p in micro_bundle.parent.iterdir() if p.name.startswith(f".{micro_bundle.name}.")]
    assert staged == []  # no .partial-/.old- folder beside the bundle
