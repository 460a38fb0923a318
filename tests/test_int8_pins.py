"""Pinned INT8 configurations (``--int8-config``): only the pinned one is built and gated, it is
recorded as the search's one try, and a bad pin is refused, naming the choices, before any work."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from edgeclip.errors import InputError

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
pytest.importorskip("nncf")


def test_parse_names_the_choices():
    from converters.int8_pins import config_names, parse_int8_configs

    assert parse_int8_configs("onnx=dynamic-per-tensor, ov=ptq-mlp-only") == {
        "onnx": "dynamic-per-tensor", "openvino": "ptq-mlp-only"}  # fmt: skip
    assert parse_int8_configs({"openvino": "weight-only"}) == {"openvino": "weight-only"}
    assert parse_int8_configs(None) == {} and parse_int8_configs("") == {}
    with pytest.raises(InputError) as bad:
        parse_int8_configs("openvino=ptq-everything")
    assert "ptq-everything" in str(bad.value)
    assert all(name in str(bad.value) for name in config_names("openvino"))
    with pytest.raises(InputError, match="BACKEND=CONFIG"):
        parse_int8_configs("ptq-mlp-only")
    with pytest.raises(InputError, match="no INT8 search"):
        parse_int8_configs("torch=dynamic-per-tensor")


def test_pinned_config_is_the_only_one_built(micro_bundle, micro_hf_checkpoint, tmp_path):
    """The search would try ptq-float-patch-embedding first; pinned, only ptq-mlp-only runs."""
    from converters.add_variants import add_variants

    bundle = tmp_path / "micro"
    shutil.copytree(micro_bundle, bundle)
    logs: list[str] = []
    manifest = add_variants(bundle, micro_hf_checkpoint, backends="openvino", precisions="int8",
                            n_calib=8, n_eval=16, keep_failed=True, log=logs.append,
                            int8_configs="openvino=ptq-mlp-only")  # fmt: skip
    variant = next(v for v in manifest["variants"] if v["id"] == "openvino-int8")
    assert variant["options"]["config"] == "ptq-mlp-only"
    assert [s["config"] for s in variant["options"]["search"]] == ["ptq-mlp-only"]
    assert "top1_agreement" in variant["parity"]  # gated like any other (verdict: random weights)
    assert ".*self_attn.*" in variant["options"]["ignore"]
    assert not any("ptq-float-patch-embedding" in line for line in logs)


def test_convert_cli_refuses_a_bad_pin_before_exporting(micro_hf_checkpoint, tmp_path):
    out = tmp_path / "never"
    run = subprocess.run(
        [sys.executable, "-m", "edgeclip", "convert", str(micro_hf_checkpoint), "-o", str(out),
         "--backend", "onnx", "--precision", "int8", "--int8-config", "onnx=fastest"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert "onnx has no INT8 configuration 'fastest'" in run.stderr
    assert "dynamic-per-tensor" in run.stderr
    assert not out.exists()


def test_convert_cli_pin_reaches_the_manifest(micro_hf_checkpoint, tmp_path):
    out = tmp_path / "pinned"
    run = subprocess.run(
        [sys.executable, "-m", "edgeclip", "convert", str(micro_hf_checkpoint), "-o", str(out),
         "--backend", "onnx", "--precision", "int8",
         "--int8-config", "onnx=dynamic-per-channel-safe"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    shipped = {v["id"]: v for v in manifest["variants"]}
    rejected = {r["id"] for r in manifest.get("rejected_variants", [])}
    # Random weights may fail the gate; either way only the pinned config was tried.
    assert "onnx-int8" in shipped or "onnx-int8" in rejected
    if "onnx-int8" in shipped:
        assert shipped["onnx-int8"]["options"]["config"] == "dynamic-per-channel-safe"
        assert [s["config"] for s in shipped["onnx-int8"]["options"]["search"]] == [
            "dynamic-per-channel-safe"]  # fmt: skip
    assert "dynamic-per-tensor" not in run.stdout


def test_candidates_order_pinned_alone_or_first():
    from converters import quantize_onnx
    from converters.int8_pins import candidates

    every = [c[0] for c in quantize_onnx.INT8_CANDIDATES]
    assert [c[0] for c in candidates(quantize_onnx, None)] == every
    assert [c[0] for c in candidates(quantize_onnx, "dynamic-per-channel-safe")] == [
        "dynamic-per-channel-safe"]  # fmt: skip
    fallback = [c[0] for c in candidates(quantize_onnx, "dynamic-per-channel-safe", fallback=True)]
    assert fallback == ["dynamic-per-channel-safe", *(n for n in every if n != "dynamic-per-channel-safe")]
    with pytest.raises(InputError, match="no INT8 configuration 'nope'"):
        candidates(quantize_onnx, "nope")


def test_fallback_searches_the_rest_after_a_failed_pin(micro_bundle, micro_hf_checkpoint, tmp_path):
    """With a gate no graph can meet (mean cosine > 1), a pin with fallback tries every
    configuration, the pinned one first; without fallback only the pinned one, then rejects."""
    from converters.add_variants import add_variants
    from converters.quantize_onnx import INT8_CANDIDATES

    impossible = {"cosine_mean": 1.01}
    tried = {}
    for fallback in (True, False):
        bundle = tmp_path / f"micro-{fallback}"
        shutil.copytree(micro_bundle, bundle)
        manifest = add_variants(bundle, micro_hf_checkpoint, backends="onnx", precisions="int8",
                                n_calib=8, n_eval=16, keep_failed=True, log=lambda _: None,
                                thresholds=impossible, int8_configs={"onnx": "weight-only-blockwise"},
                                int8_fallback=fallback)  # fmt: skip
        variant = next(v for v in manifest["variants"] if v["id"] == "onnx-int8")
        assert variant["gate"]["passed"] is False and "cosine" in variant["gate"]["reason"]
        tried[fallback] = [s["config"] for s in variant["options"]["search"]]
    every = [name for name, _, _ in INT8_CANDIDATES]
    assert tried[True] == ["weight-only-blockwise", *(n for n in every if n != "weight-only-blockwise")]
    assert tried[False] == ["weight-only-blockwise"]
