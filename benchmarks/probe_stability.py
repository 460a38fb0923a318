"""Is the ``backend="auto"`` speed probe reproducible? Two probes in a row per variant.

    python -m benchmarks.probe_stability BUNDLE

Probes every variant twice with exactly what auto selection runs (``autoselect.probe_rates``:
interleaved rounds, median per call; all variants held at once, as with ≥ 4 GiB free), and
writes ``benchmarks/results/<host>/probe_stability.{json,md}`` with both rates and their ratio.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .hosts import measured_on, write_result


def main(argv: list[str] | None = None) -> int:
    from edgeclip.autoselect import TIE_MARGIN, fastest, probe_rates
    from edgeclip.bundle import Bundle
    from edgeclip.towers import open_towers

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    bundle = Bundle.open(args.bundle)
    opened = {v.id: open_towers(bundle.root, v, args.threads, "auto") for v in bundle.variants}
    first, second = (probe_rates(bundle, bundle.variants, args.threads, "auto",
                                 towers=lambda v: opened[v.id])[0] for _ in range(2))  # fmt: skip
    winners = [max(rates, key=rates.get) for rates in (first, second)]
    backends = list(dict.fromkeys(v.backend for v in bundle.variants))
    chosen = [fastest(bundle.variants, rates, backends).id for rates in (first, second)]
    rows = [{"variant": vid, "first": first[vid], "second": second[vid],
             "ratio": round(max(first[vid], second[vid]) / max(min(first[vid], second[vid]), 1e-9), 3)}
            for vid in opened]  # fmt: skip
    result = {"what": "autoselect.probe_rates twice in a row, batch 1", **measured_on(),
              "threads": args.threads, "variants": rows,
              "max_ratio": max(r["ratio"] for r in rows),
              "fastest_same": winners[0] == winners[1], "chosen_same": chosen[0] == chosen[1],
              "chosen": chosen[0] if chosen[0] == chosen[1] else list(chosen)}  # fmt: skip
    lines = [f"# Speed-probe stability, {result['cpu']} ({result['isa']}), {args.threads} threads", "",
             "| variant | pairs/s, 1st | 2nd | max/min |", "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r['variant']} | {r['first']} | {r['second']} | {r['ratio']} |" for r in rows]
    lines += ["", f"Largest disagreement {result['max_ratio']}×; same fastest both times: "
              f"{result['fastest_same']}; auto selection's choice (ties within "
              f"{TIE_MARGIN:.0%} go to the smallest weights): {' then '.join(dict.fromkeys(chosen))}, "
              f"same both times: {result['chosen_same']}."]  # fmt: skip
    write_result("probe_stability", result, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
