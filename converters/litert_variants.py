"""LiteRT (``.tflite``) variants: fp32 via litert-torch, INT8 via ai-edge-quantizer recipes.

litert-torch converts each tower only at a fixed batch (dynamic batch and
``resize_tensor_input`` fail, stack survey), so one file per batch size is written,
``<id>/{tower}_b{batch}.tflite``; the manifest's tower ``file`` keeps a ``{batch}`` placeholder
and ``batch_sizes`` lists the sizes, and the runtime chunks and pads (``edgeclip.towers``).
Default sizes (1, 8): batch-1 latency plus a batch for bulk embedding.

Each text file holds one signature per sequence length (``l16``, ``l32``, ``l77``; option
``text_lengths``) over one shared copy of the weights (+0.4 % file size for TinyCLIP-8M): a
prompt of 7 tokens runs 16 positions, not 77. The tower's ``sequence_lengths`` lists them.

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
#: text signatures: most prompts fit 16 tokens, most captions 32; 77 (the context) always
DEFAULT_TEXT_LENGTHS = (16, 32)
#: scratch directory (inside the staging bundle) for fp32 files only the INT8 recipes need
SCRATCH = ".litert-fp32-src"


def _sizes(options: dict[str, Any]) -> list[int]:
    return sorted({int(b) for b in options.get("batch_sizes", DEFAULT_BATCH_SIZES)})


def _text_lengths(options: dict[str, Any], model: Any) -> list[int]:
    """The text signatures' lengths: the requested ones below the context, and the context."""
    ctx = int(model.config.text_config.max_position_embeddings)
    asked = {int(n) for n in options.get("text_lengths", DEFAULT_TEXT_LENGTHS)}
    return sorted({n for n in asked if 2 <= n < ctx} | {ctx})


def _sample(tower: str, model: Any, batch: int, length: int | None = None):
    import torch

    if tower == "image":
        size = int(model.config.vision_config.image_size)
        return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    ctx = length or int(model.config.text_config.max_position_embeddings)
    ids = torch.zeros(batch, ctx, dtype=torch.long)
    for row in range(batch):
        # Distinct EOT positions so the pooling index cannot be folded into a constant.
        n = min(3 + row, ctx - 1)
        ids[row, 0], ids[row, 1:n], ids[row, n] = SOT_ID, 320, EOT_ID
    return ids


def _convert(tower: str, module: Any, model: Any, batch: int, lengths: list[int], path: Path) -> None:
    """One tower at one batch size; the text tower with a signature per sequence length."""
    import litert_torch

    if tower == "image":
        litert_torch.convert(module, (_sample(tower, model, batch),)).export(str(path))
        return
    chain = litert_torch
    for n in lengths:
        chain = chain.signature(f"l{n}", module, (_sample(tower, model, batch, n),))
    chain.convert().export(str(path))


def signature_lengths(path: Path) -> list[int]:
    """The sequence lengths of a text file's ``l<N>`` signatures ([] for a one-signature file)."""
    from ai_edge_litert.interpreter import Interpreter

    keys = Interpreter(model_path=str(path)).get_signature_list()
    return sorted(int(k[1:]) for k in keys if k[:1] == "l" and k[1:].isdigit())


def _complete(folder: Path, sizes: list[int], lengths: list[int]) -> bool:
    names = [f"{t}_b{b}.tflite" for b in sizes for t in TOWERS]
    if not all((folder / n).is_file() for n in names):
        return False
    return all(signature_lengths(folder / f"text_b{b}.tflite") == lengths for b in sizes)


def _fp32_dir(
    bundle_root: Path, sizes: list[int], lengths: list[int], model: Any, target: str | None = None
) -> Path:
    """The fp32 .tflite files, converted once per bundle and reused by the INT8 recipes.

    ``target`` names the variant directory to write (litert-fp32 itself); otherwise an existing
    complete ``litert-fp32`` (same batches and text lengths) is reused, else the files go to
    the scratch ``SCRATCH`` directory that ``build_variants`` deletes at the end.
    """
    from .gate import torch_towers

    root = Path(bundle_root)
    if target is None and _complete(root / "litert-fp32", sizes, lengths):
        return root / "litert-fp32"
    src = root / (target or SCRATCH)
    if model is None or isinstance(model, (str, Path)):
        raise ValueError("LiteRT conversion needs the transformers CLIPModel (torch)")
    towers = dict(zip(TOWERS, torch_towers(model)))
    src.mkdir(parents=True, exist_ok=True)
    for batch in sizes:
        for tower in TOWERS:
            path = src / f"{tower}_b{batch}.tflite"
            if not path.is_file() or (tower == "text" and signature_lengths(path) != lengths):
                _convert(tower, towers[tower], model, batch, lengths, path)
    return src


