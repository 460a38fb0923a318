"""ONNX Runtime's CPU arena kept at its largest size, or shrunk after each run.

    python -m benchmarks.ort_arena [--bundle DIR] [--work DIR] [--rounds 3]

Fresh processes, alternating ``EDGECLIP_ORT_ARENA_SHRINK=0`` and ``=1``, each through edgeclip's
own backend on the TinyCLIP-8M-shaped random bundle (onnx-fp32): 64 photos (640x480 JPEGs) at
batch 32, then images at batch 1, texts at batch 1 and 8 (medians of timed calls); then the
resident set when idle (after ``gc.collect``) and the peak (VmHWM), in MiB. Without shrinking,
the arena keeps the largest batch's buffers for the life of the session: what a serve worker
or an index watcher holds between bursts. Results go to
``benchmarks/results/<host>/ort_arena.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.hosts import measured_on, write_result
from benchmarks.serve_load import build_bundle, sample_images

_CHILD = r"""
import gc, glob, json, statistics, sys, time
import edgeclip
model = edgeclip.load(sys.argv[1], backend="onnx", precision="fp32", verify=False)
pixels = model.preprocessor(sorted(glob.glob(sys.argv[2] + "/*.jpg")))[0]
texts = ["a photo of a dog on the beach at sunset"] * 8

def rate(fn, n, items):
    fn()
    times = []
    for _ in range(n):
        start = time.perf_counter(); fn(); times.append(time.perf_counter() - start)
    return items / statistics.median(times)

def status(key):
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) / 1024

out = {"images_per_s_b32": rate(lambda: model.encode_pixels(pixels, batch_size=32), 3, len(pixels)),
       "images_per_s_b1": rate(lambda: model.encode_pixels(pixels[:1]), 40, 1),
       "texts_per_s_b1": rate(lambda: model.encode_text(texts[:1]), 300, 1),
       "texts_per_s_b8": rate(lambda: model.encode_text(texts), 100, 8)}
del pixels
gc.collect()
time.sleep(0.5)
out.update(idle_rss_mib=status("VmRSS"), peak_rss_mib=status("VmHWM"))
print(json.dumps(out))
"""

# Memory only, under other batch patterns (image tower at each size, then the text tower at up
# to 8): what dynamic batching sends a server, and a sweep that grows the batch one at a time.
_PATTERNS_CHILD = r"""
import gc, json, sys
import numpy as np
import edgeclip
model = edgeclip.load(sys.argv[1], backend="onnx", precision="fp32", verify=False)
rng = np.random.default_rng(0)
pixels = rng.standard_normal((32, 3, 224, 224)).astype(np.float32)
sizes = {"random 1-32 (dynamic batching)": [int(b) for b in rng.integers(1, 33, 48)],
         "ascending 1, 2, ..., 32": list(range(1, 33))}[sys.argv[2]]
for b in sizes:
    model.encode_pixels(pixels[:b], batch_size=b)
    model.encode_text(["a photo of a cat"] * min(b, 8))
