"""What one training run holds: models, losses, optimisers per phase, checkpoint state, pruning.

Phases: ``dense`` (a plain student or teacher), or for automatic inheritance ``masked`` (the
teacher's copy under L0 masks, steps ``[0, prune_step)``) then ``pruned`` (the dense pruned
student, steps ``[prune_step, steps)``, with a fresh optimiser and warm-up + cosine schedule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from edgeclip.errors import InputError

from . import args as arg_checks
from .auto_inherit import MaskedCLIP, check_settings, parse_mask_kinds
from .compat import check_pairing
from .losses import DistillLoss, parse_losses
from .students import (
    arch_of,
    build_model,
    clamp_log_scale_,
    encode_image,
    encode_text,
    inherit_weights,
    load_arch,
    load_model,
)


def lr_lambda(steps: int, warmup: float, decay: bool = True):
    """Linear warm-up over ``warmup`` · steps, then cosine to 0 (or flat when not ``decay``)."""
    warm = max(1, int(round(warmup * steps)))

    def f(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        if not decay:
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (s - warm) / max(1, steps - warm))))

    return f


def prune_step_of(cfg) -> int:
    """The step at which masks are folded in (default: half-way)."""
    return cfg.prune_step if cfg.prune_step is not None else max(1, cfg.steps // 2)


@dataclass
class Run:
    """The mutable state of a run (see module docstring for the phases)."""

    cfg: object
    device: torch.device
    student: object  # CLIPModel, or MaskedCLIP in the masked phase
    loss_mod: DistillLoss
    teacher: object | None
    phase: str = "dense"
    opt: torch.optim.Optimizer | None = None
    sched: object | None = None
    prune_report: dict | None = None
    params: list = field(default_factory=list)  # averaged over processes
    clipped: list = field(default_factory=list)  # gradient-norm clipped (not the λs)

    @property
    def model(self):
        """The ``CLIPModel`` being trained (inside the masks in the masked phase)."""
        return self.student.model if self.phase == "masked" else self.student

    def encoders(self, step: int):
        """``(encode_image(pixels, mask_ratio=0, noise=None), encode_text(ids))`` for this step."""
        if self.phase != "masked":
            return (lambda x, r=0.0, noise=None: encode_image(self.student, x, r, noise=noise),
                    lambda ids: encode_text(self.student, ids))  # fmt: skip
        z = self.student.sample(self.cfg.seed, step)
        return (lambda x, r=0.0, noise=None: self.student.encode_image(x, z, r, noise),
                lambda ids: self.student.encode_text(ids, z))  # fmt: skip

    def eval_model(self):
        """A dense model to evaluate: in the masked phase, a pruned copy under the current masks."""
        if self.phase == "masked":
            return self.student.prune(self.cfg.prune_layout)[0]
        return self.student


def validate(cfg) -> None:
    """Bad settings, refused before anything is built or read (the teacher included)."""
    if cfg.steps <= 0 or cfg.batch_size <= 1:
        raise InputError(
            f"--steps must be > 0 and --batch-size > 1 (got {cfg.steps}, {cfg.batch_size})"
        )
    arg_checks.check(cfg)
    parse_losses(cfg.losses)
    if not cfg.auto_inherit:
        load_arch(cfg.student)
    if cfg.inherit and not cfg.teacher:
        raise InputError("--inherit needs --teacher")
    if cfg.start_from and not cfg.auto_inherit:
        raise InputError("--start-from is the starting point of --auto-inherit; add --auto-inherit")
    if cfg.auto_inherit:
        if not cfg.teacher:
            raise InputError("--auto-inherit needs --teacher (the masks start from its copy)")
        if cfg.inherit:
            raise InputError("--inherit and --auto-inherit exclude each other; pick one")
        check_settings(
            cfg.target_sparsity,
            prune_step_of(cfg),
            cfg.steps,
            cfg.prune_layout,
            cfg.sparsity_penalty,
        )
        parse_mask_kinds(cfg.mask_kinds)


def build(cfg, device: torch.device) -> tuple[Run, dict]:
    """Models, loss and the first phase's optimiser; returns ``(run, student architecture)``."""
    weights = parse_losses(cfg.losses)
    torch.manual_seed(cfg.seed)
    teacher = None
    if cfg.teacher:
        teacher = load_model(cfg.teacher, "--teacher").to(device).eval().requires_grad_(False)
    if cfg.auto_inherit:
        # The masks start on the teacher's weights, or on an earlier stage's pruned student.
        src = ("--start-from", cfg.start_from) if cfg.start_from else ("--teacher", cfg.teacher)
        student = load_model(src[1], src[0]).to(device).train()
        arch = arch_of(student)
        check_pairing(arch_of(teacher), arch, cfg.teacher)
        warm = int(round(cfg.sparsity_warmup * prune_step_of(cfg)))
        kinds = parse_mask_kinds(cfg.mask_kinds)
        student = MaskedCLIP(student, kinds, cfg.target_sparsity, warm, cfg.sparsity_penalty)
        phase = "masked"
    else:
        arch = load_arch(cfg.student)
        student = build_model(arch).to(device).train()
        phase = "dense"
        if teacher is not None:
            check_pairing(arch_of(teacher), arch, cfg.teacher)
        if cfg.inherit:
            inherit_weights(student, teacher)
    t_dim = teacher.config.projection_dim if teacher is not None else None
    loss_mod = DistillLoss(
        weights, arch["embed_dim"], t_dim, affinity_alpha=cfg.affinity_alpha,
        affinity_scale=cfg.affinity_scale, variant=cfg.clipkd_variant,
    ).to(device)  # fmt: skip
    run = Run(
        cfg=cfg, device=device, student=student, loss_mod=loss_mod, teacher=teacher, phase=phase
    )
    make_optimizer(run)
    return run, arch


