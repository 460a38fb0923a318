"""The forward pass of a transformers ``CLIPModel`` tower under L0 masks (TinyCLIP's masked model).

Masks of one tower (``l0.TowerMasks`` gives them): ``hidden`` [W], ``heads`` [L, H],
``mlp`` [L, M], block gates ``mha``/``ffn`` [L]. Where they act, following TinyCLIP's
``model.py``:

* the embeddings, every attention output and every MLP output are multiplied by ``hidden``,
  so a dropped dimension of the residual stream stays 0;
* LayerNorms normalise over the kept dimensions only (``hidden > 0``) and output 0 elsewhere;
* a head's output is multiplied by its ``heads`` value before the output projection, a
  neuron's activation by its ``mlp`` value;
* a block's output is multiplied by its gate, and counts as gone (output 0, bias included)
  when no head / no neuron is left, which is what the pruned model does.

With 0/1 masks this computes exactly what the pruned dense model (``prune.prune_clip``)
computes; with all masks at 1 it is the unmasked model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .students import drop_patches, eot_positions


def masked_layer_norm(x: torch.Tensor, ln: torch.nn.LayerNorm, keep: torch.Tensor | None):
    """LayerNorm over the dimensions where ``keep`` is true; 0 on the others."""
    if keep is None:
        return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
    k = keep.to(x.dtype)
    n = k.sum()
    mean = (x * k).sum(-1, keepdim=True) / n
    centred = (x - mean) * k
    var = centred.square().sum(-1, keepdim=True) / n
    return centred * torch.rsqrt(var + ln.eps) * ln.weight * k + ln.bias * k


def _attention(attn, h: torch.Tensor, heads_z: torch.Tensor, causal: torch.Tensor | None):
    b, t, _ = h.shape
    d = attn.head_dim

    def split(x):
        return x.view(b, t, -1, d).transpose(1, 2)  # (B, heads, T, d)

    q, k, v = split(attn.q_proj(h)), split(attn.k_proj(h)), split(attn.v_proj(h))
    w = (q @ k.transpose(-1, -2)) * attn.scale
    if causal is not None:
        w = w + causal
    o = torch.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype) @ v
    o = o * heads_z.view(1, -1, 1, 1)
    return attn.out_proj(o.transpose(1, 2).reshape(b, t, -1))


def _block_gate(gate: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    # A block without a single unit left is removed by pruning, its bias with it.
    return gate * (units > 0).any().to(gate.dtype)


def masked_encoder(encoder, x: torch.Tensor, z: dict, causal: torch.Tensor | None = None):
    """The encoder layers of one tower under masks ``z`` (see the module docstring)."""
    hz = z["hidden"]
    keep = hz > 0
    for i, layer in enumerate(encoder.layers):
        g_attn = _block_gate(z["mha"][i], z["heads"][i])
        h = masked_layer_norm(x, layer.layer_norm1, keep)
        x = x + g_attn * hz * _attention(layer.self_attn, h, z["heads"][i], causal)
        g_mlp = _block_gate(z["ffn"][i], z["mlp"][i])
        h = masked_layer_norm(x, layer.layer_norm2, keep)
        a = layer.mlp.activation_fn(layer.mlp.fc1(h)) * z["mlp"][i]
        x = x + g_mlp * hz * layer.mlp.fc2(a)
    return x


def masked_image_features(
    model, pixel_values: torch.Tensor, z: dict, mask_ratio: float = 0.0, noise=None
) -> torch.Tensor:
    """Projected, unnormalised image embeddings of ``model`` under masks ``z`` (vision tower).

    ``mask_ratio``/``noise``: MFD's patch drop, as ``students.encode_image`` does it.
    """
    vm = model.vision_model
    hz = z["hidden"]
    keep = hz > 0
    emb = vm.embeddings(pixel_values) * hz
    if mask_ratio > 0:
        emb = drop_patches(emb, mask_ratio, noise=noise)
    x = masked_encoder(vm.encoder, masked_layer_norm(emb, vm.pre_layrnorm, keep), z)
    return model.visual_projection(masked_layer_norm(x[:, 0], vm.post_layernorm, keep))


def causal_mask(length: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Additive mask letting token i attend to tokens ≤ i (CLIP's text tower)."""
    m = torch.full((length, length), torch.finfo(dtype).min, dtype=dtype, device=device)
    return m.triu(1)


def masked_text_features(model, input_ids: torch.Tensor, z: dict) -> torch.Tensor:
    """Projected, unnormalised text embeddings under masks ``z`` (pooled where transformers pools)."""
    tm = model.text_model
    hz = z["hidden"]
    x = tm.embeddings(input_ids=input_ids) * hz
    x = masked_encoder(tm.encoder, x, z, causal_mask(x.shape[1], x.dtype, x.device))
    x = masked_layer_norm(x, tm.final_layer_norm, hz > 0)
    pooled = x[torch.arange(x.shape[0], device=x.device), eot_positions(model, input_ids)]
    return model.text_projection(pooled)