del pixels
gc.collect()
status = lambda key: int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) / 1024
print(json.dumps({"idle_rss_mib": status("VmRSS"), "peak_rss_mib": status("VmHWM")}))
"""
PATTERNS = ("random 1-32 (dynamic batching)", "ascending 1, 2, ..., 32")

KEYS = ("idle_rss_mib", "peak_rss_mib", "images_per_s_b32", "images_per_s_b1", "texts_per_s_b1",
        "texts_per_s_b8")  # fmt: skip


def run_once(bundle: Path, photos: Path, shrink: str, pattern: str | None = None) -> dict[str, float]:
    env = {**os.environ, "EDGECLIP_ORT_ARENA_SHRINK": shrink}
    argv = [_CHILD, str(bundle), str(photos)] if pattern is None else [_PATTERNS_CHILD, str(bundle), pattern]
    done = subprocess.run([sys.executable, "-c", *argv], env=env, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"EDGECLIP_ORT_ARENA_SHRINK={shrink} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(bundle: Path, photos: Path, rounds: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {"0": [], "1": []}
    for _ in range(rounds):
        for shrink in runs:  # alternating, so the VM's drift hits both alike
            runs[shrink].append(run_once(bundle, photos, shrink))
    return {shrink: {key: round(statistics.median(r[key] for r in rs), 1) for key in KEYS}
            | {"runs": rs} for shrink, rs in runs.items()}  # fmt: skip


def measure_patterns(bundle: Path, rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pattern in PATTERNS:
        runs: dict[str, list[dict[str, float]]] = {"0": [], "1": []}
        for _ in range(rounds):
            for shrink in runs:
                runs[shrink].append(run_once(bundle, Path("."), shrink, pattern))
        out[pattern] = {shrink: {key: round(statistics.median(r[key] for r in rs), 1)
                                 for key in ("idle_rss_mib", "peak_rss_mib")}
                        for shrink, rs in runs.items()}  # fmt: skip
    return out


def render_md(result: dict[str, Any]) -> str:
    on, m = result["measured_on"], result["medians"]
    lines = [
        f"# ONNX Runtime CPU arena: kept or shrunk after each run ({on['cpu']}, {on['isa']})",
        "",
        f"Bundle `{result['bundle']}` (TinyCLIP-8M shape), onnx-fp32, 2 threads, fresh process "
        f"per run, {result['rounds']} rounds alternating; medians. Idle = resident after 64 "
        f"photos at batch 32 and the timed calls; MiB. Load average at start "
        f"{on['load_average'][0]:.2f}.",
        "",
        "| EDGECLIP_ORT_ARENA_SHRINK | idle RSS MiB | peak RSS MiB | images/s b32 | images/s b1 | "
        "texts/s b1 | texts/s b8 |",
        "|---|---|---|---|---|---|---|",
    ]
    for shrink, label in (("0", "0 (arena kept)"), ("1", "1 (shrunk, the default)")):
        row = m[shrink]
        lines.append(f"| {label} | " + " | ".join(f"{row[k]:,}" for k in KEYS) + " |")
    lines += ["", "Memory under other batch patterns (48 random batch sizes, or one run at each size "
              "from 1 to 32; each followed by texts at up to 8), idle / peak MiB:", "",
              "| pattern | kept: idle | kept: peak | shrunk: idle | shrunk: peak |", "|---|---|---|---|---|"]
    for pattern, row in result.get("patterns", {}).items():
        lines.append(f"| {pattern} | {row['0']['idle_rss_mib']} | {row['0']['peak_rss_mib']} | "
                     f"{row['1']['idle_rss_mib']} | {row['1']['peak_rss_mib']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", default=None, help="default: build the 8M-shaped one in --work")
    ap.add_argument("--work", default=None, help="where to keep the bundle and photos (default: temp)")
    ap.add_argument("--rounds", type=int, default=3, help="processes per setting (default 3)")
    ap.add_argument("--out-dir", default=None, help="default: benchmarks/results/<host>/")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error(f"--rounds {args.rounds}: give at least 1")
    work = Path(args.work or tempfile.mkdtemp(prefix="ort-arena-"))
    photos = work / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(sample_images(64)):
        (photos / f"{i:03d}.jpg").write_bytes(data)
    bundle = Path(args.bundle) if args.bundle else build_bundle(work)
    medians = measure(bundle, photos, args.rounds)
    result = {"what": "ONNX Runtime CPU arena shrinkage", "measured_on": measured_on(),
              "bundle": bundle.name, "rounds": args.rounds, "medians": medians,
              "patterns": measure_patterns(bundle, args.rounds)}  # fmt: skip
    write_result("ort_arena", result, render_md(result), args.out_dir)
    return result


if __name__ == "__main__":
    main()
