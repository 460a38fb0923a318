"""benchmarks.first_load: the first backend="auto" load in a fresh process, on a real bundle."""

from __future__ import annotations

from benchmarks import first_load
from benchmarks.cold_start import ROOT
from edgeclip.bundle import Bundle


def test_first_load_times_a_fresh_auto_load_per_hold_setting(micro_bundle):
    rows = first_load.measure(micro_bundle, ["auto", "2"], runs=1, threads=1, codes={"now": ROOT})
    ids = {v.id for v in Bundle.open(micro_bundle).variants}
    assert [(r["code"], r["hold"]) for r in rows] == [("now", "auto"), ("now", "2")]
    for row in rows:
        (run,) = row["runs"]
        assert "error" not in run, run
        assert run["wall_s"] > 0 and row["median_wall_s"] == run["wall_s"]
        assert row["peak_rss_mib"][0] > 10 and set(row["served"]) <= ids and row["served"]
    md = first_load.markdown({"cpu": "AMD EPYC", "isa": "avx2", "threads": 1, "what": "w",
                              "variants_in_bundle": len(ids), "load_average": [0.5, 0.2, 0.1],
                              "rows": rows})  # fmt: skip
    assert "| now (`" in md and "EDGECLIP_PROBE_HOLD" in md


def test_first_load_reports_a_failed_load_instead_of_a_number(tmp_path):
    rows = first_load.measure(tmp_path / "no-such-bundle", ["auto"], runs=1, threads=1,
                              codes={"now": ROOT})  # fmt: skip
    (row,) = rows
    assert "error" in row["runs"][0] and row["median_wall_s"] is None and row["served"] == []
