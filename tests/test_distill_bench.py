"""The distillation benchmark's aggregation and report (the runs themselves take CPU hours)."""

from __future__ import annotations

import argparse

from benchmarks import distill_bench as B


def _run(row, seed, seen, held_out, shape):
    return {"row": row, "seed": seed, "losses": "clip=1", "time_s": 10.0 + seed, "params": {"layers": 1000},
            "eval": {"seen": seen, "held_out": held_out, "held_out_shape": shape},
            "curve": [{"step": 5, "seen": seen / 2, "held_out": held_out / 2}, {"step": 10, "seen": seen, "held_out": held_out}]}  # fmt: skip


def test_summary_is_mean_and_half_range_over_seeds(tmp_path):
    rows = [_run("no-kd", 0, 60.0, 20.0, 50.0), _run("no-kd", 1, 64.0, 30.0, 54.0), _run("no-kd", 2, 62.0, 22.0, 52.0)]
    (s,) = B.summarise(rows)
    assert s["seeds"] == [0, 1, 2] and s["seen"] == {"mean": 62.0, "half_range": 2.0}
    assert s["held_out"]["mean"] == 24.0 and s["held_out"]["half_range"] == 5.0
    args = argparse.Namespace(steps=10, batch_size=8, seeds="0,1,2", eval_held_out=200)
    md = B.markdown([s], {"seen": 94.0, "held_out": 50.0, "held_out_shape": 80.0}, args)
    assert "| no-kd | `clip=1` | 62.0 ± 2.0 | 24.0 ± 5.0 | 52.0 ± 2.0 | 1,000 | 11 |" in md
    B.plot(rows, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 1000


def test_every_row_of_the_issue_is_there():
    want = {"no-kd", "crd", "fd", "mfd", "gd", "icl", "afd", "affinity@50", "affinity@teacher", "fd+icl+crd",
            "half: random init", "half: manual inherit", "half: auto inherit"}  # fmt: skip
    assert want <= set(B.ROWS)
    assert B.host_slug().endswith("core")
