"""Student/teacher architectures (data in ``model_configs/*.json``), encoders, weight inheritance.

Models are transformers ``CLIPModel``s, so a trained student saves as a Hugging Face checkpoint
the converters take unchanged. Text pooling: ``eos_token_id`` 49407 with zero padding, so
transformers pools at the first end-of-text token, which for edgeclip's tokenizer is also
``argmax(ids)`` (the runtime's rule).
"""

from __future__ import annotations

import json
import math
import re
from contextlib import contextmanager
from pathlib import Path

import torch

from edgeclip.errors import InputError

CONFIG_DIR = Path(__file__).with_name("model_configs")
ARCH_KEYS = (
    "embed_dim", "image_size", "patch_size", "vision_width", "vision_layers", "vision_heads",
    "text_width", "text_layers", "text_heads", "context_length", "vocab_size", "hidden_act",
    "vision_mlp", "text_mlp",
)  # fmt: skip
SOT, EOT = 49406, 49407
# CLIP's cap on the logit multiplier (ln 100 for the parameter, which is a log-scale).
MAX_LOGIT_SCALE = 100.0
MAX_LOG_LOGIT_SCALE = math.log(MAX_LOGIT_SCALE)


def presets() -> list[str]:
    """Names of the built-in architecture presets."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_arch(name_or_path: str | dict) -> dict:
    """Architecture dict from a preset name, a JSON file path, or a dict (validated)."""
    if isinstance(name_or_path, dict):
        arch = dict(name_or_path)
    else:
        p = Path(name_or_path)
        if not p.suffix == ".json":
            p = CONFIG_DIR / f"{name_or_path}.json"
        if not p.is_file():
            raise InputError(
                f"student/teacher architecture {name_or_path!r} is neither a preset ({', '.join(presets())}) "
                "nor an existing JSON file"
            )
        try:
            arch = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"architecture file {str(p)!r} is not valid JSON: {e}") from None
    arch.setdefault("vocab_size", 49408)
    arch.setdefault("hidden_act", "gelu")
    for tower in ("vision", "text"):  # MLP width; 4 × width unless given (pruned students differ)
        if f"{tower}_width" in arch:
            arch.setdefault(f"{tower}_mlp", 4 * arch[f"{tower}_width"])
    missing = [k for k in ARCH_KEYS if k not in arch]
    if missing:
        raise InputError(
            f"architecture {name_or_path!r} lacks {missing}; see {CONFIG_DIR}/micro.json for the keys"
        )
    for tower in ("vision", "text"):
        if arch[f"{tower}_width"] % arch[f"{tower}_heads"]:
            raise InputError(
                f"{tower}_width {arch[f'{tower}_width']} is not divisible by {tower}_heads"
            )
    if arch["image_size"] % arch["patch_size"]:
        raise InputError(
            f"image_size {arch['image_size']} is not a multiple of patch_size {arch['patch_size']}"
        )
    return {k: arch[k] for k in ARCH_KEYS}


def clip_config(arch: dict):
    """transformers ``CLIPConfig`` for an architecture dict."""
    from transformers import CLIPConfig

    text = {
        "vocab_size": arch["vocab_size"], "hidden_size": arch["text_width"],
        "intermediate_size": arch["text_mlp"], "num_hidden_layers": arch["text_layers"],
        "num_attention_heads": arch["text_heads"], "max_position_embeddings": arch["context_length"],
        "hidden_act": arch["hidden_act"], "bos_token_id": SOT, "eos_token_id": EOT, "pad_token_id": 0,
        "projection_dim": arch["embed_dim"],
    }  # fmt: skip
    vision = {
        "hidden_size": arch["vision_width"], "intermediate_size": arch["vision_mlp"],
        "num_hidden_layers": arch["vision_layers"], "num_attention_heads": arch["vision_heads"],
        "image_size": arch["image_size"], "patch_size": arch["patch_size"], "hidden_act": arch["hidden_act"],
        "projection_dim": arch["embed_dim"],
    }  # fmt: skip
    return CLIPConfig(
        text_config=text, vision_config=vision, projection_dim=arch["embed_dim"],
        logit_scale_init_value=math.log(1 / 0.07),
    )  # fmt: skip


def build_model(arch: dict, seed: int | None = None):
    """A randomly initialised ``CLIPModel`` (fp32, eager attention so CPU results are exact)."""
    from transformers import CLIPModel

    if seed is not None:
        torch.manual_seed(seed)
    cfg = clip_config(arch)
    cfg._attn_implementation = "eager"
    return CLIPModel(cfg)


def arch_of(model) -> dict:
    """Architecture dict of a transformers ``CLIPModel``."""
    t, v = model.config.text_config, model.config.vision_config
    return {
        "embed_dim": model.config.projection_dim, "image_size": v.image_size, "patch_size": v.patch_size,
        "vision_width": v.hidden_size, "vision_layers": v.num_hidden_layers, "vision_heads": v.num_attention_heads,
        "text_width": t.hidden_size, "text_layers": t.num_hidden_layers, "text_heads": t.num_attention_heads,
        "context_length": t.max_position_embeddings, "vocab_size": t.vocab_size, "hidden_act": t.hidden_act,
        "vision_mlp": v.intermediate_size, "text_mlp": t.intermediate_size,
    }  # fmt: skip


@contextmanager
def quiet_transformers():
    """No transformers progress bars inside: their carriage returns flood piped logs."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def load_model(path: str | Path, flag: str = "--teacher"):
    """Load a Hugging Face CLIPModel directory (fp32); ``flag`` names it in a refusal."""
    p = Path(path)
    if not (p / "config.json").is_file():
        raise InputError(f"{flag} {str(p)!r} is not a Hugging Face CLIPModel directory (no config.json)")
    try:
        model, info = _from_pretrained(p)
    except Exception as e:  # noqa: BLE001 - any failure to read a checkpoint is its fault
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(
            f"{flag} {str(p)!r}: its weights cannot be read ({reason}); export or download it again"
        ) from None
    absent = sorted(info.get("missing_keys", ())) + sorted(
        k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", ())
    )
    if absent:
        raise InputError(
            f"{flag} {str(p)!r}: the weights do not fit config.json ({len(absent)} tensors missing or "
            f"of another shape, e.g. {absent[0]}); export or download it again"
        )
    return model.float()


