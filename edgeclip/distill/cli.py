"""Command line of the distillation stage: ``python -m edgeclip.distill [distill|train-teacher] ...``.

``main(argv)`` is what ``edgeclip distill`` / ``edgeclip train-teacher`` call; it returns the
exit code (0 ok, 1 a failed multi-process run, 2 bad input). The same command runs on several
processes under ``torchrun --nproc_per_node N -m edgeclip.distill ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from edgeclip.errors import EdgeclipError, InputError

from .args import PROCEDURAL_TEACHER, check_model_dir

# Flags of automatic inheritance alone: given without --auto-inherit they would be ignored.
AUTO_ONLY = (
    ("--target-sparsity", "target_sparsity"), ("--prune-step", "prune_step"),
    ("--sparsity-warmup", "sparsity_warmup"), ("--mask-lr", "mask_lr"), ("--lambda-lr", "lambda_lr"),
    ("--sparsity-penalty", "sparsity_penalty"), ("--mask-kinds", "mask_kinds"), ("--prune-layout", "prune_layout"),
)  # fmt: skip
# The CPU probe's recipe (../shared/notes/distill-probe.md: seen 94.3 %, held-out shape 86.3 %,
# 9.4 min at 545 images/s on 2 cores); the cache folder is keyed by it and the architecture.
TEACHER_STEPS, TEACHER_BATCH, TEACHER_LR, TEACHER_WARMUP = 1200, 256, 1e-3, 0.05
TEACHER_DATA_SIZE = 120_000


def cache_dir() -> Path:
    """Where trained procedural teachers are kept (``$EDGECLIP_CACHE`` or ``~/.cache/edgeclip``)."""
    return Path(os.environ.get("EDGECLIP_CACHE", Path.home() / ".cache" / "edgeclip")) / "distill"


def teacher_recipe(seed: int = 0) -> dict:
    """Everything that decides the cached procedural teacher (its architecture included)."""
    from .procedural import DATA_VERSION
    from .students import load_arch

    return {"arch": load_arch(PROCEDURAL_TEACHER), "steps": TEACHER_STEPS, "batch_size": TEACHER_BATCH,
            "lr": TEACHER_LR, "warmup": TEACHER_WARMUP, "procedural_size": TEACHER_DATA_SIZE, "seed": seed,
            "data_version": DATA_VERSION}  # fmt: skip


def procedural_teacher_dir(seed: int = 0) -> Path:
    """The cache folder of the procedural teacher, named by a digest of its recipe."""
    import hashlib

    recipe = teacher_recipe(seed)
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir() / f"procedural-teacher-{TEACHER_STEPS}x{TEACHER_BATCH}-seed{seed}-{digest}"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        default="procedural",
        help="procedural | pairs.csv/.tsv | shards/{000000..000003}.tar",
    )
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=256, help="global batch over all processes")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup", type=float, default=0.05, help="fraction of steps")
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--procedural-size", type=int, default=60_000, help="number of procedural training pairs"
    )
    p.add_argument(
        "--eval-every", type=int, default=0, help="zero-shot eval on held-out pairs every N steps"
    )
    p.add_argument("--eval-held-out", type=int, default=200, help="test images per held-out pair")
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    p.add_argument(
        "--stop-after", type=int, help="stop after this step, leaving a checkpoint for --resume"
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--teacher-cache", help="folder keeping teacher embeddings of procedural/CSV items for later runs"
    )
    p.add_argument(
        "--dist-timeout", type=float, default=120.0, help="seconds before a silent peer is an error"
    )
    p.add_argument("-o", "--out", required=True)


def _auto_inherit_args(d: argparse.ArgumentParser) -> None:
    a = d.add_argument_group("automatic weight inheritance (TinyCLIP: L0 masks, then pruning)")
    a.add_argument(
        "--auto-inherit", action="store_true",
        help="learn masks on a copy of the teacher, prune it at --prune-step, keep training it",
    )  # fmt: skip
    a.add_argument(
        "--target-sparsity", type=float,
        help="share of the encoder layers' parameters to remove, in (0, 1) (default 0.5)",
    )  # fmt: skip
    a.add_argument(
        "--start-from", help="CLIPModel folder the masks start on (default: the teacher; progressive stages)"
    )
    a.add_argument("--prune-step", type=int, help="step at which to prune (default: steps // 2)")
    a.add_argument(
        "--sparsity-warmup", type=float,
        help="fraction of --prune-step over which the target rises from 0 (default 0.5)",
    )  # fmt: skip
    a.add_argument("--mask-lr", type=float, help="learning rate of the mask log-alphas (default 0.1)")
    a.add_argument("--lambda-lr", type=float, help="gradient-ascent rate of the multipliers (default 0.1)")
    a.add_argument(
        "--sparsity-penalty", choices=("two-sided", "one-sided"),
        help="Lagrangian term: pull to the target from both sides, or TinyCLIP's one-sided form",
    )  # fmt: skip
    a.add_argument("--mask-kinds", help="of hidden,heads,mlp,layers (default hidden,heads,mlp)")
    a.add_argument(
        "--prune-layout", choices=("per-layer", "uniform"),
        help="per-layer widths (zero padded in the exported config) or the same widths in every layer",
    )  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(  # no abbreviations: --teacher must never mean --teacher-cache
        prog="edgeclip distill", description="Distil or train small CLIP models.", allow_abbrev=False
    )
    sub = ap.add_subparsers(dest="command")
    d = sub.add_parser("distill", help="distil a student from a teacher", prog="edgeclip distill",
                       allow_abbrev=False)  # fmt: skip
    d.add_argument(
        "--teacher",
        help=f"Hugging Face CLIPModel folder, or {PROCEDURAL_TEACHER} (trained and cached)",
    )
    d.add_argument(
        "--student", help="preset name or architecture JSON (default procedural-student)"
    )
    d.add_argument(
        "--losses",
        default="fd=2000,icl=1,crd=1",
        help="name=weight,... of clip crd fd mfd gd icl afd affinity",
    )
    d.add_argument(
        "--inherit", action="store_true", help="TinyCLIP manual weight inheritance from the teacher"
    )
    d.add_argument("--mask-ratio", type=float, default=0.75, help="MFD patch drop ratio")
    d.add_argument("--affinity-alpha", type=float, default=1.0)
    d.add_argument("--affinity-scale", default="50", help="a number or 'teacher'")
    d.add_argument(
        "--clipkd-variant", choices=("paper", "released"), default="paper",
        help="ICL/AFD/GD as in CLIP-KD's paper or its released code (docs/distill.md: weights)",
    )  # fmt: skip
    _auto_inherit_args(d)
    _common(d)
    t = sub.add_parser("train-teacher", help="train a CLIP from scratch (default: procedural data)",
                       prog="edgeclip train-teacher", allow_abbrev=False)  # fmt: skip
    t.add_argument("--arch", default=PROCEDURAL_TEACHER, help="preset name or architecture JSON")
    _common(t)
    t.set_defaults(
        steps=TEACHER_STEPS,
        batch_size=TEACHER_BATCH,
        lr=TEACHER_LR,
        warmup=TEACHER_WARMUP,
        eval_every=100,
    )
    return ap


def _config(args, **kw):
    from .trainer import TrainConfig

    return TrainConfig(
        out=args.out, data=args.data, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, warmup=args.warmup, grad_clip=args.grad_clip, seed=args.seed,
        procedural_size=args.procedural_size, eval_every=args.eval_every, eval_held_out=args.eval_held_out,
        checkpoint_every=args.checkpoint_every, resume=args.resume, stop_after=args.stop_after, progress=not args.no_progress,
        dist_timeout=args.dist_timeout, teacher_cache_dir=getattr(args, "teacher_cache", None), **kw,
    )  # fmt: skip


def resolve_teacher(teacher: str | None, progress: bool = True) -> str | None:
    """A teacher folder; ``procedural-teacher`` is trained once (≈ minutes) and then reused."""
    if teacher != PROCEDURAL_TEACHER:
        if teacher is not None:
            check_model_dir(teacher, "--teacher")
        return teacher
    from .trainer import TrainConfig, train

    out = procedural_teacher_dir()
    if not (out / "config.json").is_file():  # written last: an unfinished teacher has none
        print(
            f"training the procedural teacher into {out} (once; later runs reuse it)",
            file=sys.stderr,
        )
        r = teacher_recipe()
        train(TrainConfig(student=PROCEDURAL_TEACHER, out=str(out), steps=r["steps"], batch_size=r["batch_size"],
                          lr=r["lr"], warmup=r["warmup"], procedural_size=r["procedural_size"], seed=r["seed"],
                          eval_every=100, checkpoint_every=100, resume=(out / "train_state.pt").is_file(),
                          progress=progress))  # fmt: skip
    return str(out)


def _affinity_scale(text: str) -> float | str:
    if text == "teacher":
        return text
    try:
        return float(text)
    except ValueError:
        raise InputError(f"--affinity-scale must be a number > 0 or 'teacher', got {text!r}") from None


def _fill_distill_defaults(args) -> None:
    """Refuse flags this run would ignore, then give the rest their defaults (``TrainConfig``'s)."""
    from .trainer import TrainConfig

    if args.auto_inherit and args.student is not None:
        raise InputError(
            f"--student {args.student!r} has no effect with --auto-inherit (the student is the pruned "
            "teacher, sized by --target-sparsity); drop one of them"
        )
    given = [flag for flag, name in AUTO_ONLY if getattr(args, name) is not None]
    if given and not args.auto_inherit:
        raise InputError(f"{given[0]} only acts with --auto-inherit; add --auto-inherit or drop {given[0]}")
    defaults = TrainConfig()
    for _, name in AUTO_ONLY:
        if getattr(args, name) is None:
            setattr(args, name, getattr(defaults, name))
    args.student = args.student or "procedural-student"


def _distill_config(args, teacher: str | None):
    return _config(
        args, student=args.student, teacher=teacher, losses=args.losses, inherit=args.inherit,
        mask_ratio=args.mask_ratio, affinity_alpha=args.affinity_alpha, affinity_scale=_affinity_scale(args.affinity_scale),
        clipkd_variant=args.clipkd_variant, auto_inherit=args.auto_inherit,
        target_sparsity=args.target_sparsity, prune_step=args.prune_step,
        sparsity_warmup=args.sparsity_warmup, mask_lr=args.mask_lr, lambda_lr=args.lambda_lr,
        mask_kinds=args.mask_kinds, prune_layout=args.prune_layout,
        sparsity_penalty=args.sparsity_penalty, start_from=args.start_from,
    )  # fmt: skip


def _run(args) -> dict:
    """Check every setting, then train (the procedural teacher first, when it is not cached)."""
    from .runstate import validate
    from .trainer import train

    if args.command == "train-teacher":
        return train(_config(args, student=args.arch))
    _fill_distill_defaults(args)
    validate(_distill_config(args, args.teacher))  # before a teacher is trained or read
    teacher = resolve_teacher(args.teacher, progress=not args.no_progress)
    return train(_distill_config(args, teacher))


def _interrupted(args) -> int:
    state = Path(args.out) / "train_state.pt"
    kept = (f"the last checkpoint is {str(state)!r}: run the same command with --resume to continue"
            if state.is_file() else "no checkpoint was written (--checkpoint-every N keeps one)")  # fmt: skip
    if int(os.environ.get("RANK", 0)) == 0:  # under torchrun every process is interrupted: one line
        print(f"edgeclip {args.command}: interrupted; {kept}", file=sys.stderr)
    return 130  # 128 + SIGINT, as shells report


def main(argv: list[str] | None = None) -> int:
    """Run the distillation CLI; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in ("distill", "train-teacher", "-h", "--help"):
        argv = ["distill", *argv]  # `python -m edgeclip.distill --teacher ...` means distill
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 2
    from .dist import DistributedError

    try:
        result = _run(args)
    except DistributedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (EdgeclipError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _interrupted(args)
    from .dist import shutdown

    shutdown()  # only after success: tearing down a broken group can block
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(result, indent=2))
    return 0