def make_optimizer(run: Run) -> None:
    """AdamW (+ schedule) for the current phase; masks and λs get their own groups when masked."""
    cfg = run.cfg
    named = [(n, p) for n, p in [*run.model.named_parameters(), *run.loss_mod.named_parameters()]
             if p.requires_grad]  # fmt: skip
    decay = [p for _, p in named if p.ndim >= 2]
    no_decay = [p for _, p in named if p.ndim < 2]  # biases, norms, logit scales
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]  # fmt: skip
    run.params = [p for _, p in named]
    run.clipped = list(run.params)
    if run.phase == "masked":
        prune_at = prune_step_of(cfg)
        f = lr_lambda(prune_at, cfg.warmup, decay=False)  # weights adapt while masks shrink
        masks, lambdas = run.student.mask_parameters(), run.student.lambda_parameters()
        groups += [{"params": masks, "weight_decay": 0.0, "lr": cfg.mask_lr},
                   {"params": lambdas, "weight_decay": 0.0, "lr": cfg.lambda_lr, "maximize": True}]  # fmt: skip
        run.params += masks + lambdas
        run.clipped += masks
        lambdas_f = [f, f, lambda s: 1.0, lambda s: 1.0]
    elif run.phase == "pruned":
        remaining = cfg.steps - prune_step_of(cfg)
        lambdas_f = [lr_lambda(max(1, remaining), cfg.warmup)] * 2
    else:
        lambdas_f = [lr_lambda(cfg.steps, cfg.warmup)] * 2
    run.opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    run.sched = torch.optim.lr_scheduler.LambdaLR(run.opt, lambdas_f)


def clamp_after_step(run: Run) -> None:
    """Caps applied to parameters in place after each optimiser step (never after exp)."""
    clamp_log_scale_(run.model.logit_scale)
    run.loss_mod.clamp_scales_()
    if run.phase == "masked":
        run.student.clamp_()


def prune_now(run: Run) -> None:
    """Fold the masks in: the pruned dense student, a fresh optimiser and schedule."""
    pruned, report = run.student.prune(run.cfg.prune_layout)
    run.student, run.phase, run.prune_report = pruned.train(), "pruned", report
    make_optimizer(run)


def checkpoint_state(run: Run) -> dict:
    """Everything of the run's models and optimiser an exact resume needs."""
    state = {"phase": run.phase, "student": run.student.state_dict(), "loss": run.loss_mod.state_dict(),
             "optimizer": run.opt.state_dict(), "scheduler": run.sched.state_dict()}  # fmt: skip
    if run.phase == "pruned":
        state["pruned_arch"] = arch_of(run.student)
        state["prune_report"] = run.prune_report
    return state


def restore(run: Run, state: dict) -> None:
    """Load ``checkpoint_state`` output; a pruned checkpoint rebuilds the pruned student first."""
    if state.get("phase", "dense") == "pruned" and run.phase == "masked":
        run.student = build_model(load_arch(state["pruned_arch"])).to(run.device).train()
        run.phase, run.prune_report = "pruned", state["prune_report"]
        make_optimizer(run)
    if state.get("phase", "dense") != run.phase:
        raise InputError(
            f"checkpoint phase {state.get('phase')!r} does not fit this run ({run.phase!r})"
        )
    run.student.load_state_dict(state["student"])
    run.loss_mod.load_state_dict(state["loss"])
    run.opt.load_state_dict(state["optimizer"])
    run.sched.load_state_dict(state["scheduler"])
