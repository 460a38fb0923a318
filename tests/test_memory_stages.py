"""benchmarks.memory_stages: a fresh process's resident set after each step, on a real bundle."""

from __future__ import annotations

from benchmarks import memory_stages


def test_memory_stages_reports_every_step_of_a_first_and_a_later_load(micro_bundle):
    row = memory_stages.measure(micro_bundle, "onnx-fp32", threads=1)
    assert row["variant"] == "onnx-fp32" and row["verified"] is True
    for which in ("first", "later"):
        stages = row[which]
        assert list(stages) == list(memory_stages.STAGES), stages
        for mb in stages.values():
            assert mb["VmRSS"] > 0 and mb["RssAnon"] > 0 and mb["RssFile"] > 0
        # importing a runtime and opening sessions only ever adds resident memory here
        assert stages["runtime"]["VmRSS"] > stages["python"]["VmRSS"]
        assert stages["first_text"]["VmHWM"] >= stages["first_text"]["VmRSS"]
    md = memory_stages.markdown({"cpu": "AMD EPYC", "isa": "avx2", "load_average": [0.5, 0.25, 0.0],
                                 "threads": 1, "what": "w", "rows": [row]})  # fmt: skip
    assert md.startswith("# Memory by step, AMD EPYC (avx2), 1 threads") and "0.50, 0.25, 0.00" in md
    assert md.count("| onnx-fp32 |") == 2


def test_memory_stages_says_when_a_variant_cannot_run(micro_bundle):
    row = memory_stages.measure(micro_bundle, "onnx-int4", threads=1)
    assert row["verified"] is True and "refused_here" not in row  # missing, not refused
    assert (
        "precision='int4'" in row["first"]["error"] and "it has: onnx/fp32" in row["first"]["error"]
    )
    assert "error: " in memory_stages.markdown({"threads": 1, "what": "w", "rows": [row]})
