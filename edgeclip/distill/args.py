"""Checks of a run's settings, made before anything long starts (a teacher trained or read).

Each refusal is one line naming the flag, the value and the fix (an ``InputError``: exit 2).
``check(cfg)`` runs them all on a ``TrainConfig``; ``runstate.validate`` calls it, and the
command line calls that before it trains the procedural teacher.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from edgeclip.errors import InputError
from edgeclip.paths import check_output_folder

PROCEDURAL_TEACHER = "procedural-teacher"
WEIGHT_FILES = (
    "model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json",
)  # fmt: skip
# A folder holding one of these was written by an earlier run: -o may write into it again.
RUN_MARKERS = ("train_log.jsonl", "train_state.pt", "edgeclip_distill.json", ".export-partial")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive(v) -> bool:
    return _number(v) and v > 0


def _non_negative(v) -> bool:
    return _number(v) and v >= 0


def _fraction(v) -> bool:
    return _number(v) and 0 <= v <= 1


# (flag, TrainConfig field, test, what the value must be)
NUMBERS = (
    ("--lr", "lr", _positive, "a number > 0"),
    ("--weight-decay", "weight_decay", _non_negative, "a number >= 0"),
    ("--warmup", "warmup", _fraction, "a fraction of the steps in [0, 1]"),
    ("--grad-clip", "grad_clip", _non_negative, "a number >= 0 (0 turns clipping off)"),
    ("--seed", "seed", _non_negative, "an integer >= 0"),
    ("--procedural-size", "procedural_size", lambda v: v >= 1, "a number of pairs >= 1"),
    ("--eval-every", "eval_every", _non_negative, "0 (off) or a number of steps >= 1"),
    ("--eval-held-out", "eval_held_out", lambda v: v >= 1, "a number of images >= 1"),
    ("--checkpoint-every", "checkpoint_every", _non_negative, "0 (off) or a number of steps >= 1"),
    ("--stop-after", "stop_after", lambda v: v is None or v >= 1, "a step >= 1"),
    ("--dist-timeout", "dist_timeout", _positive, "a number of seconds > 0"),
    ("--mask-ratio", "mask_ratio", lambda v: _number(v) and 0 <= v < 1, "a patch drop ratio in [0, 1)"),
    ("--affinity-scale", "affinity_scale", lambda v: v == "teacher" or _positive(v), "a number > 0 or 'teacher'"),
)  # fmt: skip
AUTO_NUMBERS = (
    ("--sparsity-warmup", "sparsity_warmup", _fraction, "a fraction of --prune-step in [0, 1]"),
    ("--mask-lr", "mask_lr", _positive, "a number > 0"),
    ("--lambda-lr", "lambda_lr", _positive, "a number > 0"),
)


def check(cfg) -> None:
    """Every check of this module on ``cfg`` (a ``TrainConfig``)."""
    from .datasets import check_source

    check_numbers(cfg)
    check_source(cfg.data)
    if cfg.teacher and cfg.teacher != PROCEDURAL_TEACHER:
        check_model_dir(cfg.teacher, "--teacher")
    if cfg.start_from:
        check_model_dir(cfg.start_from, "--start-from")
    check_out(cfg.out, [("--teacher", cfg.teacher), ("--start-from", cfg.start_from)])
    if cfg.teacher_cache_dir is not None:
        check_output_folder(cfg.teacher_cache_dir, "--teacher-cache", "teacher-features/")
    if cfg.resume and not (Path(cfg.out) / "train_state.pt").is_file():
        raise InputError(
            f"--resume: no checkpoint {str(Path(cfg.out) / 'train_state.pt')!r} to resume from "
            "(written with --checkpoint-every or --stop-after); drop --resume to start fresh"
        )


def check_numbers(cfg) -> None:
    """Refuse numbers no run can use (a negative learning rate, a warm-up over 100 %, ...)."""
    for flag, name, ok, want in NUMBERS + (AUTO_NUMBERS if cfg.auto_inherit else ()):
        value = getattr(cfg, name)
        if not ok(value):
            raise InputError(f"{flag} must be {want}, got {value!r}")


def check_model_dir(path: str, flag: str) -> None:
    """A Hugging Face CLIPModel folder: config.json of a CLIP and a weights file (not read here)."""
    p = Path(path)
    also = f" or {PROCEDURAL_TEACHER!r}" if flag == "--teacher" else ""
    if not p.exists():
        raise InputError(
            f"{flag} {path!r} does not exist; give a Hugging Face CLIPModel folder{also}"
        )
    if not p.is_dir():
        raise InputError(
            f"{flag} {path!r} is a file, not a CLIPModel folder; give the folder holding config.json"
        )
    if not (p / "config.json").is_file():
        raise InputError(
            f"{flag} {path!r} is not a CLIPModel folder (no config.json); give one{also}"
        )
    try:
        kind = json.loads((p / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as e:
        raise InputError(
            f"{flag} {path!r}: config.json is not a readable JSON object ({e})"
        ) from None
    if kind != "clip":
        raise InputError(
            f"{flag} {path!r} holds a {kind!r} model, not a CLIP (config.json model_type); "
            "give a CLIPModel folder"
        )
    if not any((p / name).is_file() for name in WEIGHT_FILES):
        raise InputError(
            f"{flag} {path!r} has config.json but no weights ({' or '.join(WEIGHT_FILES[:2])}); "
            "an unfinished download or export? Fetch or export it again"
        )


def check_out(out: str, sources: list[tuple[str, str | None]]) -> None:
    """``-o``: a new or empty folder, or an earlier run's; never an input of the run."""
    check_output_folder(out, "-o", "student/")
    p = Path(out)
    if not p.is_dir():
        return
    for flag, src in sources:
        if src and Path(src).is_dir() and p.resolve() == Path(src).resolve():
            raise InputError(
                f"-o {out!r} is the {flag} folder: the run would overwrite its own input; write elsewhere"
            )
    names = sorted(os.listdir(p))
    if names and not any(m in names for m in RUN_MARKERS):
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise InputError(
            f"-o {out!r} holds other files ({shown}) and is not an earlier run's output; "
            "name a new or empty folder"
        )
