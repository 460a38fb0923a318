"""open_clip (and TinyCLIP) state dicts → transformers ``CLIPModel`` keys, without open_clip_torch.

open_clip's ViT CLIP and transformers' ``CLIPModel`` compute the same function; only the names,
the fused q/k/v projection and the orientation of the two output projections differ. The
config half (``hf_config_from_open_clip``) turns an open_clip JSON config into the arguments of
``transformers.CLIPConfig``; it refuses the open_clip features transformers' CLIP has no slot
for (ResNet or timm towers, layer scale, attentional pooling, ...) rather than silently
producing a different model.
"""

from __future__ import annotations

from typing import Any

from edgeclip.errors import InputError
from edgeclip.tokenizer import EOT_ID, SOT_ID

__all__ = ["hf_config_from_open_clip", "normalise_keys", "open_clip_to_hf"]

# (open_clip suffix, transformers suffix) inside one residual block.
_BLOCK = (
    ("ln_1.weight", "layer_norm1.weight"),
    ("ln_1.bias", "layer_norm1.bias"),
    ("attn.out_proj.weight", "self_attn.out_proj.weight"),
    ("attn.out_proj.bias", "self_attn.out_proj.bias"),
    ("ln_2.weight", "layer_norm2.weight"),
    ("ln_2.bias", "layer_norm2.bias"),
    ("mlp.c_fc.weight", "mlp.fc1.weight"),
    ("mlp.c_fc.bias", "mlp.fc1.bias"),
    ("mlp.c_proj.weight", "mlp.fc2.weight"),
    ("mlp.c_proj.bias", "mlp.fc2.bias"),
)
_VISION = (
    ("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight"),
    ("visual.class_embedding", "vision_model.embeddings.class_embedding"),
    ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
    ("visual.ln_pre.weight", "vision_model.pre_layrnorm.weight"),  # sic: transformers' spelling
    ("visual.ln_pre.bias", "vision_model.pre_layrnorm.bias"),
    ("visual.ln_post.weight", "vision_model.post_layernorm.weight"),
    ("visual.ln_post.bias", "vision_model.post_layernorm.bias"),
)
_TEXT = (
    ("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
    ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
    ("ln_final.weight", "text_model.final_layer_norm.weight"),
    ("ln_final.bias", "text_model.final_layer_norm.bias"),
)
# Buffers open_clip saves that carry no weights (the causal mask is rebuilt by transformers).
_IGNORED = ("attn_mask", "visual.attn_mask")
# Prefixes training wrappers add: DDP's "module.", TinyCLIP's split encoders.
_PREFIXES = ("module.", "_image_encoder.", "_text_encoder.")

# open_clip config fields that change the computation in ways transformers' CLIP cannot express.
_VISION_UNSUPPORTED = {
    "timm_model_name": None,
    "ls_init_value": None,
    "attentional_pool": False,
    "global_average_pool": False,
    "no_ln_pre": False,
    "input_patchnorm": False,
    "act_kwargs": None,
    "norm_kwargs": None,
}
_TEXT_UNSUPPORTED = {
    "hf_model_name": None,
    "ls_init_value": None,
    "embed_cls": False,
    "no_causal_mask": False,
    "proj_bias": False,
    "act_kwargs": None,
    "norm_kwargs": None,
}


def normalise_keys(sd: dict[str, Any]) -> dict[str, Any]:
    """Strip wrapper prefixes ("module.", TinyCLIP's "_image_encoder."/"_text_encoder.")."""
    out = {}
    for key, value in sd.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix) :]
                    changed = True
        if key.endswith("logit_scale"):  # TinyCLIP: "_logit_scale.logit_scale"
            key = "logit_scale"
        out[key] = value
    return out


def _check_unsupported(cfg: dict[str, Any], table: dict[str, Any], where: str) -> None:
    for key, neutral in table.items():
        value = cfg.get(key, neutral)
        if value not in (neutral, None, False, {}):
            raise InputError(
                f"open_clip config {where}.{key}={value!r} is not supported: transformers' "
                "CLIPModel (and so this converter) only expresses plain ViT CLIP towers."
            )


def _int(cfg: dict[str, Any], key: str, where: str, default: Any = None) -> int:
    value = cfg.get(key, default)
    if isinstance(value, (list, tuple)) and len(set(value)) == 1:
        value = value[0]  # open_clip allows (h, w) pairs; only square ones map
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        field = f"{where}.{key}" if where else key
        raise InputError(
            f"open_clip config {field}={value!r}: expected a positive integer "
            "(a ViT config; ResNet towers and non-square sizes are not supported)."
        )
    return value


