"""ONNX Runtime backend: CPU everywhere; CUDA / TensorRT providers when present (Jetson, GPU boxes).

``device="auto"`` means CUDA when the CUDA provider is listed, else the CPU. TensorRT is used only
when asked for (``device="tensorrt"``): ``onnxruntime-gpu`` lists it even where TensorRT's
libraries are missing, and a session silently falls back to the next provider. So every session
reports the provider that really runs it (``OrtSession.device``), and an explicit GPU request
that ends up elsewhere is an error, never a mislabelled CPU run. TensorRT engines are cached per
graph, GPU and TensorRT version (``EDGECLIP_HOME/trt/…``), so a Jetson builds them once.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

from .. import settings
from ..errors import InputError
from .catalog import BY_NAME

# Providers used for "auto", best first; TensorRT and others (e.g. CoreML) only when named.
_AUTO_ORDER = ("CUDAExecutionProvider", "CPUExecutionProvider")
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
        self._run_options = _run_options()

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        feeds = {k: v for k, v in feeds.items() if k in self._input_types}
        for name, kind in self._input_types.items():
            # int32 graphs (some exporters) vs our int64 ids; fp16 io graphs
            if kind == "tensor(int32)":
                feeds[name] = feeds[name].astype(np.int32)
            elif kind == "tensor(float16)":
                feeds[name] = feeds[name].astype(np.float16)
        out = self._session.run(None, feeds, self._run_options)[0]
        return np.asarray(out, dtype=np.float32)


class Backend:
    spec = BY_NAME["onnx"]  # name, extra and formats are described once, in catalog.py
    name, extra, formats = spec.name, spec.extra, spec.formats

    def is_available(self) -> bool:
        return importlib.util.find_spec("onnxruntime") is not None

    def devices(self) -> list[str]:
        import onnxruntime as ort

        have = ort.get_available_providers()
        return [p for p in (*_AUTO_ORDER[:1], "TensorrtExecutionProvider", *_AUTO_ORDER[1:])
                if p in have]  # fmt: skip

    def check_device(self, device: str) -> None:
        import onnxruntime as ort

        if device in ("auto", "", None):
            return
        have = ort.get_available_providers()
        wanted = _DEVICE_TO_PROVIDER.get(device.lower(), device)
        if wanted not in have:
            raise InputError(
                f"ONNX Runtime device {device!r} ({wanted}) is not available here; available "
                f"providers: {', '.join(have)}. For CUDA install onnxruntime-gpu (JetPack's wheel on a Jetson)."
            )

    def _providers(self, device: str | None, path: Path, precision: str | None) -> list:
        import onnxruntime as ort

        have = ort.get_available_providers()
        if device in ("auto", "", None):
            return [p for p in _AUTO_ORDER if p in have]
        self.check_device(device)
        wanted = _DEVICE_TO_PROVIDER.get(device.lower(), device)
        if wanted == "TensorrtExecutionProvider":
            return [(wanted, tensorrt_options(path, precision)), "CUDAExecutionProvider",
                    "CPUExecutionProvider"]  # fmt: skip
        return [wanted] + (["CPUExecutionProvider"] if wanted != "CPUExecutionProvider" else [])

    def open(
        self,
        path: Path,
        threads: int | None = None,
        device: str = "auto",
        precision: str | None = None,
    ) -> OrtSession:
        from . import ort_cache

        providers = self._providers(device, Path(path), precision)
        make_options = functools.partial(_session_options, threads)
        if providers == ["CPUExecutionProvider"]:  # GPU providers partition the graph themselves
            raw = ort_cache.create_session(Path(path), make_options, providers)
        else:
            import onnxruntime as ort

            raw = ort.InferenceSession(str(path), sess_options=make_options(), providers=providers)
        session = OrtSession(raw)
        first = providers[0] if isinstance(providers[0], str) else providers[0][0]
        if device not in ("auto", "", None, "cpu") and session.device != first:
            raise InputError(
                f"ONNX Runtime was asked for {first} but runs {path.name} on {session.device} "
                "(the provider's libraries did not load: for TensorRT install tensorrt and "
                "check LD_LIBRARY_PATH; for CUDA the CUDA/cuDNN runtime). Use device='cpu', or "
                "fix the install."
            )
        return session


def _run_options():
    """Shrink the CPU arena after each run: ONNX Runtime otherwise keeps the largest batch's
    buffers for the life of the session. TinyCLIP-8M fp32 on the AMX Xeon: after batches of 32,
    353 → 200 MiB resident when idle and 432 → 281 MiB peak (batch 32 4 % slower, batch 1 the
    same); after random batches of 1-32, 383 → 285 MiB; worse only for a batch grown one at a
    time (306 → 368) (``benchmarks/results/xeon-amx-2core/ort_arena.md``)."""
    if settings.get("EDGECLIP_ORT_ARENA_SHRINK") != "1":
        return None
    import onnxruntime as ort

    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


def _session_options(threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    # Quiet by default: ORT warns about unused initializers in exported CLIP graphs.
    opts.log_severity_level = int(settings.get("EDGECLIP_ORT_LOG_LEVEL"))
    _set_spinning(opts, settings.get("EDGECLIP_ORT_SPINNING"))
    return opts


def _set_spinning(opts, mode: str | None) -> None:
    """``run`` (default): threads busy-wait between a run's parallel sections, which batch 1
    is made of, and stop when it ends, so an idle session takes no CPU and the image and text
    towers' pools never spin against each other. onnx-int8 on the EPYC with AVX-512 VNNI,
    batch 1: image 12.99 → 10.64 ms alone and image-then-text 13.68 → 11.16 ms against no
    spinning, at up to 15 % more CPU per call when calls come 50 ms apart
    (``benchmarks/results/epyc-avx512-vnni-2core/ort_settings.md``). ``1`` keeps spinning
    after each run (the pools then fight: image-then-text 23.27 ms); ``0`` never spins."""
    spin = "0" if mode == "0" else "1"
    opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
    opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
    if mode != "1":
        opts.add_session_config_entry("session.force_spinning_stop", "1")


def _gpu_name() -> str:
    """The first NVIDIA GPU's model name (Linux driver's proc file), else a placeholder."""
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        for line in info.read_text(errors="replace").splitlines():
            if line.startswith("Model:"):
                return line.split(":", 1)[1].strip()
    return "unknown-gpu"


def tensorrt_options(path: Path, precision: str | None) -> dict[str, str]:
    """TensorRT provider options: fp16 engines for fp16 variants, and an engine cache keyed on
    the graph's bytes, the GPU and the TensorRT version (a stale engine is never reused)."""
    import hashlib

    from ..bundle import sha256_file
    from ..paths import edgeclip_home
    from ..versions import package_version

    trt = package_version("tensorrt") or "system"
    key = hashlib.sha256(f"{sha256_file(path)}|{_gpu_name()}|{trt}".encode()).hexdigest()[:24]
    cache = edgeclip_home() / "trt" / key
    cache.mkdir(parents=True, exist_ok=True)
    return {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache),
            "trt_fp16_enable": "True" if precision == "fp16" else "False"}  # fmt: skip
