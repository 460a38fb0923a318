"""Checkpoint → edgeclip bundle converters (need the ``convert`` extra: torch, transformers, onnx).

``convert(checkpoint, out_dir)`` is the entry point; ``load_checkpoint`` and
``write_random_checkpoint`` are re-exported for scripts and tests. Importing this package
imports no torch: the heavy modules load on first use.
"""

from __future__ import annotations

import logging
from typing import Any

# transformers imports torchao whenever it is installed (litert-torch brings it); torchao then
# logs "Failed to load ...so" for GPU kernels and torch's pytree warns about its enums. Neither
# concerns CPU conversion/training, so keep them out of the user's terminal.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)

__all__ = ["convert", "load_checkpoint", "write_random_checkpoint"]


def convert(*args: Any, **kwargs: Any):
    """See ``converters.bundle_writer.convert``."""
    from .bundle_writer import convert as _convert

    return _convert(*args, **kwargs)


def load_checkpoint(*args: Any, **kwargs: Any):
    """See ``converters.checkpoints.load_checkpoint``."""
    from .checkpoints import load_checkpoint as _load

    return _load(*args, **kwargs)


def write_random_checkpoint(*args: Any, **kwargs: Any):
    """See ``converters.fixtures.write_random_checkpoint``."""
    from .fixtures import write_random_checkpoint as _write

    return _write(*args, **kwargs)
