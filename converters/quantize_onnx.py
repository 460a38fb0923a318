"""ONNX Runtime variants from the bundle's onnx-fp32 graphs: fp16, INT8 dynamic, static QDQ, weight-only.

Every builder has the registry signature
``build(bundle_root, fp32_variant, model, calibration, options) -> variant dict`` and writes
``<bundle_root>/<variant id>/{image,text}.onnx``. Only onnx + onnxruntime are needed (no torch).

Sensitive places in CLIP/ViT INT8 (research notes): LayerNorm, residual Add, Softmax, GELU,
the final projections, the token-embedding Gather. Quantizing only MatMul/Gemm keeps the first
four in float by construction; ``options["exclude"]`` picks what else stays float:

- ``"attention"``: the activation × activation MatMuls (QKᵀ, attention × V);
- ``"projections"``: ``visual_projection`` / ``text_projection`` and the patch-embedding Conv;
- ``"embedding"``: the token-embedding Gather (quantizing it only shrinks the file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .calibration import CalibrationData
from .variants import make_variant

TOWERS = ("image", "text")
_PROJECTION_KEYS = ("projection", "patch_embedding")


def _load(path: Path):
    import onnx

    return onnx.load(str(path))


def _nodes_to_exclude(model, exclude: tuple[str, ...]) -> list[str]:
    """Names of nodes to keep in float for the exclusion groups in ``exclude``."""
    inits = {i.name for i in model.graph.initializer}
    # Constant-weight MatMuls read an initializer, possibly through a Transpose/Cast of one.
    produced_from_init = {
        o
        for n in model.graph.node
        if n.op_type in ("Transpose", "Cast", "Identity") and n.input and n.input[0] in inits
        for o in n.output
    }
    weights = inits | produced_from_init
    names = []
    for node in model.graph.node:
        name = node.name.lower()
        if (
            "attention" in exclude
            and node.op_type == "MatMul"
            and not any(i in weights for i in node.input)
        ):
            names.append(node.name)
        elif "projections" in exclude and any(k in name for k in _PROJECTION_KEYS):
            names.append(node.name)
        elif "embedding" in exclude and node.op_type == "Gather" and "token_embedding" in name:
            names.append(node.name)
    return names


def _fp32_path(bundle_root: Path, fp32_variant: dict[str, Any], tower: str) -> Path:
    return bundle_root / fp32_variant[tower]["file"]


def build_fp16(
    bundle_root: Path,
    fp32_variant: dict[str, Any],
    model: Any,
    calibration: CalibrationData | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    """fp16 weights and compute, fp32 inputs/outputs (for GPUs; CPUs mostly lack fp16 kernels)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    vid = options.get("id", "onnx-fp16")
    out = Path(bundle_root) / vid
    out.mkdir(parents=True, exist_ok=True)
    for tower in TOWERS:
        m = _load(_fp32_path(bundle_root, fp32_variant, tower))
        # keep_io_types: the runtime feeds fp32 pixels and gets fp32 embeddings back.
        m16 = convert_float_to_float16(m, keep_io_types=True, disable_shape_infer=False)
        onnx.save(m16, str(out / f"{tower}.onnx"))
    return make_variant(
        vid, "onnx", "fp16", fp32_variant, f"{vid}/{{tower}}.onnx", options={"method": "float16"}
    )


