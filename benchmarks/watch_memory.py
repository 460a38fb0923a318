"""Resident memory of an idle ``edgeclip index --watch`` between passes.

    python -m benchmarks.watch_memory [--bundle DIR] [--work DIR] [--baseline-code DIR]

A real watcher process indexes 64 photo-sized JPEGs (640x480) with the TinyCLIP-8M-shaped
random bundle (onnx-fp32), then passes every 2 s with nothing new; its VmRSS is read from
/proc after three idle passes, and its VmHWM (peak). ``--baseline-code DIR`` runs the same with
the edgeclip source in DIR (e.g. a ``git worktree`` of another commit), named by
``--baseline-label``, interleaved run by run.
Results go to ``benchmarks/results/<host>/watch_memory.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.hosts import measured_on, write_result
from benchmarks.serve_load import build_bundle, sample_images

INTERVAL_S = 2
IDLE_PASSES = 3
RUNS = 5  # the heap's state after a pass varies from run to run: median and range
REPO = Path(__file__).resolve().parents[1]


def _status(pid: int) -> dict[str, float]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return fields


def _commit(code: Path) -> str:
    """The checkout's commit, with ``+changes`` when its tracked files differ from it."""
    head = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    dirty = subprocess.run(["git", "-C", str(code), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    return (head or "unknown") + ("+changes" if dirty else "")


def idle_watcher(code: Path, bundle: Path, tree: Path, db: Path) -> dict[str, Any]:
    db.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(code)}
    cmd = [sys.executable, "-m", "edgeclip", "index", str(tree), "--db", str(db), "--model",
           str(bundle), "--backend", "onnx", "--precision", "fp32", "--quiet", "--watch", str(INTERVAL_S)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()  # "watching; ..." once the first pass is done
        if "watching" not in line:
            raise SystemExit(f"the watcher did not start: {line}{proc.stderr.read()[-2000:]}")
        time.sleep(INTERVAL_S * IDLE_PASSES + 1)
        mem = _status(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    return {"code": str(code), "commit": _commit(code), "idle_rss_mib": round(mem["VmRSS"], 1),
            "peak_rss_mib": round(mem["VmHWM"], 1)}  # fmt: skip


def _summary(label: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    idle = sorted(r["idle_rss_mib"] for r in runs)
    return {"label": label, "commit": runs[0]["commit"], "idle_rss_mib": idle[len(idle) // 2],
            "idle_rss_mib_runs": [r["idle_rss_mib"] for r in runs],
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs)}  # fmt: skip


def render_md(result: dict[str, Any]) -> str:
    on = result["measured_on"]
    lines = [
        f"# An idle `edgeclip index --watch`: resident memory ({on['cpu']}, {on['isa']})",
        "",
        f"64 JPEGs (640x480) indexed with `{result['bundle']}` (TinyCLIP-8M shape, onnx-fp32), "
        f"then {IDLE_PASSES} passes {INTERVAL_S} s apart with nothing new; VmRSS read after them, "
        f"VmHWM is the peak (first pass). MiB. Load average at start {on['load_average'][0]:.2f}.",
        "",
        f"| code | idle RSS MiB (median of {RUNS}) | runs | peak RSS MiB |",
        "|---|---|---|---|",
    ]
    for r in result["runs"]:
        lines.append(f"| {r['label']} (`{r['commit']}`) | {r['idle_rss_mib']} | "
                     f"{', '.join(map(str, r['idle_rss_mib_runs']))} | {r['peak_rss_mib']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", default=None, help="default: build the 8M-shaped one in --work")
    ap.add_argument("--work", default=None, help="where to keep the bundle and photos (default: temp)")
    ap.add_argument("--baseline-code", default=None, help="another edgeclip checkout to compare")
    ap.add_argument("--baseline-label", default="baseline", help="what that checkout is")
    ap.add_argument("--out-dir", default=None, help="default: benchmarks/results/<host>/")
    args = ap.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="watch-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    bundle = Path(args.bundle) if args.bundle else build_bundle(work)
    tree = work / "photos"
    tree.mkdir(exist_ok=True)
    for i, data in enumerate(sample_images(64)):
        (tree / f"IMG_{i:04d}.jpg").write_bytes(data)
    codes = [("this checkout", REPO)]
    if args.baseline_code:
        codes.insert(0, (args.baseline_label, Path(args.baseline_code).resolve()))
    samples: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in codes}
    for _ in range(RUNS):
        for label, code in codes:  # alternating
            samples[label].append(idle_watcher(code, bundle, tree, work / f"{label}.db"))
    runs = [_summary(label, samples[label]) for label, _ in codes]
    result = {"what": "idle edgeclip index --watch memory", "measured_on": measured_on(),
              "bundle": bundle.name, "runs": runs}  # fmt: skip
    write_result("watch_memory", result, render_md(result), args.out_dir)
    return result


if __name__ == "__main__":
    main()
