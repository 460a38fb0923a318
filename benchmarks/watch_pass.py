"""What ``edgeclip index --watch`` costs between arrivals: one pass over an unchanged tree.

    python -m benchmarks.watch_pass [--files 10000] [--work DIR]

A tree of small PNG files in 100 folders is indexed once with the small CLIP of
``benchmarks/index_model.py`` (the model does not matter to an unchanged pass: nothing is
embedded), then ``Index.update`` runs ROUNDS passes with nothing changed (walk, stat, compare,
commit nothing) and one pass after 10 new files arrived. Process CPU time is reported next to
wall time, because on a Pi the question is how much of a core the watcher takes. Results go to
``benchmarks/results/<host>/watch_pass.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.hosts import measured_on, write_result

ROUNDS = 5
FOLDERS = 100
ARRIVALS = 10


def make_tree(root: Path, files: int) -> None:
    from converters.calibration import synthetic_pairs

    images = synthetic_pairs(48, 32, seed=3)[0]
    for i in range(files):
        folder = root / f"{i % FOLDERS:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"IMG_{i:06d}.png"
        if not path.exists():
            images[i % len(images)].save(path)


def timed_pass(ix: Any, root: Path) -> dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    report = ix.update([root])
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
            "embedded": report.embedded, "unchanged": report.unchanged}  # fmt: skip


def measure(root: Path, db: Path, files: int) -> dict[str, Any]:
    from benchmarks.index_model import cached_bundle
    from benchmarks.search_quality import STEPS
    from converters.calibration import synthetic_pairs
    from edgeclip.index import Index

    make_tree(root, files)
    with Index(db, str(cached_bundle(STEPS))) as ix:
        first = timed_pass(ix, root)
        idle = [timed_pass(ix, root) for _ in range(ROUNDS)]
        images = synthetic_pairs(ARRIVALS, 32, seed=5)[0]
        for i, im in enumerate(images):
            im.save(root / "000" / f"NEW_{i:03d}.png")
        arrivals = timed_pass(ix, root)
    return {"files": files, "first_pass": first, "idle_passes": idle, "after_arrivals": arrivals,
            "idle_wall_s": statistics.median(p["wall_s"] for p in idle),
            "idle_cpu_s": statistics.median(p["cpu_s"] for p in idle)}  # fmt: skip


def render_md(result: dict[str, Any]) -> str:
    m, on = result["measured"], result["measured_on"]
    per_file_us = 1e6 * m["idle_cpu_s"] / m["files"]
    return "\n".join([
        f"# `edgeclip index --watch`: the cost of a pass with nothing new ({on['cpu']}, {on['isa']})",
        "",
        f"{m['files']:,} PNG files in {FOLDERS} folders, already indexed. Median of {ROUNDS} "
        f"unchanged passes: **{m['idle_wall_s']:.3f} s wall, {m['idle_cpu_s']:.3f} s CPU** "
        f"({per_file_us:.0f} µs of CPU per file). With `--watch 300` that is "
        f"{100 * m['idle_cpu_s'] / 300:.3f} % of one core.",
        "",
        f"After {ARRIVALS} new files: {m['after_arrivals']['embedded']} embedded in "
        f"{m['after_arrivals']['wall_s']:.3f} s wall. First pass (embedding everything): "
        f"{m['first_pass']['wall_s']:.1f} s. Load average at start {on['load_average'][0]:.2f}.",
        "",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=10_000, help="files in the tree (default 10,000)")
    ap.add_argument("--work", default=None, help="where to keep the tree (default: temp)")
    ap.add_argument("--out-dir", default=None, help="default: benchmarks/results/<host>/")
    args = ap.parse_args(argv)
    if args.files < 1:
        ap.error(f"--files {args.files}: give a positive number of files")
    work = Path(args.work or tempfile.mkdtemp(prefix="watch-pass-"))
    result = {"what": "edgeclip index --watch: an unchanged pass", "measured_on": measured_on()}
    result["measured"] = measure(work / "tree", work / "photos.db", args.files)
    write_result("watch_pass", result, render_md(result), args.out_dir)
    return result


if __name__ == "__main__":
    main()
