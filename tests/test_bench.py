"""edgeclip bench: MACs, the pairs/s method, result files, bad input and Ctrl-C (no speed thresholds)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks import cli, report
from benchmarks.accuracy import scan_folder, topk_accuracy
from benchmarks.device import device_report
from benchmarks.macs import analytic_macs, analytic_params, tower_report
from benchmarks.throughput import Settings, chunk_note, measure, pairs_per_s, time_calls
from edgeclip.bundle import Bundle
from edgeclip.errors import InputError

ROOT = Path(__file__).resolve().parent.parent


def test_macs_and_params_of_the_tinyclip8m_graph(tinyclip8m_bundle):
    b = Bundle.open(tinyclip8m_bundle, verify=False)
    v = b.find("onnx", "fp32")[0]
    rep = tower_report(b.path_of(v.image.file), b.path_of(v.text.file), b.manifest["architecture"])
    # TinyCLIP's card: 1.787 G image + 0.191 G text = 1.978 G a pair ("2.0")
    assert round(rep["image_macs"] / 1e9, 3) == 1.787
    assert round(rep["text_macs"] / 1e9, 3) == 0.191
    assert round(rep["pair_macs"] / 1e9, 3) == 1.978
    a = rep["analytic"]
    assert (rep["image_macs"], rep["text_macs"]) == (a["image_macs"], a["text_macs"])
    # parameters counted per use: the exporter's merging of equal random LayerNorms must not hide any
    assert (rep["image_params"], rep["text_params"]) == (a["image_params"], a["text_params"])
    assert 23.0e6 < rep["params"] < 23.6e6
    assert rep["text_params"] > 49408 * 256  # the token embedding is in


def test_analytic_count_follows_the_architecture():
    arch = {
        "embed_dim": 512,
        "image_size": 224,
        "patch_size": 16,
        "vision_width": 256,
        "vision_layers": 10,
        "text_width": 256,
        "text_layers": 3,
        "context_length": 77,
    }
    base = analytic_macs(arch)
    deeper = analytic_macs({**arch, "vision_layers": 11})
    assert deeper["text_macs"] == base["text_macs"]
    assert (
        deeper["image_macs"] - base["image_macs"]
        == (base["image_macs"] - 196 * 768 * 256 - 256 * 512) // 10
    )
    assert (
        analytic_params(arch)["text_params"]
        - analytic_params({**arch, "vocab_size": 49407})["text_params"]
        == 256
    )
    with pytest.raises(InputError, match="vision_width"):
        analytic_macs({k: v for k, v in arch.items() if k != "vision_width"})


def test_pairs_per_s_and_timing_protocol():
    assert pairs_per_s(100.0, 300.0) == pytest.approx(75.0)
    assert pairs_per_s(0.0, 300.0) == 0.0
    calls = []
    times = time_calls(lambda: calls.append(1), warmup=3, repeats=4, min_time=0.0, max_repeats=10)
    assert len(calls) == 7 and len(times) == 4 and (times >= 0).all()
    pixels, ids = np.zeros((4, 3, 8, 8), np.float32), np.zeros((4, 77), np.int64)
    seen = []
    rows = measure(
        {"variant": "fake"},
        lambda x, b: seen.append(("i", len(x))),
        lambda t, b: seen.append(("t", len(t))),
        pixels,
        ids,
        [1, 4],
        Settings(warmup=1, repeats=2, min_time=0, max_repeats=2, latency_repeats=3),
    )
    assert [r["batch_size"] for r in rows] == [1, 4]
    assert ("i", 4) in seen and ("t", 4) in seen
    assert rows[0]["latency"]["image"]["n"] == 3 and "latency" not in rows[1]
    for r in rows:
        assert r["pairs_per_s"] == pytest.approx(pairs_per_s(r["images_per_s"], r["texts_per_s"]))


def test_fixed_batch_notes():
    assert chunk_note(None, 32) is None
    assert chunk_note((1, 8), 8) is None
    assert chunk_note((1, 8), 32) == "chunked as 4×8 (fixed batch sizes [1, 8])"
    assert chunk_note((4,), 2) == "padded to fixed batch 4"


def _labelled_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog", "red_car"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(
                root / cls / f"{i}.jpg"
            )
    (root / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def test_quick_run_writes_sane_json_csv_md_png_and_merges(micro_bundle, tmp_path):
    out = tmp_path / "res"
    folder = _labelled_folder(tmp_path / "acc")
    rc = cli.main(
        [
            str(micro_bundle),
            "--quick",
            "--threads",
            "1",
            "--batch-sizes",
            "1,2",
            "--accuracy",
            str(folder),
            "-o",
            str(out),
        ]
    )
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["schema"] == report.SCHEMA and not res["interrupted"]
    assert res["device"]["cpu"]["logical_cores"] >= 1 and res["device"]["versions"]["numpy"]
    from edgeclip import settings as runtime  # the rates' runtime settings are on record

    assert res["settings"]["edgeclip"] == {name: runtime.get(name) for name in runtime.SETTINGS}
    m = res["macs"]
    assert m["pair_macs"] == m["image_macs"] + m["text_macs"] == m["analytic"]["pair_macs"]
    rows = {(r["variant"], r["batch_size"]): r for r in res["throughput"]}
    assert set(rows) == {("onnx-fp32", 1), ("onnx-fp32", 2), ("torch-fp32", 1), ("torch-fp32", 2)}
    for r in rows.values():
        assert r["images_per_s"] > 0 and r["texts_per_s"] > 0
        assert r["pairs_per_s"] == pytest.approx(1 / (1 / r["images_per_s"] + 1 / r["texts_per_s"]))
    assert rows[("torch-fp32", 2)]["vs_baseline"] == pytest.approx(1.0)
    assert rows[("onnx-fp32", 2)]["vs_baseline"] == pytest.approx(
        rows[("onnx-fp32", 2)]["pairs_per_s"] / rows[("torch-fp32", 2)]["pairs_per_s"]
    )
    lat = rows[("onnx-fp32", 1)]["latency"]["image"]
    assert 0 < lat["p50_ms"] <= lat["p95_ms"] <= lat["p99_ms"]
    # the roofline: measured GEMM peaks, and every CPU row's share of the one at its precision
    peaks = res["roofline"]["peaks"]
    assert peaks["fp32_gmac_s"] > 0 and peaks["int8_gmac_s"] > 0 and peaks["threads"] == 1
    roof = {(r["variant"], r["batch_size"]): r for r in res["roofline"]["rows"]}
    assert set(roof) == set(rows)
    from benchmarks.macs import analytic_macs

    for key, r in roof.items():
        assert r["peak"] == "fp32"  # fp32 variants and torch are bound by the fp32 peak
        # MACs at the text length the tower ran (prompts cut after their end token), not 77
        assert r["text_tokens"] == rows[key]["text_tokens"] < res["model"]["architecture"]["context_length"]
        short = analytic_macs({**res["model"]["architecture"], "context_length": r["text_tokens"]})
        assert r["pair_macs"] == pytest.approx(short["pair_macs"], rel=1e-6) and r["pair_macs"] < m["pair_macs"]
        achieved = rows[key]["pairs_per_s"] * r["pair_macs"] / 1e9
        assert r["achieved_gmac_s"] == pytest.approx(achieved, abs=0.06)
        assert r["fraction"] == pytest.approx(r["achieved_gmac_s"] / peaks["fp32_gmac_s"], abs=2e-3)
    assert "Against the roofline" in (out / "results.md").read_text()
    mem = {r["variant"]: r for r in res["memory"]}
    assert mem["onnx-fp32"]["peak_rss_mib"] > 10 and mem["onnx-fp32"]["cold_start_s"] > 0
    assert mem["onnx-fp32"]["size_mb"] > 0
    assert res["e2e"][0]["images_per_s"] > 0
    acc = res["accuracy"]
    assert (acc["n_classes"], acc["n_files"], acc["skipped"]) == (3, 7, 1)
    assert acc["rows"][0]["n_images"] == 6 and acc["rows"][0]["top1_agreement"] == 1.0
    assert 0 <= acc["rows"][0]["top1"] <= 1
    assert acc["rows"][0]["top5"] is None  # 3 classes: every image is in its top 5
    with open(out / "results.csv") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 4 and float(table[0]["pairs_per_s"]) > 0
    md = (out / "results.md").read_text()
    assert "| variant | device | batch | images/s" in md and "Zero-shot accuracy" in md
    for png in ("pairs_per_s.png", "latency.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    cmp_dir = tmp_path / "cmp"
    assert cli.main(["--merge", str(out / "results.json"), str(out), "-o", str(cmp_dir)]) == 0
    merged = json.loads((cmp_dir / "merged.json").read_text())
    assert len(merged["runs"]) == 2
    header = (cmp_dir / "comparison.md").read_text().splitlines()[2]
    assert header.count(res["device_label"]) == 2, header  # one column per run
    assert (cmp_dir / "comparison.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backends", "tensorflow"], "unknown backend 'tensorflow'"),
        (["--precisions", "int4"], "no int4 variant"),
        (["--batch-sizes", "0,8"], "positive integers"),
        (["--batch-sizes", "a,b"], "comma list of integers"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["--rounds", "0"], "--rounds must be >= 1"),
    ],
)
def test_bad_input_is_named(micro_bundle, tmp_path, capsys, args, message):
    assert cli.main([str(micro_bundle), "-o", str(tmp_path / "o"), *args]) == 2
    assert message in capsys.readouterr().err


def test_bad_accuracy_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no class subfolders"):
        scan_folder(tmp_path / "empty")
    (tmp_path / "noimg" / "cat").mkdir(parents=True)
    with pytest.raises(InputError, match="no image files"):
        scan_folder(tmp_path / "noimg")
    folder = _labelled_folder(tmp_path / "named")
    (folder / "classes.json").write_text(json.dumps({"red_car": "sports car"}))
    paths, labels, names = scan_folder(folder)
    assert (
        names == ["cat", "dog", "sports car"] and len(paths) == 7 and labels.tolist().count(1) == 3
    )
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]])
    assert topk_accuracy(logits, np.array([1, 1]), 1) == 0.5
    assert topk_accuracy(logits, np.array([1, 1]), 2) == 1.0


def test_device_report_has_the_basics():
    rep = device_report()
    assert rep["cpu"]["logical_cores"] >= 1 and rep["python"] and rep["machine"]
    assert isinstance(rep["cpu"]["isa"], list) and "numpy" in rep["versions"]
    json.dumps(rep)  # stored inside results.json


def test_ctrl_c_writes_what_was_measured(tinyclip8m_bundle, tmp_path):
    # The 8M-shaped model, not the micro one: each batch size then takes ~1 s to measure, so the
    # signal lands mid-run (the micro model finishes all eight sizes in well under a second).
    out = tmp_path / "partial"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.cli",
            str(tinyclip8m_bundle),
            "--threads",
            "1",
            "--baseline",
            "none",
            "--batch-sizes",
            "1,2,3,4,5,6,7,8",
            "--no-memory",
            "--no-e2e",
            "-o",
            str(out),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        cwd=ROOT,
        # A shell without job control starts background jobs with SIGINT ignored, and children
        # inherit that: give the bench the disposition a terminal's Ctrl-C meets.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen = []

    def read():  # tqdm redraws with \r: read characters, not lines
        while chunk := proc.stderr.read1(256):
            seen.append(chunk.decode(errors="replace"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 180  # a loaded CI box can take long to import and warm up
    # the bar says when a row is measured: interrupt right after the first one
    while "onnx-fp32 batch 1 done" not in "".join(seen) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "onnx-fp32 batch 1 done" in "".join(seen), "".join(seen)[-2000:]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    res = json.loads((out / "results.json").read_text())
    assert res["interrupted"] is True and res["macs"]["pair_macs"] > 0
    assert 1 <= len(res["throughput"]) < 8 and res["throughput"][0]["batch_size"] == 1
    assert "Interrupted" in (out / "results.md").read_text()


def test_peak_kind_follows_what_the_gemms_run_in():
    from benchmarks.roofline import peak_kind

    assert peak_kind("int8", "dynamic-per-channel") == "int8"
    assert peak_kind("int8-dynamic", None) == "int8"
    assert peak_kind("int8", "weight-only") == "fp32"  # weights decompressed, float GEMMs
    assert peak_kind("int8-weights", None) == "fp32"
    assert peak_kind("fp16", None) == peak_kind("fp32", None) == "fp32"


def test_gemm_peak_counts_macs_of_a_real_ort_gemm():
    from benchmarks.roofline import gemm_peak

    for kind in ("fp32", "int8"):
        assert gemm_peak(kind, threads=1, n=128, min_time=0.0) > 0


def test_torch_baseline_text_is_fed_longest_padded_with_the_same_result(micro_hf_checkpoint):
    import torch

    from benchmarks.throughput import torch_towers
    from benchmarks.variants import load_torch
    from edgeclip.tokenizer import tokenize

    model = load_torch(micro_hf_checkpoint)
    ids = tokenize(["a photo of a cat.", "a red sports car parked by the sea."]).astype(np.int64)
    _, run_text, _ = torch_towers(model, 1)
    with torch.inference_mode():
        full = model.get_text_features(input_ids=torch.as_tensor(ids))
    trimmed = run_text(ids, 2)

    def features(out):  # transformers 5 wraps the projected features in an output object
        return getattr(out, "pooler_output", out).numpy()

    assert features(trimmed).shape == features(full).shape
    np.testing.assert_allclose(features(trimmed), features(full), atol=1e-5)


def test_rounds_time_the_sweep_in_turn_and_keep_the_median_round(micro_bundle, tmp_path):
    out = tmp_path / "rounds"
    argv = [str(micro_bundle), "--quick", "--threads", "1", "--batch-sizes", "1,2", "--rounds", "3",
            "--no-memory", "--no-e2e", "--no-gpu", "-o", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["settings"]["rounds"] == 3
    rows = res["throughput"]
    assert {(r["variant"], r["batch_size"]) for r in rows} == {
        (v, b) for v in ("onnx-fp32", "torch-fp32") for b in (1, 2)
    }
    for r in rows:
        assert r["rounds"] == 3 and len(r["pairs_per_s_rounds"]) == 3
        assert r["pairs_per_s"] == pytest.approx(
            1 / (1 / r["images_per_s"] + 1 / r["texts_per_s"])
        )
        assert all(x > 0 for x in r["pairs_per_s_rounds"])


def test_combine_rounds_takes_each_towers_median():
    from benchmarks.throughput import combine_rounds

    def row(ips, tps):
        return {"batch_size": 4, "images_per_s": ips, "texts_per_s": tps,
                "pairs_per_s": 1 / (1 / ips + 1 / tps)}  # fmt: skip

    (got,) = combine_rounds([[row(10, 100)], [row(30, 50)], [row(20, 400)]])
    assert (got["images_per_s"], got["texts_per_s"]) == (20, 100)
    assert got["image_ms_per_batch"] == pytest.approx(200.0)
    assert got["pairs_per_s_rounds"] == pytest.approx([100 / 11, 75 / 4, 400 / 21])


def test_jpeg_decoders_decode_to_one_eighth_and_budget_follows_the_model(tmp_path):
    """Every decoder the floor benchmark times really decodes the file (the 1/8 ones at 1/8),
    and the 90 % budget is model core-ms / 9, with the entropy-decoding rate that budget needs."""
    import io

    from benchmarks import jpeg_decoders

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (600, 800, 3), np.uint8)).save(buf, "JPEG", quality=90)
    calls = jpeg_decoders.decoders(buf.getvalue())
    assert set(calls) == {"pillow_full", "pillow_draft_1_8", "simplejpeg_1_8"}
    calls["pillow_full"]()
    calls["pillow_draft_1_8"]()
    assert calls["simplejpeg_1_8"]().shape == (75, 100, 3)
    bench = tmp_path / "index_bench.json"
    bench.write_text(json.dumps({"e2e": [{"variant": "onnx-int8", "core_ms_per_image": {"model_only": 27.0}}]}))
    (row,) = jpeg_decoders.budget(bench, mean_kb=1536)
    assert row["decode_core_ms_allowed"] == 3.0 and row["mb_per_s_needed"] == 500.0
    assert jpeg_decoders.budget(tmp_path / "missing.json", 1536) == []


def test_openvino_int8_configs_builds_and_times_every_search_config(micro_bundle, tmp_path):
    """The config benchmark builds each INT8 configuration the search may keep plus the retired
    ones, from onnx-fp32 only, and times each image IR through a real OpenVINO session."""
    from benchmarks import openvino_int8_configs as bench

    images = bench.build_all(micro_bundle, tmp_path, log=lambda *_: None)
    assert list(images) == [name for name, _, _ in bench.configs()]
    assert all(p.is_file() and p.with_suffix(".bin").is_file() for p in images.values())
    size = json.loads((micro_bundle / "manifest.json").read_text())["preprocess"]["image_size"]
    speed = bench.time_configs(images, [1, 2], rounds=2, threads=1, image_size=size)
    for name in images:
        for batch in ("1", "2"):
            low, high = speed[name][batch]["range"]
            assert 0 < low <= speed[name][batch]["images_per_s"] <= high
    result = {"cpu": "x", "isa": "avx2", "threads": 1, "rounds": 2, "batch_sizes": [1, 2],
              "load_average": [0.0, 0.0, 0.0], "steal": 0.0,
              "configs": [{"config": n, "search_position": None, "speed": s} for n, s in speed.items()]}  # fmt: skip
    assert bench.markdown(result).count("\n| `") == len(images)


def test_interleaved_timing_calls_each_function_in_turn():
    from edgeclip.timing import time_interleaved

    calls: list[str] = []
    times = time_interleaved([lambda: calls.append("a"), lambda: calls.append("b")],
                             warmup=2, repeats=3, min_time=0.0, max_repeats=3)  # fmt: skip
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3  # warm-up, then A B A B A B
    assert [len(t) for t in times] == [3, 3] and all((t >= 0).all() for t in times)


def test_interleave_times_every_variant_and_torch_call_by_call(micro_bundle, tmp_path):
    out = tmp_path / "interleaved"
    argv = [str(micro_bundle), "--quick", "--threads", "1", "--batch-sizes", "1,2", "--rounds", "2",
            "--interleave", "--no-memory", "--no-e2e", "--no-gpu", "-o", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["settings"]["interleave"] is True and res["settings"]["rounds"] == 2
    rows = {(r["variant"], r["batch_size"]): r for r in res["throughput"]}
    assert set(rows) == {(v, b) for v in ("onnx-fp32", "torch-fp32") for b in (1, 2)}
    for r in rows.values():
        assert r["rounds"] == 2 and all(x > 0 for x in r["pairs_per_s_rounds"])
        # interleaved in turn, every tower is called as often as the others
        assert r["image_calls"] == rows[("torch-fp32", r["batch_size"])]["image_calls"]
    assert rows[("onnx-fp32", 1)]["vs_baseline"] == pytest.approx(
        rows[("onnx-fp32", 1)]["pairs_per_s"] / rows[("torch-fp32", 1)]["pairs_per_s"])


def test_rounds_that_disagree_advise_interleaving():
    from benchmarks.throughput import spell_advice

    rows = [{"variant": "onnx-int8", "batch_size": 1, "pairs_per_s_rounds": [51.4, 89.3, 52.1]},
            {"variant": "onnx-fp32", "batch_size": 1, "pairs_per_s_rounds": [34.0, 33.1]}]  # fmt: skip
    (note,) = spell_advice(rows, interleaved=False)
    assert "onnx-int8 at batch 1 disagree by 1.74x" in note and "--interleave" in note
    assert spell_advice(rows, interleaved=True) == []  # already interleaved: nothing to advise
    assert spell_advice(rows[1:], interleaved=False) == []  # within 30 %: a quiet machine


def test_onnx_int8_configs_builds_every_candidate_and_vectors_stay_close(micro_bundle, tmp_path):
    """Each ONNX INT8 search candidate is built from onnx-fp32 alone and runs through edgeclip's
    own tower runner; its vectors stay near fp32's (weights are random: no gate claim)."""
    from benchmarks import onnx_int8_configs as bench
    from converters.quantize_onnx import INT8_CANDIDATES
    from edgeclip.bundle import Bundle
    from edgeclip.towers import open_towers

    bundle = Bundle.open(micro_bundle)
    variants = bench.build_all(bundle, tmp_path)
    assert [v.id for v in variants] == ["onnx-fp32", *(name for name, _, _ in INT8_CANDIDATES)]
    size = int(bundle.preprocess["image_size"])
    pixels = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    outs = [open_towers(tmp_path, v, 1, "cpu")[0](pixels, 2) for v in variants]
    ref = outs[0] / np.linalg.norm(outs[0], axis=1, keepdims=True)
    for out in outs[1:]:
        cos = (out / np.linalg.norm(out, axis=1, keepdims=True) * ref).sum(axis=1)
        assert cos.min() > 0.9
    rows = [{"variant": v.id, "batch_size": 1, "images_per_s": 10.0, "texts_per_s": 100.0,
             "pairs_per_s": 9.1, "vs_torch": 1.5, "pairs_per_s_rounds": [9.1]} for v in variants]  # fmt: skip
    text = bench.markdown({"cpu": "x", "isa": "avx2", "threads": 1, "rounds": 1,
                           "load_average": [0.0, 0.0, 0.0], "rows": rows})  # fmt: skip
    assert text.count("\n| ") == len(rows) + 1  # the header and one row each