def _io(path: Path) -> tuple[str, str]:
    """The single input's and output's tensor names of a .tflite file."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    return it.get_input_details()[0]["name"], it.get_output_details()[0]["name"]


def _variant(
    vid: str, precision: str, fp32_variant, out: Path, sizes: list[int], lengths: list[int], options
) -> dict[str, Any]:
    io = {t: _io(out / f"{t}_b{sizes[0]}.tflite") for t in TOWERS}
    variant = make_variant(
        vid,
        "litert",
        precision,
        fp32_variant,
        f"{vid}/{{tower}}_b{{batch}}.tflite",
        batch_sizes=sizes,
        io=io,
        options={**options, "text_lengths": lengths},
    )
    variant["text"]["sequence_lengths"] = lengths  # the runtime pads to the next one
    return variant


def build_fp32(
    bundle_root: Path,
    fp32_variant: dict[str, Any],
    model: Any,
    calibration: CalibrationData | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    """fp32 .tflite towers converted from the torch model, one file per batch size."""
    vid = options.get("id", "litert-fp32")
    sizes, lengths = _sizes(options), _text_lengths(options, model)
    out = _fp32_dir(bundle_root, sizes, lengths, model, target=vid)
    return _variant(vid, "fp32", fp32_variant, out, sizes, lengths,
                    {"method": "litert-torch", "batch_sizes": sizes})  # fmt: skip


def _quantize(
    bundle_root, fp32_variant, model, calibration, options, recipe_name: str, precision: str
):
    from ai_edge_quantizer import quantizer, recipe

    vid = options.get("id", f"litert-{precision}")
    sizes, lengths = _sizes(options), _text_lengths(options, model)
    src = _fp32_dir(bundle_root, sizes, lengths, model)
    out = Path(bundle_root) / vid
    out.mkdir(parents=True, exist_ok=True)
    for batch in sizes:
        for tower in TOWERS:
            qt = quantizer.Quantizer(str(src / f"{tower}_b{batch}.tflite"))
            qt.load_quantization_recipe(getattr(recipe, recipe_name)())
            result = None
            if qt.need_calibration:
                if calibration is None:
                    raise ValueError(f"LiteRT {precision} needs calibration data")
                result = qt.calibrate(_calibration_sets(src / f"{tower}_b{batch}.tflite",
                                                        tower, batch, calibration))  # fmt: skip
            qt.quantize(result, enable_progress_report=False).export_model(
                str(out / f"{tower}_b{batch}.tflite"), overwrite=True
            )
    return _variant(vid, options.get("precision", precision), fp32_variant, out, sizes, lengths,
                    {"method": f"ai-edge-quantizer:{recipe_name}", "batch_sizes": sizes})  # fmt: skip


def _calibration_sets(path: Path, tower: str, batch: int, calibration: CalibrationData) -> dict:
    """``{signature: [{input: batch}, ...]}``: the calibration set cut to each signature's
    batch and, for text, its length (what follows EOT there is padding the graph never pools)."""
    from ai_edge_litert.interpreter import Interpreter

    data = calibration.calib_pixels if tower == "image" else calibration.calib_ids.astype(np.int32)
    reps = -(-batch // len(data))
    data = np.concatenate([data] * reps) if reps > 1 else data
    sets = {}
    it = Interpreter(model_path=str(path))
    for key, sig in it.get_signature_list().items():
        inp = sig["inputs"][0]
        shape = it.get_signature_runner(key).get_input_details()[inp]["shape"]
        cut = data if tower == "image" else data[:, : int(shape[1])]
        sets[key] = [{inp: cut[i : i + batch]} for i in range(0, len(cut) - batch + 1, batch)]
    return sets


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
