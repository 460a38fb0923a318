"""OpenVINO's memory per input shape: exact batch sizes, or padded to powers of two.

    python -m benchmarks.openvino_shapes [--bundle DIR] [--work DIR] [--rounds 2]

The CPU plugin keeps memory for every input shape a compiled model has run, so a server whose
dynamic batches take every size from 1 to 32 grows far past one that runs a few sizes. Fresh
processes, alternating ``EDGECLIP_OV_BATCH_BUCKETS=0`` (exact) and ``=1`` (next power of two,
the default), through edgeclip's own backend on the TinyCLIP-8M-shaped random bundle: 48 random
batch sizes 1-32 (image tower, then texts at up to 8), then the resident set (idle) and the
peak, MiB, and the pattern's seconds; images/s at batch 1 and at batch 24 (which the buckets
pad to 32: their cost). Without ``--bundle`` it converts one with onnx and openvino, fp32 and
int8. Results go to ``benchmarks/results/<host>/openvino_shapes.{json,md}``.
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

VARIANTS = ("int8", "fp32")

_CHILD = r"""
import gc, json, statistics, sys, time
import numpy as np
import edgeclip
model = edgeclip.load(sys.argv[1], backend="openvino", precision=sys.argv[2], verify=False)
rng = np.random.default_rng(0)
pixels = rng.standard_normal((32, 3, 224, 224)).astype(np.float32)

def rate(b, n=12):
    model.encode_pixels(pixels[:b], batch_size=b)
    times = []
    for _ in range(n):
        start = time.perf_counter(); model.encode_pixels(pixels[:b], batch_size=b)
        times.append(time.perf_counter() - start)
    return b / statistics.median(times)

b1, b24 = rate(1), rate(24, 5)
start = time.perf_counter()
for b in (int(b) for b in rng.integers(1, 33, 48)):
    model.encode_pixels(pixels[:b], batch_size=b)
    model.encode_text(["a photo of a cat"] * min(b, 8))
seconds = time.perf_counter() - start
del pixels
gc.collect()
status = lambda key: int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) / 1024
print(json.dumps({"idle_rss_mib": status("VmRSS"), "peak_rss_mib": status("VmHWM"),
                  "pattern_s": seconds, "images_per_s_b1": b1, "images_per_s_b24": b24,
                  "variant": model.variant.id}))
"""
KEYS = ("idle_rss_mib", "peak_rss_mib", "pattern_s", "images_per_s_b1", "images_per_s_b24")


def build_bundle(work: Path) -> Path:
    bundle = work / "tinyclip-8m-random-ov"
    if (bundle / "manifest.json").is_file():
        return bundle
    from converters.bundle_writer import convert
    from converters.fixtures import write_random_checkpoint

    ckpt = write_random_checkpoint(work / "ckpt", arch="tinyclip-8m", fmt="hf", seed=0)
    return Path(convert(ckpt, bundle, name=bundle.name, backends=["onnx", "openvino"],
                        precisions=["fp32", "int8"], overwrite=True, progress=False))  # fmt: skip


def run_once(bundle: Path, precision: str, buckets: str) -> dict[str, Any]:
    env = {**os.environ, "EDGECLIP_OV_BATCH_BUCKETS": buckets}
    done = subprocess.run([sys.executable, "-c", _CHILD, str(bundle), precision], env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"openvino {precision}, buckets={buckets} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(bundle: Path, rounds: int) -> list[dict[str, Any]]:
    rows = []
    for precision in VARIANTS:
        runs: dict[str, list[dict[str, Any]]] = {"0": [], "1": []}
        for _ in range(rounds):
            for buckets in runs:  # alternating
                runs[buckets].append(run_once(bundle, precision, buckets))
        for buckets, rs in runs.items():
            rows.append({"variant": rs[0]["variant"], "buckets": buckets, "runs": rs,
                         **{k: round(statistics.median(r[k] for r in rs), 2) for k in KEYS}})  # fmt: skip
    return rows


def render_md(result: dict[str, Any]) -> str:
    on = result["measured_on"]
    lines = [
        f"# OpenVINO memory per batch shape: exact sizes or powers of two ({on['cpu']}, {on['isa']})",
        "",
        f"Bundle `{result['bundle']}` (TinyCLIP-8M shape), 2 threads, fresh process per run, "
        f"{result['rounds']} rounds alternating; medians. Pattern: 48 random batch sizes 1-32, "
        f"image tower then texts at up to 8. MiB. Load average at start {on['load_average'][0]:.2f}.",
        "",
        "| variant | EDGECLIP_OV_BATCH_BUCKETS | idle RSS MiB | peak RSS MiB | pattern s | "
        "images/s b1 | images/s b24 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        label = "1 (powers of two, the default)" if r["buckets"] == "1" else "0 (exact sizes)"
        lines.append(f"| {r['variant']} | {label} | " + " | ".join(f"{r[k]:,}" for k in KEYS) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", default=None, help="a bundle with openvino fp32 and int8 variants")
    ap.add_argument("--work", default=None, help="where to build the bundle (default: temp)")
    ap.add_argument("--rounds", type=int, default=2, help="processes per setting (default 2)")
    ap.add_argument("--out-dir", default=None, help="default: benchmarks/results/<host>/")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error(f"--rounds {args.rounds}: give at least 1")
    work = Path(args.work or tempfile.mkdtemp(prefix="openvino-shapes-"))
    work.mkdir(parents=True, exist_ok=True)
    bundle = Path(args.bundle) if args.bundle else build_bundle(work)
    result = {"what": "OpenVINO memory per batch shape", "measured_on": measured_on(),
              "bundle": bundle.name, "rounds": args.rounds, "rows": measure(bundle, args.rounds)}  # fmt: skip
    write_result("openvino_shapes", result, render_md(result), args.out_dir)
    return result


if __name__ == "__main__":
    main()
