"""Automatic inheritance in the trainer: the Lagrangian meets its target, resume across the prune
step is exact, an interrupted prune leaves nothing that looks finished, bad settings are refused,
and the pruned student converts to a bundle that passes its parity gate."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

from edgeclip.distill import runstate  # noqa: E402
from edgeclip.distill.checkpoint import CKPT_NAME  # noqa: E402
from edgeclip.distill.cli import main  # noqa: E402
from edgeclip.distill.trainer import TrainConfig, train  # noqa: E402


def _cfg(out, teacher, **kw):
    base = dict(out=str(out), teacher=teacher, losses="clip=1,fd=2000,crd=1", auto_inherit=True, steps=8,
                prune_step=4, batch_size=8, procedural_size=64, eval_held_out=2, eval_seen=1, progress=False,
                mask_lr=0.2, lambda_lr=0.2)  # fmt: skip
    return TrainConfig(**{**base, **kw})


def _log(out):
    return [json.loads(x) for x in open(f"{out}/train_log.jsonl")]


def _weights(out):
    from safetensors.torch import load_file

    return load_file(f"{out}/model.safetensors")


def test_lagrangian_brings_the_expected_sparsity_to_the_target(tmp_path, teacher_dir):
    res = train(_cfg(tmp_path / "s", teacher_dir, steps=70, prune_step=70, sparsity_warmup=0.5))
    log = _log(tmp_path / "s")
    assert [r["phase"] for r in log] == ["masked"] * 70
    assert (
        log[0]["target_sparsity"] == 0.0 and log[35]["target_sparsity"] == 0.5
    )  # the warm-up ramp
    assert log[-1]["lambda_1"] > 10.0  # gradient ascent raised the multiplier
    reached = res["pruning"]["sparsity"]["expected_at_prune"]
    assert reached == pytest.approx(0.5, abs=0.02)
    p = res["pruning"]["params"]
    assert p["exported"]["layers"] < p["original"]["layers"]


def test_resume_across_the_prune_step_is_exact(tmp_path, teacher_dir):
    train(_cfg(tmp_path / "a", teacher_dir))
    train(_cfg(tmp_path / "b", teacher_dir, stop_after=3))
    state = torch.load(tmp_path / "b" / CKPT_NAME, weights_only=False)
    assert (state["step"], state["phase"]) == (3, "masked")
    train(_cfg(tmp_path / "b", teacher_dir, stop_after=6, resume=True))
    state = torch.load(tmp_path / "b" / CKPT_NAME, weights_only=False)
    assert (state["step"], state["phase"]) == (6, "pruned")
    assert not (tmp_path / "b" / "config.json").exists()
    train(_cfg(tmp_path / "b", teacher_dir, resume=True))
    la, lb = _log(tmp_path / "a"), _log(tmp_path / "b")
    assert [r["phase"] for r in la] == ["masked"] * 4 + ["pruned"] * 4
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_an_interrupted_prune_leaves_the_pre_prune_checkpoint(tmp_path, teacher_dir, monkeypatch):
    real = runstate.prune_now

    def prune_then_die(run):
        real(run)  # the model is pruned in memory, then the process is interrupted
        raise KeyboardInterrupt

    monkeypatch.setattr(runstate, "prune_now", prune_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path / "c", teacher_dir, checkpoint_every=3))
    out = tmp_path / "c"
    assert not (out / "config.json").exists() and not (out / "model.safetensors").exists()
    state = torch.load(out / CKPT_NAME, weights_only=False)
    assert (state["step"], state["phase"]) == (4, "masked")  # complete, from before the prune
    monkeypatch.setattr(runstate, "prune_now", real)
    train(_cfg(out, teacher_dir, checkpoint_every=3, resume=True))
    train(_cfg(tmp_path / "d", teacher_dir, checkpoint_every=3))
    wc, wd = _weights(out), _weights(tmp_path / "d")
    assert all(torch.equal(wc[k], wd[k]) for k in wd)
    meta = json.loads((out / "edgeclip_distill.json").read_text())
    assert meta["result"]["pruning"]["layout"] == "per-layer"


def test_a_second_stage_prunes_the_first_stage_output_further(tmp_path, teacher_dir):
    first = train(_cfg(tmp_path / "s1", teacher_dir, target_sparsity=0.3, mask_lr=0.5))
    second = train(_cfg(tmp_path / "s2", teacher_dir, start_from=str(tmp_path / "s1"), mask_lr=0.5))
    p1, p2 = first["pruning"]["params"], second["pruning"]["params"]
    assert p2["original"] == p1["exported"]  # the masks started on the first stage's student
    assert p2["compact"] < p1["compact"]


def test_bad_settings_are_refused(tmp_path, teacher_dir, capsys):
    base = ["--teacher", str(teacher_dir), "--auto-inherit", "--steps", "4", "-o", str(tmp_path / "x")]
    for sparsity in ("0", "1", "1.5", "-0.2"):
        assert main([*base, "--target-sparsity", sparsity]) == 2
        assert "must be inside (0, 1)" in capsys.readouterr().err
    assert main([*base, "--prune-step", "5"]) == 2
    assert "after the last step (4)" in capsys.readouterr().err
    assert main([*base, "--mask-kinds", "hidden,rows"]) == 2
    assert "choose from hidden, heads, mlp, layers" in capsys.readouterr().err
    assert main([*base, "--inherit"]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert main(["--auto-inherit", "-o", str(tmp_path / "y")]) == 2
    assert "--auto-inherit needs --teacher" in capsys.readouterr().err
    assert (
        main(["--teacher", str(teacher_dir), "--start-from", str(teacher_dir), "-o", str(tmp_path / "z")])
        == 2
    )
    assert "add --auto-inherit" in capsys.readouterr().err


def test_cli_student_converts_unchanged_and_passes_the_gate(tmp_path, teacher_dir):
    pytest.importorskip("onnxruntime")
    from converters.bundle_writer import convert
    from edgeclip.bundle import Bundle

    out = tmp_path / "student"
    argv = ["distill", "--teacher", str(teacher_dir), "--auto-inherit", "--target-sparsity", "0.5", "--steps", "6",
            "--prune-step", "3", "--batch-size", "8", "--procedural-size", "32", "--eval-held-out", "1",
            "--mask-lr", "0.5", "--mask-kinds", "hidden,heads,mlp,layers", "--no-progress", "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    arch = json.loads((out / "edgeclip_distill.json").read_text())["architecture"]
    assert arch["vision_mlp"] < 4 * 64 or arch["vision_width"] < 64  # really smaller
    bundle = Bundle.open(convert(out, tmp_path / "bundle", progress=False))
    assert bundle.variants and all(v.passed for v in bundle.variants)
