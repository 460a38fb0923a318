"""Peak memory and speed of ``encode_image`` on a long list of photo files.

    python -m benchmarks.encode_memory [--bundle DIR] [--work DIR] [--counts 256,1024,2048]

Each count runs in fresh processes, alternating two ways of embedding the same JPEGs (640x480):

* ``whole list``: ``model.encode_pixels(model.preprocessor(paths)[0])``, every image's pixels in
  one array first, which is what ``encode_image`` did until 2026-12-04;
* ``encode_image``: window by window (``edgeclip.preprocess.WINDOW``), the next window decoded
  on a thread while the model runs on this one.

Peak RSS is the process's VmHWM (MiB); images/s counts the embedding call alone, the sessions
already built. Without ``--bundle`` it builds the TinyCLIP-8M-shaped random bundle. Results go to
``benchmarks/results/<host>/encode_memory.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.hosts import write_result
from benchmarks.serve_load import build_bundle, host_info, sample_images

DISTINCT_PHOTOS = 64
ROUNDS = 2

_CHILD = r"""
import glob, json, sys, time
import edgeclip
bundle, folder, count, how = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
model = edgeclip.load(bundle, backend="onnx", precision="fp32", verify=False)
paths = sorted(glob.glob(folder + "/*.jpg"))[:count]
model.encode_image(paths[:2])
start = time.perf_counter()
if how == "whole list":
    vectors = model.encode_pixels(model.preprocessor(paths)[0])
else:
    vectors = model.encode_image(paths)
seconds = time.perf_counter() - start
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"images_per_s": count / seconds, "peak_mib": hwm / 1024,
                  "rows": vectors.shape[0], "variant": model.variant.id}))
"""

WAYS = ("whole list", "encode_image")


def photo_folder(work: Path, count: int) -> Path:
    """``count`` JPEG files, copies of DISTINCT_PHOTOS distinct 640x480 photos."""
    folder = work / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    photos = sample_images(DISTINCT_PHOTOS)
    for i in range(count):
        path = folder / f"{i:05d}.jpg"
        if not path.exists():
            path.write_bytes(photos[i % DISTINCT_PHOTOS])
    return folder


def run_once(bundle: Path, folder: Path, count: int, how: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", _CHILD, str(bundle), str(folder), str(count), how],
                          capture_output=True, text=True, timeout=1800)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"{how} on {count} images failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(bundle: Path, folder: Path, counts: list[int]) -> list[dict[str, Any]]:
    rows = []
    for count in counts:
        runs: dict[str, list[dict[str, Any]]] = {how: [] for how in WAYS}
        for _ in range(ROUNDS):
            for how in WAYS:  # alternating, so drift in the VM's speed hits both alike
                runs[how].append(run_once(bundle, folder, count, how))
        for how in WAYS:
            rows.append({"images": count, "how": how, "variant": runs[how][0]["variant"],
                         "peak_mib": round(max(r["peak_mib"] for r in runs[how]), 1),
                         "images_per_s": round(statistics.median(r["images_per_s"] for r in runs[how]), 1),
                         "images_per_s_runs": [round(r["images_per_s"], 1) for r in runs[how]]})  # fmt: skip
    return rows


def render_md(result: dict[str, Any]) -> str:
    host = result["host"]
    lines = [
        f"# encode_image on a long list of photos: {host['label']}",
        "",
        f"{host['cpu']['cpu']} ({', '.join(host['cpu']['isa']) or 'no AVX'}), {host['cpus']} CPUs, "
        f"onnxruntime {host['onnxruntime']}. Bundle `{result['bundle']}` (TinyCLIP-8M shape), "
        f"variant `{result['rows'][0]['variant']}`, 640x480 JPEG files, fresh process per run, "
        f"{ROUNDS} runs per row alternating the two ways. Peak RSS is VmHWM (MiB, the larger "
        f"run); images/s is the median. Load average at start {host['loadavg_start'][0]:.2f}.",
        "",
        "| images | how | peak RSS MiB | images/s | runs |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['images']:,} | {r['how']} | {r['peak_mib']} | {r['images_per_s']} | "
                     f"{', '.join(map(str, r['images_per_s_runs']))} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", default=None, help="default: build the 8M-shaped one in --work")
    ap.add_argument("--work", default=None, help="where to keep the bundle and photos (default: temp)")
    ap.add_argument("--counts", default="256,1024,2048", help="list lengths, comma-separated")
    ap.add_argument("--out-dir", default=None, help="default: benchmarks/results/<host>/")
    args = ap.parse_args(argv)
    try:
        counts = [int(c) for c in args.counts.split(",")]
    except ValueError:
        ap.error(f"--counts {args.counts!r}: give whole numbers, e.g. 256,1024")
    if not counts or min(counts) < 1:
        ap.error(f"--counts {args.counts!r}: give positive whole numbers, e.g. 256,1024")
    work = Path(args.work or tempfile.mkdtemp(prefix="encode-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    bundle = Path(args.bundle) if args.bundle else build_bundle(work)
    folder = photo_folder(work, max(counts))
    result = {"what": "encode_image peak memory on long lists", "host": host_info(),
              "bundle": bundle.name, "rows": measure(bundle, folder, counts)}  # fmt: skip
    write_result("encode_memory", result, render_md(result), args.out_dir)
    return result


if __name__ == "__main__":
    main()
