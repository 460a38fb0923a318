"""Hard-concrete L0 masks (Louizos et al. 2018, as CoFi and TinyCLIP use them) for one CLIP tower.

A unit (a hidden dimension, an attention head, an MLP neuron, a whole attention or MLP block)
carries a learnable ``log_alpha``. In training its mask is sampled:

    u ~ U(ε, 1 − ε),  s = sigmoid((log u − log(1 − u) + log α) / β),
    z = clamp(s · (ζ − γ) + γ, 0, 1)        β = 2/3, (γ, ζ) = (−0.1, 1.1)

so z is exactly 0 or 1 with positive probability, and its keep probability is analytic:

    P(z > 0) = sigmoid(log α − β · log(−γ / ζ)).

Expected parameter counts follow from those probabilities (``layer_params``); with 0/1
inputs the same formula is the exact count of the pruned model. Sources: TinyCLIP
(microsoft/Cream ``TinyCLIP/src/open_clip/l0module.py``), CoFi (princeton-nlp/CoFiPruning).
"""

from __future__ import annotations

import math

import torch
from torch import nn

LIMIT_LO, LIMIT_HI, BETA, EPS = -0.1, 1.1, 2.0 / 3.0, 1e-6
# TinyCLIP starts every mask open (log α = 10) and clamps log α to [ln 0.01, ln 100] after each step.
LOG_ALPHA_INIT, LOG_ALPHA_MIN, LOG_ALPHA_MAX = 10.0, math.log(0.01), math.log(100.0)
MASK_KINDS = ("hidden", "heads", "mlp", "layers")


def keep_probability(log_alpha: torch.Tensor) -> torch.Tensor:
    """``P(z > 0) = 1 − CDF_z(0) = sigmoid(log α − β log(−γ/ζ))`` (differentiable)."""
    return torch.sigmoid(log_alpha - BETA * math.log(-LIMIT_LO / LIMIT_HI))


def one_probability(log_alpha: torch.Tensor) -> torch.Tensor:
    """``P(z = 1) = sigmoid(log α − β log((1 − γ)/(ζ − 1)))``: the stretched sample reaches 1."""
    return torch.sigmoid(log_alpha - BETA * math.log((1 - LIMIT_LO) / (LIMIT_HI - 1)))


