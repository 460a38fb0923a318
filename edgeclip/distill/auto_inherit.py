"""TinyCLIP's automatic weight inheritance: a copy of the teacher under learnable L0 masks.

``MaskedCLIP`` holds the model being pruned, one ``l0.TowerMasks`` per tower and the joint
``l0.SparsityTarget``. The trainer samples masks once per step (``sample``), runs the masked
towers (``encode_image``/``encode_text``), adds ``penalty`` to the distillation loss, and at
the prune step calls ``prune`` for the dense student that training continues with.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeclip.errors import InputError

from . import l0
from .masked import masked_image_features, masked_text_features
from .prune import LAYOUTS, plan_masks, prune_clip
from .students import arch_of

TOWERS = ("vision", "text")


def parse_mask_kinds(spec: str) -> tuple[str, ...]:
    """``"hidden,heads,mlp"`` → a tuple of known kinds (``l0.MASK_KINDS``), refusing others."""
    kinds = tuple(k.strip() for k in spec.split(",") if k.strip())
    bad = [k for k in kinds if k not in l0.MASK_KINDS]
    if bad or not kinds:
        raise InputError(f"--mask-kinds {spec!r}: choose from {', '.join(l0.MASK_KINDS)}")
    return kinds


def check_settings(target: float, prune_step: int, steps: int, layout: str, penalty: str) -> None:
    """Refuse settings auto-inheritance cannot honour (bad input, named)."""
    if not 0.0 < target < 1.0:
        raise InputError(f"--target-sparsity must be inside (0, 1), got {target}")
    if prune_step > steps:
        raise InputError(
            f"--prune-step {prune_step} is after the last step ({steps}); prune at or before it"
        )
    if prune_step < 1:
        raise InputError(f"--prune-step must be >= 1 (masks need steps to learn), got {prune_step}")
    if penalty not in l0.PENALTIES:
        raise InputError(
            f"--sparsity-penalty must be one of {', '.join(l0.PENALTIES)}, got {penalty!r}"
        )
    if layout not in LAYOUTS:
        raise InputError(f"--prune-layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")


class MaskedCLIP(nn.Module):
    """A ``CLIPModel`` under hard-concrete masks with a sparsity target (see module docstring)."""

    def __init__(
        self,
        model,
        kinds: tuple[str, ...],
        target: float,
        warmup_steps: int,
        penalty: str = "two-sided",
    ):
        super().__init__()
        self.model = model
        a = arch_of(model)
        self.masks = nn.ModuleDict({
            t: l0.TowerMasks(a[f"{t}_width"], a[f"{t}_layers"], a[f"{t}_heads"], a[f"{t}_mlp"], kinds)
            for t in TOWERS
        })  # fmt: skip
        self.sparsity = l0.SparsityTarget(target, warmup_steps, form=penalty)
        self.full_params = sum(m.full_params() for m in self.masks.values())

    def sample(self, seed: int, step: int) -> dict[str, dict[str, torch.Tensor]]:
        """This step's training masks; ``(seed, step)`` fix them, equal on every process and on resume."""
        g = torch.Generator().manual_seed(seed * 1_000_003 + step + 7)
        return {t: self.masks[t].sample(g) for t in TOWERS}

    def deterministic(self) -> dict[str, dict[str, torch.Tensor]]:
        return {t: self.masks[t].deterministic() for t in TOWERS}

    def encode_image(self, pixels, z, mask_ratio: float = 0.0, noise=None) -> torch.Tensor:
        return masked_image_features(self.model, pixels, z["vision"], mask_ratio, noise)

    def encode_text(self, ids, z) -> torch.Tensor:
        return masked_text_features(self.model, ids, z["text"])

    def expected_sparsity(self) -> torch.Tensor:
        """1 − expected kept / all parameters of the encoder layers of both towers (differentiable)."""
        return 1.0 - sum(m.expected_params() for m in self.masks.values()) / self.full_params

    def penalty(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Lagrangian term at ``step`` and what to log (expected and target sparsity, λs)."""
        s = self.expected_sparsity()
        loss = self.sparsity.penalty(s, step)
        info = {"expected_sparsity": float(s.detach()), "target_sparsity": self.sparsity.target(step),
                "lambda_1": float(self.sparsity.lambda_1.detach()), "lambda_2": float(self.sparsity.lambda_2.detach())}  # fmt: skip
        return loss, info

    def mask_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.masks.values() for p in m.log_alpha.values()]

    def lambda_parameters(self) -> list[nn.Parameter]:
        return [self.sparsity.lambda_1, self.sparsity.lambda_2]

    def clamp_(self) -> None:
        for m in self.masks.values():
            m.clamp_()

    def plans(self, layout: str) -> dict:
        return {t: plan_masks(self.masks[t], layout) for t in TOWERS}

    @torch.no_grad()
    def prune(self, layout: str):
        """``(dense CLIPModel, report)`` with this model's masks folded in (``prune.prune_clip``)."""
        head_dims = {t: self.masks[t].head_dim for t in TOWERS}
        pruned, report = prune_clip(self.model, self.plans(layout), head_dims)
        p = report["params"]
        report["layout"] = layout
        report["sparsity"] = {
            "expected_at_prune": float(self.expected_sparsity()),
            "layers_compact": 1 - sum(report[t]["layer_params_compact"] for t in TOWERS) / self.full_params,
            "layers_exported": 1 - p["exported"]["layers"] / p["original"]["layers"],
        }  # fmt: skip
        return pruned.train(self.model.training), report
