"""Fixes of the distillation stage: logit-scale clamp, CLIP-KD released-code variants, refused
teacher/student pairings, the GPU/multi-process settings (checked on the CPU), progress in logs."""

from __future__ import annotations

import importlib.util
import io
import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

from edgeclip.distill import dist, runstate  # noqa: E402
from edgeclip.distill import losses as L  # noqa: E402
from edgeclip.distill import students as S  # noqa: E402
from edgeclip.distill.progress import Progress  # noqa: E402
from edgeclip.distill.trainer import TrainConfig, train  # noqa: E402
from edgeclip.errors import InputError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _feats(n, d, seed, normalise=False):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.nn.functional.normalize(x, dim=1) if normalise else x


def test_logit_scale_keeps_its_gradient_and_is_clamped_on_the_parameter():
    m = S.build_model(S.load_arch("micro"), seed=0)
    with torch.no_grad():
        m.logit_scale.fill_(5.0)  # exp(5) = 148 > 100
    S.logit_scale(m).backward()
    assert m.logit_scale.grad.item() == pytest.approx(math.exp(5.0))  # exp-then-clamp gave 0
    run = runstate.Run(cfg=None, device=torch.device("cpu"), student=m, teacher=None,
                       loss_mod=L.DistillLoss({"icl": 1}, 32, 32))  # fmt: skip
    with torch.no_grad():
        run.loss_mod.icl_log_scale.fill_(7.0)
    runstate.clamp_after_step(run)
    assert m.logit_scale.item() == pytest.approx(math.log(100.0))
    assert run.loss_mod.icl_log_scale.item() == pytest.approx(math.log(100.0))
    assert S.teacher_logit_scale(S.build_model(S.load_arch("micro"))).item() == pytest.approx(
        1 / 0.07, rel=1e-5
    )


def test_released_icl_uses_the_raw_parameter_and_paper_its_exp():
    si, st = _feats(4, 6, 1).float(), _feats(4, 6, 2).float()
    ti, tt = _feats(4, 6, 3, True).float(), _feats(4, 6, 4, True).float()
    s = torch.tensor(10.0)
    for variant, mult in (("paper", 1 / 0.07), ("released", math.log(1 / 0.07))):
        dl = L.DistillLoss({"icl": 1, "clip": 0}, 6, 6, variant=variant)
        _, parts = dl(si, st, s, ti, tt, 20.0)
        torch.testing.assert_close(parts["icl"], L.icl_loss(si, st, ti, tt, torch.tensor(mult)))
    with pytest.raises(InputError, match="variant"):
        L.DistillLoss({"icl": 1}, 6, 6, variant="blog")


def test_released_gd_uses_the_scale_as_temperature():
    si, st = _feats(4, 5, 1), _feats(4, 5, 2)
    ti, tt = _feats(4, 5, 3, True), _feats(4, 5, 4, True)
    s_scale, t_scale = 20.0, 50.0

    def grads(a, b, divide_by):
        a, b = a.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
        ce = torch.nn.functional.cross_entropy(a @ b.T / divide_by, torch.arange(len(a)))
        return torch.autograd.grad(ce, (a, b))

    sin, stn = (torch.nn.functional.normalize(x, dim=1) for x in (si, st))
    want = 0.0
    for (sa, sb), (ta, tb) in (((sin, stn), (ti, tt)), ((stn, sin), (tt, ti))):
        gs, gt = grads(sa, sb, s_scale), grads(ta, tb, t_scale)  # logits divided by the scale
        want += sum(float(torch.mean((x - y) ** 2)) for x, y in zip(gs, gt))
    got = L.gd_loss(
        si, st, torch.tensor(s_scale, dtype=torch.float64), ti, tt, t_scale, released=True
    )
    assert got.item() == pytest.approx(want, rel=1e-9)
    paper = L.gd_loss(si, st, torch.tensor(s_scale, dtype=torch.float64), ti, tt, t_scale)
    assert paper.item() > 1e3 * got.item()  # why the released code needs weight 1e8


def _train_cfg(tmp_path, teacher, student):
    return TrainConfig(student=student, out=str(tmp_path / "s"), teacher=str(teacher), losses="fd=2000",
                       steps=1, batch_size=4, procedural_size=8, eval_held_out=1, eval_seen=1, progress=False)  # fmt: skip


