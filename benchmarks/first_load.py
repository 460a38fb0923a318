"""The first ``backend="auto"`` load on a host, as a user meets it: a fresh process with an
empty ``EDGECLIP_HOME`` times the bundle's variants, checks the one it serves and returns.

    python -m benchmarks.first_load BUNDLE [--holds auto,2] [--runs 2] [--before OLD_CHECKOUT]

One row per ``EDGECLIP_PROBE_HOLD`` setting (``auto``: every variant open at once where
≥ 4 GiB are free; 2: the low-memory path): wall time of ``import edgeclip`` + ``edgeclip.load``,
peak RSS (``VmHWM``, MiB) and the variant served. ``--before`` runs another checkout (a
``git worktree`` of an older commit) in the same rounds, interleaved, for a before/after.
Writes ``benchmarks/results/<host>/first_load.{json,md}``.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from .cold_start import ROOT, fresh_process
from .hosts import cpu_ticks, measured_on, steal_share, write_result

_CHILD = r"""
import json, sys, time
t = time.perf_counter()
import edgeclip
m = edgeclip.load(sys.argv[1], threads=int(sys.argv[2]))
wall = time.perf_counter() - t
hwm = next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
print("FIRST " + json.dumps({"wall_s": round(wall, 2), "peak_rss_mib": round(hwm), "variant": m.variant.id}))
"""


def _commit(root: Path) -> str:
    out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)  # fmt: skip
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "edgeclip"],
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    return (out.stdout.strip() or str(root)) + (" + uncommitted edgeclip/ changes" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--holds", default="auto,2")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--before", type=Path, help="an older checkout to run alongside")
    args = ap.parse_args(argv)
    codes = {"now": ROOT} | ({"before": args.before.resolve()} if args.before else {})
    ticks, start = cpu_ticks(), measured_on()
    rows = measure(args.bundle, args.holds.split(","), args.runs, args.threads, codes)
    result = {"what": "first backend='auto' load, fresh process, empty EDGECLIP_HOME", **start,
              "cpu_steal_share": steal_share(ticks), "threads": args.threads,
              "variants_in_bundle": _variant_count(args.bundle), "rows": rows}  # fmt: skip
    write_result("first_load", result, markdown(result))
    return 0


def measure(bundle: Path, holds: list[str], runs: int, threads: int,
            codes: dict[str, Path]) -> list[dict]:  # fmt: skip
    """One row per (checkout, hold): every run's result, the median wall time, peak RSS."""
    got_all: dict[tuple[str, str], list[dict]] = {}
    for _ in range(runs):  # rounds: every setting and checkout once per round
        for hold in holds:
            for label, root in codes.items():
                with tempfile.TemporaryDirectory() as home:
                    got = fresh_process(_CHILD, [str(bundle.resolve()), str(threads)], Path(home),
                                        "FIRST ", root=root, env={"EDGECLIP_PROBE_HOLD": hold})  # fmt: skip
                got_all.setdefault((label, hold), []).append(got)
    rows = []
    for (label, hold), got in got_all.items():
        ok = [r for r in got if "error" not in r]
        rows.append({"code": label, "commit": _commit(codes[label]), "hold": hold, "runs": got,
                     "median_wall_s": round(float(np.median([r["wall_s"] for r in ok])), 2) if ok else None,
                     "peak_rss_mib": [r["peak_rss_mib"] for r in ok],
                     "served": sorted({r["variant"] for r in ok})})  # fmt: skip
    return rows


def _variant_count(bundle: Path) -> int:
    from edgeclip.bundle import Bundle

    return len(Bundle.open(bundle).variants)


def markdown(r: dict) -> str:
    lines = [f"# First auto load, {r['cpu']} ({r['isa']}), {r['threads']} threads", "",
             f"{r['what']}; a bundle of {r['variants_in_bundle']} variants.", "",
             "| code | EDGECLIP_PROBE_HOLD | wall s (median) | runs s | peak RSS MiB | served |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for row in r["rows"]:
        walls = ", ".join(str(x.get("wall_s", x.get("error"))) for x in row["runs"])
        rss = ", ".join(str(x) for x in row["peak_rss_mib"])
        lines.append(f"| {row['code']} (`{row['commit']}`) | {row['hold']} | {row['median_wall_s']} | "
                     f"{walls} | {rss} | {', '.join(row['served'])} |")
    lines += ["", "Load average at start: " + ", ".join(f"{x:.2f}" for x in r["load_average"]) + "."
              + (f" CPU steal during the runs: {r['cpu_steal_share']:.0%}."
                 if r.get("cpu_steal_share") is not None else "")]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