def test_openvino_int8_sensitivity_gates_every_row(micro_bundle, micro_hf_checkpoint, tmp_path):
    """Each row is a real NNCF PTQ build gated against torch on the held-out images; the
    module's settings (the PTQ function, the dynamic-quantization variable) are restored."""
    import os
    import shutil

    from benchmarks import openvino_int8_sensitivity as sens
    from converters import openvino_variants as ovv

    shutil.copytree(micro_bundle, tmp_path / "bundle")
    (tmp_path / "ckpt").symlink_to(micro_hf_checkpoint, target_is_directory=True)
    before = ovv._ptq_tower
    rows = sens.measure(tmp_path, n_calib=8, n_eval=12, threads=1)
    assert [r["row"] for r in rows] == list(sens.ROWS)
    assert all(r["n_images"] == 12 and 0 < r["image_cosine_min"] <= r["image_cosine_mean"] <= 1.0 + 1e-6
               and 0 <= r["top1_agreement"] <= r["top1_agreement_tie_tolerant"] <= 1 for r in rows)  # fmt: skip
    assert ovv._ptq_tower is before and "EDGECLIP_OV_DYNAMIC_QUANT" not in os.environ
    md = sens.markdown({"cpu": "x", "isa": "avx2", "model": "micro", "n_calib": 8, "n_eval": 12,
                        "rows": rows})  # fmt: skip
    assert md.count("\n| ") == len(rows) + 1  # the header and one line a row


def test_ort_fusions_are_timed_in_fp32_and_int8(micro_bundle):
    """The fusion comparison builds the fused graph (Attention, SkipLayerNormalization), and for
    int8 quantizes both graphs dynamically, running each in a real ONNX Runtime session."""
    from benchmarks.ort_settings import _inputs, fusions
    from edgeclip.bundle import Bundle

    bundle = Bundle.open(micro_bundle)
    arch = bundle.manifest["architecture"]
    fp32 = next(v for v in bundle.variants if v.id == "onnx-fp32")
    pixels, _ = _inputs(int(bundle.preprocess["image_size"]))
    for int8 in (False, True):
        got = fusions(bundle.path_of(fp32.image.file), 1, pixels, int(arch["vision_heads"]),
                      int(arch["vision_width"]), int8=int8)  # fmt: skip
        assert got["fused_ops"].get("Attention", 0) >= 1
        assert got["ort_only_ms"] > 0 and got["fused_ms"] > 0 and -1 <= got["cosine"] <= 1 + 1e-6
