"""The small protocol every backend implements; the model code knows nothing else about backends."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Session(Protocol):
    """One loaded graph (one tower of one variant)."""

    input_names: list[str]
    #: the one batch size a fixed-shape graph accepts (LiteRT), or None for a dynamic batch
    fixed_batch: int | None
    #: where it really runs ("CPUExecutionProvider", "CPU", "cuda:0", ...): part of the host
    #: identity the on-device check is cached under (``edgeclip.verify``)
    device: str

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Run the graph and return its single output as float32."""
        ...


class Backend(Protocol):
    """A runtime that opens graph files of some formats into ``Session`` objects."""

    name: str
    #: the pip extra that installs it: ``pip install edgeclip[<extra>]``
    extra: str
    #: file suffixes this backend opens, e.g. (".onnx",)
    formats: tuple[str, ...]

    def is_available(self) -> bool:
        """True when the runtime package can be imported (cheap: no import happens)."""
        ...

    def devices(self) -> list[str]:
        """Devices/providers this runtime can use on this host, best first."""
        ...

    def check_device(self, device: str) -> None:
        """Raise ``InputError`` naming what is available when ``device`` is not usable here
        (cheap: builds no session), so a device no installed runtime offers is refused up front."""
        ...

    def open(
        self,
        path: Path,
        threads: int | None = None,
        device: str = "auto",
        precision: str | None = None,
    ) -> Session:
        """Load one graph file. ``precision`` is the variant's (backends may tune for it)."""
        ...