def test_teacher_and_student_with_other_context_lengths_are_refused(tmp_path, teacher_dir):
    student = {**S.load_arch("micro"), "context_length": 16}
    with pytest.raises(InputError, match="teacher context length 24 != student context length 16"):
        train(_train_cfg(tmp_path, teacher_dir, student))


def test_teacher_with_another_tokenizer_is_refused(tmp_path, teacher_dir):
    other = tmp_path / "other-teacher"
    other.mkdir()
    for f in teacher_dir.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    vocab = json.loads((other / "vocab.json").read_text())
    vocab["a</w>"], vocab["b</w>"] = vocab["b</w>"], vocab["a</w>"]
    (other / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(
        InputError,
        match=r"teacher tokenizer \(vocab.json sha256 \w+, 49408 tokens\) differs "
        r"from the student's \(edgeclip CLIP BPE sha256 \w+, 49408 tokens\)",
    ):
        train(_train_cfg(tmp_path, other, "micro"))
    student = {**S.load_arch("micro"), "vocab_size": 49000}
    with pytest.raises(
        InputError, match="teacher vocabulary size 49408 != student vocabulary size 49000"
    ):
        train(_train_cfg(tmp_path, teacher_dir, student))


def test_process_group_settings_per_device():
    backend, kwargs, env = dist.process_group_options(torch.device("cuda:1"), 30.0)
    assert backend == "nccl" and kwargs["device_id"] == torch.device("cuda:1")
    assert env == {"TORCH_NCCL_BLOCKING_WAIT": "1"}  # a dead peer raises, as with gloo
    backend, kwargs, env = dist.process_group_options(torch.device("cpu"), 30.0)
    assert backend == "gloo" and "device_id" not in kwargs and env == {}
    assert kwargs["timeout"].total_seconds() == 30.0


def test_bf16_autocast_only_where_the_gpu_supports_it(monkeypatch):
    assert dist.autocast_dtype(torch.device("cpu")) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert dist.autocast_dtype(torch.device("cuda:0")) is None  # e.g. a Jetson Nano, a T4
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert dist.autocast_dtype(torch.device("cuda:0")) is torch.bfloat16


def test_the_final_wait_is_sized_to_the_evaluation():
    base = dist.final_wait_s(120.0, 0, 100.0, 0)
    assert base >= 120.0
    slow = dist.final_wait_s(120.0, 3080, 5.0, 2_000_000)
    assert slow > base + 3 * 3080 / 5.0  # 3080 images at 5/s: more than the 120 s timeout
    assert dist.final_wait_s(120.0, 3080, 0.0, 0) > base  # no rate measured yet: still sized


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_prints_a_line_every_few_percent_when_piped():
    log = io.StringIO()
    with Progress(200, desc="distill", stream=log, every_pct=5) as bar:
        for _ in range(200):
            bar.update(1, loss="1.000")
    lines = log.getvalue().splitlines()
    assert len(lines) == 20 and "\r" not in log.getvalue()
    assert lines[-1].startswith("distill 200/200 (100%)") and "loss=1.000" in lines[-1]
    tty = _Terminal()
    with Progress(50, stream=tty) as bar:
        for _ in range(50):
            bar.update(1)
    assert "\r" in tty.getvalue() and "50/50" in tty.getvalue()


def test_trainer_progress_in_a_log_is_a_few_lines(tmp_path, teacher_dir, capsys):
    cfg = TrainConfig(student="micro", out=str(tmp_path / "p"), steps=40, batch_size=4, procedural_size=8,
                      eval_held_out=1, eval_seen=1, progress=True)  # fmt: skip
    train(cfg)
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("train ")]
    assert len(lines) == 20 and "\r" not in err


def test_main_job_reads_the_student_image_size_from_the_distill_output(tmp_path):
    spec = importlib.util.spec_from_file_location("main_job", REPO / "examples" / "main_job.py")
    main_job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(main_job)
    arch = {**S.load_arch("micro"), "image_size": 48, "patch_size": 8}
    train(TrainConfig(student=arch, out=str(tmp_path / "m"), steps=1, batch_size=4, procedural_size=8,
                      eval_held_out=1, eval_seen=1, progress=False))  # fmt: skip
    assert main_job.student_image_size(tmp_path / "m") == 48
