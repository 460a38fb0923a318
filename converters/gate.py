"""The accuracy gate at conversion: a variant ships only if it embeds like the fp32 reference.

The rule itself (thresholds, parity numbers, verdict) is ``edgeclip.gate``, shared with the
on-device check; this module feeds it. Measured on held-out data (``CalibrationData.eval_*``,
never the calibration part), through the runtime's own backend and tower code
(``edgeclip.towers``), so the gate measures exactly what ``edgeclip.load`` will execute.
The reference is torch fp32 (``converters.torch_towers``) when a transformers model is given,
else the bundle's ``onnx-fp32`` graphs under ONNX Runtime. Each gated variant also records the
CPU it was gated on and its batch invariance there (an input alone vs inside a batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip import gate as rules
from edgeclip.gate import THRESHOLDS, decide

from .calibration import CalibrationData
from .torch_towers import torch_embed, torch_towers

__all__ = ["THRESHOLDS", "Reference", "decide", "evaluate", "measure", "reference_embeddings",
           "run_variant", "torch_towers", "build_torch_fp32"]  # fmt: skip


@dataclass
class Reference:
    """Reference embeddings (unnormalised) of the eval images, eval texts and probe prompts."""

    name: str
    image: np.ndarray
    text: np.ndarray
    probe_text: np.ndarray


def run_variant(
    bundle_root: str | Path,
    variant: dict[str, Any],
    pixels: np.ndarray,
    ids: np.ndarray,
    threads: int | None = None,
    batch_size: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """Image and text embeddings (unnormalised) of a variant dict, through the runtime's backend."""
    from edgeclip.bundle import Variant
    from edgeclip.towers import open_towers

    image, text = open_towers(Path(bundle_root), Variant.from_dict(variant), threads)
    return image(pixels, batch_size), text(ids, batch_size)


def reference_embeddings(
    data: CalibrationData,
    model: Any = None,
    bundle_root: str | Path | None = None,
    fp32_variant: dict[str, Any] | None = None,
) -> Reference:
    """Reference embeddings from a torch ``CLIPModel`` or, without one, the onnx-fp32 variant."""
    ids = np.concatenate([data.eval_ids, data.probe_ids])
    if model is not None and not isinstance(model, (str, Path)):
        img, txt = torch_embed(model, data.eval_pixels, ids)
        name = "torch-fp32"
    else:
        if fp32_variant is None or bundle_root is None:
            raise ValueError("reference_embeddings needs a torch model or the onnx-fp32 variant")
        img, txt = run_variant(bundle_root, fp32_variant, data.eval_pixels, ids)
        name = fp32_variant.get("id", "onnx-fp32")
    n = len(data.eval_ids)
    return Reference(name=name, image=img, text=txt[:n], probe_text=txt[n:])


def measure(
    bundle_root: str | Path,
    variant: dict[str, Any],
    data: CalibrationData,
    ref: Reference,
    threads: int | None = None,
    tie_margin: float = THRESHOLDS["top1_tie_margin"],
) -> dict[str, Any]:
    """Parity numbers of ``variant`` against ``ref`` (``edgeclip.gate.parity``), plus
    ``batch_drift``: max abs difference of the first inputs embedded alone vs in the batch."""
    from edgeclip.bundle import Variant
    from edgeclip.towers import open_towers

    image, text = open_towers(Path(bundle_root), Variant.from_dict(variant), threads)
    ids = np.concatenate([data.eval_ids, data.probe_ids])
    img, txt = image(data.eval_pixels, 8), text(ids, 8)
    n = len(data.eval_ids)
    out = rules.parity(img, txt[:n], txt[n:], ref.image, ref.text, ref.probe_text, ref.name,
                       tie_margin)  # fmt: skip
    k = min(4, len(img), n)
    out["batch_drift"] = max(rules.batch_drift(image(data.eval_pixels[:k], 1), img[:k]),
                             rules.batch_drift(text(data.eval_ids[:k], 1), txt[:k]))  # fmt: skip
    return out


def evaluate(
    bundle_root: str | Path,
    variant: dict[str, Any],
    data: CalibrationData,
    ref: Reference,
    thresholds: dict[str, float] | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Return a copy of ``variant`` with ``parity`` and ``gate`` filled in.

    A variant that fails to load or run fails the gate (the error is the reason) rather than
    aborting the conversion of the others.
    """
    from edgeclip.verify import cpu_identity, widest_isa

    out = dict(variant)
    try:
        tie = {**THRESHOLDS, **(thresholds or {})}["top1_tie_margin"]
        out["parity"] = measure(bundle_root, variant, data, ref, threads=threads, tie_margin=tie)
    except Exception as exc:  # noqa: BLE001 - any failure to run is a gate failure, reported
        out["parity"] = {"reference": ref.name, "error": f"{type(exc).__name__}: {exc}"}
    host = cpu_identity()
    out["gate"] = {**decide(out["parity"], thresholds), "gated_on": host["cpu"],
                   "isa": widest_isa(host["isa"])}  # fmt: skip
    drift = out["parity"].pop("batch_drift", None)
    if drift is not None:
        out["options"] = {**out.get("options", {}), "batch_drift": drift,
                          "batch_invariant": drift <= rules.BATCH_INVARIANCE_TOLERANCE}  # fmt: skip
    return out


def build_torch_fp32(
    bundle_root: Path,
    fp32_variant: dict[str, Any],
    model: Any,
    calibration: Any,
    options: dict[str, Any],
) -> dict[str, Any]:
    """The reference itself as a variant: ``torch.export`` programs (``.pt2``, dynamic batch).

    Lives here beside ``torch_towers`` so the shipped reference and the gate's are one code path.
    Runs with torch alone (no transformers) through ``edgeclip.backends.torch``.
    """
    import torch

    from .variants import make_variant

    if model is None or isinstance(model, (str, Path)):
        raise ValueError("the torch variant is exported from the transformers CLIPModel")
    vid = options.get("id", "torch-fp32")
    out = Path(bundle_root) / vid
    out.mkdir(parents=True, exist_ok=True)
    image, text = torch_towers(model)
    batch = torch.export.Dim("batch", min=1, max=4096)
    size = int(model.config.vision_config.image_size)
    ctx = int(model.config.text_config.max_position_embeddings)
    ids = torch.zeros(2, ctx, dtype=torch.long)
    from edgeclip.tokenizer import EOT_ID, SOT_ID

    ids[:, 0], ids[0, 3], ids[1, 5] = SOT_ID, EOT_ID, EOT_ID  # distinct EOT positions
    samples = {
        "image": (image, "pixel_values", torch.randn(2, 3, size, size)),
        "text": (text, "input_ids", ids),
    }
    for tower, (module, name, sample) in samples.items():
        program = torch.export.export(module, (sample,), dynamic_shapes={name: {0: batch}})
        torch.export.save(program, str(out / f"{tower}.pt2"))
    variant = make_variant(vid, "torch", "fp32", fp32_variant, f"{vid}/{{tower}}.pt2",
                           options={"method": "torch.export", "torch": torch.__version__})  # fmt: skip
    variant["text"].pop("dynamic_sequence", None)  # exported at the full context length
    return variant
