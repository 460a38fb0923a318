"""Torch backend: the fp32 reference, for hosts that have torch anyway (``pip install edgeclip[torch]``).

Opens ``torch.export`` programs (``.pt2``, written by ``edgeclip convert --backend torch``):
they need torch only, not transformers. Slowest on CPU (stack survey: 28 pairs/s vs ORT fp32
38.8 at batch 1), so ``backend="auto"`` picks it last; it is there to check other variants
against, and for CUDA hosts without onnxruntime-gpu.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np

from ..errors import InputError
from .catalog import BY_NAME


class TorchSession:
    """One exported program behind the ``Session`` protocol."""

    fixed_batch = None

    def __init__(self, module, input_name: str, device: str):
        self._module = module
        self._device = device
        self.device = str(device)
        self._lock = threading.Lock()
        self.input_names = [input_name]

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        array = feeds.get(self.input_names[0])
        if array is None:
            if len(feeds) != 1:
                raise InputError(
                    f"torch graph input {self.input_names[0]!r} not among feeds {sorted(feeds)}."
                )
            array = next(iter(feeds.values()))
        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(self._device)
        if tensor.dtype == torch.int32:
            tensor = tensor.long()
        with self._lock, torch.inference_mode():
            return self._module(tensor).float().cpu().numpy()


class Backend:
    spec = BY_NAME["torch"]  # name, extra and formats are described once, in catalog.py
    name, extra, formats = spec.name, spec.extra, spec.formats

    def is_available(self) -> bool:
        try:
            return importlib.util.find_spec("torch") is not None
        except (ImportError, ValueError):  # a broken or import-blocked install
            return False

    def devices(self) -> list[str]:
        import torch

        return (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]

    def check_device(self, device: str) -> None:
        self._device(device)

    def _device(self, device: str | None) -> str:
        import torch

        dev = {"auto": "cuda" if torch.cuda.is_available() else "cpu", "gpu": "cuda"}.get(
            device or "auto", device
        )
        if dev not in self.devices():
            raise InputError(
                f"torch device {device!r} is not available here; available: {self.devices()}."
            )
        return str(dev)

    def open(
        self,
        path: Path,
        threads: int | None = None,
        device: str = "auto",
        precision: str | None = None,
    ) -> TorchSession:
        import torch

        dev = self._device(device)
        if threads:
            torch.set_num_threads(int(threads))
        if Path(path).suffix != ".pt2":
            raise InputError(f"{path}: the torch backend opens torch.export programs (.pt2).")
        program = torch.export.load(str(path))
        name = next(iter(program.graph_signature.user_inputs), "input")
        if dev != "cpu":
            # The supported way: `.module().to(dev)` leaves constants the graph captured behind.
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, dev)
        return TorchSession(program.module(), name, dev)
