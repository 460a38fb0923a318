"""How close each variant runs to this host's limit: GEMM peaks and roofline fractions.

The peak is measured with ONNX Runtime itself (MLAS, the kernels the ONNX variants run), on one
square GEMM big enough to be compute-bound, with the bench's thread count:

* fp32: ``MatMul`` of two float32 matrices;
* int8: ``MatMulInteger`` of uint8 × int8 → int32, the product that dynamic INT8's
  ``DynamicQuantizeMatMul`` runs (VNNI's ``VPDPBUSD`` where the CPU has it, AVX2's
  ``VPMADDUBSW`` otherwise).

A variant's achieved rate is ``pairs/s × MACs per pair``; its fraction of the roofline is that
over the peak at the precision its matrix products run in (MACs per pair counted at the text
length the row's text tower ran: TowerRunner cuts prompts after their last end token, so a
10-token prompt does not run 77 positions; counted at 77 the fractions came out 3-4x too high
on a small trained bundle, 11 % at most for TinyCLIP-8M): fp32 and fp16 variants and weight-only
INT8 (weights are decompressed to float) against the fp32 peak, activation-quantised INT8
against the int8 peak. A fraction above 1 means the backend used faster kernels than the
measured peak (OpenVINO runs fp16 graphs in bf16 on CPUs with AVX512-BF16 or AMX).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeclip.timing import time_calls

#: INT8 search configurations that quantise weights only (their GEMMs run in float)
WEIGHT_ONLY = ("weight-only", "weights", "int8-weights", "weight_only_wi8")


def _gemm_graph(kind: str, n: int) -> bytes:
    from onnx import TensorProto, helper

    if kind == "fp32":
        a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])
        b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
    else:
        a = helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])
        b = helper.make_tensor_value_info("b", TensorProto.INT8, [n, n])
        out = helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])
        node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
    graph = helper.make_graph([node], f"gemm_{kind}", [a, b], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def gemm_peak(kind: str, threads: int | None, n: int = 1024, min_time: float = 1.0) -> float:
    """GMAC/s of one ``n``³ GEMM on ONNX Runtime's CPU provider (median over calls)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(_gemm_graph(kind, n), sess_options=opts,
                                providers=["CPUExecutionProvider"])  # fmt: skip
    rng = np.random.default_rng(0)
    if kind == "fp32":
        feeds = {"a": rng.standard_normal((n, n), dtype=np.float32),
                 "b": rng.standard_normal((n, n), dtype=np.float32)}  # fmt: skip
    else:
        feeds = {"a": rng.integers(0, 256, (n, n), dtype=np.uint8),
                 "b": rng.integers(-128, 128, (n, n), dtype=np.int8)}  # fmt: skip
    times = time_calls(lambda: sess.run(None, feeds), warmup=3, repeats=10, min_time=min_time,
                       max_repeats=200)  # fmt: skip
    return n**3 / float(np.median(times)) / 1e9


def peaks(threads: int | None, min_time: float = 1.0) -> dict[str, Any]:
    """This host's fp32 and int8 GEMM peaks in GMAC/s."""
    import onnxruntime as ort

    return {"fp32_gmac_s": round(gemm_peak("fp32", threads, min_time=min_time), 1),
            "int8_gmac_s": round(gemm_peak("int8", threads, min_time=min_time), 1), "n": 1024,
            "threads": threads, "kernels": f"onnxruntime {ort.__version__} MLAS"}  # fmt: skip


def peak_kind(precision: str, config: str | None) -> str:
    """Which peak bounds a variant: 'int8' when its activations are quantised, else 'fp32'."""
    if precision.startswith("int8") and precision != "int8-weights":
        return "fp32" if (config or "").lower() in WEIGHT_ONLY else "int8"
    return "fp32"


def text_tokens(tower: Any | None, ids: np.ndarray, batch: int) -> int:
    """Tokens per text the text tower runs at ``batch``, as TowerRunner feeds it (cut after the
    last end token, or padded to a length bucket); ``tower`` None: the torch baseline, which is
    fed padding="longest" (the same cut)."""
    from edgeclip.towers import pad_to_length_bucket, trim_to_last_eot

    chunk = ids[:batch]
    if tower is None or tower.dynamic_sequence:
        return int(trim_to_last_eot(chunk).shape[1])
    if tower.sequence_lengths:
        return int(pad_to_length_bucket(chunk, tower.sequence_lengths).shape[1])
    return int(chunk.shape[1])


def mark_text_tokens(rows: list[dict[str, Any]], variants: list, ids: np.ndarray) -> None:
    """Set each CPU row's ``text_tokens``: the length its text tower ran (the torch baseline's
    rows: its padding="longest" length), which ``fractions`` counts its MACs at."""
    towers = {v.id: v.text for v in variants}
    for r in rows:
        if r.get("device", "cpu") == "cpu" and (r["variant"] in towers or r["backend"] == "torch"):
            r["text_tokens"] = text_tokens(towers.get(r["variant"]), ids, r["batch_size"])


def pair_macs_at(macs: dict[str, Any], arch: dict[str, Any] | None, tokens: int | None) -> float:
    """MACs of one image and one text of ``tokens`` tokens: the counted text MACs scaled by the
    analytic count at that length over the one at the full context (exact: linear and
    attention terms both); the full-context count without ``tokens`` or an architecture."""
    from edgeclip.errors import InputError

    from .macs import analytic_macs

    if not tokens or not arch:
        return macs["pair_macs"]
    try:
        full = analytic_macs(arch)["text_macs"]
        at = analytic_macs({**arch, "context_length": int(tokens)})["text_macs"]
    except (InputError, KeyError, ValueError, TypeError):
        return macs["pair_macs"]
    return macs["image_macs"] + macs["text_macs"] * at / full


def fractions(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per variant and batch size: achieved GMAC/s, its peak, the fraction, and the
    roofline pairs/s (peak / MACs per pair)."""
    roof, macs = results.get("roofline") or {}, results.get("macs") or {}
    pair = macs.get("pair_macs")
    if not roof.get("peaks") or not pair:
        return []
    configs = results.get("variant_configs") or {}
    arch = (results.get("model") or {}).get("architecture")
    rows = []
    for r in results.get("throughput", []):
        if r.get("device") not in (None, "cpu") or not r.get("pairs_per_s"):
            continue
        kind = "fp32" if r["backend"] == "torch" else peak_kind(r["precision"], configs.get(r["variant"]))
        peak = roof["peaks"][f"{kind}_gmac_s"]
        pair = pair_macs_at(macs, arch, r.get("text_tokens"))
        achieved = r["pairs_per_s"] * pair / 1e9
        rows.append({"variant": r["variant"], "batch_size": r["batch_size"], "peak": kind,
                     "text_tokens": r.get("text_tokens"), "pair_macs": round(pair),
                     "achieved_gmac_s": round(achieved, 1), "peak_gmac_s": peak,
                     "fraction": round(achieved / peak, 3) if peak else None,
                     "roofline_pairs_per_s": round(peak * 1e9 / pair, 1)})  # fmt: skip
    return rows
