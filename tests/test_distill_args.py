"""Bad input to `edgeclip distill` / `edgeclip train-teacher`: one line naming the input and the
fix, exit status 2, before any long work (a teacher trained or read); Ctrl-C stops with a line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

from edgeclip.distill.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = ["--steps", "1", "--batch-size", "4", "--procedural-size", "8", "--eval-held-out", "1",
        "--no-progress"]  # fmt: skip


def _distill(teacher, out, *extra) -> list[str]:
    return ["distill", "--teacher", str(teacher), "--student", "micro", *TINY, *extra, "-o", str(out)]


def _refused(capsys, argv, *names) -> str:
    """``argv`` exits 2 with one error line that names every one of ``names``."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert "Traceback" not in err
    for name in names:
        assert str(name) in err, (name, err)
    return err


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_teacher_folders_that_are_no_clip_model_are_refused_by_name(tmp_path, teacher_dir, capsys):
    out = tmp_path / "out"
    no_weights = _copy(teacher_dir, tmp_path / "no-weights")
    (no_weights / "model.safetensors").unlink()
    garbage = _copy(teacher_dir, tmp_path / "garbage")
    (garbage / "model.safetensors").write_bytes(b"not a safetensors file")
    truncated = _copy(teacher_dir, tmp_path / "truncated")
    blob = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    bad_json = _copy(teacher_dir, tmp_path / "bad-json")
    (bad_json / "config.json").write_text("{not json")
    bert = _copy(teacher_dir, tmp_path / "bert")
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    deeper = _copy(teacher_dir, tmp_path / "deeper")  # config.json says more layers than stored
    cfg = json.loads((deeper / "config.json").read_text())
    cfg["text_config"]["num_hidden_layers"] += 1
    (deeper / "config.json").write_text(json.dumps(cfg))
    wider = _copy(teacher_dir, tmp_path / "wider")  # config.json says wider MLPs than stored
    cfg = json.loads((wider / "config.json").read_text())
    cfg["text_config"]["intermediate_size"] *= 2
    (wider / "config.json").write_text(json.dumps(cfg))
    cases = [
        (tmp_path / "nope", "does not exist"),
        (teacher_dir / "config.json", "is a file"),
        (no_weights, "no weights"),
        (garbage, "weights cannot be read"),
        (truncated, "weights cannot be read"),
        (bad_json, "config.json is not a readable JSON"),
        (bert, "'bert' model, not a CLIP"),
        (deeper, "weights do not fit config.json"),
        (wider, "weights do not fit config.json"),
    ]
    for teacher, why in cases:
        _refused(capsys, _distill(teacher, out), "--teacher", teacher, why)
    assert not out.exists()  # nothing written for a refused run