def build_int8_dynamic(
    bundle_root: Path,
    fp32_variant: dict[str, Any],
    model: Any,
    calibration: CalibrationData | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    """INT8 weights, activations quantized per batch at run time (``quantize_dynamic``).

    options: ``per_channel`` (bool, default True), ``exclude`` (groups, default
    ("projections",)), ``reduce_range`` (default True), ``id``/``precision`` (set by the search).

    ``reduce_range`` keeps weights in 7 bits so one graph is accurate on every CPU: x86 without
    VNNI runs u8 × s8 products through VPMADDUBSW, which adds pairs into saturating 16-bit lanes
    (255 × 127 × 2 overflows; 255 × 63 × 2 does not). VNNI (VPDPBUSD), AMX and Arm's dot-product
    kernels accumulate in 32 bits and lose only the 8th weight bit. ONNX Runtime's quantization
    docs recommend it for non-VNNI machines; measured on the main job's student on a 2-core AVX2
    EPYC: text cosine min 0.9961 → 0.9983, image 0.9913 → 0.9982 (issue #8).
    Activation scales are computed per call over the whole input tensor, so an input's
    embedding depends on its batch neighbours: the gate records the drift, and the runtime runs
    such variants one input per call where vectors are stored (``invariant=True``).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    vid = options.get("id", "onnx-int8-dynamic")
    exclude = tuple(options.get("exclude", ("projections",)))
    per_channel = bool(options.get("per_channel", True))
    reduce_range = bool(options.get("reduce_range", True))
    out = Path(bundle_root) / vid
    out.mkdir(parents=True, exist_ok=True)
    for tower in TOWERS:
        src = _fp32_path(bundle_root, fp32_variant, tower)
        m = _load(src)
        quantize_dynamic(
            m,
            str(out / f"{tower}.onnx"),
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            reduce_range=reduce_range,
            op_types_to_quantize=["MatMul", "Gemm", "Gather"],
            nodes_to_exclude=_nodes_to_exclude(m, exclude),
            # The legacy exporter leaves some value_info untyped; they are all float here.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    opts = {"method": "ort-dynamic", "per_channel": per_channel, "exclude": list(exclude),
            "reduce_range": reduce_range}  # fmt: skip
    return make_variant(
        vid,
        "onnx",
        options.get("precision", "int8-dynamic"),
        fp32_variant,
        f"{vid}/{{tower}}.onnx",
        options=opts,
    )


class _Reader:
    """CalibrationDataReader over one tower's calibration arrays, one sample per call."""

    def __init__(self, name: str, array: np.ndarray):
        self._name = name
        self._rows = iter(array[i : i + 1] for i in range(len(array)))

    def get_next(self):
        row = next(self._rows, None)
        return None if row is None else {self._name: row}


def build_int8_static(
    bundle_root: Path,
    fp32_variant: dict[str, Any],
    model: Any,
    calibration: CalibrationData | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    """INT8 QDQ with activation ranges calibrated on ``calibration`` (``quantize_static``).

    Only MatMul/Gemm are quantized, so LayerNorm, residual Adds, Softmax and GELU stay float;
    ``exclude`` (default ("projections", "attention")) keeps more in float.
    """
    if calibration is None:
        raise ValueError(
            "int8-static needs calibration data (converters.calibration.load_calibration)"
        )
    vid = options.get("id", "onnx-int8-static")
    exclude = tuple(options.get("exclude", ("projections", "attention")))
    per_channel = bool(options.get("per_channel", True))
    method = options.get("calibrate_method", "MinMax")
    out = Path(bundle_root) / vid
    out.mkdir(parents=True, exist_ok=True)
    arrays = {"image": calibration.calib_pixels, "text": calibration.calib_ids}
    for tower in TOWERS:
        m = _load(_fp32_path(bundle_root, fp32_variant, tower))
        reader = _Reader(fp32_variant[tower]["input"], arrays[tower])
        _quantize_static_qdq(m, out / f"{tower}.onnx", reader, per_channel, exclude, method)
    opts = {
        "method": "ort-static-qdq",
        "per_channel": per_channel,
        "exclude": list(exclude),
        "calibrate_method": method,
        "n_calib": int(len(calibration.calib_pixels)),
    }
    return make_variant(
        vid,
        "onnx",
        options.get("precision", "int8-static"),
        fp32_variant,
        f"{vid}/{{tower}}.onnx",
        options=opts,
    )


def _quantize_static_qdq(
    m, dest: Path, reader: _Reader, per_channel: bool, exclude: tuple[str, ...], method: str
) -> None:
    """Write ``m`` to ``dest`` as INT8 QDQ (MatMul/Gemm only) calibrated on ``reader``."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        m,
        str(dest),
        reader,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul", "Gemm"],
        per_channel=per_channel,
        # AVX2 without VNNI: u8 activations × s8 weights can saturate the 16-bit
        # intermediate; reduce_range trades 1 bit of weight range for no overflow (see
        # build_int8_dynamic).
        reduce_range=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=_nodes_to_exclude(m, exclude),
        calibrate_method=getattr(CalibrationMethod, method),
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "WeightSymmetric": True},
    )


def build_int8_weights(
    bundle_root: Path,
    fp32_variant: dict[str, Any],
    model: Any,
    calibration: CalibrationData | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    """Block-wise INT8 weights (``MatMulNBits``, 8 bits, block 32): the safest INT8 for ORT.

    ``accuracy_level`` 4 lets the CPU kernel run int8 dot products on per-block quantized
    activations (fast); 1 dequantizes to fp32 first (exact activations, slower).
    """
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    vid = options.get("id", "onnx-int8-weights")
    level = int(options.get("accuracy_level", 4))
    block = int(options.get("block_size", 32))
    out = Path(bundle_root) / vid
    out.mkdir(parents=True, exist_ok=True)
    for tower in TOWERS:
        m = _load(_fp32_path(bundle_root, fp32_variant, tower))
        q = MatMulNBitsQuantizer(
            m, bits=8, block_size=block, is_symmetric=True, accuracy_level=level
        )
        q.process()
        q.model.save_model_to_file(str(out / f"{tower}.onnx"), use_external_data_format=False)
    opts = {"method": "ort-matmulnbits", "bits": 8, "block_size": block, "accuracy_level": level}
    return make_variant(
        vid,
        "onnx",
        options.get("precision", "int8-weights"),
        fp32_variant,
        f"{vid}/{{tower}}.onnx",
        options=opts,
    )


#: the INT8 search for ONNX, fastest first (measured on the 2-core AVX2 box: benchmarks/results/
#: variants_speed.json); the first candidate that passes the gate ships as ``onnx-int8``. Every
#: dynamic candidate uses 7-bit weights (``reduce_range``), so it holds on AVX2 as on VNNI/AMX.
INT8_CANDIDATES: list[tuple[str, str, dict[str, Any]]] = [
    ("dynamic-per-tensor", "build_int8_dynamic", {"per_channel": False, "exclude": ()}),
    ("dynamic-per-channel", "build_int8_dynamic", {"per_channel": True, "exclude": ()}),
    (
        "dynamic-per-channel-safe",
        "build_int8_dynamic",
        {"per_channel": True, "exclude": ("projections", "embedding", "attention")},
    ),
    ("weight-only-blockwise", "build_int8_weights", {"accuracy_level": 4}),
    ("weight-only-fp32-compute", "build_int8_weights", {"accuracy_level": 1}),
]
