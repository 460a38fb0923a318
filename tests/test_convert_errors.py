"""converters/: what a failed or refused conversion leaves behind, and the errors it gives."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

for _mod in ("torch", "transformers", "safetensors", "onnx", "onnxruntime"):
    pytest.importorskip(_mod)

import torch  # noqa: E402

from converters.bundle_writer import ParityError, convert  # noqa: E402
from converters.checkpoints import load_checkpoint  # noqa: E402
from converters.fixtures import ARCHS  # noqa: E402
from edgeclip.bundle import MANIFEST, Bundle  # noqa: E402
from edgeclip.errors import InputError, ModelNotFoundError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_missing_path_is_model_not_found(tmp_path):
    with pytest.raises(ModelNotFoundError, match="nope"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(ModelNotFoundError):
        convert(tmp_path / "nope", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_non_clip_inputs_raise_input_errors_that_say_what_was_expected(
    tmp_path, micro_hf_checkpoint
):
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    torch.save({"w": torch.zeros(2)}, bert / "pytorch_model.bin")
    with pytest.raises(InputError, match="CLIPModel"):
        load_checkpoint(bert)

    with pytest.raises(InputError, match="CLIP checkpoint"):
        load_checkpoint(tmp_path / "bert" / "config.json")  # a JSON file is not weights
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="CLIP checkpoint directory"):
        load_checkpoint(empty)

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "model.pt").write_bytes(b"this is not a checkpoint")
    (junk / "open_clip_config.json").write_text(json.dumps(ARCHS["micro"]))
    with pytest.raises(InputError, match="weights-only"):
        load_checkpoint(junk / "model.pt")

    other = tmp_path / "other"
    other.mkdir()
    torch.save({"state_dict": {"encoder.weight": torch.zeros(3, 3)}}, other / "model.pt")
    (other / "open_clip_config.json").write_text(json.dumps(ARCHS["micro"]))
    with pytest.raises(InputError, match="visual.conv1.weight"):
        load_checkpoint(other)

    unsupported = dict(
        ARCHS["micro"], vision_cfg={**ARCHS["micro"]["vision_cfg"], "timm_model_name": "vit"}
    )
    (other / "open_clip_config.json").write_text(json.dumps(unsupported))
    with pytest.raises(InputError, match="timm_model_name"):
        load_checkpoint(other / "model.pt")

    # A config whose depth differs from the weights' (weights from another model).
    wrong = tmp_path / "wrong"
    shutil.copytree(micro_hf_checkpoint, wrong)
    cfg = json.loads((wrong / "config.json").read_text())
    cfg["vision_config"]["num_hidden_layers"] = 3
    (wrong / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="missing"):
        load_checkpoint(wrong)


def test_pickled_code_is_refused(tmp_path):
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "open_clip_config.json").write_text(json.dumps(ARCHS["micro"]))
    torch.save({"state_dict": {"x": torch.zeros(1)}, "hook": Path("/")}, evil / "model.pt")
    with pytest.raises(InputError, match="weights-only"):
        load_checkpoint(evil / "model.pt")


def test_failed_conversion_leaves_no_bundle_and_keeps_the_old_one(
    micro_hf_checkpoint, micro_bundle, tmp_path
):
    out = tmp_path / "bundle"
    with pytest.raises(ParityError, match="No bundle was written"):
        convert(
            micro_hf_checkpoint, out, min_cosine=1.5
        )  # a gate no graph can pass: fails after export
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no staging directory left either

    shutil.copytree(micro_bundle, out)
    before = (out / MANIFEST).read_text()
    with pytest.raises(InputError, match="overwrite"):
        convert(micro_hf_checkpoint, out)
    with pytest.raises(ParityError):
        convert(micro_hf_checkpoint, out, overwrite=True, min_cosine=1.5)
    assert (out / MANIFEST).read_text() == before
    Bundle.open(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]

    convert(
        micro_hf_checkpoint,
        out,
        overwrite=True,
        name="renamed",
        n_parity_images=2,
        n_parity_texts=2,
    )
    assert Bundle.open(out).name == "renamed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


_KILL_MIDWAY = """
import os, signal, sys
import converters.bundle_writer as bw
import converters.onnx_export as ox

def die(*args, **kwargs):  # the image graph is written; the process dies before the text one
    os.kill(os.getpid(), signal.SIGKILL)

ox.export_text_tower = die
bw.convert(sys.argv[1], sys.argv[2], progress=False)
"""


def test_killed_conversion_leaves_nothing_that_loads(micro_hf_checkpoint, tmp_path):
    out = tmp_path / "bundle"
    done = subprocess.run(
        [sys.executable, "-c", _KILL_MIDWAY, str(micro_hf_checkpoint), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == -9, done.stderr
    assert not out.exists()
    (staging,) = tmp_path.iterdir()  # only the hidden staging dir, with half the graphs
    assert staging.name.startswith(".bundle.partial-")
    assert (staging / "onnx-fp32" / "image.onnx").is_file() and not (staging / MANIFEST).exists()
    with pytest.raises(InputError):
        Bundle.open(staging)
    convert(micro_hf_checkpoint, out, n_parity_images=2, n_parity_texts=2)  # a rerun just works
    Bundle.open(out)


def test_bad_arguments_are_refused_before_any_work(micro_hf_checkpoint, tmp_path):
    for kwargs in ({"n_parity_images": 0}, {"n_parity_texts": -1}, {"name": ""}):
        with pytest.raises(InputError):
            convert(micro_hf_checkpoint, tmp_path / "b", **kwargs)
    assert list(tmp_path.iterdir()) == []


# -- the runtime on converted bundles ----------------------------------------------------------
