"""The distillation trainer on 1 process: output checkpoint, every loss, exact resume, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

from edgeclip.distill import students as S  # noqa: E402
from edgeclip.distill.cli import main  # noqa: E402
from edgeclip.distill.trainer import TrainConfig, train  # noqa: E402
from edgeclip.errors import InputError  # noqa: E402

ALL_LOSSES = "clip=1,crd=1,fd=2000,mfd=1000,gd=100,icl=1,afd=1,affinity=1"


def _cfg(out, teacher, **kw):
    base = dict(student="micro", out=str(out), teacher=teacher, losses=ALL_LOSSES, steps=3, batch_size=8,
                procedural_size=64, eval_held_out=2, eval_seen=1, progress=False)  # fmt: skip
    return TrainConfig(**{**base, **kw})


def _log(out):
    return [json.loads(x) for x in open(f"{out}/train_log.jsonl")]


def test_distill_writes_a_loadable_hf_checkpoint(tmp_path, teacher_dir):
    from transformers import CLIPModel

    res = train(_cfg(tmp_path / "s", teacher_dir, eval_every=3, inherit=True))
    names = {p.name for p in (tmp_path / "s").iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "bpe_simple_vocab_16e6.txt.gz",
            "vocab.json", "merges.txt", "tokenizer_config.json", "edgeclip_distill.json"} <= names  # fmt: skip
    log = _log(tmp_path / "s")
    assert [r["step"] for r in log] == [1, 2, 3]
    assert set(log[0]["parts"]) == {"clip", "crd", "fd", "mfd", "gd", "icl", "afd", "affinity"}
    assert all(np.isfinite(v) for r in log for v in r["parts"].values())
    assert "eval" in log[-1] and 0 <= res["eval"]["held_out"] <= 100
    m = CLIPModel.from_pretrained(str(tmp_path / "s"))
    assert m.config.text_config.eos_token_id == 49407 and m.config.projection_dim == 32
    assert S.arch_of(m) == S.load_arch("micro")
    from transformers import CLIPTokenizer

    from edgeclip.tokenizer import tokenize

    tok = CLIPTokenizer.from_pretrained(
        str(tmp_path / "s")
    )  # the HF tokenizer files agree with ours
    texts = ["a photo of a small red hexagon, isn't it?", "Two   BLUE stars!! 123"]
    ours = [[int(i) for i in row if i] for row in tokenize(texts, 24)]
    assert tok(texts)["input_ids"] == ours
    meta = json.load(open(tmp_path / "s" / "edgeclip_distill.json"))
    assert meta["config"]["losses"] == ALL_LOSSES and meta["config"]["inherit"] is True


def test_training_reduces_the_contrastive_loss(tmp_path):
    train(
        _cfg(
            tmp_path / "t",
            None,
            losses="clip=1",
            steps=12,
            lr=3e-3,
            procedural_size=16,
            batch_size=16,
            warmup=0.0,
        )
    )
    log = _log(tmp_path / "t")
    assert log[-1]["loss"] < log[0]["loss"] - 0.3  # a fixed batch of 16 is memorised


def test_resume_is_exact(tmp_path, teacher_dir):
    kw = dict(steps=4, losses="fd=2000,icl=1,crd=1,mfd=100")
    train(_cfg(tmp_path / "a", teacher_dir, **kw))
    train(_cfg(tmp_path / "b", teacher_dir, stop_after=2, **kw))
    assert not (tmp_path / "b" / "model.safetensors").exists()
    train(_cfg(tmp_path / "b", teacher_dir, resume=True, **kw))
    la, lb = _log(tmp_path / "a"), _log(tmp_path / "b")
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]
    from safetensors.torch import load_file

    wa, wb = (
        load_file(tmp_path / "a" / "model.safetensors"),
        load_file(tmp_path / "b" / "model.safetensors"),
    )
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_refuses_a_checkpoint_from_another_configuration(tmp_path, teacher_dir):
    train(_cfg(tmp_path / "c", teacher_dir, steps=2, stop_after=1))
    with pytest.raises(InputError, match=r"other settings \(lr: checkpoint 0.001 vs now 0.002"):
        train(_cfg(tmp_path / "c", teacher_dir, steps=2, lr=2e-3, resume=True))
    with pytest.raises(InputError, match="no checkpoint"):
        train(_cfg(tmp_path / "none", teacher_dir, resume=True))


def test_bad_inputs_are_clear_errors(tmp_path, teacher_dir, capsys):
    with pytest.raises(InputError, match="need a teacher"):
        train(_cfg(tmp_path / "x", None, losses="fd=1"))
    with pytest.raises(InputError, match="student embedding width|width 32 != the teacher's 48"):
        from edgeclip.distill.losses import DistillLoss

        DistillLoss({"fd": 1}, 32, 48, projections=False)
    out = str(tmp_path / "y")
    assert (
        main(["--teacher", str(teacher_dir), "--student", "micro", "--losses", "kd=1", "-o", out]) == 2
    )
    assert "unknown loss 'kd'" in capsys.readouterr().err
    assert (
        main(["--teacher", str(teacher_dir), "--student", "micro", "--losses", "fd=-3", "-o", out]) == 2
    )
    assert ">= 0" in capsys.readouterr().err
    (tmp_path / "empty.csv").write_text("image,caption\n")
    rc = main(
        [
            "--teacher",
            str(teacher_dir),
            "--student",
            "micro",
            "--data",
            str(tmp_path / "empty.csv"),
            "-o",
            out,
        ]
    )
    assert rc == 2 and "no rows" in capsys.readouterr().err
    assert main(["--teacher", str(tmp_path), "--student", "micro", "-o", out]) == 2
    assert "not a CLIPModel folder" in capsys.readouterr().err


def test_cli_distills_from_csv_with_bad_rows(tmp_path, teacher_dir):
    from PIL import Image

    rows = ["image,caption"]
    for k in range(10):
        Image.new("RGB", (40, 40), (25 * k, 100, 0)).save(tmp_path / f"{k}.png")
        rows.append(f"{k}.png,a picture number {k} with a caption that is far longer than the twenty four "
                    "token context of the micro student so it must be truncated")  # fmt: skip
    rows.append("missing.png,gone")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "csv_student"
    argv = ["distill", "--teacher", str(teacher_dir), "--student", "micro", "--data", str(tmp_path / "pairs.csv"),
            "--losses", "fd=2000,icl=1,crd=1", "--steps", "3", "--batch-size", "8", "-o", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    log = _log(out)
    assert log[-1]["skipped"] == 1 and (out / "model.safetensors").is_file()


def test_teacher_embeddings_cached_on_disk_make_a_rerun_identical_and_teacher_free(tmp_path, teacher_dir):
    cache = tmp_path / "teacher-features"
    kw = dict(steps=3, losses="fd=2000,icl=1,crd=1", procedural_size=24, teacher_cache_dir=str(cache))
    first = train(_cfg(tmp_path / "a", teacher_dir, **kw))
    assert first["teacher_items_computed"] == 24 and len(list(cache.glob("*.pt"))) == 1
    second = train(_cfg(tmp_path / "b", teacher_dir, **kw))
    assert second["teacher_items_computed"] == 0  # every item's embeddings came from the disk
    assert [r["loss"] for r in _log(tmp_path / "a")] == [r["loss"] for r in _log(tmp_path / "b")]
    # another source (size) is another cache file, never a wrong hit
    third = train(_cfg(tmp_path / "c", teacher_dir, **{**kw, "procedural_size": 16}))
    assert third["teacher_items_computed"] == 16 and len(list(cache.glob("*.pt"))) == 2


def test_a_run_whose_losses_ignore_the_teacher_makes_no_teacher_forward(tmp_path, teacher_dir):
    # clip=1 with a teacher (for inheritance): its time is a plain student's; same numbers as
    # the run without a teacher, and nothing is written to the teacher cache
    cache = tmp_path / "teacher-features"
    kw = dict(steps=3, losses="clip=1", procedural_size=24, teacher_cache_dir=str(cache))
    with_teacher = train(_cfg(tmp_path / "a", teacher_dir, **kw))
    assert with_teacher["teacher_items_computed"] == 0 and not cache.exists()
    train(_cfg(tmp_path / "b", None, **kw))
    assert [r["loss"] for r in _log(tmp_path / "a")] == [r["loss"] for r in _log(tmp_path / "b")]


def test_warming_the_procedural_cache_leaves_no_teacher_forward_to_the_runs(tmp_path, teacher_dir):
    from edgeclip.distill.teacher_cache import warm_procedural

    warm_dir, cold_dir = tmp_path / "warm", tmp_path / "cold"
    arch = S.load_arch("micro")
    assert warm_procedural(teacher_dir, warm_dir, 24, arch["image_size"], arch["context_length"], batch=10) == 24
    assert warm_procedural(teacher_dir, warm_dir, 24, arch["image_size"], arch["context_length"]) == 0
    kw = dict(steps=3, losses="fd=2000,icl=1,crd=1", procedural_size=24)
    warm = train(_cfg(tmp_path / "a", teacher_dir, teacher_cache_dir=str(warm_dir), **kw))
    assert warm["teacher_items_computed"] == 0
    cold = train(_cfg(tmp_path / "b", teacher_dir, teacher_cache_dir=str(cold_dir), **kw))
    assert cold["teacher_items_computed"] == 24
    w, c = (torch.load(next(d.glob("*.pt"))) for d in (warm_dir, cold_dir))
    assert torch.equal(w["have"], c["have"]) and torch.allclose(w["img"].float(), c["img"].float(), atol=2e-3)
    assert torch.allclose(w["txt"].float(), c["txt"].float(), atol=2e-3)
