"""Name the machine a result was measured on: results live under ``benchmarks/results/<host>/``."""

from __future__ import annotations

import os
import re


def host_label() -> str:
    """e.g. ``epyc-avx2-2core`` or ``xeon-amx-2core``: CPU family, widest INT8 ISA, cores."""
    from edgeclip.verify import cpu_identity, widest_isa

    ident = cpu_identity()
    cpu = ident["cpu"].lower()
    family = next((f for f in ("epyc", "ryzen", "xeon", "core", "cortex", "neoverse", "apple")
                   if f in cpu), re.sub(r"[^a-z0-9]+", "-", cpu).strip("-")[:16] or "cpu")  # fmt: skip
    return f"{family}-{widest_isa(ident['isa'])}-{os.cpu_count()}core"
