"""Export the two towers of a transformers ``CLIPModel`` as single-file ONNX graphs.

* image: ``pixel_values`` float32 (N, 3, S, S) → ``image_embeds`` float32 (N, D)
* text: ``input_ids`` int64 (N, context_length) → ``text_embeds`` float32 (N, D)

Both are projected and unnormalised (the runtime L2-normalises), with a dynamic batch axis.
The legacy TorchScript exporter (``dynamo=False``, opset 17) is used: per the stack survey it
produces one self-contained file that ONNX Runtime runs ~10 % faster than the dynamo export.
The text tower pools at ``argmax(input_ids)`` computed on int32 inside the graph (older ORT
builds have no int64 ArgMax), i.e. at CLIP's end-of-text token whatever ``eos_token_id`` the
Hugging Face config carries.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from edgeclip.tokenizer import EOT_ID, SOT_ID

from .torch_towers import torch_towers

__all__ = ["export_image_tower", "export_text_tower", "OPSET", "TWO_GB"]

OPSET = 17
TWO_GB = 2 * 1024**3


def _export(module, dummy, path: Path, in_name: str, out_name: str, axes: dict | None = None) -> Path:
    import onnx
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about Python-bool shape checks inside transformers; they are constant
        # for a fixed image size / context length, which is exactly what the graph fixes.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (dummy,),
            str(path),
            input_names=[in_name],
            output_names=[out_name],
            dynamic_axes={in_name: axes or {0: "batch"}, out_name: {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    # The path form of the checker also handles graphs whose weights live in external data.
    onnx.checker.check_model(str(path))
    if path.stat().st_size < TWO_GB:
        _stamp(path, out_name)
    return path


def _stamp(path: Path, out_name: str) -> None:
    """Record which tower this is in the graph's metadata (small graphs only: it re-saves)."""
    import onnx

    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "edgeclip.output", out_name
    proto.producer_name = "edgeclip.converters"
    onnx.save(proto, str(path))


def export_image_tower(model: Any, path: str | os.PathLike, batch: int = 2) -> Path:
    """Write the image tower of ``model`` (a transformers CLIPModel) to ``path``."""
    import torch

    image_tower, _ = torch_towers(model)
    size = int(model.config.vision_config.image_size)
    gen = torch.Generator().manual_seed(0)
    dummy = torch.randn(batch, 3, size, size, generator=gen)
    return _export(image_tower, dummy, Path(path), "pixel_values", "image_embeds")


def export_text_tower(model: Any, path: str | os.PathLike, batch: int = 2) -> Path:
    """Write the text tower of ``model`` to ``path`` (input int64 ids, zero padded)."""
    import torch

    _, text_tower = torch_towers(model)
    ctx = int(model.config.text_config.max_position_embeddings)
    vocab = int(model.config.text_config.vocab_size)
    dummy = torch.zeros(batch, ctx, dtype=torch.long)
    # Distinct EOT positions per row so the trace cannot mistake the pooling index for a constant.
    for row in range(batch):
        n = min(3 + 2 * row, ctx - 1)
        dummy[row, 0] = min(SOT_ID, vocab - 2)
        dummy[row, 1:n] = torch.arange(1, n) % max(vocab - 3, 1) + 1
        dummy[row, n] = min(EOT_ID, vocab - 1)
    # Dynamic sequence too: the runtime feeds only up to the batch's last EOT (causal attention
    # and pooling at EOT make the padding after it irrelevant), see edgeclip.towers.
    return _export(text_tower, dummy, Path(path), "input_ids", "text_embeds",
                   {0: "batch", 1: "sequence"})  # fmt: skip
