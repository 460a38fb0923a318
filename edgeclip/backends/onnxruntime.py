"""ONNX Runtime backend: CPU everywhere; CUDA / TensorRT providers when present (Jetson, GPU boxes)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from .. import settings
from ..errors import InputError
from .catalog import BY_NAME

# Providers we use when asked for "auto", best first; others (e.g. CoreML) can be named explicitly.
_AUTO_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_DEVICE_TO_PROVIDER = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "gpu": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}


class OrtSession:
    """One ONNX Runtime InferenceSession behind the ``Session`` protocol."""

    fixed_batch = None

    def __init__(self, session):
        self._session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self._input_types = {i.name: i.type for i in session.get_inputs()}
        self.providers = session.get_providers()
        #: the provider that really runs the graph (ORT falls back to the CPU silently)
        self.device = self.providers[0]

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        feeds = {k: v for k, v in feeds.items() if k in self._input_types}
        for name, kind in self._input_types.items():
            # int32 graphs (some exporters) vs our int64 ids; fp16 io graphs
            if kind == "tensor(int32)":
                feeds[name] = feeds[name].astype(np.int32)
            elif kind == "tensor(float16)":
                feeds[name] = feeds[name].astype(np.float16)
        out = self._session.run(None, feeds)[0]
        return np.asarray(out, dtype=np.float32)


class Backend:
    spec = BY_NAME["onnx"]  # name, extra and formats are described once, in catalog.py
    name, extra, formats = spec.name, spec.extra, spec.formats

    def is_available(self) -> bool:
        return importlib.util.find_spec("onnxruntime") is not None

    def devices(self) -> list[str]:
        import onnxruntime as ort

        return [p for p in _AUTO_ORDER if p in ort.get_available_providers()]

    def _providers(self, device: str) -> list[str]:
        import onnxruntime as ort

        have = ort.get_available_providers()
        if device in ("auto", "", None):
            return [p for p in _AUTO_ORDER if p in have]
        wanted = _DEVICE_TO_PROVIDER.get(device.lower(), device)
        if wanted not in have:
            raise InputError(
                f"ONNX Runtime device {device!r} ({wanted}) is not available here; available "
                f"providers: {', '.join(have)}. For CUDA install onnxruntime-gpu (JetPack's wheel on a Jetson)."
            )
        return [wanted] + (["CPUExecutionProvider"] if wanted != "CPUExecutionProvider" else [])

    def open(
        self,
        path: Path,
        threads: int | None = None,
        device: str = "auto",
        precision: str | None = None,
    ) -> OrtSession:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        # Quiet by default: ORT warns about unused initializers in exported CLIP graphs.
        opts.log_severity_level = int(settings.get("EDGECLIP_ORT_LOG_LEVEL"))
        session = ort.InferenceSession(
            str(path), sess_options=opts, providers=self._providers(device)
        )
        return OrtSession(session)
