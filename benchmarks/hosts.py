"""Name the machine a result was measured on: results live under ``benchmarks/results/<host>/``."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path


def host_label() -> str:
    """e.g. ``epyc-avx2-2core`` or ``xeon-amx-2core``: CPU family, widest INT8 ISA, cores."""
    from edgeclip.verify import cpu_identity, widest_isa

    ident = cpu_identity()
    cpu = ident["cpu"].lower()
    family = next((f for f in ("epyc", "ryzen", "xeon", "core", "cortex", "neoverse", "apple")
                   if f in cpu), re.sub(r"[^a-z0-9]+", "-", cpu).strip("-")[:16] or "cpu")  # fmt: skip
    return f"{family}-{widest_isa(ident['isa'])}-{os.cpu_count()}core"


def measured_on() -> dict:
    """The CPU fields every result file starts with: model, widest INT8 ISA, load at start."""
    from edgeclip.verify import cpu_identity, widest_isa

    ident = cpu_identity()
    return {"cpu": ident["cpu"], "isa": widest_isa(ident["isa"]), "load_average": list(os.getloadavg())}


def cpu_ticks() -> list[int]:
    """The aggregate ``cpu`` line of ``/proc/stat`` (user nice system idle iowait irq softirq steal)."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return []


def steal_share(since: list[int]) -> float | None:
    """Share of CPU time the hypervisor took from this VM since ``cpu_ticks()`` gave ``since``.

    On a shared VM this is why the same host measures slower on one day than another.
    """
    now = cpu_ticks()
    if len(now) < 8 or len(since) < 8:
        return None
    delta = [a - b for a, b in zip(now, since)]
    return round(delta[7] / sum(delta), 3) if sum(delta) > 0 else None


def write_result(name: str, result: dict, markdown: str, out_dir: str | Path | None = None) -> Path:
    """``<out_dir>/<name>.{json,md}`` (default ``benchmarks/results/<host>/``); prints the
    Markdown; returns the folder."""
    out = Path(out_dir) if out_dir else Path(__file__).resolve().parent / "results" / host_label()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{name}.md").write_text(markdown)
    print(markdown)
    return out
