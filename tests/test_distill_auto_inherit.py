"""Automatic weight inheritance: hard-concrete statistics, masked forward vs pruned model, sizes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

from edgeclip.distill import l0  # noqa: E402
from edgeclip.distill import students as S  # noqa: E402
from edgeclip.distill.auto_inherit import MaskedCLIP  # noqa: E402
from edgeclip.distill.prune import param_counts, prune_clip  # noqa: E402
from edgeclip.tokenizer import tokenize  # noqa: E402

ALL_KINDS = ("hidden", "heads", "mlp", "layers")


def _inputs():
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(3, 3, 32, 32, generator=g)
    ids = torch.from_numpy(tokenize(["a red circle", "a photo of a small blue star", "x"], 24))
    return pixels, ids


def _teacher(seed=3):
    """micro-teacher with every parameter random and non-zero (biases and norms included)."""
    m = S.build_model(S.load_arch("micro-teacher"), seed=seed).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.ndim == 1 else 0.0))
    return m


def test_keep_probability_is_the_monte_carlo_frequency():
    log_alpha = torch.linspace(-4.0, 4.0, 9)
    g = torch.Generator().manual_seed(0)
    n = 40_000
    draws = l0.sample_hard_concrete(log_alpha.expand(n, -1), g)  # n independent draws per unit
    assert ((draws >= 0) & (draws <= 1)).all()
    for freq, p in (
        (draws > 0, l0.keep_probability(log_alpha)),
        (draws == 1, l0.one_probability(log_alpha)),
    ):
        f = freq.double().mean(0)
        sigma = (p.double() * (1 - p.double()) / n).sqrt()
        assert ((f - p.double()).abs() <= 4 * sigma + 1e-4).all(), (f, p)
    # TinyCLIP's starting point: every mask open (P > 0.99), the clamp floor nearly closed
    assert l0.keep_probability(torch.tensor(l0.LOG_ALPHA_MAX)) > 0.99
    assert l0.keep_probability(torch.tensor(l0.LOG_ALPHA_MIN)) < 0.05


def test_deterministic_mask_keeps_the_expected_number_of_best_units():
    la = torch.tensor([[3.0, -2.0, 1.0, -4.0], [4.0, 4.0, 4.0, 4.0]])
    m = l0.deterministic_mask(la)
    want_kept = l0.keep_probability(la).sum(-1).round()
    assert torch.equal(m.sum(-1), want_kept)
    assert m[0].tolist() == [1.0, 0.0, 1.0, 0.0]  # the two of largest log α
    assert l0.deterministic_mask(torch.tensor([3.0, -3.0]), gates=True).tolist() == [1.0, 0.0]


def test_masked_forward_with_all_masks_open_is_the_model():
    m = _teacher()
    mc = MaskedCLIP(m, ALL_KINDS, 0.5, 10)
    ones = {t: {k: torch.ones_like(v) for k, v in z.items()} for t, z in mc.deterministic().items()}
    pixels, ids = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            mc.encode_image(pixels, ones), S.encode_image(m, pixels), rtol=0, atol=1e-5
        )
        torch.testing.assert_close(
            mc.encode_text(ids, ones), S.encode_text(m, ids), rtol=0, atol=1e-5
        )


@pytest.mark.parametrize("layout", ["per-layer", "uniform"])
def test_binary_masks_give_what_the_pruned_dense_model_gives(layout):
    m = _teacher()
    mc = MaskedCLIP(m, ALL_KINDS, 0.5, 10)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for masks in mc.masks.values():
            for p in masks.log_alpha.values():
                p.copy_(torch.randn(p.shape, generator=g) * 3)
        masks = mc.masks["vision"]
        masks.log_alpha["ffn"][1] = -9.0  # a whole MLP block gone
        masks.log_alpha["heads"][2] = -9.0  # every head of a layer gone
    plans = mc.plans(layout)
    z = {t: plans[t][0] for t in plans}
    pruned, report = mc.prune(layout)
    pruned.eval()
    pixels, ids = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            S.encode_image(pruned, pixels), mc.encode_image(pixels, z), rtol=0, atol=1e-5
        )
        torch.testing.assert_close(
            S.encode_text(pruned, ids), mc.encode_text(ids, z), rtol=0, atol=1e-5
        )
    assert report["vision"]["mlp_per_layer"][1] == 0  # the gate removes the block in both layouts
    assert param_counts(pruned)["total"] < param_counts(m)["total"]
    heads = report["vision"]["heads_per_layer"]
    if layout == "uniform":  # the same widths in every layer that keeps its block
        assert (
            len({h for h in heads if h}) == 1
            and len({k for k in report["vision"]["mlp_per_layer"] if k}) == 1
        )
    else:
        assert heads[2] == 0


def _uniform_masks(arch, tower, hidden, heads, mlp, g):
    w, n_layers, h, m = (arch[f"{tower}_{k}"] for k in ("width", "layers", "heads", "mlp"))

    def pick(n, k):
        z = torch.zeros(n)
        z[torch.randperm(n, generator=g)[:k]] = 1.0
        return z

    return {"hidden": pick(w, hidden), "heads": torch.stack([pick(h, heads) for _ in range(n_layers)]),
            "mlp": torch.stack([pick(m, mlp) for _ in range(n_layers)]),
            "mha": torch.ones(n_layers), "ffn": torch.ones(n_layers)}  # fmt: skip


def test_expected_size_of_binary_masks_is_the_pruned_parameter_count():
    m = _teacher()
    arch = S.arch_of(m)
    g = torch.Generator().manual_seed(2)
    # heads x head width == kept hidden width: a CLIPConfig holds it with no padding at all
    zv = _uniform_masks(arch, "vision", 32, 2, 100, g)
    zt = _uniform_masks(arch, "text", 32, 2, 80, g)
    pruned, report = prune_clip(
        m, {"vision": (zv, []), "text": (zt, [])}, {"vision": 16, "text": 16}
    )
    counts = param_counts(pruned)
    expected_layers = l0.layer_params(zv, 16) + l0.layer_params(zt, 16)
    assert int(expected_layers) == counts["layers"]
    outer = l0.outer_params(32, "vision", arch) + l0.outer_params(32, "text", arch) + 1
    assert int(expected_layers) + outer == counts["total"] == report["params"]["compact"]


def test_expected_size_counts_the_unpadded_per_layer_widths():
    m = _teacher()
    mc = MaskedCLIP(m, ALL_KINDS, 0.5, 10)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for masks in mc.masks.values():
            for p in masks.log_alpha.values():
                p.copy_(torch.randn(p.shape, generator=g) * 3)
    plans = mc.plans("per-layer")
    pruned, report = mc.prune("per-layer")
    # every real weight of the source is non-zero; padding is exactly zero
    nonzero = sum(
        int((p != 0).sum()) for n, p in pruned.named_parameters() if ".encoder.layers." in n
    )
    expected = sum(int(l0.layer_params(plans[t][0], mc.masks[t].head_dim)) for t in plans)
    assert (
        nonzero
        == expected
        == report["vision"]["layer_params_compact"] + report["text"]["layer_params_compact"]
    )
    assert report["params"]["exported"]["layers"] >= expected  # the padding costs this much
