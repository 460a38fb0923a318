"""Rank 0 working alone (drawing the evaluation set, evaluating, exporting) longer than --dist-timeout.

gloo's monitored_barrier bounds the wait by its ``timeout`` on rank 0 only; the other processes
waited with the group's timeout (``--dist-timeout``) and failed the run (torchrun then killed
rank 0 in the middle of its export). Two real gloo processes, launched as torchrun does.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[1]

# Rank 0 sleeps 4 s (or exits) inside rank0_alone; the group's own timeout is 1 s.
CHILD = textwrap.dedent(
    """
    import os, sys, time, datetime
    import torch.distributed as d
    from edgeclip.distill import dist
    d.init_process_group("gloo", timeout=datetime.timedelta(seconds=1))
    try:
        with dist.rank0_alone(60.0):
            if d.get_rank() == 0:
                if sys.argv[1] == "die":
                    os._exit(3)
                time.sleep(4)
        print("waited", flush=True)
    except Exception as e:
        print("failed:", dist.is_peer_failure(e), flush=True)
    """
)


def _env(rank: int, port: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "RANK": str(rank), "WORLD_SIZE": "2",
            "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two(argv: list[str], timeout: float = 120) -> list[tuple[int, str, str]]:
    port = _free_port()
    procs = [subprocess.Popen(argv, cwd=REPO, env=_env(r, port), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r in range(2)]  # fmt: skip
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
        return [(p.returncode, *o) for p, o in zip(procs, outs)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_the_others_wait_for_rank0_past_the_group_timeout_and_fail_when_it_dies():
    (rc0, out0, err0), (rc1, out1, err1) = _two([sys.executable, "-c", CHILD, "sleep"])
    assert out0.strip() == out1.strip() == "waited", (err0[-1500:], err1[-1500:])
    _, (rc1, out1, err1) = _two([sys.executable, "-c", CHILD, "die"])
    assert out1.strip() == "failed: True", err1[-1500:]  # no hang: rank 0's end is seen at once


def test_a_long_evaluation_on_rank0_does_not_fail_the_run(tmp_path, teacher_dir):
    # 3000 held-out images per pair: drawing them and evaluating take rank 0 longer than the
    # 3 s --dist-timeout (before: 'Timed out waiting 3000ms', then the final barrier's error)
    out = tmp_path / "s"
    argv = [sys.executable, "-m", "edgeclip.distill", "distill", "--teacher", str(teacher_dir), "--student",
            "micro", "--losses", "fd=2000,icl=1,crd=1", "--steps", "2", "--batch-size", "8", "--procedural-size",
            "32", "--eval-every", "2", "--eval-held-out", "3000", "--dist-timeout", "3", "--no-progress",
            "-o", str(out)]  # fmt: skip
    for rc, _, err in _two(argv, timeout=240):
        assert rc == 0, err[-2000:]
    assert (out / "model.safetensors").is_file()


def test_a_process_whose_peers_never_join_stops_with_one_line(tmp_path, teacher_dir):
    # rank 0 of 2 started alone (before: torch's DistStoreError traceback)
    argv = [sys.executable, "-m", "edgeclip.distill", "distill", "--teacher", str(teacher_dir), "--student",
            "micro", "--steps", "2", "--batch-size", "8", "--procedural-size", "16", "--dist-timeout", "3",
            "--no-progress", "-o", str(tmp_path / "s")]  # fmt: skip
    p = subprocess.run(argv, cwd=REPO, env=_env(0, _free_port()), capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "error: process 0 of 2: the processes did not all join at 127.0.0.1:" in p.stderr
    assert "within --dist-timeout 3 s" in p.stderr and "torchrun --nproc_per_node 2" in p.stderr
