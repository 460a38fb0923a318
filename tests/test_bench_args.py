"""edgeclip bench: bad arguments are refused on one line naming the flag, exit 2, before anything
is loaded or timed (so no ``-o`` folder appears); results are never lost or silently replaced."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from benchmarks import cli

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--quick", "--no-memory", "--no-e2e", "--no-gpu", "--baseline", "none", "--threads", "1",
        "--batch-sizes", "1"]  # fmt: skip


def _refused(capsys, argv: list[str]) -> str:
    """Run the CLI, expect exit 2 and a one-line error; return that line."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edgeclip bench: error: "), err
    return err[0]


@pytest.mark.parametrize(
    "value, message",
    [
        ("8,,32", "--batch-sizes '8,,32' has an empty item"),
        ("1,8,", "--batch-sizes '1,8,' has an empty item"),
        ("", "--batch-sizes '' is empty"),
        ("100000000", "--batch-sizes '100000000': 100000000 is above the largest batch size"),
    ],
)
def test_bad_batch_sizes_are_refused_before_any_work(micro_bundle, tmp_path, capsys, value, message):
    out = tmp_path / "o"
    argv = [str(micro_bundle), *FAST[:-2], f"--batch-sizes={value}", "-o", str(out)]
    assert message in _refused(capsys, argv)
    assert not out.exists()


def test_batch_whose_inputs_outgrow_memory_is_refused(micro_bundle, tmp_path, capsys):
    big = tmp_path / "big"
    shutil.copytree(micro_bundle, big)
    manifest = json.loads((big / "manifest.json").read_text())
    manifest["preprocess"].update(image_size=32768, resize_size=32768)
    manifest["architecture"]["image_size"] = 32768  # a consistent manifest of a huge-input model
    (big / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "o"
    line = _refused(capsys, [str(big), *FAST[:-2], "--batch-sizes", "64", "-o", str(out)])
    assert "--batch-sizes 64: the 64 input images alone take" in line and "smaller" in line
    assert not out.exists()


def test_threads_above_the_core_count_is_refused(micro_bundle, tmp_path, capsys):
    n = (os.cpu_count() or 1) + 1
    out = tmp_path / "o"
    line = _refused(capsys, [str(micro_bundle), *FAST[:6], "--threads", str(n), "-o", str(out)])
    from benchmarks.bench_args import usable_cores

    # a pinned process (taskset, a container's cpuset) is told about the cores it may use
    assert f"--threads {n} is more than " in line and f"this machine's {n - 1} " in line
    assert ("logical cores" in line) == (usable_cores() == n - 1)
    assert not out.exists()


def test_threads_zero_says_how_to_get_the_default(micro_bundle, tmp_path, capsys):
    line = _refused(capsys, [str(micro_bundle), "--threads", "0", "-o", str(tmp_path / "o")])
    assert "--threads must be >= 1, got 0; leave --threads out" in line


def test_device_no_runtime_offers_is_refused_not_mislabelled(micro_bundle, tmp_path, capsys):
    # it ran on the CPU and labelled every row "npu"
    out = tmp_path / "o"
    line = _refused(capsys, [str(micro_bundle), *FAST, "--device", "npu", "-o", str(out)])
    assert "--device npu: no runtime of the variants to measure can use it here" in line
    assert "ONNX Runtime device 'npu'" in line and "--device cpu" in line
    assert not out.exists()


def test_nothing_to_measure_is_refused(micro_bundle, tmp_path, capsys):
    out = tmp_path / "o"
    line = _refused(capsys, [str(micro_bundle), *FAST, "--backends", "torch", "-o", str(out)])
    assert "nothing to measure" in line and "--backends torch" in line
    assert "--baseline none" in line
    assert not out.exists()


def test_accuracy_arguments_are_checked_before_the_timing(micro_bundle, tmp_path, capsys):
    out = tmp_path / "o"
    base = [str(micro_bundle), *FAST, "-o", str(out)]
    missing = tmp_path / "no-such-folder"
    assert f"accuracy folder {missing} does not exist" in _refused(
        capsys, [*base, "--accuracy", str(missing)]
    )
    for name in ("cat", "dog"):  # two classes: one is refused (every image would be right)
        (tmp_path / "acc" / name).mkdir(parents=True)
        Image.new("RGB", (40, 30)).save(tmp_path / "acc" / name / "a.jpg")
    line = _refused(capsys, [*base, "--accuracy", str(tmp_path / "acc"), "--templates", "a photo"])
    assert "--templates: templates 'a photo' is neither a template set" in line
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--class-map", "classes.json"], "--class-map classes.json only applies to the zero-shot"),
        (["--templates", "imagenet7"], "--templates imagenet7 only applies to the zero-shot"),
        (["--checkpoint", "ckpt"], "--checkpoint ckpt is for the torch baseline, which --baseline none"),
    ],
)
def test_flags_that_would_do_nothing_are_refused(micro_bundle, tmp_path, capsys, extra, message):
    out = tmp_path / "o"
    assert message in _refused(capsys, [str(micro_bundle), *FAST, *extra, "-o", str(out)])
    assert not out.exists()


