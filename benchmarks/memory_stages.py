"""Where a variant's memory goes: a fresh process's resident set after each step of a user's
first result (imports, ``edgeclip.load``, first image, first text), first load and later ones.

    python -m benchmarks.memory_stages BUNDLE [--variants openvino-int8,onnx-int8]

Each variant gets its own empty ``EDGECLIP_HOME``; run 1 builds the on-device check and the
session caches, run 2 reuses them. A variant this host refuses (its on-device check failed) is
measured again with ``verify=False`` and marked so: it shows what it would cost, not what is
served. RSS is split into anonymous memory (heap, buffers) and file-backed pages (shared
libraries, memory-mapped graphs and caches), from /proc/self/status. Writes
``benchmarks/results/<host>/memory_stages.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from .cold_start import fresh_process
from .hosts import measured_on, write_result

STAGES = ("python", "numpy", "edgeclip", "runtime", "load", "first_image", "first_text")
_CHILD = r"""
import json, sys
def rss():
    keys = ("VmRSS", "RssAnon", "RssFile", "VmHWM")
    return {l.split(":")[0]: int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith(keys)}
out = {"python": rss()}
import numpy as np
out["numpy"] = rss()
import edgeclip
out["edgeclip"] = rss()
backend, _, precision = sys.argv[2].partition("-")
if backend == "openvino":  # as edgeclip imports it: without the model converter
    from edgeclip.backends.openvino import import_openvino
    import_openvino()
else:
    __import__({"onnx": "onnxruntime", "litert": "ai_edge_litert"}[backend])
out["runtime"] = rss()
m = edgeclip.load(sys.argv[1], backend=backend, precision=precision or None, threads=int(sys.argv[3]),
                  verify=sys.argv[4] == "1")
out["load"] = rss()
m.encode_image([np.random.default_rng(0).integers(0, 255, (256, 272, 3), dtype=np.uint8)])
out["first_image"] = rss()
m.encode_text(["a photo of a cat."])
out["first_text"] = rss()
print("STAGES " + json.dumps(out))
"""


def run_child(bundle: Path, variant: str, threads: int, home: Path, verify: bool) -> dict:
    args = [str(bundle), variant, str(threads), "1" if verify else "0"]
    out = fresh_process(_CHILD, args, home, "STAGES ")
    if "error" in out:
        return out
    return {stage: {k: round(v, 1) for k, v in mb.items()} for stage, mb in out.items()}


def measure(bundle: Path, variant: str, threads: int) -> dict:
    """First and second load of ``variant`` in one fresh home; unverified if the host refuses it."""
    for verify in (True, False):
        with tempfile.TemporaryDirectory() as home:
            first = run_child(bundle, variant, threads, Path(home), verify)
            if verify and "VerificationError" in first.get("error", ""):
                refused = first["error"]
                continue
            if "error" in first:
                return {"variant": variant, "verified": verify, "first": first, "later": first}
            later = run_child(bundle, variant, threads, Path(home), verify)
        row = {"variant": variant, "verified": verify, "first": first, "later": later}
        if not verify:
            row["refused_here"] = refused
        return row
    raise AssertionError("unreachable")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--variants", default="openvino-int8,onnx-int8,onnx-fp32")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    rows = [measure(args.bundle, v, args.threads) for v in args.variants.split(",")]
    result = {"what": "VmRSS (MiB) of a fresh process after each step; anon + file-backed",
              **measured_on(), "threads": args.threads, "rows": rows}  # fmt: skip
    write_result("memory_stages", result, markdown(result))
    return 0


def markdown(r: dict) -> str:
    head = (
        f"# Memory by step, {r.get('cpu', 'unnamed CPU')} ({r.get('isa', '?')}), {r['threads']} threads"
        f"\n\n{r['what']}."
        + (f" Load average at start: {', '.join(f'{x:.2f}' for x in r['load_average'])}."
           if "load_average" in r else "") + "\n"  # fmt: skip
    )
    out = [head, "| variant | load | " + " | ".join(STAGES) + " | peak |",
           "|---|---|" + "---|" * (len(STAGES) + 1)]  # fmt: skip
    for row in r["rows"]:
        name = row["variant"] + ("" if row["verified"] else " (refused here; verify=False)")
        for which in ("first", "later"):
            m = row[which]
            if "error" in m:
                out.append(f"| {name} | {which} | error: {m['error']} |")
                continue
            cells = [
                f"{m[s]['VmRSS']:.0f} ({m[s]['RssAnon']:.0f}+{m[s]['RssFile']:.0f})" for s in STAGES
            ]
            out.append(
                f"| {name} | {which} | "
                + " | ".join(cells)
                + f" | {m['first_text']['VmHWM']:.0f} |"
            )
    out.append("\nCells: VmRSS (anonymous + file-backed), MiB; peak: VmHWM at the end.")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
