"""Does this machine's speed come in spells? Two image towers timed in turn for a while.

    python -m benchmarks.cpu_spells BUNDLE [--variants onnx-int8,onnx-fp32] [--seconds 75]

A shared or virtual CPU can slow down for tens of seconds with no steal recorded (a busy
neighbour on the same core). Every second or so this records the median batch-1 call of each
variant's image tower, timed in turn, so a spell shows as a run of slow samples on both.
``edgeclip bench --interleave`` exists for such machines. Writes
``benchmarks/results/<host>/cpu_spells.{json,md}``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from .hosts import measured_on, write_result


def sample(towers: dict, pixels: np.ndarray, calls: int = 15) -> dict[str, float]:
    """Median ms of ``calls`` calls of each image tower, the towers in turn."""
    times: dict[str, list[float]] = {vid: [] for vid in towers}
    for _ in range(calls):
        for vid, image in towers.items():
            start = time.perf_counter()
            image(pixels, 1)
            times[vid].append(time.perf_counter() - start)
    return {vid: round(float(np.median(t)) * 1000, 2) for vid, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    from edgeclip.bundle import Bundle
    from edgeclip.towers import open_towers

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--variants", default="onnx-int8,onnx-fp32")
    ap.add_argument("--seconds", type=float, default=75.0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    bundle = Bundle.open(args.bundle)
    by_id = {v.id: v for v in bundle.variants}
    towers = {vid: open_towers(bundle.root, by_id[vid], args.threads, "cpu")[0]
              for vid in args.variants.split(",")}  # fmt: skip
    size = int(bundle.preprocess.get("image_size", 224))
    pixels = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    sample(towers, pixels, 5)  # warm-up
    samples, start = [], time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        samples.append({"t_s": round(time.perf_counter() - start, 1), **sample(towers, pixels)})
    result = {**measured_on(), "threads": args.threads, "variants": list(towers), "samples": samples}
    write_result("cpu_spells", result, markdown(result))
    return 0


def markdown(r: dict) -> str:
    lines = [f"# CPU spells, {r['cpu']} ({r['isa']}), {r['threads']} threads", "",
             "Batch-1 image tower, median ms of 15 calls per sample, the variants in turn.", ""]  # fmt: skip
    for vid in r["variants"]:
        ms = np.array([s[vid] for s in r["samples"]])
        # two spells when the slowest sample is 30 % over the fastest: split halfway
        fast = ms <= ((ms.min() + ms.max()) / 2 if ms.max() > 1.3 * ms.min() else ms.max())
        lines.append(f"- {vid}: fastest {ms.min():.2f} ms, slowest {ms.max():.2f} ms; "
                     f"{fast.mean():.0%} of samples in the fast spell (median "
                     f"{np.median(ms[fast]):.2f} ms), the rest median "
                     f"{np.median(ms[~fast]) if (~fast).any() else float('nan'):.2f} ms.")  # fmt: skip
    lines += ["", "| t (s) | " + " | ".join(r["variants"]) + " |",
              "|---|" + "---|" * len(r["variants"])]  # fmt: skip
    lines += [f"| {s['t_s']} | " + " | ".join(str(s[v]) for v in r["variants"]) + " |"
              for s in r["samples"][::3]]  # fmt: skip
    lines += ["", f"Load average at start: {', '.join(f'{x:.2f}' for x in r['load_average'])}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
