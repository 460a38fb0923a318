"""Distillation on procedural data, one seed: a quick look before the 3-seed benchmark.

Trains (or reuses) the procedural teacher, then distils the student with each chosen row of
``benchmarks/distill_bench.py`` (the same losses, weights and inheritance modes) for the same steps
and seed, and prints zero-shot top-1 on seen and held-out colour-shape compositions.

    python examples/distill_procedural.py --steps 150 --runs no-kd,fd+icl+crd,"half: auto inherit"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from benchmarks.distill_bench import ROWS
    from benchmarks.distill_bench import main as bench

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", default="no-kd,fd+icl+crd", help=f"comma list of: {', '.join(ROWS)}")
    ap.add_argument("-o", "--out", default="runs/distill_procedural")
    args = ap.parse_args(argv)
    return bench(["--rows", args.runs, "--seeds", str(args.seed), "--steps", str(args.steps),
                  "--batch-size", str(args.batch_size), "--work", str(Path(args.out) / "work"),
                  "--out", args.out])  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
