"""Distillation losses: CLIP-KD's six methods and TinyCLIP's affinity mimicking.

Every loss is a small pure function of embeddings (torch tensors); ``DistillLoss`` combines
them by name and weight and owns the few learnable pieces (student→teacher projections, the
ICL and AFD scales, the AFD fusion layers).

Conventions: ``s_img``/``s_txt`` are the student's projected, *unnormalised* embeddings
(student embed dim); ``t_img``/``t_txt`` are the frozen teacher's *L2-normalised* embeddings;
``scale`` arguments are logit multipliers (exp of a log-scale parameter), never log-scales.

Sources: CLIP-KD, Yang et al., "CLIP-KD: An Empirical Study of CLIP Model Distillation",
CVPR 2024 (arXiv 2307.12732), code winycg/CLIP-KD ``src/open_clip/loss.py``; TinyCLIP, Wu et
al., ICCV 2023, code wkcn/TinyCLIP ``src/open_clip/loss.py``. Where the released CLIP-KD code
differs from its paper (GD's temperature, ICL's and AFD's un-exponentiated scale) both are
offered: ``DistillLoss(variant="paper")`` (default) or ``variant="released"``. MFD follows the
paper (the released code's MFD silently computes FD, see ``docs/distill.md``).

Weights that go with each formula (CLIP-KD's recipe is crd=1, icl=1, fd=2000):

* ``fd``/``mfd``: 2000 in both variants. FD is scaled to the embedding width
  (``fd_loss(reference_dim=512)``), so 2000 pulls as hard at 128 dims as at CLIP-KD's 512.
* ``icl``/``afd``: 1 in both. The released scale is the raw parameter (≈ 2.66 at start,
  softer logits) instead of ``exp`` of it (≈ 14.3).
* ``gd``: the released code divides by the logit scale where the paper multiplies, and its
  softmax at τ = scale is nearly uniform. Measured ratio paper / released of the loss value:
  1.3–1.7e8 at scales of 100 (CLIP-KD's setting, where its weight 1e8 ≈ paper weight 1) and
  6.5e4 at scales of 14–18 (the procedural teachers, where 1e8 ≈ paper weight 1.5e3).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edgeclip.errors import InputError

LOSS_NAMES = ("clip", "crd", "fd", "mfd", "gd", "icl", "afd", "affinity")
VARIANTS = ("paper", "released")
# CLIP-KD tuned FD's weight (2000) on 512-dim embeddings with an element-mean MSE.
FD_REFERENCE_DIM = 512
# Losses that compare student and teacher embeddings element-wise and so need equal widths.
_NEEDS_TEACHER_DIM = ("fd", "mfd", "gd", "icl", "afd")
MAX_LOGIT_SCALE = 100.0


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


def _targets(n: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n, device=device)


def clip_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Task loss, symmetric InfoNCE (CLIP; CLIP-KD eq. 1).

    ``L = ½ [CE(s·Î·T̂ᵀ, I) + CE(s·T̂·Îᵀ, I)]`` with Î, T̂ the L2-normalised embeddings, ``s``
    the student's learnable logit scale and the diagonal as targets.
    """
    i, t = _normalize(img), _normalize(txt)
    logits = scale * i @ t.T
    y = _targets(len(i), i.device)
    return 0.5 * (F.cross_entropy(logits, y) + F.cross_entropy(logits.T, y))


