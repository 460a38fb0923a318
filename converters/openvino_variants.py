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


def build_int8_ptq(
    bundle_root: Path,
    fp32_variant: dict[str, Any],
    model: Any,
    calibration: CalibrationData | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    """NNCF post-training INT8 (weights and activations), calibrated on ``calibration``.

    options: ``ignore`` (name regexes kept in float, default the final projections),
    ``smooth_quant`` (bool, default False: SmoothQuant alpha 0.95 for activation outliers).
    """
    import nncf

    if calibration is None:
        raise ValueError("openvino int8-static needs calibration data (converters.calibration)")
    vid = options.get("id", "openvino-int8-static")
    ignore = list(options.get("ignore", (".*projection.*",)))
    smooth = bool(options.get("smooth_quant", False))
    out = Path(bundle_root) / vid
    out.mkdir(parents=True, exist_ok=True)
    arrays = {"image": calibration.calib_pixels, "text": calibration.calib_ids}
    for tower in TOWERS:
        ov_model = _read(bundle_root, fp32_variant, tower)
        name = fp32_variant[tower]["input"]
        samples = [{name: arrays[tower][i : i + 1]} for i in range(len(arrays[tower]))]
        kwargs: dict[str, Any] = {}
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
        _save(quantized, out, tower, fp16=False)
    opts = {
        "method": "nncf-quantize",
        "model_type": "transformer",
        "ignore": ignore,
        "smooth_quant": smooth,
        "n_calib": int(len(calibration.calib_pixels)),
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
    import nncf

    vid = options.get("id", "openvino-int8-weights")
    out = Path(bundle_root) / vid
    out.mkdir(parents=True, exist_ok=True)
    for tower in TOWERS:
        compressed = nncf.compress_weights(
            _read(bundle_root, fp32_variant, tower), mode=nncf.CompressWeightsMode.INT8_ASYM
        )
        _save(compressed, out, tower, fp16=False)
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
INT8_CANDIDATES: list[tuple[str, str, dict[str, Any]]] = [
    ("ptq-transformer", "build_int8_ptq", {"ignore": ()}),
    ("ptq-transformer-keep-projections", "build_int8_ptq", {"ignore": (".*projection.*",)}),
    (
        "ptq-transformer-smoothquant",
        "build_int8_ptq",
        {"ignore": (".*projection.*",), "smooth_quant": True},
    ),
    ("weight-only", "build_int8_weights", {}),
]