def hf_config_from_open_clip(oc: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of ``transformers.CLIPConfig`` for an open_clip model config dict."""
    if (
        not isinstance(oc, dict)
        or not isinstance(oc.get("vision_cfg"), dict)
        or not isinstance(oc.get("text_cfg"), dict)
    ):
        raise InputError(
            "not an open_clip model config: expected a JSON object with 'embed_dim', "
            "'vision_cfg' and 'text_cfg' (like TinyCLIP's open_clip_config.json)."
        )
    vc, tc = oc["vision_cfg"], oc["text_cfg"]
    _check_unsupported(vc, _VISION_UNSUPPORTED, "vision_cfg")
    _check_unsupported(tc, _TEXT_UNSUPPORTED, "text_cfg")
    if vc.get("pool_type", "tok") != "tok":
        raise InputError(f"open_clip vision_cfg.pool_type={vc['pool_type']!r}: only 'tok' maps.")
    if tc.get("pool_type", "argmax") not in ("argmax", "eot"):
        raise InputError(f"open_clip text_cfg.pool_type={tc['pool_type']!r}: only 'argmax' maps.")
    act = "quick_gelu" if oc.get("quick_gelu", False) else "gelu"
    v_width = _int(vc, "width", "vision_cfg", 768)
    head_width = _int(vc, "head_width", "vision_cfg", 64)
    if v_width % head_width:
        raise InputError(
            f"open_clip vision_cfg: width {v_width} is not a multiple of head_width {head_width}."
        )
    t_width = _int(tc, "width", "text_cfg", 512)
    t_heads = _int(tc, "heads", "text_cfg", 8)
    if t_width % t_heads:
        raise InputError(
            f"open_clip text_cfg: width {t_width} is not a multiple of heads {t_heads}."
        )
    vision = {
        "hidden_size": v_width,
        "intermediate_size": int(v_width * float(vc.get("mlp_ratio", 4.0))),
        "num_hidden_layers": _int(vc, "layers", "vision_cfg", 12),
        "num_attention_heads": v_width // head_width,
        "image_size": _int(vc, "image_size", "vision_cfg", 224),
        "patch_size": _int(vc, "patch_size", "vision_cfg", 16),
        "hidden_act": act,
        "projection_dim": _int(oc, "embed_dim", "", 512),
    }
    text = {
        "vocab_size": _int(tc, "vocab_size", "text_cfg", 49408),
        "hidden_size": t_width,
        "intermediate_size": int(t_width * float(tc.get("mlp_ratio", 4.0))),
        "num_hidden_layers": _int(tc, "layers", "text_cfg", 12),
        "num_attention_heads": t_heads,
        "max_position_embeddings": _int(tc, "context_length", "text_cfg", 77),
        "hidden_act": act,
        "projection_dim": vision["projection_dim"],
        # CLIP BPE: pad 0, <start_of_text> 49406, <end_of_text> 49407 (pooling is at the EOT).
        "pad_token_id": 0,
        "bos_token_id": SOT_ID,
        "eos_token_id": EOT_ID,
    }
    return {
        "text_config": text,
        "vision_config": vision,
        "projection_dim": vision["projection_dim"],
    }


def _blocks(prefix_oc: str, prefix_hf: str, n: int) -> list[tuple[str, str]]:
    pairs = []
    for i in range(n):
        for a, b in _BLOCK:
            pairs.append((f"{prefix_oc}.{i}.{a}", f"{prefix_hf}.{i}.{b}"))
    return pairs


def _take(sd: dict[str, Any], key: str, used: set[str]) -> Any:
    if key not in sd:
        raise InputError(
            f"open_clip state dict has no {key!r}: expected a ViT CLIP checkpoint "
            "(keys like 'visual.conv1.weight', 'visual.transformer.resblocks.0.attn.in_proj_weight', "
            "'token_embedding.weight', 'text_projection') that matches its JSON config."
        )
    used.add(key)
    return sd[key]


def open_clip_to_hf(sd: dict[str, Any], hf_cfg: dict[str, Any]) -> dict[str, Any]:
    """Rename/split/transpose an open_clip state dict (torch tensors) into transformers' keys.

    ``hf_cfg`` is the output of ``hf_config_from_open_clip`` (for the layer counts). Keys that
    are neither mapped nor known-ignorable raise ``InputError``: an unmapped weight means an
    architecture feature this converter would silently drop.
    """
    sd = normalise_keys(sd)
    used: set[str] = set()
    out: dict[str, Any] = {}
    n_v = hf_cfg["vision_config"]["num_hidden_layers"]
    n_t = hf_cfg["text_config"]["num_hidden_layers"]
    pairs = list(_VISION) + list(_TEXT)
    pairs += _blocks("visual.transformer.resblocks", "vision_model.encoder.layers", n_v)
    pairs += _blocks("transformer.resblocks", "text_model.encoder.layers", n_t)
    for src, dst in pairs:
        out[dst] = _take(sd, src, used)
    # open_clip fuses q, k, v into one (3·width, width) projection; transformers keeps three.
    for oc_pre, hf_pre, n in (
        ("visual.transformer.resblocks", "vision_model.encoder.layers", n_v),
        ("transformer.resblocks", "text_model.encoder.layers", n_t),
    ):
        for i in range(n):
            for kind in ("weight", "bias"):
                fused = _take(sd, f"{oc_pre}.{i}.attn.in_proj_{kind}", used)
                for name, part in zip(("q_proj", "k_proj", "v_proj"), fused.chunk(3, dim=0)):
                    out[f"{hf_pre}.{i}.self_attn.{name}.{kind}"] = part.clone()
    # The projections are (width, embed) matrices used as x @ proj; nn.Linear stores (embed, width).
    out["visual_projection.weight"] = _take(sd, "visual.proj", used).t().contiguous()
    if "text_projection.weight" in sd:  # newer open_clip: proj_type "linear" (an nn.Linear)
        out["text_projection.weight"] = _take(sd, "text_projection.weight", used)
    else:
        out["text_projection.weight"] = _take(sd, "text_projection", used).t().contiguous()
    if "logit_scale" in sd:
        used.add("logit_scale")
        out["logit_scale"] = sd["logit_scale"].reshape(())
    else:  # stripped inference exports drop it; trained CLIPs sit at the clamp, 100
        import math

        import torch

        out["logit_scale"] = torch.tensor(math.log(100.0))
    extra = sorted(
        k for k in sd if k not in used and k not in _IGNORED and not k.endswith("position_ids")
    )
    if extra:
        shown = ", ".join(extra[:8]) + (f" and {len(extra) - 8} more" if len(extra) > 8 else "")
        raise InputError(
            f"open_clip state dict has keys this converter does not map ({shown}): the checkpoint "
            "has more layers than its JSON config says, or uses features transformers' CLIP lacks."
        )
    return out
