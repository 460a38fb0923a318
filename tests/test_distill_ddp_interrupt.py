"""Ctrl-C on a multi-process run (the terminal interrupts every process): one line, not one per process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # background shells start children ignoring it


def test_ctrl_c_on_two_processes_prints_one_line(tmp_path, teacher_dir):
    out, port = tmp_path / "s", _free_port()
    argv = [sys.executable, "-m", "edgeclip.distill", "distill", "--teacher", str(teacher_dir), "--student", "micro",
            "--losses", "fd=2000,icl=1,crd=1", "--steps", "100000", "--batch-size", "8", "--procedural-size", "32",
            "--eval-held-out", "1", "--checkpoint-every", "2", "--no-progress", "-o", str(out)]  # fmt: skip
    procs = []
    for r in range(2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "RANK": str(r), "WORLD_SIZE": "2",
               "LOCAL_RANK": str(r), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}  # fmt: skip
        procs.append(subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, preexec_fn=_default_sigint))  # fmt: skip
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not (out / "train_state.pt").is_file():
            assert all(p.poll() is None for p in procs), procs[0].communicate()[1][-2000:]
            time.sleep(0.2)
        assert (out / "train_state.pt").is_file(), "no checkpoint was written"
        for p in procs:
            p.send_signal(signal.SIGINT)
        errs = [p.communicate(timeout=120)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[0].returncode == 130, errs[0][-2000:]
    # before: rank 1 printed the same line again
    assert sum(e.count("interrupted;") for e in errs) == 1 and "Traceback" not in errs[0]
    assert "run the same command with --resume" in errs[0]