def crd_loss(
    s_img: torch.Tensor,
    s_txt: torch.Tensor,
    s_scale: torch.Tensor,
    t_img: torch.Tensor,
    t_txt: torch.Tensor,
    t_scale: torch.Tensor | float,
) -> torch.Tensor:
    """Contrastive relational distillation (CLIP-KD §3.2 "CRD"; loss.py ``crd_loss``).

    ``L = ½ [KL(softmax(z_t) ‖ softmax(z_s)) + KL(softmax(z_tᵀ) ‖ softmax(z_sᵀ))]`` with
    ``z_s = s_s·Î_s·T̂_sᵀ`` (student logits on its own normalised embeddings, its own scale),
    ``z_t = s_t·I_t·T_tᵀ`` (teacher logits at the teacher's scale), temperature 1, KL summed over
    a row and averaged over rows (``batchmean``).
    """
    zs = s_scale * _normalize(s_img) @ _normalize(s_txt).T
    zt = t_scale * t_img @ t_txt.T
    i2t = F.kl_div(
        F.log_softmax(zs, 1), F.log_softmax(zt, 1), reduction="batchmean", log_target=True
    )
    t2i = F.kl_div(
        F.log_softmax(zs.T, 1), F.log_softmax(zt.T, 1), reduction="batchmean", log_target=True
    )
    return 0.5 * (i2t + t2i)


def _check_dims(s: torch.Tensor, t: torch.Tensor, what: str) -> None:
    if s.shape[-1] != t.shape[-1]:
        raise InputError(
            f"{what}: student embedding width {s.shape[-1]} != teacher width {t.shape[-1]}; "
            "project the student to the teacher's width first (DistillLoss(projections=True) does)"
        )


def fd_loss(
    s_img: torch.Tensor,
    s_txt: torch.Tensor,
    t_img: torch.Tensor,
    t_txt: torch.Tensor,
    reference_dim: int = FD_REFERENCE_DIM,
) -> torch.Tensor:
    """Feature distillation (CLIP-KD §3.2 "FD"; loss.py ``fd_loss``), scaled to the width.

    ``L = (D / D_ref) · [MSE(Î_s, I_t) + MSE(T̂_s, T_t)]`` with MSE the element mean over the
    (projected) L2-normalised student embeddings against the teacher's normalised ones, ``D``
    their width and ``D_ref`` = 512. Equivalently ``mean_rows ‖Î_s − I_t‖² / D_ref`` (+ text).
    At ``D = 512`` this is CLIP-KD's loss; at other widths the element mean would make a fixed
    weight ``D_ref/D`` times stronger (4× at 128 dims), the scaling keeps it CLIP-KD's pull.
    Used for MFD too, where ``s_img`` comes from a masked student forward.
    """
    _check_dims(s_img, t_img, "fd")
    _check_dims(s_txt, t_txt, "fd")
    width = s_img.shape[-1] / reference_dim
    return width * (F.mse_loss(_normalize(s_img), t_img) + F.mse_loss(_normalize(s_txt), t_txt))


