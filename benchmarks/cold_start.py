"""Cold start as a user meets it: a fresh process runs ``import edgeclip``, ``edgeclip.load`` and
one ``classify``; the first load on a host (empty caches) and the later ones, per variant.

    python -m benchmarks.cold_start BUNDLE [--variants onnx-int8,openvino-int8] [--runs 5]

``auto`` is ``edgeclip.load(BUNDLE)``: run 1 also times every variant. Each variant gets its own empty ``EDGECLIP_HOME``: run 1 builds the on-device check, the
ONNX Runtime graph cache and OpenVINO's model cache; runs 2.. reuse them. edgeclip's bytecode is
compiled first, as ``pip install`` does. Peak RSS is the child's ``VmHWM`` in MiB. Writes
``benchmarks/results/<host>/cold_start.{json,md}``.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .hosts import cpu_ticks, measured_on, steal_share, write_result

ROOT = Path(__file__).resolve().parents[1]
_CHILD = r"""
import time, sys, json
t0 = time.perf_counter()
import edgeclip
import numpy as np
t1 = time.perf_counter()
backend, _, precision = sys.argv[2].partition("-")
m = edgeclip.load(sys.argv[1], backend=backend, precision=precision or None, threads=int(sys.argv[3]))
t2 = time.perf_counter()
img = np.random.default_rng(0).integers(0, 255, (256, 272, 3), dtype=np.uint8)
top = m.classify(img, ["a photo of a cat.", "a photo of a dog."])
t3 = time.perf_counter()
rss = next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
print("COLD " + json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_classify_s": t3 - t2,
                            "cold_start_s": t3 - t0, "peak_rss_mib": rss}))
"""


def fresh_process(code: str, args: list[str], home: Path, marker: str, root: Path = ROOT,
                  env: dict[str, str] | None = None) -> dict:  # fmt: skip
    """Run ``code`` in a fresh interpreter with its own ``EDGECLIP_HOME`` and the edgeclip of
    checkout ``root`` (run from there: ``python -c`` puts the working folder first on the path);
    the JSON it printed after ``marker``, or ``{"error": last stderr line}``."""
    env = {**os.environ, **(env or {}), "EDGECLIP_HOME": str(home), "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, "-c", code, *args],
                          capture_output=True, text=True, env=env, timeout=600, cwd=root)  # fmt: skip
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(marker)), None)
    if line is None:
        return {"error": " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-1:])}
    return json.loads(line[len(marker) :])


def run_child(bundle: Path, variant: str, threads: int, home: Path) -> dict:
    out = fresh_process(_CHILD, [str(bundle), variant, str(threads)], home, "COLD ")
    return out if "error" in out else {k: round(v, 3) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--variants", default="onnx-int8,openvino-int8,onnx-fp32,auto")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    compileall.compile_dir(str(ROOT / "edgeclip"), quiet=1)
    ticks = cpu_ticks()
    rows = []
    for variant in args.variants.split(","):
        with tempfile.TemporaryDirectory() as home:
            runs = [run_child(args.bundle, variant, args.threads, Path(home)) for _ in range(args.runs)]
        later = [r for r in runs[1:] if "error" not in r]
        row = {"variant": variant, "first": runs[0], "runs": runs}
        if later:
            row["later_median"] = {k: round(float(np.median([r[k] for r in later])), 3)
                                   for k in later[0]}  # fmt: skip
        rows.append(row)
    result = {"what": "fresh process: import edgeclip + edgeclip.load + first classify",
              **measured_on(), "cpu_steal_share": steal_share(ticks), "threads": args.threads,
              "rows": rows}  # fmt: skip
    write_result("cold_start", result, markdown(result))
    return 0


def markdown(r: dict) -> str:
    lines = [f"# Cold start, {r['cpu']} ({r['isa']}), {r['threads']} threads", "", r["what"] + ".", "",
             "| variant | first load s | later: cold start s | import | load | first classify | peak RSS MiB |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in r["rows"]:
        first, m = row["first"], row.get("later_median")
        if m is None:
            lines.append(f"| {row['variant']} | error: {first.get('error')} | | | | | |")
            continue
        lines.append(f"| {row['variant']} | {first.get('cold_start_s')} | {m['cold_start_s']} | "
                     f"{m['import_s']} | {m['load_s']} | {m['first_classify_s']} | {m['peak_rss_mib']} |")
    lines += ["", "Later runs: the median of runs 2 onwards (caches warm). Load average at start: "
              + ", ".join(f"{x:.2f}" for x in r["load_average"]) + "."
              + (f" CPU time taken by the hypervisor (steal) during the runs: {r['cpu_steal_share']:.0%}."
                 if r.get("cpu_steal_share") is not None else "")]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
