"""Training checkpoints: everything needed for an exact resume, and refusal of foreign ones."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from edgeclip.errors import InputError

CKPT_NAME = "train_state.pt"
# Settings that change what a run computes; a checkpoint from a run that differs in any of
# them cannot be resumed exactly, so it is refused.
IDENTITY_KEYS = (
    "student_arch", "teacher", "teacher_digest", "data", "losses", "inherit", "steps", "batch_size",
    "lr", "weight_decay", "warmup", "grad_clip", "seed", "world_size", "mask_ratio",
    "affinity_alpha", "affinity_scale", "procedural_size", "procedural_seed", "clipkd_variant",
    "auto_inherit", "target_sparsity", "prune_step", "sparsity_warmup", "mask_lr", "lambda_lr", "sparsity_penalty",
    "mask_kinds", "prune_layout", "start_from", "start_from_digest",
)  # fmt: skip


def file_digest(path: str | Path | None) -> str | None:
    """sha256 of a teacher's weights file (so a retrained teacher is not mistaken for the old)."""
    if not path:
        return None
    p = Path(path)
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (p / name).is_file():
            h = hashlib.sha256()
            with open(p / name, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            return h.hexdigest()
    return None


def identity(cfg: dict) -> dict:
    return {k: cfg.get(k) for k in IDENTITY_KEYS}


def save(path: Path, state: dict) -> None:
    """Write atomically (temp file + rename), so a crash never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(path: Path, want_identity: dict) -> dict:
    """Load a checkpoint, refusing one written by a differently configured run."""
    if not path.is_file():
        raise InputError(
            f"no checkpoint at {str(path)!r} to resume from; drop --resume to start fresh"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - an unreadable file, whatever torch raises for it
        raise InputError(
            f"cannot read the checkpoint {str(path)!r} ({type(e).__name__}: {e}); it is damaged: "
            "delete it and drop --resume to start fresh"
        ) from None
    have = state.get("identity", {}) if isinstance(state, dict) else {}
    diff = {
        k: (have.get(k), want_identity.get(k))
        for k in IDENTITY_KEYS
        if have.get(k) != want_identity.get(k)
    }
    if diff:
        lines = "; ".join(f"{k}: checkpoint {json.dumps(a, default=str)} vs now {json.dumps(b, default=str)}"
                          for k, (a, b) in diff.items())  # fmt: skip
        raise InputError(
            f"refusing to resume from {str(path)!r}: it was written by a run with other settings ({lines}). "
            "Resume with the same settings, or use a new output folder."
        )
    return state


def trim_log(path: Path, step: int) -> None:
    """Drop the records after ``step`` from a run's ``train_log.jsonl``.

    A run killed after its last checkpoint logged steps that the resumed run logs again; without
    this the log held those steps twice (and a torn last line when killed mid-write).
    """
    if not path.is_file():
        path.write_text("")
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:  # the torn line of a process killed while writing it
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
            kept.append(line + "\n")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)