def contrastive_grads(
    p: torch.Tensor, k: torch.Tensor, tau: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Analytic gradients of ``CE(p·kᵀ/τ, diag)`` (mean over rows) w.r.t. anchors and keys.

    ``∂L/∂p = (softmax(p·kᵀ/τ) − Y)·k / (τN)`` and ``∂L/∂k = (softmax(p·kᵀ/τ) − Y)ᵀ·p / (τN)``
    (CLIP-KD §3.2 "GD", eqs. 8–9). Differentiable in ``p`` and ``k``.
    """
    n = p.shape[0]
    prob = torch.softmax(p @ k.T / tau, dim=1)
    d = prob - torch.eye(n, dtype=p.dtype, device=p.device)
    return d @ k / (tau * n), d.T @ p / (tau * n)


def gd_loss(
    s_img: torch.Tensor,
    s_txt: torch.Tensor,
    s_scale: torch.Tensor,
    t_img: torch.Tensor,
    t_txt: torch.Tensor,
    t_scale: torch.Tensor | float,
    released: bool = False,
) -> torch.Tensor:
    """Gradient distillation (CLIP-KD §3.2 "GD"; loss.py ``gd_loss``).

    For the image→text contrastive loss (anchors Î, keys T̂) and the text→image one, the
    analytic gradients w.r.t. anchors and keys (``contrastive_grads``) of student and teacher
    are matched with MSE: ``L = Σ_{4 terms} MSE(g_s, g_t)``, each model at its own temperature
    ``τ = 1 / logit_scale`` (paper). ``released=True``: ``τ = logit_scale`` as the released
    code passes it, near-uniform softmaxes and ≈ 10⁸ smaller values (its weight is 1e8).
    """
    _check_dims(s_img, t_img, "gd")
    si, st = _normalize(s_img), _normalize(s_txt)
    tau_s = s_scale if released else 1.0 / s_scale
    tau_t = t_scale if released else 1.0 / t_scale
    loss = s_img.new_zeros(())
    for (sp, sk), (tp, tk) in (((si, st), (t_img, t_txt)), ((st, si), (t_txt, t_img))):
        gp_s, gk_s = contrastive_grads(sp, sk, tau_s)
        with torch.no_grad():
            gp_t, gk_t = contrastive_grads(tp, tk, tau_t)
        loss = loss + F.mse_loss(gp_s, gp_t) + F.mse_loss(gk_s, gk_t)
    return loss


def icl_loss(
    s_img: torch.Tensor,
    s_txt: torch.Tensor,
    t_img: torch.Tensor,
    t_txt: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor:
    """Interactive contrastive learning (CLIP-KD §3.2 "ICL"; loss.py ``icl_loss``).

    ``L = ½ [CE(s·Î_s·T_tᵀ, I) + CE(s·T̂_s·I_tᵀ, I)]``: student embeddings as anchors, teacher
    embeddings as keys, both directions. ``scale`` is the multiplier: exp of a learnable
    log-scale in the paper, the learnable parameter itself in the released code (see
    ``DistillLoss`` ``variant``).
    """
    _check_dims(s_img, t_img, "icl")
    si, st = _normalize(s_img), _normalize(s_txt)
    y = _targets(len(si), si.device)
    return 0.5 * (
        F.cross_entropy(scale * si @ t_txt.T, y) + F.cross_entropy(scale * st @ t_img.T, y)
    )


def afd_loss(
    s_img: torch.Tensor,
    s_txt: torch.Tensor,
    t_img: torch.Tensor,
    t_txt: torch.Tensor,
    fuse_img: nn.Module,
    fuse_txt: nn.Module,
    scale: torch.Tensor,
) -> torch.Tensor:
    """Augmented feature distillation (CLIP-KD §3.2 "AFD"; loss.py ``afd_loss``).

    ``F_I = norm(W_I [Î_s ‖ I_t])``, ``F_T = norm(W_T [T̂_s ‖ T_t])`` (learnable linear fusion
    encoders trained with the student) and ``L = clip_loss(F_I, F_T, s)`` with its own
    learnable scale (exp'd in the paper, raw in the released code, as for ICL).
    """
    _check_dims(s_img, t_img, "afd")
    fi = fuse_img(torch.cat([_normalize(s_img), t_img], dim=1))
    ft = fuse_txt(torch.cat([_normalize(s_txt), t_txt], dim=1))
    return clip_loss(fi, ft, scale)


def soft_ce(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """Soft-target cross-entropy ``mean_rows −Σ_j softmax(target)_j · log_softmax(logits)_j``."""
    return -(torch.softmax(target_logits, 1) * torch.log_softmax(logits, 1)).sum(1).mean()


def affinity_loss(
    s_img: torch.Tensor,
    s_txt: torch.Tensor,
    t_img: torch.Tensor,
    t_txt: torch.Tensor,
    s_scale: torch.Tensor | float = 50.0,
    t_scale: torch.Tensor | float = 50.0,
) -> torch.Tensor:
    """TinyCLIP affinity mimicking (Wu et al. ICCV 2023 §3.1; TinyCLIP loss.py ``DistillClipLoss``).

    ``L = ½ [softCE(s_s·Î_s·T̂_sᵀ, s_t·I_t·T_tᵀ) + softCE(s_s·T̂_s·Î_sᵀ, s_t·T_t·I_tᵀ)]``: the
    student's image→text and text→image affinities mimic the teacher's. TinyCLIP fixes both
    scales at 50; the α mix with the hard loss lives in ``DistillLoss``.
    """
    si, st = _normalize(s_img), _normalize(s_txt)
    zs = s_scale * si @ st.T
    zt = t_scale * t_img @ t_txt.T
    return 0.5 * (soft_ce(zs, zt) + soft_ce(zs.T, zt.T))


def parse_losses(spec: str) -> dict[str, float]:
    """Parse ``"fd=2000,icl=1,crd=1"`` into ``{name: weight}``.

    The task loss ``clip`` gets weight 1 unless the spec names it (``clip=0`` turns it off) or
    names ``affinity`` (whose α decides the hard-loss share, TinyCLIP-style).
    """
    out: dict[str, float] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip().lower()
        if name not in LOSS_NAMES:
            raise InputError(
                f"unknown loss {name!r} in --losses {spec!r}; known: {', '.join(LOSS_NAMES)}"
            )
        try:
            w = float(value) if sep else 1.0
        except ValueError:
            raise InputError(
                f"loss weight {value!r} for {name!r} is not a number; write e.g. {name}=1"
            ) from None
        if not math.isfinite(w) or w < 0:
            raise InputError(
                f"loss weight for {name!r} must be a finite number >= 0, got {value!r}"
            )
        if name in out:
            raise InputError(f"loss {name!r} appears twice in {spec!r}")
        out[name] = w
    if "clip" not in out and "affinity" not in out:
        out["clip"] = 1.0
    if not any(w > 0 for w in out.values()):
        raise InputError(
            f"--losses {spec!r} gives every loss weight 0: nothing would be trained; "
            "give one a weight > 0, e.g. clip=1"
        )
    return {k: v for k, v in out.items()}


class DistillLoss(nn.Module):
    """Weighted sum of named losses, with the learnable parts they need.

    ``weights``: ``{name: weight}`` (see ``parse_losses``). ``student_dim``/``teacher_dim``:
    embedding widths; when they differ and ``projections`` is true, learnable linear maps
    student→teacher (image and text) are created and trained with the student (CLIP-KD).
    ``affinity_alpha``: TinyCLIP's α (1 = pure soft); ``affinity_scale``: a number (TinyCLIP's
    50) or ``"teacher"`` (the teacher's own scale for the teacher's logits, the student's own
    scale for its logits). ``variant``: ``"paper"`` or ``"released"`` formulas of ICL, AFD and
    GD (module docstring: which weights go with which). Call ``clamp_scales_()`` after each
    optimiser step: it caps the learnable scales on the parameters themselves.
    """

    def __init__(
        self,
        weights: dict[str, float],
        student_dim: int,
        teacher_dim: int | None = None,
        *,
        projections: bool = True,
        affinity_alpha: float = 1.0,
        affinity_scale: float | str = 50.0,
        variant: str = "paper",
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise InputError(f"CLIP-KD variant must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant
        self.weights = {k: float(v) for k, v in weights.items() if v > 0}
        kd = [k for k in self.weights if k != "clip"]
        if kd and teacher_dim is None:
            raise InputError(f"losses {kd} need a teacher; pass --teacher or use --losses clip=1")
        if not 0.0 <= affinity_alpha <= 1.0:
            raise InputError(f"affinity alpha must be in [0, 1], got {affinity_alpha}")
        if isinstance(affinity_scale, str) and affinity_scale != "teacher":
            raise InputError(
                f"affinity scale must be a number or 'teacher', got {affinity_scale!r}"
            )
        self.affinity_alpha = affinity_alpha
        self.affinity_scale = affinity_scale
        need = [k for k in self.weights if k in _NEEDS_TEACHER_DIM]
        self.proj_img: nn.Module = nn.Identity()
        self.proj_txt: nn.Module = nn.Identity()
        if need and teacher_dim != student_dim:
            if not projections:
                raise InputError(
                    f"losses {need} compare embeddings but the student's width {student_dim} != the "
                    f"teacher's {teacher_dim}; enable projections or pick a student with embed dim {teacher_dim}"
                )
            self.proj_img = nn.Linear(student_dim, teacher_dim)
            self.proj_txt = nn.Linear(student_dim, teacher_dim)
        if "icl" in self.weights:
            self.icl_log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        if "afd" in self.weights:
            self.fuse_img = nn.Linear(2 * teacher_dim, teacher_dim)
            self.fuse_txt = nn.Linear(2 * teacher_dim, teacher_dim)
            self.afd_log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def _scale(self, param: torch.Tensor) -> torch.Tensor:
        # The released CLIP-KD code multiplies by the parameter itself (≈ 2.66 at init).
        return param if self.variant == "released" else param.exp()

    @torch.no_grad()
    def clamp_scales_(self) -> None:
        """Cap the ICL/AFD scales in place: the multiplier stays in [1, 100] (paper) / [0, 100]."""
        cap = MAX_LOGIT_SCALE if self.variant == "released" else math.log(MAX_LOGIT_SCALE)
        for name in ("icl_log_scale", "afd_log_scale"):
            if hasattr(self, name):
                getattr(self, name).clamp_(0.0, cap)

    def forward(
        self,
        s_img: torch.Tensor,
        s_txt: torch.Tensor,
        s_scale: torch.Tensor,
        t_img: torch.Tensor | None = None,
        t_txt: torch.Tensor | None = None,
        t_scale: torch.Tensor | float | None = None,
        s_img_masked: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return ``(total, {name: unweighted value})`` for one (global) batch."""
        w = self.weights
        parts: dict[str, torch.Tensor] = {}
        if "clip" in w:
            parts["clip"] = clip_loss(s_img, s_txt, s_scale)
        if len(parts) < len(w) and (t_img is None or t_txt is None or t_scale is None):
            raise InputError(
                "distillation losses need teacher embeddings and the teacher's logit scale"
            )
        pi, pt = self.proj_img(s_img), self.proj_txt(s_txt)
        if "crd" in w:
            parts["crd"] = crd_loss(s_img, s_txt, s_scale, t_img, t_txt, t_scale)
        if "fd" in w:
            parts["fd"] = fd_loss(pi, pt, t_img, t_txt)
        if "mfd" in w:
            if s_img_masked is None:
                raise InputError("mfd needs the student's masked-image embeddings (s_img_masked)")
            parts["mfd"] = fd_loss(self.proj_img(s_img_masked), pt, t_img, t_txt)
        if "gd" in w:
            released = self.variant == "released"
            parts["gd"] = gd_loss(pi, pt, s_scale, t_img, t_txt, t_scale, released=released)
        if "icl" in w:
            parts["icl"] = icl_loss(pi, pt, t_img, t_txt, self._scale(self.icl_log_scale))
        if "afd" in w:
            parts["afd"] = afd_loss(
                pi, pt, t_img, t_txt, self.fuse_img, self.fuse_txt, self._scale(self.afd_log_scale)
            )
        total = sum(w[k] * v for k, v in parts.items())
        if "affinity" in w:
            if self.affinity_scale == "teacher":
                ss, ts = s_scale, t_scale
            else:
                ss = ts = float(self.affinity_scale)
            a = self.affinity_alpha
            parts["affinity"] = affinity_loss(s_img, s_txt, t_img, t_txt, ss, ts)
            total = total + a * w["affinity"] * parts["affinity"]
            if a < 1.0:
                # TinyCLIP: (1 − α)·w·hard loss, the task InfoNCE at the student's own scale.
                hard = parts.get("clip", clip_loss(s_img, s_txt, s_scale))
                total = total + (1 - a) * w["affinity"] * hard
        return total, parts