def sample_hard_concrete(log_alpha: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw of the stretched, clamped hard-concrete mask for every unit (differentiable in log α).

    ``generator`` decides ``u`` (on the CPU), so every process of a run draws the same masks.
    """
    u = torch.rand(log_alpha.shape, generator=generator, dtype=torch.float32)
    u = (u * (1 - 2 * EPS) + EPS).to(log_alpha.device)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / BETA)
    return (s * (LIMIT_HI - LIMIT_LO) + LIMIT_LO).clamp(0.0, 1.0)


def deterministic_mask(log_alpha: torch.Tensor, gates: bool = False) -> torch.Tensor:
    """0/1 mask keeping, per row, the ``round(Σ P(z > 0))`` units of largest log α (CoFi's rule).

    Rows are the last axis (a layer's heads, a layer's neurons, the hidden width). ``gates``:
    every entry is a group of its own (block gates ``mha``/``ffn``): kept when P(z > 0) > ½.
    """
    la = log_alpha.detach()
    if gates:
        return (keep_probability(la) > 0.5).float()
    keep = keep_probability(la).sum(-1, keepdim=True).round()
    order = la.argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(la.shape[-1], device=la.device).expand_as(order))
    return (rank < keep).float()


def _any_kept(q: torch.Tensor) -> torch.Tensor:
    """P(at least one unit of a row is kept) = 1 − Π (1 − q); 1[any] for 0/1 inputs."""
    return 1.0 - torch.prod(1.0 - q, dim=-1)


def layer_params(q: dict[str, torch.Tensor], head_dim: int) -> torch.Tensor:
    """Expected parameters inside the encoder layers of one tower, from keep probabilities ``q``.

    ``q``: ``hidden`` [W], ``heads`` [L, H], ``mlp`` [L, M], ``mha``/``ffn`` [L]. Per layer, with
    n kept heads of width d, k kept neurons and W kept hidden dimensions (independent masks):

    * attention: ``q_mha · (4·d·E[n]·E[W] + 3·d·E[n]) + 3·E[W]·q_mha·P(n > 0)``
      (q, k, v, out weights; q, k, v biases; out bias and LayerNorm 1 while a head is left);
    * MLP: ``q_ffn · (2·E[k]·E[W] + E[k]) + 3·E[W]·q_ffn·P(k > 0)``
      (fc1, fc2 weights; fc1 bias; fc2 bias and LayerNorm 2 while a neuron is left).

    With 0/1 masks this is exactly the pruned layers' parameter count.
    """
    ew = q["hidden"].sum()
    heads, mlp = q["heads"], q["mlp"]
    en, ek = heads.sum(-1), mlp.sum(-1)
    attn = q["mha"] * (4 * head_dim * en * ew + 3 * head_dim * en + 3 * ew * _any_kept(heads))
    ffn = q["ffn"] * (2 * ek * ew + ek + 3 * ew * _any_kept(mlp))
    return (attn + ffn).sum()


def outer_params(w_kept: torch.Tensor | float, tower: str, arch: dict) -> torch.Tensor | float:
    """Parameters outside the layers of a tower with ``w_kept`` hidden dimensions (linear in it).

    Vision: patch conv (3·p²), class and position embeddings, pre/post LayerNorms, projection.
    Text: token and position embeddings, final LayerNorm, projection.
    """
    e = arch["embed_dim"]
    if tower == "vision":
        n_pos = (arch["image_size"] // arch["patch_size"]) ** 2 + 1
        per_dim = 3 * arch["patch_size"] ** 2 + 1 + n_pos + 4 + e
    else:
        per_dim = arch["vocab_size"] + arch["context_length"] + 2 + e
    return per_dim * w_kept


class TowerMasks(nn.Module):
    """The log α parameters of one tower's masks (``kinds`` ⊆ hidden, heads, mlp, layers).

    Shapes: ``hidden`` [W] (shared by every layer), ``heads`` [L, H], ``mlp`` [L, M], and with
    ``layers`` one gate per attention block ``mha`` [L] and per MLP block ``ffn`` [L].
    Kinds left out are fixed at 1.
    """

    def __init__(self, width: int, layers: int, heads: int, mlp: int, kinds: tuple[str, ...]):
        super().__init__()
        self.width, self.layers, self.heads, self.mlp = width, layers, heads, mlp
        self.head_dim = width // heads
        self.kinds = tuple(kinds)
        self._shapes = {"hidden": (width,), "heads": (layers, heads), "mlp": (layers, mlp),
                        "mha": (layers,), "ffn": (layers,)}  # fmt: skip
        names = [k for k in ("hidden", "heads", "mlp") if k in kinds]
        names += ["mha", "ffn"] if "layers" in kinds else []
        self.log_alpha = nn.ParameterDict(
            {n: nn.Parameter(torch.full(self._shapes[n], LOG_ALPHA_INIT)) for n in names}
        )

    def _per_kind(self, fn) -> dict[str, torch.Tensor]:
        """``fn(log_alpha, name)`` for each learnable kind, ones for the kinds left out."""
        dev = next(iter(self.log_alpha.values())).device
        return {n: fn(self.log_alpha[n], n) if n in self.log_alpha else torch.ones(s, device=dev)
                for n, s in self._shapes.items()}  # fmt: skip

    def sample(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Training masks: one hard-concrete draw per unit (the whole batch shares it)."""
        return self._per_kind(lambda la, _: sample_hard_concrete(la, generator))

    def keep_probs(self) -> dict[str, torch.Tensor]:
        return self._per_kind(lambda la, _: keep_probability(la))

    def deterministic(self) -> dict[str, torch.Tensor]:
        """Evaluation/pruning masks (0/1), ``deterministic_mask`` per row."""
        return self._per_kind(lambda la, n: deterministic_mask(la, gates=n in ("mha", "ffn")))

    def full_params(self) -> float:
        ones = {n: torch.ones(s) for n, s in self._shapes.items()}
        return float(layer_params(ones, self.head_dim))

    def expected_params(self) -> torch.Tensor:
        return layer_params(self.keep_probs(), self.head_dim)

    @torch.no_grad()
    def clamp_(self) -> None:
        for p in self.log_alpha.values():
            p.clamp_(LOG_ALPHA_MIN, LOG_ALPHA_MAX)


PENALTIES = ("two-sided", "one-sided")


class SparsityTarget(nn.Module):
    """Target schedule and Lagrangian penalty (CoFi/TinyCLIP), joint over the masked towers.

    ``target(step) = start + (final − start) · min(1, step / warmup)``; with ŝ the expected
    sparsity of the layers and g = t − ŝ:

    * ``two-sided`` (default): ``λ₁ · |g| + λ₂ · g²``, pulls ŝ to t from both sides (the
      variant left commented out in TinyCLIP's ``l0module.py``);
    * ``one-sided``: ``λ₁ · max(0, g) + λ₂ · max(0, g)²``, TinyCLIP's released form; nothing
      pulls ŝ back once it overshoots (measured in docs/distill.md).

    λ₁, λ₂ start at 10 and are trained by gradient *ascent* (the trainer puts them in a
    ``maximize=True`` parameter group), so they grow while the target is not met.
    """

    def __init__(
        self, final: float, warmup_steps: int, start: float = 0.0, form: str = "two-sided"
    ):
        super().__init__()
        if form not in PENALTIES:
            raise ValueError(f"sparsity penalty must be one of {PENALTIES}, got {form!r}")
        self.final, self.start, self.warmup_steps = float(final), float(start), int(warmup_steps)
        self.form = form
        self.lambda_1 = nn.Parameter(torch.tensor(10.0))
        self.lambda_2 = nn.Parameter(torch.tensor(10.0))

    def target(self, step: int) -> float:
        frac = 1.0 if self.warmup_steps <= 0 else min(1.0, step / self.warmup_steps)
        return self.start + (self.final - self.start) * frac

    def penalty(self, expected_sparsity: torch.Tensor, step: int) -> torch.Tensor:
        gap = self.target(step) - expected_sparsity
        gap = gap.abs() if self.form == "two-sided" else torch.clamp(gap, min=0.0)
        return self.lambda_1 * gap + self.lambda_2 * gap.square()
