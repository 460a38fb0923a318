"""GPU path, TinyCLIP's protocol: batch 32, 10 warm-up + 50 timed iterations, towers separately.

* ONNX Runtime: CUDA provider (fp32 graph; fp16 graph too if the bundle has one) and TensorRT
  provider (fp16 engine, the fair peer of AMP), inputs and outputs bound on the device with IO
  binding so host↔device copies are not timed (TinyCLIP times the model on device tensors);
* torch: the transformers CLIPModel eager fp32 and under CUDA autocast fp16 (AMP).

The published anchor for TinyCLIP-8M is 4,150 pairs/s (AMP, batch 32, on TinyCLIP's GPU).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .throughput import Settings, measure, torch_towers
from .variants import baseline_id

ANCHOR_PAIRS_PER_S = 4150.0


def cuda_status() -> dict[str, Any]:
    """Which GPU paths exist here: torch CUDA, ORT CUDA/TensorRT providers."""
    status: dict[str, Any] = {"torch_cuda": False, "ort_providers": []}
    try:
        import torch

        status["torch_cuda"] = bool(torch.cuda.is_available())
    except ImportError:
        pass
    try:
        import onnxruntime as ort

        have = ort.get_available_providers()
        status["ort_providers"] = [
            p for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") if p in have
        ]
    except ImportError:
        pass
    return status


def _ort_towers(bundle: Any, variant: Any, device: str):
    """The runtime's own towers on ``device`` ("cuda" or "tensorrt"), and the provider that
    really runs them: ``edgeclip.towers`` + the ORT backend, nothing bypassed. Host↔device
    copies are part of the timing (TinyCLIP times device tensors, so its number excludes them)."""
    from edgeclip.towers import open_towers

    image, text = open_towers(bundle.root, variant, None, device)
    image.warm()
    text.warm()
    return image, text, image.session().device


def run_gpu(
    bundle: Any,
    variants: list[Any],
    torch_model: Any,
    pixels: np.ndarray,
    ids: np.ndarray,
    batch: int = 32,
    settings: Settings | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Measure every GPU path that exists; returns rows (device 'cuda') and notes."""
    settings = settings or Settings.gpu()
    status = cuda_status()
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    if not status["torch_cuda"] and not status["ort_providers"]:
        return rows, [
            "GPU path skipped: no CUDA (torch.cuda unavailable, no ORT CUDA/TensorRT provider)"
        ]
    batch = min(batch, len(pixels))
    for v in variants:
        if v.backend != "onnx" or v.precision not in ("fp32", "fp16") or v.image.batch_sizes:
            continue
        for provider in status["ort_providers"]:
            tag = "tensorrt" if provider.startswith("Tensorrt") else "cuda"
            label = {"variant": f"{v.id}@{tag}", "backend": "onnx", "precision": v.precision}
            try:
                ri, rt, used = _ort_towers(bundle, v, tag)
                label["device"] = used  # the provider that really ran, never assumed
                rows += measure(label, ri, rt, pixels, ids, [batch], settings, on_row=on_row)
            except Exception as exc:  # a provider that fails to build is a note, not a crash
                notes.append(
                    f"GPU {label['variant']} via {provider} failed: {type(exc).__name__}: {exc}"
                )
    if status["torch_cuda"] and torch_model is not None:
        # the CPU baseline's label, so a bundle's own torch-fp32 variant is never mixed up with it
        for amp, vid in ((False, baseline_id(variants)), (True, "torch-amp-fp16")):
            try:
                ri, rt, sync = torch_towers(torch_model, None, device="cuda", amp=amp)
                label = {
                    "variant": vid,
                    "backend": "torch",
                    "precision": "fp16-amp" if amp else "fp32",
                    "device": "cuda",
                }
                rows += measure(
                    label, ri, rt, pixels, ids, [batch], settings, sync=sync, on_row=on_row
                )
            except Exception as exc:
                notes.append(f"GPU {vid} failed: {type(exc).__name__}: {exc}")
        torch_model.to("cpu")
    elif torch_model is None:
        notes.append("GPU torch AMP skipped: no checkpoint for the torch model (pass --checkpoint)")
    if rows:
        best = max(rows, key=lambda r: r["pairs_per_s"])
        notes.append(
            f"GPU best {best['variant']}: {best['pairs_per_s']:,.0f} pairs/s at batch {batch}; "
            f"TinyCLIP's published anchor for TinyCLIP-8M: {ANCHOR_PAIRS_PER_S:,.0f} pairs/s (AMP, batch 32)"
        )
    return rows, notes