def _from_pretrained(p: Path):
    """``(model, loading info)``; transformers' own load report is silenced (the caller judges)."""
    from transformers import CLIPModel
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with quiet_transformers():
            return CLIPModel.from_pretrained(str(p), attn_implementation="eager",
                                             output_loading_info=True, ignore_mismatched_sizes=True)  # fmt: skip
    finally:
        hf_logging.set_verbosity(level)


def drop_patches(
    emb: torch.Tensor, mask_ratio: float, generator=None, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """MAE-style token drop (CLIP-KD MFD) on embeddings that already carry their positions.

    Keeps the class token and the ``round(n · (1 − mask_ratio))`` patches with the lowest
    ``noise`` (shape (batch, patches), drawn from ``generator`` when not given).
    """
    cls, patches = emb[:, :1], emb[:, 1:]
    b, n, d = patches.shape
    keep = max(1, int(round(n * (1.0 - mask_ratio))))
    if noise is None:
        noise = torch.rand(b, n, generator=generator)
    ids = noise.to(patches.device).argsort(dim=1)[:, :keep]
    patches = torch.gather(patches, 1, ids.unsqueeze(-1).expand(-1, -1, d))
    return torch.cat([cls, patches], dim=1)


def encode_image(
    model,
    pixel_values: torch.Tensor,
    mask_ratio: float = 0.0,
    generator=None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Projected, unnormalised image embeddings; with ``mask_ratio`` > 0, MAE-style masking.

    Masking (CLIP-KD MFD): positional embeddings are added first, then ``drop_patches``
    removes a ``mask_ratio`` of the patch tokens per image, and the encoder runs on the
    remaining ``1 + keep`` tokens only.
    """
    vm = model.vision_model
    emb = vm.embeddings(pixel_values)
    if mask_ratio > 0:
        emb = drop_patches(emb, mask_ratio, generator, noise)
    h = vm.encoder(inputs_embeds=vm.pre_layrnorm(emb)).last_hidden_state
    return model.visual_projection(vm.post_layernorm(h[:, 0]))


def encode_text(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Projected, unnormalised text embeddings (pooled at the end-of-text token)."""
    return model.get_text_features(input_ids=input_ids).pooler_output


def eot_positions(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Where the text tower pools: transformers' rule (first ``eos_token_id``, or argmax for
    legacy configs whose ``eos_token_id`` is 2), which for edgeclip's ids is ``argmax(ids)``."""
    eos = model.config.text_config.eos_token_id
    ids = input_ids.to(torch.int)
    return ids.argmax(-1) if eos == 2 else (ids == eos).int().argmax(-1)


def logit_scale(model) -> torch.Tensor:
    """The student's logit multiplier ``exp(logit_scale)``, differentiable everywhere.

    The cap at 100 lives on the parameter (``clamp_log_scale_`` after each optimiser step, as
    CLIP and CLIP-KD do): clamping after ``exp`` would zero the gradient above the cap and
    leave the parameter stuck there.
    """
    return model.logit_scale.exp()


def teacher_logit_scale(model) -> torch.Tensor:
    """A frozen model's multiplier ``min(exp(logit_scale), 100)`` (checkpoints may exceed the cap)."""
    return model.logit_scale.detach().exp().clamp(max=MAX_LOGIT_SCALE)


@torch.no_grad()
def clamp_log_scale_(param: torch.Tensor, max_log: float = MAX_LOG_LOGIT_SCALE) -> None:
    """In place: a log-scale parameter into ``[0, ln 100]`` (CLIP-KD/open_clip ``clamp_(0, ln 100)``)."""
    param.clamp_(0.0, max_log)


_LAYER = re.compile(r"^(text_model|vision_model)\.encoder\.layers\.(\d+)\.(.+)$")


def _teacher_key(key: str, s_arch: dict, t_arch: dict) -> str:
    m = _LAYER.match(key)
    if not m:
        return key
    tower = "text" if m.group(1) == "text_model" else "vision"
    ls, lt = s_arch[f"{tower}_layers"], t_arch[f"{tower}_layers"]
    return f"{m.group(1)}.encoder.layers.{int(m.group(2)) * (lt // ls)}.{m.group(3)}"


def _slice(
    key: str, t: torch.Tensor, shape: torch.Size, heads: tuple[int, int], head_dims: tuple[int, int]
):
    """Front slice of teacher tensor ``t`` to ``shape``, by head for attention projections."""
    (hs, ht), (ds, dt) = heads, head_dims
    if re.search(r"self_attn\.[qkv]_proj\.weight$", key):
        return t.reshape(ht, dt, -1)[:hs, :ds, : shape[1]].reshape(shape)
    if re.search(r"self_attn\.[qkv]_proj\.bias$", key):
        return t.reshape(ht, dt)[:hs, :ds].reshape(shape)
    if key.endswith("self_attn.out_proj.weight"):
        return t.reshape(t.shape[0], ht, dt)[: shape[0], :hs, :ds].reshape(shape)
    return t[tuple(slice(0, n) for n in shape)]


def inherit_weights(student, teacher) -> dict[str, str]:
    """TinyCLIP manual inheritance: copy front slices of teacher tensors into ``student``.

    Student layer ``i`` ← teacher layer ``i · (teacher_depth // student_depth)`` per tower;
    widths, heads (by whole heads), MLP widths, embeddings and projections front-sliced.
    Returns ``{student_key: teacher_key}``.
    """
    s_arch, t_arch = arch_of(student), arch_of(teacher)
    for k in ("vision_width", "vision_layers", "vision_heads", "text_width", "text_layers", "text_heads",
              "embed_dim", "context_length", "vision_mlp", "text_mlp"):  # fmt: skip
        if s_arch[k] > t_arch[k]:
            raise InputError(
                f"cannot inherit: student {k} {s_arch[k]} exceeds the teacher's {t_arch[k]}"
            )
    if s_arch["patch_size"] != t_arch["patch_size"]:
        raise InputError(
            f"cannot inherit: patch sizes differ ({s_arch['patch_size']} vs {t_arch['patch_size']})"
        )
    hd = {t: (s_arch[f"{t}_width"] // s_arch[f"{t}_heads"], t_arch[f"{t}_width"] // t_arch[f"{t}_heads"])
          for t in ("vision", "text")}  # fmt: skip
    for tower, (ds, dt) in hd.items():
        if ds > dt:
            raise InputError(
                f"cannot inherit: student {tower} head width {ds} exceeds the teacher's {dt}"
            )
    t_state = teacher.state_dict()
    s_state = student.state_dict()
    mapping = {}
    with torch.no_grad():
        for key, s_t in s_state.items():
            tkey = _teacher_key(key, s_arch, t_arch)
            if tkey not in t_state:
                continue
            tower = "text" if key.startswith("text_model") else "vision"
            heads = (s_arch[f"{tower}_heads"], t_arch[f"{tower}_heads"])
            s_t.copy_(_slice(key, t_state[tkey], s_t.shape, heads, hd[tower]))
            mapping[key] = tkey
    return mapping
