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


def _ort_tower(
    path: str, provider: str, input_name: str, is_text: bool
) -> Callable[[np.ndarray, int], Any]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if provider == "TensorrtExecutionProvider":
        prov: list[Any] = [
            (provider, {"trt_fp16_enable": True, "trt_engine_cache_enable": False}),
            "CUDAExecutionProvider",
            "CPUExecutionProvider",
        ]
    else:
        prov = [provider, "CPUExecutionProvider"]
    sess = ort.InferenceSession(path, sess_options=opts, providers=prov)
    inputs = {i.name: i.type for i in sess.get_inputs()}
    out_name = sess.get_outputs()[0].name
    bindings: dict[tuple, Any] = {}

    def run(a: np.ndarray, b: int):
        key = (a.__array_interface__["data"][0], a.shape)
        if key not in bindings:
            io = sess.io_binding()
            arr = a
            if inputs.get(input_name) == "tensor(float16)":
                arr = a.astype(np.float16)
            elif inputs.get(input_name) == "tensor(int32)":
                arr = a.astype(np.int32)
            io.bind_ortvalue_input(
                input_name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), "cuda", 0)
            )
            if is_text and "attention_mask" in inputs and input_name != "attention_mask":
                eot = np.argmax(a, axis=1)
                mask = (np.arange(a.shape[1])[None, :] <= eot[:, None]).astype(a.dtype)
                io.bind_ortvalue_input(
                    "attention_mask", ort.OrtValue.ortvalue_from_numpy(mask, "cuda", 0)
                )
            io.bind_output(out_name, "cuda")
            bindings.clear()
            bindings[key] = io
        sess.run_with_iobinding(bindings[key])

    return run


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
            label = {
                "variant": v.id + ("+trt-fp16" if tag == "tensorrt" else ""),
                "backend": "onnx",
                "precision": "fp16" if tag == "tensorrt" else v.precision,
                "device": "cuda",
            }
            try:
                ri = _ort_tower(str(bundle.path_of(v.image.file)), provider, v.image.input, False)
                rt = _ort_tower(str(bundle.path_of(v.text.file)), provider, v.text.input, True)
                rows += measure(label, ri, rt, pixels, ids, [batch], settings, on_row=on_row)
            except Exception as exc:  # a provider that fails to build is a note, not a crash
                notes.append(
                    f"GPU {label['variant']} via {provider} failed: {type(exc).__name__}: {exc}"
                )
    if status["torch_cuda"] and torch_model is not None:
        for amp, vid in ((False, "torch-fp32"), (True, "torch-amp-fp16")):
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