def test_a_damaged_teacher_gives_one_error_line_without_transformers_report(tmp_path, teacher_dir):
    wider = _copy(teacher_dir, tmp_path / "wider")
    cfg = json.loads((wider / "config.json").read_text())
    cfg["vision_config"]["intermediate_size"] *= 2
    (wider / "config.json").write_text(json.dumps(cfg))
    r = subprocess.run([sys.executable, "-m", "edgeclip.distill", *_distill(wider, tmp_path / "o")], cwd=REPO,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "LOAD REPORT" not in r.stderr and "MISMATCH" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --teacher {str(wider)!r}: the weights do not fit config.json")


def test_a_damaged_start_from_is_named_as_start_from(tmp_path, teacher_dir, capsys):
    garbage = _copy(teacher_dir, tmp_path / "garbage")
    (garbage / "model.safetensors").write_bytes(b"\0" * 64)
    base = ["--teacher", str(teacher_dir), "--auto-inherit", "--steps", "2", "--batch-size", "4",
            "-o", str(tmp_path / "o")]  # fmt: skip
    _refused(capsys, [*base, "--start-from", str(garbage)], "--start-from", garbage, "cannot be read")
    missing = tmp_path / "missing"
    _refused(capsys, [*base, "--start-from", str(missing)], "--start-from", missing, "does not exist")


def test_an_output_that_is_a_file_a_foreign_folder_or_the_teacher_is_refused(tmp_path, teacher_dir, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "cat.jpg").write_bytes(b"jpeg")
    before = {p.name: p.read_bytes() for p in teacher_dir.iterdir()}
    _refused(capsys, _distill(teacher_dir, a_file), "-o", a_file, "is a file")
    _refused(capsys, _distill(teacher_dir, a_file / "sub"), "-o", a_file, "no folder can be made")
    _refused(capsys, _distill(teacher_dir, ""), "-o is empty")
    _refused(capsys, _distill(teacher_dir, photos), "-o", photos, "cat.jpg", "new or empty folder")
    _refused(capsys, _distill(teacher_dir, teacher_dir), "-o", teacher_dir, "--teacher folder")
    tt = ["train-teacher", "--arch", "micro", *TINY, "-o", str(a_file)]
    _refused(capsys, tt, "-o", a_file, "is a file")
    assert a_file.read_text() == "mine" and os.listdir(photos) == ["cat.jpg"]
    assert {p.name: p.read_bytes() for p in teacher_dir.iterdir()} == before  # teacher untouched
    run = tmp_path / "run"  # an earlier run's folder may be written again
    assert main(_distill(teacher_dir, run, "--losses", "clip=1")) == 0
    assert main(_distill(teacher_dir, run, "--losses", "clip=1")) == 0
    capsys.readouterr()


def test_losses_that_train_nothing_are_refused(tmp_path, teacher_dir, capsys):
    for spec in ("clip=0", "fd=0,clip=0", "affinity=0"):
        _refused(capsys, _distill(teacher_dir, tmp_path / "o", "--losses", spec), "--losses", spec, "> 0")


@pytest.mark.parametrize(
    "flag,value",
    [("--lr", "0"), ("--lr", "-1"), ("--lr", "nan"), ("--weight-decay", "-0.1"), ("--warmup", "2"),
     ("--warmup", "-0.5"), ("--grad-clip", "nan"), ("--grad-clip", "-1"), ("--seed", "-1"),
     ("--procedural-size", "0"), ("--eval-every", "-1"), ("--eval-held-out", "0"),
     ("--checkpoint-every", "-2"), ("--stop-after", "0"), ("--dist-timeout", "0"),
     ("--mask-ratio", "1"), ("--mask-ratio", "-0.5"), ("--affinity-scale", "-5"),
     ("--affinity-scale", "abc")],
)  # fmt: skip
def test_numbers_no_run_can_use_are_refused_by_flag(tmp_path, teacher_dir, capsys, flag, value):
    err = _refused(capsys, _distill(teacher_dir, tmp_path / "o", flag, value), flag)
    assert value.lstrip("-") in err  # the value given, as read
    assert not (tmp_path / "o").exists()


def test_auto_inherit_settings_are_refused_where_they_would_be_ignored(tmp_path, teacher_dir, capsys):
    out = tmp_path / "o"
    for flag, value in (("--target-sparsity", "0.3"), ("--prune-step", "1"), ("--mask-kinds", "heads"),
                        ("--prune-layout", "uniform"), ("--mask-lr", "0.5")):  # fmt: skip
        _refused(capsys, _distill(teacher_dir, out, flag, value), flag, "--auto-inherit")
    # with --auto-inherit the student is the pruned teacher: --student would be ignored
    _refused(capsys, _distill(teacher_dir, out, "--auto-inherit"), "--student 'micro'", "--auto-inherit")
    auto = ["--teacher", str(teacher_dir), "--auto-inherit", "--steps", "2", "--batch-size", "4", "-o", str(out)]
    for flag, value in (("--mask-lr", "-1"), ("--lambda-lr", "0"), ("--sparsity-warmup", "2")):
        _refused(capsys, [*auto, flag, value], flag, value)


def test_a_teacher_cache_that_is_a_file_is_refused(tmp_path, teacher_dir, capsys):
    cache = tmp_path / "cache.pt"
    cache.write_bytes(b"x")
    argv = _distill(teacher_dir, tmp_path / "o", "--teacher-cache", str(cache))
    _refused(capsys, argv, "--teacher-cache", cache, "is a file")


def test_resume_without_a_checkpoint_or_from_a_damaged_one_is_refused(tmp_path, teacher_dir, capsys):
    _refused(capsys, _distill(teacher_dir, tmp_path / "fresh", "--resume"), "--resume", "train_state.pt")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "train_log.jsonl").write_text("")
    (damaged / "train_state.pt").write_bytes(b"junk, not a checkpoint")
    _refused(capsys, _distill(teacher_dir, damaged, "--resume"), damaged / "train_state.pt", "damaged")


def test_flags_are_never_abbreviations_of_other_flags(tmp_path, teacher_dir, capsys):
    # `train-teacher --teacher DIR` used to mean --teacher-cache DIR and train a teacher for minutes
    cases = [(["train-teacher", "--teacher", str(teacher_dir), "-o", str(tmp_path / "t")], "--teacher"),
             ([*_distill(teacher_dir, tmp_path / "d"), "--target", "0.3"], "--target 0.3")]  # fmt: skip
    for argv, name in cases:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        assert "unrecognized arguments: " + name in capsys.readouterr().err
    assert not (tmp_path / "t").exists() and not (tmp_path / "d").exists()


def test_bad_arguments_are_refused_before_the_procedural_teacher_is_trained(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EDGECLIP_CACHE", str(tmp_path / "cache"))
    a_file = tmp_path / "f"
    a_file.write_text("x")
    base = ["--teacher", "procedural-teacher", "--no-progress"]
    cases = [
        (["--losses", "kd=1"], "unknown loss 'kd'"),
        (["--losses", "clip=0"], "--losses"),
        (["--student", "tinyclip-9m"], "tinyclip-9m"),
        (["--lr", "0"], "--lr"),
        (["--data", str(tmp_path / "pairs.csv")], "pairs.csv"),
        (["--resume"], "--resume"),
        (["--inherit", "--auto-inherit"], "exclude each other"),
    ]
    for extra, name in cases:
        _refused(capsys, [*base, *extra, "-o", str(tmp_path / "o")], name)
    _refused(capsys, [*base, "-o", str(a_file)], "-o", a_file)
    assert not (tmp_path / "cache").exists()  # no teacher training was started


def test_ctrl_c_stops_with_one_line_and_status_130(tmp_path, teacher_dir):
    out = tmp_path / "long"
    argv = [*_distill(teacher_dir, out), "--checkpoint-every", "1"]
    argv[argv.index("--steps") + 1] = "1000000"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    # A shell without job control (CI's background jobs) starts children with SIGINT ignored:
    # give the run the disposition a terminal's Ctrl-C meets.
    proc = subprocess.Popen([sys.executable, "-m", "edgeclip.distill", *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        deadline = time.monotonic() + 300  # a guard against a hang, not a measurement
        while not (out / "train_state.pt").is_file() and proc.poll() is None:
            assert time.monotonic() < deadline, "the run wrote no checkpoint"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "edgeclip distill: interrupted" in err and "--resume" in err
    assert str(out / "train_state.pt") in err
