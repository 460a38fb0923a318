"""A distillation run killed (SIGKILL) between checkpoints, then resumed, equals one uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from distill_pairs import pairs_with_two_missing

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

# The child trains; with a kill step it SIGKILLs itself right after logging that step, i.e.
# one step after its last checkpoint (every 2 steps), as a kill at a random moment would.
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from edgeclip.distill import trainer as T
    out, teacher, resume, kill_at = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
    log_step = T._log_step
    def logged(loop, done, *a):
        log_step(loop, done, *a)
        if done == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    T._log_step = logged
    T.train(T.TrainConfig(student="micro", out=out, teacher=teacher, losses="fd=2000,icl=1,crd=1,mfd=100",
                          steps=6, batch_size=8, procedural_size=64, eval_every=3, eval_held_out=2,
                          eval_seen=1, progress=False, checkpoint_every=2, resume=resume))
    """
)


def _child(out, teacher, resume: bool, kill_at: int = 0) -> int:
    argv = [sys.executable, "-c", CHILD, str(out), str(teacher), "1" if resume else "0", str(kill_at)]
    return subprocess.run(argv, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode


def _log(out) -> list[dict]:
    return [json.loads(x) for x in open(out / "train_log.jsonl")]


def test_a_killed_run_resumes_to_the_uninterrupted_run_and_log(tmp_path, teacher_dir):
    assert _child(tmp_path / "a", teacher_dir, resume=False) == 0
    assert _child(tmp_path / "b", teacher_dir, resume=False, kill_at=3) == -signal.SIGKILL
    assert [r["step"] for r in _log(tmp_path / "b")] == [1, 2, 3]  # step 3 is after the checkpoint
    with open(tmp_path / "b" / "train_log.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 1')  # and a line torn by the kill
    assert _child(tmp_path / "b", teacher_dir, resume=True) == 0
    la, lb = _log(tmp_path / "a"), _log(tmp_path / "b")
    # before: steps 1, 2, 3, 3, 4, 5, 6 (the killed run's step 3 kept) and the torn line
    assert [r["step"] for r in lb] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in lb] == [r["loss"] for r in la]
    assert [r.get("eval") for r in lb] == [r.get("eval") for r in la]
    from safetensors.torch import load_file

    wa, wb = (load_file(tmp_path / d / "model.safetensors") for d in ("a", "b"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_an_unfinished_run_in_an_earlier_runs_folder_does_not_look_finished(tmp_path, teacher_dir):
    from edgeclip.distill.trainer import TrainConfig, train

    def cfg(**kw):
        return TrainConfig(student="micro", out=str(tmp_path / "s"), teacher=str(teacher_dir), steps=4,
                           batch_size=8, procedural_size=16, eval_held_out=1, eval_seen=1, progress=False, **kw)  # fmt: skip

    train(cfg(lr=1e-3))
    assert (tmp_path / "s" / "config.json").is_file()
    train(cfg(lr=2e-3, stop_after=2))  # stopped (or killed) before its export
    # before: the first run's config.json and edgeclip_distill.json stayed beside the second
    # run's checkpoint, so `edgeclip convert` took the folder for a finished model (the old one)
    assert not (tmp_path / "s" / "config.json").exists()
    assert not (tmp_path / "s" / "edgeclip_distill.json").exists()
    train(cfg(lr=2e-3, resume=True))
    meta = json.loads((tmp_path / "s" / "edgeclip_distill.json").read_text())
    assert meta["config"]["lr"] == 2e-3 and (tmp_path / "s" / "config.json").is_file()


def test_a_resumed_run_counts_unreadable_images_as_the_uninterrupted_run(tmp_path, teacher_dir):
    from edgeclip.distill.trainer import TrainConfig, train

    pairs_with_two_missing(tmp_path)

    def cfg(out, **kw):  # 8 steps of 4 over 10 rows: the missing rows come round again
        return TrainConfig(student="micro", out=str(tmp_path / out), teacher=str(teacher_dir), steps=8, batch_size=4,
                           data=str(tmp_path / "pairs.csv"), eval_held_out=1, eval_seen=1, progress=False, **kw)  # fmt: skip

    whole = train(cfg("a"))
    train(cfg("b", stop_after=3))
    resumed = train(cfg("b", resume=True))
    la, lb = _log(tmp_path / "a"), _log(tmp_path / "b")
    assert [r["loss"] for r in lb] == [r["loss"] for r in la]
    # before: 0, 2, 2, 2, 3, 3, 4, 4 (the resumed run tried the missing rows again, counting them)
    assert [r["skipped"] for r in lb] == [r["skipped"] for r in la] and resumed["skipped"] == whole["skipped"] == 2
