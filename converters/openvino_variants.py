"""OpenVINO IR variants (``.xml`` + ``.bin``) converted from the bundle's onnx-fp32 graphs.

fp32 and fp16 (``compress_to_fp16``: fp16 weights, the CPU plugin still computes in fp32/bf16),
INT8 post-training quantization with NNCF (``model_type=TRANSFORMER`` keeps LayerNorm, Softmax
and residual Adds out of INT8, as the OpenVINO CLIP reports require), and INT8 weight-only
compression (``nncf.compress_weights``). Converting needs openvino (+ nncf for INT8), never torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .calibration import CalibrationData
from .variants import make_variant

TOWERS = ("image", "text")

#: Node-name patterns (HF CLIP export names) kept in float by the partial PTQ candidates. The
#: patch embedding reads normalised pixels, which one per-tensor 8-bit scale fits badly: on the
#: CLIP trained here, full PTQ agreed on 96.9 % of zero-shot answers (image cos 0.9966) and PTQ
#: with the patch embedding and projections in float on 100 % (0.9997;
#: benchmarks/results/variants_gate_trained.json of commit 1863bdb). Keeping attention float too
#: leaves int8 in the MLPs (fc1, fc2) only: the last PTQ try before weight-only.
#: The final projections: OpenVINO names each after the graph output it produces.
PROJECTIONS = (".*projection.*", "image_embeds", "text_embeds")
FLOAT_EMBEDDINGS = (*PROJECTIONS, ".*embeddings.*")
FLOAT_ATTENTION = (*FLOAT_EMBEDDINGS, ".*self_attn.*")
#: The attention output projection reads the heads' concatenated outputs, whose channels one
#: per-tensor activation scale fits worst: on the CLIP trained here, on the AMD EPYC (AVX-512
#: VNNI), keeping ``out_proj`` float as well took tie-tolerant top-1 agreement over 480 held-out
#: images from 98.1 % to 99.6 % (min image cos 0.9927 -> 0.9976); floating q/k, v or the
#: attention scores instead left it at 97.3-98.1 %, and layer 0 at 98.96 %
#: (benchmarks/results/epyc-avx512-vnni-2core/openvino_int8_sensitivity.md).
FLOAT_ATTENTION_OUTPUT = (*FLOAT_EMBEDDINGS, ".*self_attn/out_proj.*")


def _read(bundle_root: Path, fp32_variant: dict[str, Any], tower: str):
    from openvino.tools.ovc import convert_model  # the runtime imports openvino without it

    return convert_model(str(Path(bundle_root) / fp32_variant[tower]["file"]))


def _save(model, out: Path, tower: str, fp16: bool) -> None:
    import openvino as ov

    ov.save_model(model, str(out / f"{tower}.xml"), compress_to_fp16=fp16)


def _float(bundle_root, fp32_variant, options, precision: str) -> dict[str, Any]:
    vid = options.get("id", f"openvino-{precision}")
    out = Path(bundle_root) / vid
    out.mkdir(parents=True, exist_ok=True)
    for tower in TOWERS:
        _save(_read(bundle_root, fp32_variant, tower), out, tower, fp16=precision == "fp16")
    return make_variant(
        vid,
        "openvino",
        precision,
        fp32_variant,
        f"{vid}/{{tower}}.xml",
        options={"method": "convert_model", "compress_to_fp16": precision == "fp16"},
    )


def build_fp32(
    bundle_root: Path,
    fp32_variant: dict[str, Any],
    model: Any,
    calibration: CalibrationData | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    """OpenVINO IR with fp32 weights."""
    return _float(bundle_root, fp32_variant, options, "fp32")


def build_fp16(
    bundle_root: Path,
    fp32_variant: dict[str, Any],
    model: Any,
    calibration: CalibrationData | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    """OpenVINO IR with fp16 weights (half the size; same compute precision on CPU)."""
    return _float(bundle_root, fp32_variant, options, "fp16")


def _int8_weights(ov_model, ignored_types: tuple[str, ...] = ()):
    """``ov_model`` with int8 weights (asymmetric, per channel), except ops of ``ignored_types``."""
    import nncf

    scope = nncf.IgnoredScope(types=list(ignored_types), validate=False) if ignored_types else None
    return nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT8_ASYM, ignored_scope=scope)


def _ptq_tower(ov_model, samples: list[dict], ignore: list[str], smooth: bool,
               nncf_options: dict[str, Any] | None = None):  # fmt: skip
    """One tower through NNCF PTQ, then its embedding tables to int8 weights. ``nncf_options``:
    more ``nncf.quantize`` arguments (e.g. ``fast_bias_correction``), for measurements.

    PTQ leaves Gather tables in fp32; the text tower's token table alone is 49408 × width
    (50.6 MB at TinyCLIP-8M's 256): without this step a PTQ text tower made the variant's files
    61 MB, against 24 MB for weight-only. A looked-up row needs no activation scale, so its
    int8 weights are exactly what weight-only compression gives it.
    """
    import nncf

    kwargs: dict[str, Any] = dict(nncf_options or {})
    if not smooth:
        # SmoothQuant off by default: it rescales weights and measured no better here.
        kwargs["advanced_parameters"] = nncf.AdvancedQuantizationParameters(
            smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=-1)
        )
    quantized = nncf.quantize(
        ov_model,
        nncf.Dataset(samples),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(samples),
        ignored_scope=nncf.IgnoredScope(patterns=ignore, validate=False) if ignore else None,
        **kwargs,
    )
    return _int8_weights(quantized, ignored_types=("MatMul", "Convolution"))


def build_int8_ptq(
    bundle_root: Path,
    fp32_variant: dict[str, Any],
    model: Any,
    calibration: CalibrationData | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    """NNCF post-training INT8 (weights and activations), calibrated on ``calibration``; the
    embedding tables get int8 weights (``_ptq_tower``).

    options: ``ignore`` (name regexes kept in float, default the final projections),
    ``smooth_quant`` (bool, default False: SmoothQuant alpha 0.95 for activation outliers),
    ``ptq_towers`` (default both; the others get int8 weights only, as ``build_int8_weights``),
    ``nncf`` (more ``nncf.quantize`` arguments, recorded; for measurements).
    """
    if calibration is None:
        raise ValueError("openvino int8-static needs calibration data (converters.calibration)")
    vid = options.get("id", "openvino-int8-static")
    ignore = list(options.get("ignore", PROJECTIONS))
    smooth = bool(options.get("smooth_quant", False))
    out = Path(bundle_root) / vid
    out.mkdir(parents=True, exist_ok=True)
    arrays = {"image": calibration.calib_pixels, "text": calibration.calib_ids}
    ptq_towers = tuple(options.get("ptq_towers", TOWERS))
    for tower in TOWERS:
        ov_model = _read(bundle_root, fp32_variant, tower)
        if tower not in ptq_towers:
            _save(_int8_weights(ov_model), out, tower, fp16=False)
            continue
        name = fp32_variant[tower]["input"]
        samples = [{name: arrays[tower][i : i + 1]} for i in range(len(arrays[tower]))]
        _save(_ptq_tower(ov_model, samples, ignore, smooth, options.get("nncf")), out, tower,
              fp16=False)  # fmt: skip
    opts = {
        "method": "nncf-quantize",
        "model_type": "transformer",
        "embedding_tables": "int8 weights",
        "ptq_towers": list(ptq_towers),
        "ignore": ignore,
        "smooth_quant": smooth,
        "n_calib": int(len(calibration.calib_pixels)),
        **({"nncf": dict(options["nncf"])} if options.get("nncf") else {}),
    }
    return make_variant(
        vid,
        "openvino",
        options.get("precision", "int8-static"),
        fp32_variant,
        f"{vid}/{{tower}}.xml",
        options=opts,
    )


def build_int8_weights(
    bundle_root: Path,
    fp32_variant: dict[str, Any],
    model: Any,
    calibration: CalibrationData | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    """NNCF INT8 weight compression (asymmetric, per channel); activations stay float."""
    vid = options.get("id", "openvino-int8-weights")
    out = Path(bundle_root) / vid
    out.mkdir(parents=True, exist_ok=True)
    for tower in TOWERS:
        _save(_int8_weights(_read(bundle_root, fp32_variant, tower)), out, tower, fp16=False)
    return make_variant(
        vid,
        "openvino",
        options.get("precision", "int8-weights"),
        fp32_variant,
        f"{vid}/{{tower}}.xml",
        options={"method": "nncf-compress_weights", "mode": "int8_asym"},
    )


#: the INT8 search for OpenVINO, fastest first on INT8-capable CPUs (VNNI/AMX); on this 2-core
#: AVX2 box NNCF PTQ measured no faster than fp32 (stack survey), so the order is by design.
#: PTQ with the patch embedding and projections in float comes first: quantizing them as well
#: (full PTQ, the first try until 2026-12-03) was no faster: image tower 65.2 against 65.4
#: images/s at batch 1 and 94.7 against 94.4 at batch 32 on the AMX Xeon (they are about 2 % of
#: its MACs; benchmarks/results/xeon-amx-2core/openvino_int8_configs.md), and less accurate on the
#: CLIP trained here (see FLOAT_EMBEDDINGS). The MLP-only one comes before weight-only: fc1 and
#: fc2 (8·d² MACs a token and layer, against 4·d² for q, k, v and out) hold two thirds of the
#: encoder's projection MACs.
#: The search quantizes the image tower only; the text tower gets int8 weights. With PTQ, the
#: CPU plugin kept the text tower's token table in fp32 at run time (VmRSS after the first text
#: 204 MB against 142 for weight-only, AMX Xeon, memory_stages), while the text tower is about
#: a tenth of a pair's time at batch 1.
IMAGE_ONLY = ("image",)

INT8_CANDIDATES: list[tuple[str, str, dict[str, Any]]] = [
    ("ptq-float-patch-embedding", "build_int8_ptq", {"ignore": FLOAT_EMBEDDINGS, "ptq_towers": IMAGE_ONLY}),
    ("ptq-float-patch-embedding-smoothquant", "build_int8_ptq",
     {"ignore": FLOAT_EMBEDDINGS, "smooth_quant": True, "ptq_towers": IMAGE_ONLY}),
    ("ptq-float-attention-output", "build_int8_ptq",
     {"ignore": FLOAT_ATTENTION_OUTPUT, "ptq_towers": IMAGE_ONLY}),
    ("ptq-mlp-only", "build_int8_ptq", {"ignore": FLOAT_ATTENTION, "ptq_towers": IMAGE_ONLY}),
    ("weight-only", "build_int8_weights", {}),
]  # fmt: skip
