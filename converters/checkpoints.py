"""Load a CLIP checkpoint (Hugging Face dir or open_clip state dict + JSON) as a transformers model.

Two layouts are accepted:

* a Hugging Face ``CLIPModel`` directory: ``config.json`` + ``model.safetensors`` (or a sharded
  ``model.safetensors.index.json``) or ``pytorch_model.bin`` (read with ``weights_only=True``:
  a checkpoint never gets to run code);
* an open_clip state dict (``.pt``/``.pth``/``.bin``/``.safetensors``, possibly nested under
  ``"state_dict"`` with DDP's ``module.`` prefix, as TinyCLIP releases them) plus its JSON
  model config (``{"embed_dim", "vision_cfg", "text_cfg"}``), given explicitly or found next to
  the weights (``<stem>.json``, ``open_clip_config.json``, or the one such JSON there).

Everything else raises ``InputError`` (not a CLIP checkpoint) or ``ModelNotFoundError`` (no
such path), each saying what was expected.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from edgeclip.errors import InputError, ModelNotFoundError

__all__ = ["load_checkpoint", "checkpoint_layout", "torch_embeddings", "architecture_of", "LOGIT_SCALE_MAX"]

LOGIT_SCALE_MAX = 100.0
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
_HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not readable JSON ({exc}); expected a model config.") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path} holds a JSON {type(data).__name__}, expected an object.")
    return data


def _load_state_file(path: Path) -> dict[str, Any]:
    """A state dict from a safetensors or torch pickle file, never executing pickled code."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise InputError(f"{path} is not a readable safetensors file ({exc}).") from exc
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise InputError(
            f"{path} cannot be read as a weights-only torch checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); expected a state dict of tensors "
            "(edgeclip never unpickles arbitrary objects)."
        ) from exc
    # Training checkpoints wrap the weights: {"state_dict": ...} (TinyCLIP, open_clip), {"model": ...}.
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path} holds no state dict of tensors; expected CLIP weights.")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _hf_state_dict(directory: Path) -> tuple[dict[str, Any], list[Path]]:
    files = _hf_weight_files(directory)
    sd: dict[str, Any] = {}
    for f in files:
        sd.update(_load_state_file(f))
    return sd, files


def _hf_weight_files(directory: Path) -> list[Path]:
    """The weight files of a Hugging Face CLIPModel folder (``InputError`` if it has none)."""
    if (directory / "model.safetensors").is_file():
        files = [directory / "model.safetensors"]
    elif (directory / "model.safetensors.index.json").is_file():
        index = _read_json(directory / "model.safetensors.index.json")
        names = sorted(set((index.get("weight_map") or {}).values()))
        files = [directory / n for n in names]
        missing = [str(f) for f in files if not f.is_file()]
        if missing or not files:
            raise InputError(f"{directory}: sharded checkpoint is incomplete (missing {missing}).")
    elif (directory / "pytorch_model.bin").is_file():
        files = [directory / "pytorch_model.bin"]
    else:
        raise InputError(
            f"{directory} has config.json but no weights: expected model.safetensors, "
            "model.safetensors.index.json or pytorch_model.bin."
        )
    return files


