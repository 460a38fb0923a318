"""LiteRT backend: ``.tflite`` graphs on the CPU (XNNPACK) through ``ai-edge-litert``.

``pip install edgeclip[litert]`` installs ai-edge-litert (works with numpy 2). Fallback: the
old ``tflite-runtime`` interpreter (last release 2.14, 2023, needs numpy < 2) is used only when
ai-edge-litert is missing, and only for fp32 and weight-only INT8 graphs: it returns all zeros
for dynamic-range INT8 graphs (measured), so those are refused with a message naming the fix.

LiteRT graphs have a fixed batch (``Session.fixed_batch``); the runtime chunks and pads to it.
A text graph may hold one signature per sequence length, ``l16``, ``l32``, ``l77``, sharing
one copy of the weights (``Session.sequence_lengths``): the runtime cuts a batch's padding to
the shortest one that holds its last end token, and ``run`` picks the signature by the width.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailableError, InputError
from .catalog import BY_NAME

# Ops that run INT8 compute on float activations when fed INT8 weights directly (hybrid kernels).
_HYBRID_OPS = {
    "FULLY_CONNECTED",
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "BATCH_MATMUL",
    "EMBEDDING_LOOKUP",
}


def _have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or import-blocked install
        return False


def _interpreter_class():
    """(Interpreter class, package name): ai-edge-litert, else tflite-runtime."""
    if _have("ai_edge_litert"):
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    from tflite_runtime.interpreter import Interpreter  # pragma: no cover - numpy<2 hosts only

    return Interpreter, "tflite-runtime"  # pragma: no cover


def is_dynamic_range(interpreter) -> bool:
    """True if the graph is dynamic-range quantized (an FC/conv/matmul reads INT8 weights with float input).

    Weight-only graphs instead DEQUANTIZE their INT8 weights to float before the op.
    """
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    for op in interpreter._get_ops_details():
        if op["op_name"] not in _HYBRID_OPS or len(op["inputs"]) < 2:
            continue
        first, second = (tensors.get(int(i)) for i in op["inputs"][:2])
        if first is None or second is None:
            continue
        if first["dtype"] == np.float32 and second["dtype"] == np.int8:
            return True
    return False


def _length_signatures(interpreter) -> dict[int, str]:
    """``{77: "l77", ...}`` for a graph exported with one signature per sequence length."""
    keys = list(interpreter.get_signature_list())
    lengths = {int(k[1:]): k for k in keys if k[:1] == "l" and k[1:].isdigit()}
    return lengths if keys and len(lengths) == len(keys) else {}


class LiteRtSession:
    """One ``Interpreter`` behind the ``Session`` protocol (thread-safe; fixed batch, and for a
    multi-signature text graph a fixed set of sequence lengths)."""

    device = "cpu"  # XNNPACK / built-in CPU kernels

    def __init__(self, interpreter):
        self._it = interpreter
        self._lock = threading.Lock()
        signatures = _length_signatures(interpreter)
        #: sequence length -> (signature runner, its input key); empty for a one-signature graph
        self._by_length = {}
        for length, key in sorted(signatures.items()):
            runner = interpreter.get_signature_runner(key)
            self._by_length[length] = (runner, next(iter(runner.get_input_details())))
        self.sequence_lengths: tuple[int, ...] = tuple(sorted(self._by_length))
        if self._by_length:
            runner, key = self._by_length[self.sequence_lengths[0]]
            self._in = runner.get_input_details()[key]
        else:
            self._it.allocate_tensors()
            inputs = interpreter.get_input_details()
            if len(inputs) != 1:
                raise InputError(
                    f"edgeclip's LiteRT graphs have one input; this one has {len(inputs)}."
                )
            self._in = inputs[0]
            self._out = interpreter.get_output_details()[0]
        self.input_names = [self._in["name"]]
        self.fixed_batch: int | None = int(self._in["shape"][0])

    def _invoke(self, array: np.ndarray) -> np.ndarray:
        array = np.ascontiguousarray(array, dtype=self._in["dtype"])
        with self._lock:
            if self._by_length:
                runner, key = self._by_length[array.shape[1]]
                out = next(iter(runner(**{key: array}).values()))
                return np.array(out, dtype=np.float32, copy=True)
            self._it.set_tensor(self._in["index"], array)
            self._it.invoke()
            return np.array(self._it.get_tensor(self._out["index"]), dtype=np.float32, copy=True)

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        # One input: take it by its graph name, else the single feed given (the manifest's name).
        if self._in["name"] in feeds:
            array = feeds[self._in["name"]]
        elif len(feeds) == 1:
            array = next(iter(feeds.values()))
        else:
            raise InputError(
                f"LiteRT graph input {self._in['name']!r} not among feeds {sorted(feeds)}."
            )
        if len(array) != self.fixed_batch:
            # Chunking and padding belong to TowerRunner (edgeclip.towers), once for all backends.
            raise InputError(
                f"this LiteRT graph takes batch {self.fixed_batch}, got {len(array)}; run it "
                "through edgeclip.towers.TowerRunner, which chunks and pads."
            )
        if self._by_length and (array.ndim != 2 or array.shape[1] not in self._by_length):
            raise InputError(
                f"this LiteRT text graph takes sequence lengths {list(self.sequence_lengths)}, "
                f"got shape {tuple(array.shape)}; run it through edgeclip.towers.TowerRunner, "
                "which pads to the next one."
            )
        return self._invoke(array)


class Backend:
    spec = BY_NAME["litert"]  # name, extra and formats are described once, in catalog.py
    name, extra, formats = spec.name, spec.extra, spec.formats

    def is_available(self) -> bool:
        return _have("ai_edge_litert") or _have("tflite_runtime")

    def devices(self) -> list[str]:
        return ["cpu"]

    def check_device(self, device: str) -> None:
        if device not in (None, "", "auto", "cpu"):
            raise InputError(
                f"LiteRT device {device!r}: edgeclip runs LiteRT on the CPU only (use 'cpu')."
            )

    def open(
        self,
        path: Path,
        threads: int | None = None,
        device: str = "auto",
        precision: str | None = None,
    ) -> LiteRtSession:
        self.check_device(device)
        if threads is not None and (type(threads) is not int or threads < 0):
            # An InputError: this call's setting is wrong, not the graph, so the on-device check
            # records no failed verdict for the variant (LiteRT refuses num_threads < 1).
            raise InputError(f"LiteRT threads={threads!r}: give a positive number of threads, "
                             "or 0 / None for the runtime's default.")  # fmt: skip
        interpreter_cls, package = _interpreter_class()
        it = interpreter_cls(model_path=str(path), num_threads=int(threads) if threads else None)
        if package == "tflite-runtime" and is_dynamic_range(it):  # pragma: no cover
            raise BackendUnavailableError(
                f"{path} is a dynamic-range INT8 LiteRT graph, which tflite-runtime computes as "
                "zeros; install ai-edge-litert (`pip install edgeclip[litert]`) or load the "
                "int8-weights or fp32 variant."
            )
        return LiteRtSession(it)
