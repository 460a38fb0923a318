"""LiteRT (``.tflite``) variants: fp32 via litert-torch, INT8 via ai-edge-quantizer recipes.

litert-torch converts each tower only at a fixed batch (dynamic batch and
``resize_tensor_input`` fail, stack survey), so one file per batch size is written,
``<id>/{tower}_b{batch}.tflite``; the manifest's tower ``file`` keeps a ``{batch}`` placeholder
and ``batch_sizes`` lists the sizes, and the runtime chunks and pads (``edgeclip.towers``).
Default sizes (1, 8): batch-1 latency plus a batch for bulk embedding.

INT8 recipes (applied to the fp32 files, no reconversion):

- ``int8-dynamic``: ``dynamic_wi8_afp32`` (per-channel INT8 weights, activations quantized
  on the fly; INT8 compute). Needs ai-edge-litert: tflite-runtime 2.14 returns zeros for it.
- ``int8-weights``: ``weight_only_wi8_afp32`` (INT8 weights dequantized to fp32 at load).
- ``int8-static``: ``static_wi8_ai8`` calibrated; the survey saw it break the text tower
  (cosine 0.017), so it is built only on request and ships only if it passes the gate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.tokenizer import EOT_ID, SOT_ID

from .calibration import CalibrationData
from .variants import make_variant

TOWERS = ("image", "text")
DEFAULT_BATCH_SIZES = (1, 8)
#: scratch directory (inside the staging bundle) for fp32 files only the INT8 recipes need
SCRATCH = ".litert-fp32-src"


def _sizes(options: dict[str, Any]) -> list[int]:
    return sorted({int(b) for b in options.get("batch_sizes", DEFAULT_BATCH_SIZES)})


def _sample(tower: str, model: Any, batch: int):
    import torch

    if tower == "image":
        size = int(model.config.vision_config.image_size)
        return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    ctx = int(model.config.text_config.max_position_embeddings)
    ids = torch.zeros(batch, ctx, dtype=torch.long)
    for row in range(batch):
        # Distinct EOT positions so the pooling index cannot be folded into a constant.
        n = min(3 + row, ctx - 1)
        ids[row, 0], ids[row, 1:n], ids[row, n] = SOT_ID, 320, EOT_ID
    return ids


def _fp32_dir(bundle_root: Path, sizes: list[int], model: Any, target: str | None = None) -> Path:
    """The fp32 .tflite files, converted once per bundle and reused by the INT8 recipes.

    ``target`` names the variant directory to write (litert-fp32 itself); otherwise an existing
    complete ``litert-fp32`` is reused, else the files go to the scratch ``SCRATCH`` directory
    that ``build_variants`` deletes at the end.
    """
    import litert_torch

    from .gate import torch_towers

    root = Path(bundle_root)
    names = [f"{t}_b{b}.tflite" for b in sizes for t in TOWERS]
    if target is None and all((root / "litert-fp32" / n).is_file() for n in names):
        return root / "litert-fp32"
    src = root / (target or SCRATCH)
    if model is None or isinstance(model, (str, Path)):
        raise ValueError("LiteRT conversion needs the transformers CLIPModel (torch)")
    towers = dict(zip(TOWERS, torch_towers(model)))
    src.mkdir(parents=True, exist_ok=True)
    for batch in sizes:
        for tower in TOWERS:
            path = src / f"{tower}_b{batch}.tflite"
            if not path.is_file():
                litert_torch.convert(towers[tower], (_sample(tower, model, batch),)).export(
                    str(path)
                )
    return src


def _io(path: Path) -> tuple[str, str]:
    """The single input's and output's tensor names of a .tflite file."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    return it.get_input_details()[0]["name"], it.get_output_details()[0]["name"]


def _variant(
    vid: str, precision: str, fp32_variant, out: Path, sizes: list[int], options
) -> dict[str, Any]:
    io = {t: _io(out / f"{t}_b{sizes[0]}.tflite") for t in TOWERS}
    return make_variant(
        vid,
        "litert",
        precision,
        fp32_variant,
        f"{vid}/{{tower}}_b{{batch}}.tflite",
        batch_sizes=sizes,
        io=io,
        options=options,
    )


