"""Fold 0/1 L0 masks into a smaller dense transformers ``CLIPModel`` (TinyCLIP's ``prune``).

After mask learning every layer keeps its own heads and MLP neurons, so widths differ from
layer to layer; a ``CLIPConfig`` has one head count, one MLP width per tower and needs
heads × head_dim = hidden. Such a student is stored as a plain ``CLIPModel`` that the
converters take unchanged, by exact zero padding:

* every layer gets the tower's largest kept MLP width; the extra neurons have zero weights
  and biases (GELU(0) · 0 adds nothing);
* attention gets ``n`` heads of width ``D`` with ``n · D`` = the kept hidden width; a kept
  head of width ``d ≤ D`` fills the first ``d`` rows of its slot, the rest are zero, and the
  query is scaled by √(D/d) so that D^-½ scores equal the original d^-½ ones; unused slots
  are zero and so contribute nothing;
* a block with no unit left is all zeros, its output bias included; a layer whose two blocks
  are both gone is dropped.

Layouts (``plan_masks``): ``per-layer`` keeps what the masks chose (padding costs compute and
file size, the exact per-layer widths are recorded in the report), ``uniform`` keeps the same
number of heads and neurons in every layer (the best-scored ones of each layer), so nothing
is padded. ``layer_params`` gives the compact (unpadded) count either way.
"""

from __future__ import annotations

import math

import torch

from . import l0
from .students import arch_of, build_model, load_arch

LAYOUTS = ("per-layer", "uniform")


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """0/1 mask of the ``k`` largest scores of each row (ties: lower index first)."""
    order = scores.argsort(dim=-1, descending=True, stable=True)
    out = torch.zeros_like(scores)
    return out.scatter_(-1, order[..., :k], 1.0) if k > 0 else out