def _build(hf_cfg: dict[str, Any], sd: dict[str, Any], where: Path):
    import torch
    import transformers

    try:
        config = transformers.CLIPConfig.from_dict(hf_cfg) if "text_config" in hf_cfg else None
    except (TypeError, ValueError, KeyError) as exc:
        raise InputError(f"{where}: invalid CLIP config ({exc}).") from exc
    if config is None:
        raise InputError(f"{where}: config has no text_config/vision_config; not a CLIPModel.")
    # Eager attention: the reference is the plain math, and it exports to the simplest graph.
    config._attn_implementation = "eager"
    with torch.device("cpu"):
        model = transformers.CLIPModel(config)
    sd = {k: v for k, v in sd.items() if not k.endswith("position_ids")}  # old HF buffers
    try:
        result = model.load_state_dict(sd, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise InputError(
            f"{where}: the weights do not fit the config ({_first_mismatch(exc)}); "
            "the config and the weights come from different models."
        ) from exc
    if result.missing_keys or result.unexpected_keys:

        def show(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")

        raise InputError(
            f"{where}: not a CLIPModel checkpoint matching its config "
            f"(missing: {show(result.missing_keys) or 'none'}; unexpected: "
            f"{show(result.unexpected_keys) or 'none'})."
        )
    _refuse_non_finite(model, where)
    return model.float().eval()


def _first_mismatch(exc: RuntimeError) -> str:
    """The first "size mismatch for KEY: ..." line of torch's message (it names the tensor)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    found = [ln for ln in lines if ln.startswith("size mismatch")]
    more = f", and {len(found) - 1} more" if len(found) > 1 else ""
    return (found[0].rstrip(".") + more) if found else (lines[0] if lines else type(exc).__name__)


def _refuse_non_finite(model, where: Path) -> None:
    """NaN or inf weights (a diverged or damaged training run) give no model worth exporting."""
    import torch

    bad = [n for n, p in model.state_dict().items()
           if p.is_floating_point() and not bool(torch.isfinite(p).all())]  # fmt: skip
    if bad:
        shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        raise InputError(
            f"{where}: the weights hold NaN or infinite values ({shown}); the checkpoint is "
            "damaged or its training diverged. Convert an earlier, finite checkpoint."
        )


def _find_open_clip_config(weights: Path) -> Path:
    d = weights.parent
    for cand in (d / f"{weights.stem}.json", d / "open_clip_config.json"):
        if cand.is_file():
            return cand
    found = []
    for cand in sorted(d.glob("*.json")):
        try:
            if "vision_cfg" in json.loads(cand.read_text()):
                found.append(cand)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
    if len(found) == 1:
        return found[0]
    raise InputError(
        f"{weights}: no open_clip JSON config found next to it (looked for {weights.stem}.json, "
        "open_clip_config.json, or a single *.json with 'vision_cfg'); pass its path as config= "
        "(--config), or, for a Hugging Face CLIPModel folder, restore its config.json."
    )


def _logit_scale(model) -> float:
    value = float(model.logit_scale.detach().exp())
    return min(value, LOGIT_SCALE_MAX) if math.isfinite(value) else LOGIT_SCALE_MAX


def architecture_of(model) -> dict[str, Any]:
    """The manifest's ``architecture`` block for a transformers ``CLIPModel``."""
    v, t = model.config.vision_config, model.config.text_config
    return {
        "embed_dim": int(model.config.projection_dim),
        "image_size": int(v.image_size),
        "patch_size": int(v.patch_size),
        "vision_width": int(v.hidden_size),
        "vision_layers": int(v.num_hidden_layers),
        "vision_heads": int(v.num_attention_heads),
        "vision_mlp": int(v.intermediate_size),
        "text_width": int(t.hidden_size),
        "text_layers": int(t.num_hidden_layers),
        "text_heads": int(t.num_attention_heads),
        "text_mlp": int(t.intermediate_size),
        "context_length": int(t.max_position_embeddings),
        "vocab_size": int(t.vocab_size),
        "hidden_act": str(v.hidden_act),
    }


def load_checkpoint(
    path: str | os.PathLike, config: str | os.PathLike | None = None
) -> tuple[Any, dict[str, Any]]:
    """Load a CLIP checkpoint as ``(transformers.CLIPModel fp32 eval, info)``.

    ``path``: a Hugging Face CLIPModel directory, or an open_clip weights file (or a directory
    holding one weights file and its open_clip JSON config). ``config``: the open_clip JSON
    config when it is not next to the weights. ``info`` holds ``kind`` ("hf-checkpoint" |
    "open_clip-checkpoint"), ``path``, ``files`` (the files read), ``logit_scale`` (exp'd,
    clamped at 100), ``architecture`` and ``preprocessor_config`` (a dict or None).
    """
    kind, p = checkpoint_layout(path, config)
    if kind == "hf":
        return _load_hf(p)
    return _load_open_clip(p, Path(config) if config is not None else None)


def checkpoint_layout(
    path: str | os.PathLike, config: str | os.PathLike | None = None
) -> tuple[str, Path]:
    """What ``load_checkpoint`` would read, found without reading any weights: ``("hf", folder)``
    or ``("open_clip", weights file)``; the same errors for what is no CLIP checkpoint."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelNotFoundError(
            f"checkpoint {str(path)!r} does not exist; expected a Hugging Face CLIPModel directory "
            "(config.json + model.safetensors or pytorch_model.bin) or an open_clip weights file "
            "(.pt/.bin/.safetensors) with its JSON config."
        )
    p = p.resolve()
    if p.is_file() and p.name in _HF_WEIGHTS and (p.parent / "config.json").is_file():
        p = p.parent  # pointing at the weights of an HF dir means the dir
    if p.is_dir() and (p / "config.json").is_file() and config is None:
        _hf_weight_files(p)
        return "hf", p
    if p.is_dir():
        weights = sorted(f for f in p.iterdir() if f.suffix in _WEIGHT_SUFFIXES and f.is_file())
        if len(weights) != 1:
            raise InputError(
                f"{p} is not a CLIP checkpoint directory: expected config.json with "
                "model.safetensors/pytorch_model.bin (Hugging Face), or exactly one open_clip "
                f"weights file (.pt/.bin/.safetensors) with its JSON config (found {len(weights)})."
            )
        p = weights[0]
    if p.suffix not in _WEIGHT_SUFFIXES:
        raise InputError(
            f"{p} is not a CLIP checkpoint: expected a directory or a weights file ending in "
            f"{', '.join(_WEIGHT_SUFFIXES)}."
        )
    return "open_clip", p


def _load_hf(directory: Path) -> tuple[Any, dict[str, Any]]:
    cfg_path = directory / "config.json"
    cfg = _read_json(cfg_path)
    if cfg.get("model_type") != "clip" and not ("text_config" in cfg and "vision_config" in cfg):
        raise InputError(
            f"{cfg_path} describes a {cfg.get('model_type') or 'non-CLIP'} model; expected a "
            "Hugging Face CLIPModel (model_type 'clip', with text_config and vision_config)."
        )
    sd, files = _hf_state_dict(directory)
    model = _build(cfg, sd, directory)
    pp_path = directory / "preprocessor_config.json"
    preproc = _read_json(pp_path) if pp_path.is_file() else None
    return model, {
        "kind": "hf-checkpoint",
        "path": str(directory),
        "files": [cfg_path, *files] + ([pp_path] if preproc is not None else []),
        "logit_scale": _logit_scale(model),
        "architecture": architecture_of(model),
        "preprocessor_config": preproc,
    }


def _load_open_clip(weights: Path, config: Path | None) -> tuple[Any, dict[str, Any]]:
    from .open_clip_keys import hf_config_from_open_clip, open_clip_to_hf

    cfg_path = config if config is not None else _find_open_clip_config(weights)
    if not cfg_path.is_file():
        raise ModelNotFoundError(f"open_clip config {cfg_path} does not exist.")
    oc = _read_json(cfg_path)
    try:
        hf_cfg = hf_config_from_open_clip(oc)
    except InputError as exc:
        raise InputError(f"{cfg_path}: {exc}") from exc
    try:
        sd = open_clip_to_hf(_load_state_file(weights), hf_cfg)
    except InputError as exc:
        raise InputError(f"{weights}: {exc}") from exc
    model = _build(hf_cfg, sd, weights)
    return model, {
        "kind": "open_clip-checkpoint",
        "path": str(weights),
        "files": [weights, cfg_path],
        "logit_scale": _logit_scale(model),
        "architecture": architecture_of(model),
        "preprocessor_config": None,
        "open_clip_config": oc,
    }


def torch_embeddings(model, pixel_values=None, input_ids=None) -> dict[str, Any]:
    """Reference features from transformers (``get_image/text_features``), as float32 numpy.

    Unnormalised, like the exported graphs; keys ``image`` and/or ``text``.
    """
    import torch

    out: dict[str, Any] = {}
    with torch.inference_mode():
        if pixel_values is not None:
            r = model.get_image_features(pixel_values=torch.as_tensor(pixel_values))
            out["image"] = getattr(r, "pooler_output", r).float().numpy()
        if input_ids is not None:
            r = model.get_text_features(input_ids=torch.as_tensor(input_ids, dtype=torch.long))
            out["text"] = getattr(r, "pooler_output", r).float().numpy()
    return out
