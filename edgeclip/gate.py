"""The one accuracy gate: parity numbers of a variant against its reference, and the verdict.

Used by the converter (``converters.gate``), by the on-device check (``edgeclip.verify``), by
the benchmarks and by the hub bundle path, so a variant passes or fails by the same rule
everywhere. numpy only: the runtime imports it.

Two rules, both here:

- the **variant gate** (``decide``): mean cosine ≥ 0.99 for image and text embeddings, and
  zero-shot top-1 agreement ≥ 99 % over the probe labels (a different pick the reference itself
  scores within ``top1_tie_margin`` cosine of its top-1 counts as agreeing: a tie);
- the **export gate** (``decide_export``): every exported fp32 graph within 0.9999 cosine of
  torch, input by input: an exporter bug is never "close enough".
"""

from __future__ import annotations

from typing import Any

import numpy as np

THRESHOLDS: dict[str, float] = {
    "cosine_mean": 0.99,
    "top1_agreement": 0.99,
    "top1_tie_margin": 1e-3,
}
EXPORT_MIN_COSINE = 0.9999
#: max abs difference between an input's embedding alone and inside a batch (see ``verify``)
BATCH_INVARIANCE_TOLERANCE = 1e-5


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float64, zero rows stay zero)."""
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine; a non-finite row scores -1 (never a pass)."""
    with np.errstate(invalid="ignore", over="ignore"):
        cos = np.sum(unit(a) * unit(b), axis=1)
    return np.where(np.isfinite(cos), cos, -1.0)


def parity(
    image: np.ndarray,
    text: np.ndarray,
    probe_text: np.ndarray,
    ref_image: np.ndarray,
    ref_text: np.ndarray,
    ref_probe_text: np.ndarray,
    reference: str,
    tie_margin: float = THRESHOLDS["top1_tie_margin"],
) -> dict[str, Any]:
    """Cosines and zero-shot top-1 agreement of (image, text, probe_text) against the reference.

    ``top1_agreement`` is the raw rate; ``top1_agreement_tie_tolerant`` forgives picks the
    reference cannot tell apart from its own (within ``tie_margin`` cosine = 0.1 logit at scale
    100). Random-weight models have near-tied probes, so the raw rate mostly measures noise.
    """
    ci, ct = cosines(image, ref_image), cosines(text, ref_text)
    ref_scores = unit(ref_image) @ unit(ref_probe_text).T
    top_ref = np.argmax(ref_scores, axis=1)
    finite = bool(np.isfinite(image).all() and np.isfinite(text).all())
    finite = finite and bool(np.isfinite(probe_text).all())
    top_var = np.argmax(np.nan_to_num(unit(image) @ unit(probe_text).T, nan=-2.0), axis=1)
    rows = np.arange(len(top_ref))
    regret = ref_scores[rows, top_ref] - ref_scores[rows, top_var]
    return {
        "reference": reference,
        "image_cosine_min": round(float(ci.min()), 6),
        "image_cosine_mean": round(float(ci.mean()), 6),
        "text_cosine_min": round(float(ct.min()), 6),
        "text_cosine_mean": round(float(ct.mean()), 6),
        "top1_agreement": round(float(np.mean(top_ref == top_var)) if finite else 0.0, 6),
        "top1_agreement_tie_tolerant": round(
            float(np.mean(regret <= tie_margin)) if finite else 0.0, 6
        ),
        "top1_tie_margin": tie_margin,
        "n_images": int(len(image)),
        "n_texts": int(len(text)),
        "n_probe_labels": int(len(probe_text)),
        "finite": finite,
    }


def recorded_thresholds(gate_record: dict[str, Any] | None) -> dict[str, float]:
    """The thresholds a variant was gated with at conversion (``convert(thresholds=...)``), so
    the on-device check applies the same bar; a value out of its range (a cosine in [-1, 1],
    a share or margin in [0, 1]) or not a number is ignored for the default."""
    recorded = (gate_record or {}).get("thresholds")
    th = dict(THRESHOLDS)
    for key, value in (recorded.items() if isinstance(recorded, dict) else ()):
        low = -1.0 if key == "cosine_mean" else 0.0
        if key in th and isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= 1:
            th[key] = float(value)
    return th


def decide(measured: dict[str, Any], thresholds: dict[str, float] | None = None) -> dict[str, Any]:
    """The variant-gate verdict for parity numbers: ``{"passed", "reason", "thresholds"}``."""
    th = {**THRESHOLDS, **(thresholds or {})}
    if "error" in measured:
        return {"passed": False, "reason": f"variant failed to run: {measured['error']}",
                "thresholds": th}  # fmt: skip
    problems = []
    if not measured.get("finite", True):
        problems.append("non-finite embeddings (NaN/inf)")
    for tower in ("image", "text"):
        value = measured[f"{tower}_cosine_mean"]
        if value < th["cosine_mean"]:
            problems.append(f"{tower} cosine mean {value:.4f} < {th['cosine_mean']}")
    agreement = measured.get("top1_agreement_tie_tolerant", measured["top1_agreement"])
    if agreement < th["top1_agreement"]:
        problems.append(
            f"zero-shot top-1 agreement {agreement:.2%} < {th['top1_agreement']:.0%} "
            f"(raw {measured['top1_agreement']:.2%}, ties within {th['top1_tie_margin']} cosine "
            f"forgiven; {measured['n_images']} images × {measured['n_probe_labels']} labels)"
        )
    return {"passed": not problems, "reason": "; ".join(problems) or None, "thresholds": th}


def export_parity(
    image: np.ndarray, text: np.ndarray, ref_image: np.ndarray, ref_text: np.ndarray
) -> dict[str, Any]:
    """Per-input cosines and max abs differences of an exported fp32 graph against torch."""
    ci, ct = cosines(image, ref_image), cosines(text, ref_text)
    return {
        "reference": "torch-fp32",
        "image_cosine_min": float(ci.min()),
        "image_cosine_mean": float(ci.mean()),
        "text_cosine_min": float(ct.min()),
        "text_cosine_mean": float(ct.mean()),
        "image_max_abs_diff": float(np.abs(image - ref_image).max()),
        "text_max_abs_diff": float(np.abs(text - ref_text).max()),
        "n_images": int(len(image)),
        "n_texts": int(len(text)),
    }


def decide_export(measured: dict[str, Any], min_cosine: float = EXPORT_MIN_COSINE) -> dict:
    """The export-gate verdict: every input's cosine ≥ ``min_cosine`` in both towers."""
    worst = min(measured["image_cosine_min"], measured["text_cosine_min"])
    passed = bool(worst >= min_cosine)
    reason = None if passed else (
        f"image min cosine {measured['image_cosine_min']:.6f}, text "
        f"{measured['text_cosine_min']:.6f}; required ≥ {min_cosine}"
    )  # fmt: skip
    return {"passed": passed, "reason": reason, "thresholds": {"cosine_min": min_cosine}}


def batch_drift(alone: np.ndarray, batched: np.ndarray) -> float:
    """Max abs difference between normalised embeddings computed alone and inside a batch."""
    return float(np.abs(unit(alone) - unit(batched)).max())