def plan_masks(masks: l0.TowerMasks, layout: str) -> tuple[dict, list[str]]:
    """0/1 masks for pruning one tower, made expressible as a ``CLIPConfig`` (see module doc).

    Returns ``(masks, notes)``; ``notes`` say where the legalisation moved a unit.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"prune layout must be one of {LAYOUTS}, got {layout!r}")
    z = {k: v.clone() for k, v in masks.deterministic().items()}
    score = {n: masks.log_alpha[n].detach() if n in masks.log_alpha else torch.zeros_like(z[n])
             for n in z}  # fmt: skip
    if layout == "uniform":
        probs = masks.keep_probs()
        for n in ("heads", "mlp"):
            k = max(1, int(round(float(probs[n].detach().sum(-1).mean()))))
            z[n] = _top(score[n], k)
    notes: list[str] = []
    d = masks.head_dim
    if z["hidden"].sum() < d:  # a head of width d needs at least d hidden dimensions
        z["hidden"] = _top(score["hidden"], d)
        notes.append(f"kept {d} hidden dims (one head's width) instead of fewer")
    width = int(z["hidden"].sum())
    cap = width // d
    heads_per_layer = z["heads"].sum(-1)
    if heads_per_layer.max() > cap:
        z["heads"] = z["heads"] * _top(score["heads"] + 1e4 * z["heads"], cap)
        notes.append(f"at most {cap} heads per layer fit {width} hidden dims")
    n = max(1, int(z["heads"].sum(-1).max()))
    if not any(width % m == 0 for m in range(n, width // d + 1)):
        keep = (width // n) * n
        z["hidden"] = z["hidden"] * _top(score["hidden"] + 1e4 * z["hidden"], keep)
        notes.append(f"hidden {width} -> {keep} dims to split into {n} heads")
    return z, notes


def config_shape(z: dict, head_dim: int) -> dict:
    """Heads, head width, MLP width and kept layers of the padded dense tower for masks ``z``."""
    width = int(z["hidden"].sum())
    n_min = max(1, int(z["heads"].sum(-1).max()))
    heads = next(m for m in range(n_min, width // head_dim + 1) if width % m == 0)
    attn_on = [bool(g > 0 and h.sum() > 0) for g, h in zip(z["mha"], z["heads"])]
    mlp_on = [bool(g > 0 and m.sum() > 0) for g, m in zip(z["ffn"], z["mlp"])]
    layers = [i for i, (a, m) in enumerate(zip(attn_on, mlp_on)) if a or m] or [0]
    mlp = max([int(z["mlp"][i].sum()) for i in layers if mlp_on[i]] or [1])
    return {"width": width, "heads": heads, "head_dim": width // heads, "mlp": mlp,
            "layers": layers, "attention_on": attn_on, "mlp_on": mlp_on}  # fmt: skip


def _idx(mask: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(mask > 0).flatten()


@torch.no_grad()
def _copy_layer(src, dst, z: dict, i: int, shape: dict, d: int) -> None:
    hk = _idx(z["hidden"])
    for p in dst.parameters():  # what is not copied below is padding: exactly zero
        p.zero_()
    for name, on in (
        ("layer_norm1", shape["attention_on"][i]),
        ("layer_norm2", shape["mlp_on"][i]),
    ):
        if on:  # the norm of a removed block feeds nothing
            getattr(dst, name).weight.copy_(getattr(src, name).weight[hk])
            getattr(dst, name).bias.copy_(getattr(src, name).bias[hk])
    sa, da = src.self_attn, dst.self_attn
    big_d = shape["head_dim"]
    if shape["attention_on"][i]:
        for slot, h in enumerate(_idx(z["heads"][i]).tolist()):
            rows, out_rows = slice(h * d, (h + 1) * d), slice(slot * big_d, slot * big_d + d)
            for name, factor in (
                ("q_proj", math.sqrt(big_d / d)),
                ("k_proj", 1.0),
                ("v_proj", 1.0),
            ):
                s_lin, d_lin = getattr(sa, name), getattr(da, name)
                d_lin.weight[out_rows] = s_lin.weight[rows][:, hk] * factor
                d_lin.bias[out_rows] = s_lin.bias[rows] * factor
            da.out_proj.weight[:, out_rows] = sa.out_proj.weight[hk][:, rows]
        da.out_proj.bias.copy_(sa.out_proj.bias[hk])
    if shape["mlp_on"][i]:
        nk = _idx(z["mlp"][i])
        k = len(nk)
        dst.mlp.fc1.weight[:k] = src.mlp.fc1.weight[nk][:, hk]
        dst.mlp.fc1.bias[:k] = src.mlp.fc1.bias[nk]
        dst.mlp.fc2.weight[:, :k] = src.mlp.fc2.weight[hk][:, nk]
        dst.mlp.fc2.bias.copy_(src.mlp.fc2.bias[hk])


@torch.no_grad()
def _copy_outer(src, dst, zv: dict, zt: dict) -> None:
    hv, ht = _idx(zv["hidden"]), _idx(zt["hidden"])
    sv, dv = src.vision_model, dst.vision_model
    dv.embeddings.patch_embedding.weight.copy_(sv.embeddings.patch_embedding.weight[hv])
    dv.embeddings.class_embedding.copy_(sv.embeddings.class_embedding[hv])
    dv.embeddings.position_embedding.weight.copy_(sv.embeddings.position_embedding.weight[:, hv])
    for name in ("pre_layrnorm", "post_layernorm"):
        getattr(dv, name).weight.copy_(getattr(sv, name).weight[hv])
        getattr(dv, name).bias.copy_(getattr(sv, name).bias[hv])
    dst.visual_projection.weight.copy_(src.visual_projection.weight[:, hv])
    st, dt = src.text_model, dst.text_model
    dt.embeddings.token_embedding.weight.copy_(st.embeddings.token_embedding.weight[:, ht])
    dt.embeddings.position_embedding.weight.copy_(st.embeddings.position_embedding.weight[:, ht])
    dt.final_layer_norm.weight.copy_(st.final_layer_norm.weight[ht])
    dt.final_layer_norm.bias.copy_(st.final_layer_norm.bias[ht])
    dst.text_projection.weight.copy_(src.text_projection.weight[:, ht])
    dst.logit_scale.copy_(src.logit_scale)


def _tower_report(z: dict, shape: dict, notes: list[str], head_dim: int) -> dict:
    return {
        "hidden": shape["width"],
        "heads_per_layer": [int(h.sum()) if on else 0 for h, on in zip(z["heads"], shape["attention_on"])],
        "mlp_per_layer": [int(m.sum()) if on else 0 for m, on in zip(z["mlp"], shape["mlp_on"])],
        "layers_kept": shape["layers"],
        "config": {"heads": shape["heads"], "head_dim": shape["head_dim"], "mlp": shape["mlp"],
                   "original_head_dim": head_dim},
        "layer_params_compact": int(l0.layer_params(z, head_dim)),
        "legalised": notes,
    }  # fmt: skip


def prune_clip(model, plans: dict[str, tuple[dict, list[str]]], head_dims: dict[str, int]):
    """The dense ``CLIPModel`` equal to ``model`` under the 0/1 masks of ``plans``.

    ``plans``: ``{"vision": (masks, notes), "text": (masks, notes)}`` from ``plan_masks``;
    ``head_dims``: the original head width per tower. Returns ``(pruned model, report)``; the
    report has the per-layer widths, the compact (unpadded) and the exported parameter counts.
    """
    arch = arch_of(model)
    shapes = {t: config_shape(plans[t][0], head_dims[t]) for t in ("vision", "text")}
    new = dict(arch)
    for tower, s in shapes.items():
        new.update({f"{tower}_width": s["width"], f"{tower}_heads": s["heads"],
                    f"{tower}_mlp": s["mlp"], f"{tower}_layers": len(s["layers"])})  # fmt: skip
    pruned = build_model(load_arch(new)).to(model.logit_scale.device)
    _copy_outer(model, pruned, plans["vision"][0], plans["text"][0])
    report: dict = {}
    for tower, s in shapes.items():
        z, notes = plans[tower]
        src = getattr(model, f"{tower}_model").encoder.layers
        dst = getattr(pruned, f"{tower}_model").encoder.layers
        for j, i in enumerate(s["layers"]):
            _copy_layer(src[i], dst[j], z, i, s, head_dims[tower])
        report[tower] = _tower_report(z, s, notes, head_dims[tower])
        report[tower]["outer_params"] = int(l0.outer_params(s["width"], tower, arch))
    compact = sum(report[t]["layer_params_compact"] + report[t]["outer_params"] for t in shapes) + 1
    report["params"] = {
        "compact": compact,
        "exported": param_counts(pruned),
        "original": param_counts(model),
    }
    return pruned, report


def param_counts(model) -> dict:
    """Parameters of a ``CLIPModel``: all, and inside the encoder layers (what sparsity counts)."""
    layers = sum(p.numel() for n, p in model.named_parameters() if ".encoder.layers." in n)
    return {"total": sum(p.numel() for p in model.parameters()), "layers": layers}
