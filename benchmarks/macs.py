"""MACs and parameters of the two towers, from the exported graph and from the architecture.

Convention (TinyCLIP's, fvcore's): one multiply-add is one MAC; only MatMul, Gemm and Conv are
counted (softmax, LayerNorm, GELU and adds are a few percent and every published number leaves
them out). The image tower is counted at batch 1 and the text tower at batch 1 × context tokens,
so a "pair" is one image plus one text.

The graph walk fixes the batch dimension (and any other symbolic dimension) to 1 and the text
length to the context length, runs ONNX shape inference, and falls back to onnxruntime's symbolic
shape inference when plain inference leaves a MatMul operand unknown (the legacy torch exporter's
attention reshapes defeat it). Parameters are the floating-point and 8-bit initializers of the
graph (counted per use), token embedding included; int64 shape constants are not parameters.

OpenVINO IR and .tflite files are not walked: MACs are a property of the architecture, so the
report takes them from the fp32 ONNX graph of the same bundle and says so (``source``).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from edgeclip.errors import InputError

_PARAM_DTYPES = {1, 10, 11, 16, 2, 3}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16, UINT8, INT8


def _fixed_model(path: str | os.PathLike, seq_len: int) -> Any:
    """Load the graph and pin every symbolic input dimension: batch 1, text length ``seq_len``."""
    import onnx

    model = onnx.load(str(path))
    for inp in model.graph.input:
        if not inp.type.HasField("tensor_type"):
            continue
        dims = inp.type.tensor_type.shape.dim
        for i, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > 0:
                continue
            d.ClearField("dim_param")
            # text graphs are (batch, tokens); anything else symbolic is a batch-like axis
            d.dim_value = seq_len if (i == 1 and len(dims) == 2) else 1
    return model


def _shapes(model: Any) -> dict[str, tuple[int, ...] | None]:
    """name → concrete shape for every value, initializer and graph input/output."""
    out: dict[str, tuple[int, ...] | None] = {}
    vis = list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
    for vi in vis:
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            out[vi.name] = None
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        out[vi.name] = None if any(d is None for d in dims) else tuple(int(d) for d in dims)
    for init in model.graph.initializer:
        out[init.name] = tuple(int(d) for d in init.dims)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    out[node.output[0]] = tuple(int(d) for d in attr.t.dims)
    return out


def _infer(model: Any) -> tuple[Any, dict[str, tuple[int, ...] | None]]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = _shapes(inferred)
    if _unresolved(inferred, shapes):
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
        shapes = _shapes(inferred)
    return inferred, shapes


def _unresolved(model: Any, shapes: dict[str, Any]) -> list[str]:
    return [
        n.name or n.op_type
        for n in model.graph.node
        if n.op_type in ("MatMul", "Gemm", "Conv")
        and any(shapes.get(x) is None for x in list(n.input[:2]) + [n.output[0]])
    ]


def _node_macs(node: Any, shapes: dict[str, tuple[int, ...] | None]) -> int:
    if node.op_type == "MatMul":
        k = shapes[node.input[0]][-1]
        out = shapes[node.output[0]]
        return int(np.prod(out, dtype=np.int64)) * int(k)
    if node.op_type == "Gemm":
        trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
        a = shapes[node.input[0]]
        k = a[0] if trans_a else a[1]
        out = shapes[node.output[0]]
        return int(np.prod(out, dtype=np.int64)) * int(k)
    if node.op_type == "Conv":
        w = shapes[node.input[1]]  # (C_out, C_in/groups, kh, kw, ...)
        out = shapes[node.output[0]]
        return int(np.prod(out, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
    return 0


def count_params(path: str | os.PathLike) -> int:
    """Number of weights in an ONNX graph: float and 8-bit initializers, counted once per use.

    Counting per use, not per stored tensor, because the exporter merges initializers with
    equal contents (every LayerNorm of a freshly initialised model is ones/zeros), which would
    under-count; CLIP ties no weights, so per use is the true count. Scalars (quantization
    scales, constants) are not parameters.
    """
    import onnx

    model = onnx.load(str(path))
    sizes = {
        i.name: int(np.prod(i.dims, dtype=np.int64))
        for i in model.graph.initializer
        if i.data_type in _PARAM_DTYPES and len(i.dims) > 0
    }
    return sum(sizes.get(x, 0) for n in model.graph.node for x in n.input if sizes.get(x, 0) > 1)


def graph_macs(path: str | os.PathLike, seq_len: int = 77) -> dict[str, Any]:
    """MACs of one ONNX tower at batch 1 (text at ``seq_len`` tokens), by op type, plus params."""
    path = os.fspath(path)
    if not path.endswith(".onnx"):
        raise InputError(
            f"{path}: MACs are counted on ONNX graphs only; pass the fp32 .onnx of the same bundle."
        )
    model, shapes = _infer(_fixed_model(path, seq_len))
    missing = _unresolved(model, shapes)
    if missing:
        raise InputError(
            f"{path}: shape inference left {len(missing)} MatMul/Gemm/Conv shapes unknown "
            f"(first: {missing[0]}); re-export the graph with static inner dimensions."
        )
    by_op: dict[str, int] = {}
    for node in model.graph.node:
        m = _node_macs(node, shapes)
        if m:
            by_op[node.op_type] = by_op.get(node.op_type, 0) + m
    return {"macs": sum(by_op.values()), "by_op": by_op, "params": count_params(path)}


def analytic_macs(arch: dict[str, Any]) -> dict[str, int]:
    """MACs from the manifest's ``architecture`` block (ViT image tower, causal-free text count).

    Image: patch-embedding conv + per layer (QKV, QKᵀ, AV, out-proj, 2-layer MLP at 4× width)
    over patches + CLS, + projection of the CLS token. Text: the same per-layer terms over the
    context tokens + projection of the EOT token. Attention is counted over all token pairs, as
    the exported graph does (the causal mask does not skip work).
    """
    try:
        s, p = int(arch["image_size"]), int(arch["patch_size"])
        vw, vl = int(arch["vision_width"]), int(arch["vision_layers"])
        tw, tl = int(arch["text_width"]), int(arch["text_layers"])
        e, ctx = int(arch["embed_dim"]), int(arch.get("context_length", 77))
    except KeyError as exc:
        raise InputError(f"architecture block lacks {exc}; it needs the manifest's keys.") from exc
    vm = int(arch.get("vision_mlp", 4 * vw))
    tm = int(arch.get("text_mlp", 4 * tw))

    def layer(n: int, w: int, mlp: int) -> int:
        return n * w * 3 * w + 2 * n * n * w + n * w * w + 2 * n * w * mlp

    patches = (s // p) ** 2
    conv = patches * 3 * p * p * vw
    image = conv + vl * layer(patches + 1, vw, vm) + vw * e
    text = tl * layer(ctx, tw, tm) + tw * e
    return {"image_macs": image, "text_macs": text, "pair_macs": image + text}


def analytic_params(arch: dict[str, Any]) -> dict[str, int]:
    """Parameters from the architecture block (pre-LN ViT/Transformer with biases, CLIP layout)."""
    s, p = int(arch["image_size"]), int(arch["patch_size"])
    vw, vl = int(arch["vision_width"]), int(arch["vision_layers"])
    tw, tl = int(arch["text_width"]), int(arch["text_layers"])
    e, ctx = int(arch["embed_dim"]), int(arch.get("context_length", 77))
    vocab = int(arch.get("vocab_size", 49408))
    vm = int(arch.get("vision_mlp", 4 * vw))
    tm = int(arch.get("text_mlp", 4 * tw))

    def layer(w: int, mlp: int) -> int:
        return 4 * w * w + 4 * w + 2 * w * mlp + mlp + w + 4 * w  # attn + MLP + 2 LayerNorms

    patches = (s // p) ** 2
    image = 3 * p * p * vw + vw + (patches + 1) * vw + 4 * vw + vl * layer(vw, vm) + vw * e
    text = vocab * tw + ctx * tw + tl * layer(tw, tm) + 2 * tw + tw * e
    return {"image_params": image, "text_params": text, "params": image + text}


def tower_report(
    image_onnx: str | os.PathLike,
    text_onnx: str | os.PathLike,
    arch: dict[str, Any] | None = None,
    seq_len: int = 77,
) -> dict[str, Any]:
    """MACs and params per tower and per pair from the two graphs, with the analytic cross-check."""
    img = graph_macs(image_onnx, 1)
    txt = graph_macs(text_onnx, seq_len)
    rep: dict[str, Any] = {
        "image_macs": img["macs"],
        "text_macs": txt["macs"],
        "pair_macs": img["macs"] + txt["macs"],
        "image_params": img["params"],
        "text_params": txt["params"],
        "params": img["params"] + txt["params"],
        "by_op": {"image": img["by_op"], "text": txt["by_op"]},
        "source": f"ONNX graph walk of {os.path.basename(os.path.dirname(os.fspath(image_onnx)))}",
    }
    if arch:
        try:
            rep["analytic"] = {**analytic_macs(arch), **analytic_params(arch)}
        except (InputError, KeyError, ValueError, TypeError):
            rep["analytic"] = None
    return rep


def bundle_macs(bundle: Any, notes: list[str]) -> dict[str, Any] | None:
    """A bundle's MACs and parameters: counted on its fp32 ONNX graph, else from the manifest's
    architecture block (a note says which); None, with a note, when neither is there."""
    from .variants import fp32_onnx

    arch = bundle.manifest.get("architecture")
    ref = fp32_onnx(bundle)
    if ref is not None and not ref.image.batch_sizes:
        rep = tower_report(
            bundle.path_of(ref.image.file),
            bundle.path_of(ref.text.file),
            arch,
            int(bundle.tokenizer.get("context_length", 77)),
        )
        rep["source"] = f"ONNX graph walk of {ref.id} (every variant shares the architecture)"
        return rep
    if arch:
        notes.append("MACs from the architecture block only: the bundle has no fp32 ONNX graph")
        a = {**analytic_macs(arch), **analytic_params(arch)}
        return {**a, "source": "analytic (manifest architecture)", "analytic": a}
    notes.append("MACs unknown: no fp32 ONNX graph and no architecture block in the manifest")
    return None