def build_fp32(
    bundle_root: Path,
    fp32_variant: dict[str, Any],
    model: Any,
    calibration: CalibrationData | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    """fp32 .tflite towers converted from the torch model, one file per batch size."""
    vid = options.get("id", "litert-fp32")
    sizes = _sizes(options)
    out = _fp32_dir(bundle_root, sizes, model, target=vid)
    return _variant(
        vid, "fp32", fp32_variant, out, sizes, {"method": "litert-torch", "batch_sizes": sizes}
    )


def _quantize(
    bundle_root, fp32_variant, model, calibration, options, recipe_name: str, precision: str
):
    from ai_edge_quantizer import quantizer, recipe

    vid = options.get("id", f"litert-{precision}")
    sizes = _sizes(options)
    src = _fp32_dir(bundle_root, sizes, model)
    out = Path(bundle_root) / vid
    out.mkdir(parents=True, exist_ok=True)
    arrays = {"image": None, "text": None}
    if calibration is not None:
        arrays = {"image": calibration.calib_pixels, "text": calibration.calib_ids.astype(np.int32)}
    for batch in sizes:
        for tower in TOWERS:
            qt = quantizer.Quantizer(str(src / f"{tower}_b{batch}.tflite"))
            qt.load_quantization_recipe(getattr(recipe, recipe_name)())
            result = None
            if qt.need_calibration:
                if calibration is None:
                    raise ValueError(f"LiteRT {precision} needs calibration data")
                inp = _io(src / f"{tower}_b{batch}.tflite")[0].removeprefix("serving_default_")
                data = arrays[tower]
                reps = -(-batch // len(data))
                data = np.concatenate([data] * reps) if reps > 1 else data
                samples = [
                    {inp: data[i : i + batch]} for i in range(0, len(data) - batch + 1, batch)
                ]
                result = qt.calibrate({"serving_default": samples})
            qt.quantize(result, enable_progress_report=False).export_model(
                str(out / f"{tower}_b{batch}.tflite"), overwrite=True
            )
    return _variant(
        vid,
        options.get("precision", precision),
        fp32_variant,
        out,
        sizes,
        {"method": f"ai-edge-quantizer:{recipe_name}", "batch_sizes": sizes},
    )


def build_int8_dynamic(
    bundle_root: Path,
    fp32_variant: dict[str, Any],
    model: Any,
    calibration: CalibrationData | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    """Dynamic-range INT8 (``dynamic_wi8_afp32``); runs under ai-edge-litert only."""
    return _quantize(
        bundle_root, fp32_variant, model, calibration, options, "dynamic_wi8_afp32", "int8-dynamic"
    )


def build_int8_weights(
    bundle_root: Path,
    fp32_variant: dict[str, Any],
    model: Any,
    calibration: CalibrationData | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    """Weight-only INT8 (``weight_only_wi8_afp32``); also runs under the tflite-runtime fallback."""
    return _quantize(
        bundle_root,
        fp32_variant,
        model,
        calibration,
        options,
        "weight_only_wi8_afp32",
        "int8-weights",
    )


def build_int8_static(
    bundle_root: Path,
    fp32_variant: dict[str, Any],
    model: Any,
    calibration: CalibrationData | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    """Full INT8 (``static_wi8_ai8``), calibrated; ships only if the gate passes."""
    return _quantize(
        bundle_root, fp32_variant, model, calibration, options, "static_wi8_ai8", "int8-static"
    )


#: the INT8 search for LiteRT, fastest first (survey: dynamic 41.8 vs weight-only 41.5 pairs/s
#: on the 2-core AVX2 box; weight-only is the safe fallback and runs under tflite-runtime too).
INT8_CANDIDATES: list[tuple[str, str, dict[str, Any]]] = [
    ("dynamic-range", "build_int8_dynamic", {}),
    ("weight-only", "build_int8_weights", {}),
]
