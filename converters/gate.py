"""The accuracy gate: a variant ships only if it embeds like the fp32 reference.

Measured on held-out data (``CalibrationData.eval_*``, never the calibration part):

- mean cosine between variant and reference embeddings ≥ 0.99, images and texts separately;
- zero-shot top-1 agreement ≥ 99 %: each held-out image is classified against the probe
  label set by both, and the two top-1 labels must agree.

The reference is torch fp32 when a transformers model is given, else the bundle's ``onnx-fp32``
graphs under ONNX Runtime (recorded as ``reference: "onnx-fp32"``). Variants run through the
runtime's own backend and tower code (``edgeclip.backends`` + ``edgeclip.towers``), so the gate
measures exactly what ``edgeclip.load`` will execute, fixed-batch chunking included.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .calibration import CalibrationData

THRESHOLDS: dict[str, float] = {
    "cosine_mean": 0.99,
    "top1_agreement": 0.99,
    "top1_tie_margin": 1e-3,
}


@dataclass
class Reference:
    """Reference embeddings (unnormalised) of the eval images, eval texts and probe prompts."""

    name: str
    image: np.ndarray
    text: np.ndarray
    probe_text: np.ndarray


def torch_towers(model: Any):
    """(image, text) ``torch.nn.Module`` towers of a transformers ``CLIPModel``, per the bundle contract.

    Image: pixel_values → projected embedding. Text: int64 ids → projected embedding pooled at
    ``argmax(ids)`` (CLIP's end-of-text token), whatever ``eos_token_id`` the HF config holds.
    """
    import torch

    class ImageTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vision_model, self.projection = model.vision_model, model.visual_projection

        def forward(self, pixel_values):
            return self.projection(self.vision_model(pixel_values=pixel_values).pooler_output)

    class TextTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.text_model, self.projection = model.text_model, model.text_projection

        def forward(self, input_ids):
            hidden = self.text_model(input_ids=input_ids).last_hidden_state
            eot = input_ids.to(torch.int32).argmax(dim=-1)
            return self.projection(hidden[torch.arange(hidden.shape[0]), eot])

    return ImageTower().eval(), TextTower().eval()


def _torch_embed(model: Any, pixels: np.ndarray, ids: np.ndarray, batch: int = 16):
    import torch

    image_tower, text_tower = torch_towers(model)
    img, txt = [], []
    with torch.inference_mode():
        for i in range(0, len(pixels), batch):
            img.append(image_tower(torch.from_numpy(pixels[i : i + batch])).numpy())
        for i in range(0, len(ids), batch):
            txt.append(text_tower(torch.from_numpy(ids[i : i + batch])).numpy())
    return np.concatenate(img).astype(np.float32), np.concatenate(txt).astype(np.float32)


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
        img, txt = _torch_embed(model, data.eval_pixels, ids)
        name = "torch-fp32"
    else:
        if fp32_variant is None or bundle_root is None:
            raise ValueError("reference_embeddings needs a torch model or the onnx-fp32 variant")
        img, txt = run_variant(bundle_root, fp32_variant, data.eval_pixels, ids)
        name = fp32_variant.get("id", "onnx-fp32")
    n = len(data.eval_ids)
    return Reference(name=name, image=img, text=txt[:n], probe_text=txt[n:])


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(_unit(a) * _unit(b), axis=1)


def measure(
    bundle_root: str | Path,
    variant: dict[str, Any],
    data: CalibrationData,
    ref: Reference,
    threads: int | None = None,
    tie_margin: float = 1e-3,
) -> dict[str, Any]:
    """Parity numbers of ``variant`` against ``ref`` (cosines and zero-shot top-1 agreement).

    ``top1_agreement`` is the raw rate; ``top1_agreement_tie_tolerant`` also counts a different
    pick as agreeing when the reference itself scores it within ``tie_margin`` (cosine) of its
    top-1, i.e. a tie the reference cannot decide (0.001 cosine = 0.1 logit at scale 100).
    Random-weight models have near-tied probes (8M random: median margin ≈ 0.001), so the raw
    rate mostly measures noise there; the gate uses the tie-tolerant one.
    """
    ids = np.concatenate([data.eval_ids, data.probe_ids])
    img, txt = run_variant(bundle_root, variant, data.eval_pixels, ids, threads=threads)
    n = len(data.eval_ids)
    txt, probe = txt[:n], txt[n:]
    ci, ct = _cosines(img, ref.image), _cosines(txt, ref.text)
    ref_scores = _unit(ref.image) @ _unit(ref.probe_text).T
    top_ref = np.argmax(ref_scores, axis=1)
    top_var = np.argmax(_unit(img) @ _unit(probe).T, axis=1)
    rows = np.arange(len(top_ref))
    # How much the reference prefers its own top-1 over the variant's pick (cosine units).
    regret = ref_scores[rows, top_ref] - ref_scores[rows, top_var]
    finite = bool(np.isfinite(img).all() and np.isfinite(txt).all() and np.isfinite(probe).all())
    return {
        "reference": ref.name,
        "image_cosine_min": round(float(np.nan_to_num(ci.min(), nan=-1.0)), 6),
        "image_cosine_mean": round(float(np.nan_to_num(ci.mean(), nan=-1.0)), 6),
        "text_cosine_min": round(float(np.nan_to_num(ct.min(), nan=-1.0)), 6),
        "text_cosine_mean": round(float(np.nan_to_num(ct.mean(), nan=-1.0)), 6),
        "top1_agreement": round(float(np.mean(top_ref == top_var)) if finite else 0.0, 6),
        "top1_agreement_tie_tolerant": round(
            float(np.mean(regret <= tie_margin)) if finite else 0.0, 6
        ),
        "top1_tie_margin": tie_margin,
        "n_images": int(len(img)),
        "n_texts": int(len(txt)),
        "n_probe_labels": int(len(probe)),
        "finite": finite,
    }


def decide(parity: dict[str, Any], thresholds: dict[str, float] | None = None) -> dict[str, Any]:
    """The gate verdict for parity numbers: ``{"passed", "reason", "thresholds"}``."""
    th = {**THRESHOLDS, **(thresholds or {})}
    problems = []
    if not parity.get("finite", True):
        problems.append("non-finite embeddings (NaN/inf)")
    for tower in ("image", "text"):
        value = parity[f"{tower}_cosine_mean"]
        if value < th["cosine_mean"]:
            problems.append(f"{tower} cosine mean {value:.4f} < {th['cosine_mean']}")
    agreement = parity.get("top1_agreement_tie_tolerant", parity["top1_agreement"])
    if agreement < th["top1_agreement"]:
        problems.append(
            f"zero-shot top-1 agreement {agreement:.2%} < {th['top1_agreement']:.0%} "
            f"(raw {parity['top1_agreement']:.2%}, ties within {th['top1_tie_margin']} cosine forgiven; "
            f"{parity['n_images']} images × {parity['n_probe_labels']} labels)"
        )
    return {
        "passed": not problems,
        "reason": "; ".join(problems) or None,
        "thresholds": th,
    }


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
    out = dict(variant)
    try:
        tie = {**THRESHOLDS, **(thresholds or {})}["top1_tie_margin"]
        out["parity"] = measure(bundle_root, variant, data, ref, threads=threads, tie_margin=tie)
    except Exception as exc:  # noqa: BLE001 - any failure to run is a gate failure, reported
        out["parity"] = {"reference": ref.name, "error": f"{type(exc).__name__}: {exc}"}
        out["gate"] = {
            "passed": False,
            "reason": f"variant failed to run: {type(exc).__name__}: {exc}",
            "thresholds": {**THRESHOLDS, **(thresholds or {})},
        }
        return out
    out["gate"] = decide(out["parity"], thresholds)
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
    ids[:, 0], ids[0, 3], ids[1, 5] = 49406, 49407, 49407  # distinct EOT positions
    samples = {
        "image": (image, "pixel_values", torch.randn(2, 3, size, size)),
        "text": (text, "input_ids", ids),
    }
    for tower, (module, name, sample) in samples.items():
        program = torch.export.export(module, (sample,), dynamic_shapes={name: {0: batch}})
        torch.export.save(program, str(out / f"{tower}.pt2"))
    return make_variant(vid, "torch", "fp32", fp32_variant, f"{vid}/{{tower}}.pt2",
                        options={"method": "torch.export", "torch": torch.__version__})  # fmt: skip