def test_checkpoint_that_is_not_one_is_refused_before_the_timing(micro_bundle, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "o"
    argv = [str(micro_bundle), "--quick", "--no-memory", "--no-e2e", "--no-gpu", "--threads", "1",
            "--batch-sizes", "1", "--checkpoint", str(tmp_path / "empty"), "-o", str(out)]  # fmt: skip
    assert f"--checkpoint {tmp_path / 'empty'} is not a CLIP checkpoint" in _refused(capsys, argv)
    assert not out.exists()


def test_output_that_cannot_be_a_results_folder_is_refused_first(micro_bundle, tmp_path, capsys):
    # each was a traceback after the whole run, its measurements lost
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    bench = [str(micro_bundle), *FAST, "-o"]
    assert f"-o {afile} is a file, not a folder" in _refused(capsys, [*bench, str(afile)])
    assert f"-o {afile / 'sub'}: {afile} is a file" in _refused(capsys, [*bench, str(afile / "sub")])
    (tmp_path / "res" / "results.json").mkdir(parents=True)
    line = _refused(capsys, [*bench, str(tmp_path / "res")])
    assert f"{tmp_path / 'res' / 'results.json'} is a folder" in line
    assert afile.read_text() == "mine"
    merge = ["--merge", str(afile), "-o", str(afile)]
    assert f"-o {afile} is a file, not a folder" in _refused(capsys, merge)


def test_unwritable_output_is_refused_before_the_timing(micro_bundle, capsys):
    # sysfs takes no new folders even from root (a chmod'ed folder would not stop root)
    line = _refused(capsys, [str(micro_bundle), *FAST, "-o", "/sys/edgeclip-bench-results"])
    assert line.startswith("edgeclip bench: error: -o /sys/edgeclip-bench-results")
    assert "pick another -o" in line


def test_replacing_an_earlier_run_is_said_up_front(micro_bundle, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"created": "2020-01-02T03:04:05Z"}))
    assert cli.main([str(micro_bundle), *FAST, "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"-o {out} already holds a run's results (results.json, created 2020-01-02T03:04:05Z)" in err
    assert "this run replaces them" in err
    assert json.loads((out / "results.json").read_text())["created"] != "2020-01-02T03:04:05Z"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no probe or partial


def _bench_process(micro_bundle: Path, out: Path, *extra: str):
    """``python -m benchmarks.cli`` on the micro bundle (Ctrl-C as a terminal delivers it) and a
    list that a thread fills with its stderr (tqdm redraws with \\r: characters, not lines)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.cli", str(micro_bundle), "--threads", "1",
         "--baseline", "none", "--batch-sizes", "1", "--no-memory", "--no-e2e", "--no-gpu",
         *extra, "-o", str(out)],  # fmt: skip
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    seen: list[str] = []

    def read():
        while chunk := proc.stderr.read1(256):
            seen.append(chunk.decode(errors="replace"))

    threading.Thread(target=read, daemon=True).start()
    return proc, seen


def _wait_for(seen: list[str], text: str) -> None:
    deadline = time.monotonic() + 180  # a loaded CI box can take long to import and warm up
    while text not in "".join(seen) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert text in "".join(seen), "".join(seen)[-2000:]


def test_ctrl_c_before_anything_is_measured_keeps_the_earlier_results(micro_bundle, tmp_path):
    # it replaced them with an empty "interrupted" run
    out = tmp_path / "o"
    out.mkdir()
    earlier = json.dumps({"created": "2020-01-02T03:04:05Z", "throughput": [{"variant": "x"}]})
    (out / "results.json").write_text(earlier)
    proc, seen = _bench_process(micro_bundle, out)
    _wait_for(seen, "MACs")  # the MACs count and the 1 s GEMM peak come before any timed row
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    assert (out / "results.json").read_text() == earlier
    time.sleep(0.2)  # the reader thread has the last words
    assert f"nothing written to -o {out}" in "".join(seen)


def test_ctrl_c_during_rounds_keeps_the_completed_ones_and_a_second_leaves_whole_files(
    micro_bundle, tmp_path
):
    """Ctrl-C in a --rounds run keeps the rounds done (they were all dropped: an empty
    throughput table); a second Ctrl-C as soon as results.json appears (the CSV, Markdown and
    plots still being written) leaves every file whole, none half-written or temporary."""
    out = tmp_path / "partial"
    # two batch sizes: the log line changes (and is printed) at each row, naming the round
    proc, seen = _bench_process(micro_bundle, out, "--rounds", "1000", "--batch-sizes", "1,2")
    _wait_for(seen, "round 2/1000")  # round 1 of the one variant is complete
    proc.send_signal(signal.SIGINT)
    while not (out / "results.json").exists() and proc.poll() is None:
        time.sleep(0.005)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    res = json.loads((out / "results.json").read_text())
    assert res["interrupted"] is True and res["settings"]["rounds"] == 1000
    assert [(r["variant"], r["batch_size"]) for r in res["throughput"]] == [
        ("onnx-fp32", 1), ("onnx-fp32", 2)]  # fmt: skip
    for row in res["throughput"]:
        assert 1 <= row["rounds"] < 1000 and row["pairs_per_s"] > 0
        assert len(row["pairs_per_s_rounds"]) == row["rounds"]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    for png in out.glob("*.png"):
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[-8:-4] == b"IEND", png
