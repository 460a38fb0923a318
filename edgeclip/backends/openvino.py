"""OpenVINO backend: IR (``.xml`` + ``.bin``) or ONNX files on CPU, and GPU/NPU where present.

Needs only ``openvino`` (``pip install edgeclip[openvino]``). Device names follow OpenVINO's
(``CPU``, ``GPU``, ``GPU.1``, ``NPU``) in any case; ``device="auto"`` means CPU, because
OpenVINO's own AUTO may start on the CPU and hand over to a GPU mid-run, which makes first-call
latency and numerics depend on timing. The performance hint is LATENCY (batch-1 calls) unless
``EDGECLIP_OV_HINT=THROUGHPUT``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import warnings
from pathlib import Path

import numpy as np

from .. import settings
from ..errors import InputError
from .catalog import BY_NAME


class OpenVinoSession:
    """One compiled OpenVINO model behind the ``Session`` protocol (thread-safe)."""

    fixed_batch = None

    def __init__(self, compiled, device: str = "CPU"):
        self._compiled = compiled
        self.device = device
        self._request = compiled.create_infer_request()
        # One infer request reused: run() holds a lock so concurrent callers queue, not clash.
        self._lock = threading.Lock()
        # A port has several tensor names (ONNX's input name plus internal aliases such as
        # '/embeddings/Cast_output_0'); the public one is the name without a '/'.
        self._ports = [
            (sorted(p.get_names(), key=lambda n: ("/" in n, n)), p) for p in compiled.inputs
        ]
        self.input_names = [names[0] for names, _ in self._ports]

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        inputs = {}
        for names, port in self._ports:
            key = next((n for n in names if n in feeds), None)
            if key is None:
                raise InputError(
                    f"OpenVINO graph input {names[0]!r} missing from feeds {sorted(feeds)}."
                )
            inputs[port] = np.ascontiguousarray(
                feeds[key], dtype=port.get_element_type().to_dtype()
            )
        n = next(iter(inputs.values())).shape[0]
        size = bucket(n) if settings.get("EDGECLIP_OV_BATCH_BUCKETS") == "1" else n
        if size != n:  # repeat the last row: real values, sliced off below
            inputs = {port: np.concatenate([x, np.repeat(x[-1:], size - n, axis=0)])
                      for port, x in inputs.items()}  # fmt: skip
        with self._lock:
            self._request.infer(inputs)
            out = self._request.get_output_tensor(0).data
            return np.array(out[:n], dtype=np.float32, copy=True)


def bucket(n: int) -> int:
    """The batch a graph runs for ``n`` inputs with ``EDGECLIP_OV_BATCH_BUCKETS=1``: the next
    power of two. The CPU plugin keeps memory for every input shape it has run: 48 random
    batches of 1-32 left openvino-int8 (TinyCLIP-8M shape, AMX Xeon) at 462 MiB, against 286
    with buckets, which cost the padding (``benchmarks/results/xeon-amx-2core/openvino_shapes.md``)."""
    return 1 << max(0, n - 1).bit_length()


class _SkipConverter:
    """Refuses ``openvino.tools.ovc`` to the one thread that is importing ``openvino``.

    A meta-path finder needs only ``find_spec``; not subclassing ``importlib.abc.MetaPathFinder``
    spares the 5 ms import of ``importlib.abc`` on every start.
    """

    def __init__(self):
        self.thread = threading.get_ident()

    def find_spec(self, name, path=None, target=None):
        if name == "openvino.tools.ovc" and threading.get_ident() == self.thread:
            raise ImportError("edgeclip serves compiled models; the converter loads on first use")
        return None


def _convert_model_on_demand(name: str):
    if name == "convert_model":
        from openvino.tools.ovc import convert_model

        return convert_model
    raise AttributeError(f"module 'openvino' has no attribute {name!r}")


def import_openvino():
    """``openvino``, imported without its model converter unless something imported it already.

    OpenVINO's ``__init__`` imports the converter (``openvino.tools.ovc``, and with it the
    TensorFlow frontend, hashlib and ssl) inside ``try/except ImportError``; running a compiled
    IR never uses it. Skipping it took ``import openvino`` from 28.7 to 14.2 MB resident and
    from 271 to 76 ms on an AVX-512 EPYC (README limits). ``openvino.convert_model`` still works
    afterwards: it is imported on first access.
    """
    if "openvino" in sys.modules:
        return sys.modules["openvino"]
    finder = _SkipConverter()
    sys.meta_path.insert(0, finder)
    try:
        import openvino
    finally:
        sys.meta_path.remove(finder)
    if not hasattr(openvino, "convert_model"):
        openvino.__getattr__ = _convert_model_on_demand  # PEP 562: looked up on a missing name
    return openvino


def _dynamic_quant_group() -> int:
    """``EDGECLIP_OV_DYNAMIC_QUANT`` as a group size (0: off)."""
    raw = settings.get("EDGECLIP_OV_DYNAMIC_QUANT") or "0"
    try:
        group = int(raw)
    except ValueError:
        group = -1
    if group < 0:
        raise InputError(
            f"EDGECLIP_OV_DYNAMIC_QUANT={raw!r} is not a group size; use a whole number such as "
            "256, or 0 to turn dynamic quantization off"
        )
    return group


def _model_cache_dir():
    """OpenVINO's compiled-model cache, one folder per CPU and OpenVINO version (OpenVINO keys
    the blobs on the model and config itself, and rebuilds a blob it cannot read); None, with
    one warning, where the home is not writable."""
    import hashlib

    from ..paths import edgeclip_home
    from ..verify import cpu_identity
    from ..versions import package_version

    ident = cpu_identity()
    key = f"{ident['cpu']}|{','.join(ident['isa'])}|{package_version('openvino')}"
    folder = edgeclip_home() / "ov-cache" / hashlib.sha256(key.encode()).hexdigest()[:16]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder
        why = "not writable"
    except OSError as exc:
        why = f"not writable ({exc.strerror or exc})"
    if folder not in _UNCACHED_WARNED:  # once per folder: every tower of every load asks
        _UNCACHED_WARNED.add(folder)
        warnings.warn(f"OpenVINO model cache in {folder}: {why}; models are compiled uncached "
                      "(set EDGECLIP_HOME to a writable folder)", RuntimeWarning, stacklevel=4)  # fmt: skip
    return None


_UNCACHED_WARNED: set[Path] = set()


class Backend:
    spec = BY_NAME["openvino"]  # name, extra and formats are described once, in catalog.py
    name, extra, formats = spec.name, spec.extra, spec.formats

    def is_available(self) -> bool:
        try:
            return importlib.util.find_spec("openvino") is not None
        except (ImportError, ValueError):  # a broken or import-blocked install
            return False

    def _core(self):
        ov = import_openvino()
        if not hasattr(self, "_ov_core"):
            self._ov_core = ov.Core()
        return self._ov_core

    def devices(self) -> list[str]:
        """OpenVINO devices on this host, lower-cased, best first (GPU, NPU, then CPU)."""
        have = [d.lower() for d in self._core().available_devices]
        rank = {"gpu": 0, "npu": 1, "cpu": 2}
        return sorted(have, key=lambda d: (rank.get(d.split(".")[0], 3), d))

    def check_device(self, device: str) -> None:
        self._device(device)

    def _device(self, device: str | None) -> str:
        if device in (None, "", "auto"):
            return "CPU"
        wanted = device.upper()
        have = self._core().available_devices
        if wanted not in have:
            raise InputError(
                f"OpenVINO device {device!r} is not available here; available: {', '.join(have)}. "
                "GPU/NPU need Intel's drivers (see OpenVINO's install guide)."
            )
        return wanted

    def open(
        self,
        path: Path,
        threads: int | None = None,
        device: str = "auto",
        precision: str | None = None,
    ) -> OpenVinoSession:
        dev = self._device(device)
        config = {"PERFORMANCE_HINT": settings.get("EDGECLIP_OV_HINT").upper()}
        # On CPUs with AMX/AVX512-BF16, OpenVINO runs fp32 graphs in bf16 by default. An fp32
        # variant must mean fp32 (its gate and its name say so), so ask for f32 explicitly;
        # EDGECLIP_OV_PRECISION (f32, bf16, f16) overrides it for every variant.
        hint = settings.get("EDGECLIP_OV_PRECISION") or ("f32" if precision == "fp32" else None)
        if hint and dev == "CPU":
            config["INFERENCE_PRECISION_HINT"] = hint.lower()
        if threads and dev == "CPU":
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if dev == "CPU" and (precision or "").startswith("int8"):
            # OpenVINO's own default group (32) gained nothing here; 256 took openvino-int8 from
            # 69.9 to 82.1 pairs/s at batch 1 on an AVX-512 EPYC (README limits). 0 is off.
            config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = _dynamic_quant_group()
        cache = _model_cache_dir()
        if cache is not None:
            config["CACHE_DIR"] = str(cache)
        compiled = self._core().compile_model(str(path), dev, config)
        return OpenVinoSession(compiled, dev)
