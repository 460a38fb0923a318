"""Randomly initialised CLIP checkpoints for tests, benchmarks and demos (no real weights here).

``write_random_checkpoint(out_dir, arch, fmt, seed)`` writes a transformers-initialised CLIP in
one of three layouts: ``"hf"`` (config.json + model.safetensors + preprocessor_config.json),
``"hf-bin"`` (the same with pytorch_model.bin) and ``"open_clip"`` (TinyCLIP's release format:
``{"epoch", "state_dict": {"module.<open_clip key>": tensor}}`` in a ``.pt`` + the open_clip JSON
config). Architectures are open_clip config dicts:

* ``tinyclip-8m``: exactly TinyCLIP ViT-8M/16 Text-3M (224 px, patch 16, vision 256 × 10 × 4
  heads, text 256 × 3 × 4 heads, embed 512, context 77, vocab 49408, GELU, MLP ratio 4);
* ``micro``: the same kind of model shrunk for fast tests (32 px, the full vocab so the real
  tokenizer's ids fit);
* ``odd``: differs from TinyCLIP in every dimension (image and patch size, widths, depths,
  heads, MLP ratio, embed dim, context length, QuickGELU).

The weights are random: these models compute nothing meaningful, only the right shapes.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Union

from edgeclip.errors import InputError

__all__ = ["ARCHS", "arch_config", "hf_to_open_clip", "write_random_checkpoint", "random_model"]

ARCHS: dict[str, dict[str, Any]] = {
    "tinyclip-8m": {
        "embed_dim": 512,
        "vision_cfg": {"image_size": 224, "layers": 10, "width": 256, "patch_size": 16},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 256,
            "heads": 4,
            "layers": 3,
        },
    },
    "micro": {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": 32,
            "layers": 2,
            "width": 64,
            "patch_size": 8,
            "head_width": 32,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    },
    "odd": {
        "embed_dim": 96,
        "quick_gelu": True,
        "vision_cfg": {
            "image_size": 48,
            "layers": 3,
            "width": 96,
            "patch_size": 12,
            "head_width": 32,
            "mlp_ratio": 3.0,
        },
        "text_cfg": {
            "context_length": 64,
            "vocab_size": 49408,
            "width": 160,
            "heads": 5,
            "layers": 2,
            "mlp_ratio": 2.0,
        },
    },
}

ArchLike = Union[str, dict]
FORMATS = ("hf", "hf-bin", "open_clip")


def arch_config(arch: ArchLike) -> dict[str, Any]:
    """The open_clip config dict of a named architecture (or a copy of the dict given)."""
    if isinstance(arch, dict):
        return copy.deepcopy(arch)
    if arch not in ARCHS:
        raise InputError(f"unknown fixture architecture {arch!r}; choose one of {sorted(ARCHS)}.")
    return copy.deepcopy(ARCHS[arch])


def random_model(arch: ArchLike = "micro", seed: int = 0):
    """A transformers ``CLIPModel`` (fp32, eval) of ``arch`` with transformers' random init."""
    import torch
    import transformers

    from .open_clip_keys import hf_config_from_open_clip

    config = transformers.CLIPConfig.from_dict(hf_config_from_open_clip(arch_config(arch)))
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.CLIPModel(config).float().eval()
    # transformers' init (std 0.02) leaves attention nearly uniform, so every image pools to
    # almost the same embedding (pairwise cosine ≈ 0.98–0.998). Fan-in scaled weights make the
    # towers input-sensitive (≈ 0.5–0.8, like a trained CLIP), which keeps parity tests honest.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, fan_in**-0.5)
    return model


def hf_to_open_clip(sd: dict[str, Any]) -> dict[str, Any]:
    """Inverse of ``open_clip_keys.open_clip_to_hf``: transformers keys → open_clip keys."""
    import torch

    from .open_clip_keys import _BLOCK, _TEXT, _VISION

    rename = {hf: oc for oc, hf in _VISION + _TEXT}
    block = {hf: oc for oc, hf in _BLOCK}
    out: dict[str, Any] = {}
    fused: dict[tuple[str, str], dict[str, Any]] = {}
    for key, value in sd.items():
        if key.endswith("position_ids"):
            continue
        if key in rename:
            out[rename[key]] = value
        elif key == "visual_projection.weight":
            out["visual.proj"] = value.t().contiguous()
        elif key == "text_projection.weight":
            out["text_projection"] = value.t().contiguous()
        elif key == "logit_scale":
            out["logit_scale"] = value
        elif ".encoder.layers." in key:
            tower, rest = key.split(".encoder.layers.", 1)
            idx, suffix = rest.split(".", 1)
            pre = (
                "visual.transformer.resblocks"
                if tower == "vision_model"
                else "transformer.resblocks"
            )
            if suffix.startswith("self_attn.") and suffix.split(".")[1] in (
                "q_proj",
                "k_proj",
                "v_proj",
            ):
                _, proj, kind = suffix.split(".")
                fused.setdefault((f"{pre}.{idx}", kind), {})[proj] = value
            else:
                out[f"{pre}.{idx}.{block[suffix]}"] = value
        else:
            raise InputError(f"hf_to_open_clip: unexpected transformers key {key!r}.")
    for (pre, kind), parts in fused.items():
        out[f"{pre}.attn.in_proj_{kind}"] = torch.cat(
            [parts["q_proj"], parts["k_proj"], parts["v_proj"]]
        )
    return out


def _preprocessor_config(image_size: int) -> dict[str, Any]:
    from edgeclip.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": image_size},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(OPENAI_CLIP_MEAN),
        "image_std": list(OPENAI_CLIP_STD),
        "do_convert_rgb": True,
    }


def write_random_checkpoint(
    out_dir: str | os.PathLike, arch: ArchLike = "micro", fmt: str = "hf", seed: int = 0
) -> Path:
    """Write a random CLIP checkpoint; return the HF directory or the open_clip ``.pt`` path."""
    import torch

    if fmt not in FORMATS:
        raise InputError(f"unknown checkpoint format {fmt!r}; choose one of {FORMATS}.")
    oc = arch_config(arch)
    model = random_model(oc, seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if fmt == "open_clip":
        ctx = oc["text_cfg"].get("context_length", 77)
        state = {"module." + k: v for k, v in hf_to_open_clip(sd).items()}
        # open_clip (older versions) saves the causal mask buffer; the loader must skip it.
        state["module.attn_mask"] = torch.full((ctx, ctx), float("-inf")).triu_(1)
        name = arch if isinstance(arch, str) else "custom"
        path = out / f"{name}.pt"
        torch.save({"epoch": 1, "name": name, "state_dict": state}, path)
        (out / "open_clip_config.json").write_text(json.dumps(oc, indent=2) + "\n")
        return path
    model.config.save_pretrained(out)
    if fmt == "hf":
        from safetensors.torch import save_file

        save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(sd, out / "pytorch_model.bin")
    image_size = model.config.vision_config.image_size
    (out / "preprocessor_config.json").write_text(
        json.dumps(_preprocessor_config(image_size), indent=2) + "\n"
    )
    return out
