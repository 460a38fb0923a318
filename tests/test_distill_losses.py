"""Distillation losses against independent computations (numpy / autograd)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgeclip.distill import losses as L  # noqa: E402
from edgeclip.errors import InputError  # noqa: E402


def _feats(n=5, d=8, seed=0, normalise=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return torch.nn.functional.normalize(x, dim=1) if normalise else x


def _np_norm(x):
    x = x.detach().numpy()
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _np_log_softmax(z):
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def _np_ce_diag(z):
    return -np.mean(np.diag(_np_log_softmax(z)))


def test_clip_loss_matches_numpy():
    i, t = _feats(seed=1), _feats(seed=2)
    z = 7.0 * _np_norm(i) @ _np_norm(t).T
    want = 0.5 * (_np_ce_diag(z) + _np_ce_diag(z.T))
    assert L.clip_loss(i, t, torch.tensor(7.0, dtype=torch.float64)).item() == pytest.approx(
        want, rel=1e-10
    )


def test_crd_equals_hand_kl():
    si, st = _feats(4, 6, 1), _feats(4, 6, 2)
    ti, tt = _feats(4, 10, 3, True), _feats(4, 10, 4, True)
    zs = 3.0 * _np_norm(si) @ _np_norm(st).T
    zt = 5.0 * ti.numpy() @ tt.numpy().T

    def kl(zt, zs):
        p, q = np.exp(_np_log_softmax(zt)), np.exp(_np_log_softmax(zs))
        return float(np.sum(p * np.log(p / q)) / len(p))

    want = 0.5 * (kl(zt, zs) + kl(zt.T, zs.T))
    got = L.crd_loss(si, st, torch.tensor(3.0, dtype=torch.float64), ti, tt, 5.0)
    assert got.item() == pytest.approx(want, rel=1e-10)
    # identical distributions → zero
    same = L.crd_loss(ti, tt, torch.tensor(5.0, dtype=torch.float64), ti, tt, 5.0)
    assert abs(same.item()) < 1e-12


def test_fd_is_mse_of_normalised_features_scaled_to_the_width():
    si, st = _feats(3, 4, 1), _feats(3, 4, 2)
    ti, tt = _feats(3, 4, 3, True), _feats(3, 4, 4, True)
    want = np.mean((_np_norm(si) - ti.numpy()) ** 2) + np.mean((_np_norm(st) - tt.numpy()) ** 2)
    # CLIP-KD's element mean at its 512 dims; at 4 dims, scaled by 4/512
    assert L.fd_loss(si, st, ti, tt, reference_dim=4).item() == pytest.approx(want, rel=1e-10)
    assert L.fd_loss(si, st, ti, tt).item() == pytest.approx(want * 4 / 512, rel=1e-10)
    # = per-row squared distance / 512, the same for any width
    rows = np.sum((_np_norm(si) - ti.numpy()) ** 2, 1).mean() + np.sum((_np_norm(st) - tt.numpy()) ** 2, 1).mean()
    assert L.fd_loss(si, st, ti, tt).item() == pytest.approx(rows / 512, rel=1e-10)
    with pytest.raises(InputError, match="teacher width"):
        L.fd_loss(_feats(3, 5), st, ti, tt)


@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_gd_analytic_gradient_equals_autograd(tau):
    p = _feats(6, 5, 1, True).requires_grad_(True)
    k = _feats(6, 5, 2, True).requires_grad_(True)
    ce = torch.nn.functional.cross_entropy(p @ k.T / tau, torch.arange(6))
    gp, gk = torch.autograd.grad(ce, (p, k))
    ap, ak = L.contrastive_grads(p, k, tau)
    torch.testing.assert_close(ap, gp, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ak, gk, rtol=1e-10, atol=1e-12)


def test_gd_loss_uses_tau_one_over_scale():
    si, st = _feats(4, 5, 1), _feats(4, 5, 2)
    ti, tt = _feats(4, 5, 3, True), _feats(4, 5, 4, True)
    s_scale, t_scale = 20.0, 50.0

    def autograd_grads(a, b, scale):
        a = a.detach().clone().requires_grad_(True)
        b = b.detach().clone().requires_grad_(True)
        ce = torch.nn.functional.cross_entropy(scale * a @ b.T, torch.arange(len(a)))
        return torch.autograd.grad(ce, (a, b))

    sin = torch.nn.functional.normalize(si, dim=1)
    stn = torch.nn.functional.normalize(st, dim=1)
    want = 0.0
    for (sa, sb), (ta, tb) in (((sin, stn), (ti, tt)), ((stn, sin), (tt, ti))):
        gs, gt = autograd_grads(sa, sb, s_scale), autograd_grads(ta, tb, t_scale)
        want += sum(float(torch.mean((x - y) ** 2)) for x, y in zip(gs, gt))
    got = L.gd_loss(si, st, torch.tensor(s_scale, dtype=torch.float64), ti, tt, t_scale)
    assert got.item() == pytest.approx(want, rel=1e-9)


def test_icl_matches_numpy():
    si, st = _feats(4, 6, 1), _feats(4, 6, 2)
    ti, tt = _feats(4, 6, 3, True), _feats(4, 6, 4, True)
    s = 11.0
    want = 0.5 * (
        _np_ce_diag(s * _np_norm(si) @ tt.numpy().T) + _np_ce_diag(s * _np_norm(st) @ ti.numpy().T)
    )
    got = L.icl_loss(si, st, ti, tt, torch.tensor(s, dtype=torch.float64))
    assert got.item() == pytest.approx(want, rel=1e-10)


def test_affinity_equals_manual_soft_ce():
    si, st = _feats(5, 6, 1), _feats(5, 6, 2)
    ti, tt = _feats(5, 9, 3, True), _feats(5, 9, 4, True)
    zs = 50 * _np_norm(si) @ _np_norm(st).T
    zt = 50 * ti.numpy() @ tt.numpy().T

    def soft(zs, zt):
        p = np.exp(_np_log_softmax(zt))
        return float(-np.mean(np.sum(p * _np_log_softmax(zs), 1)))

    want = 0.5 * (soft(zs, zt) + soft(zs.T, zt.T))
    assert L.affinity_loss(si, st, ti, tt).item() == pytest.approx(want, rel=1e-10)


def test_afd_fuses_student_and_teacher():
    torch.manual_seed(0)
    si, st = _feats(4, 6, 1), _feats(4, 6, 2)
    ti, tt = _feats(4, 6, 3, True), _feats(4, 6, 4, True)
    fi, ft = torch.nn.Linear(12, 6).double(), torch.nn.Linear(12, 6).double()
    cat_i = np.concatenate([_np_norm(si), ti.numpy()], 1)
    cat_t = np.concatenate([_np_norm(st), tt.numpy()], 1)
    w_i, b_i = fi.weight.detach().numpy(), fi.bias.detach().numpy()
    w_t, b_t = ft.weight.detach().numpy(), ft.bias.detach().numpy()
    ei = cat_i @ w_i.T + b_i
    et = cat_t @ w_t.T + b_t
    ei /= np.linalg.norm(ei, axis=1, keepdims=True)
    et /= np.linalg.norm(et, axis=1, keepdims=True)
    z = 9.0 * ei @ et.T
    want = 0.5 * (_np_ce_diag(z) + _np_ce_diag(z.T))
    got = L.afd_loss(si, st, ti, tt, fi, ft, torch.tensor(9.0, dtype=torch.float64))
    assert got.item() == pytest.approx(want, rel=1e-10)


def test_parse_losses():
    assert L.parse_losses("fd=2000,icl=1,crd=1") == {
        "fd": 2000.0,
        "icl": 1.0,
        "crd": 1.0,
        "clip": 1.0,
    }
    assert L.parse_losses("clip=0, fd=2") == {"clip": 0.0, "fd": 2.0}
    assert L.parse_losses("affinity=1") == {"affinity": 1.0}
    with pytest.raises(InputError, match="unknown loss 'kd'"):
        L.parse_losses("kd=1")
    with pytest.raises(InputError, match=">= 0"):
        L.parse_losses("fd=-1")
    with pytest.raises(InputError, match="not a number"):
        L.parse_losses("fd=abc")


def test_composite_projections_and_weights():
    si, st = _feats(4, 6, 1).float(), _feats(4, 6, 2).float()
    ti, tt = _feats(4, 10, 3, True).float(), _feats(4, 10, 4, True).float()
    s_scale, t_scale = torch.tensor(10.0), torch.tensor(30.0)
    dl = L.DistillLoss({"clip": 1, "fd": 2000, "crd": 1, "icl": 1}, student_dim=6, teacher_dim=10)
    assert isinstance(dl.proj_img, torch.nn.Linear) and dl.proj_img.weight.shape == (10, 6)
    total, parts = dl(si, st, s_scale, ti, tt, t_scale)
    want = parts["clip"] + 2000 * parts["fd"] + parts["crd"] + parts["icl"]
    torch.testing.assert_close(total, want)
    # FD sees the projected student features
    torch.testing.assert_close(parts["fd"], L.fd_loss(dl.proj_img(si), dl.proj_txt(st), ti, tt))
    total.backward()
    assert dl.proj_img.weight.grad is not None and dl.icl_log_scale.grad is not None
    with pytest.raises(InputError, match="width 6 != the teacher's 10"):
        L.DistillLoss({"fd": 1}, student_dim=6, teacher_dim=10, projections=False)
    with pytest.raises(InputError, match="need a teacher"):
        L.DistillLoss({"fd": 1}, student_dim=6, teacher_dim=None)


def test_composite_affinity_alpha():
    si, st = _feats(4, 6, 1).float(), _feats(4, 6, 2).float()
    ti, tt = _feats(4, 6, 3, True).float(), _feats(4, 6, 4, True).float()
    s_scale = torch.tensor(10.0)
    pure = L.DistillLoss({"affinity": 1}, 6, 6)
    total, parts = pure(si, st, s_scale, ti, tt, 20.0)
    torch.testing.assert_close(total, L.affinity_loss(si, st, ti, tt))
    half = L.DistillLoss({"affinity": 2}, 6, 6, affinity_alpha=0.25, affinity_scale="teacher")
    total, _ = half(si, st, s_scale, ti, tt, 20.0)
    want = 0.25 * 2 * L.affinity_loss(si, st, ti, tt, s_scale, 20.0) + 0.75 * 2 * L.clip_loss(
        si, st, s_scale
    )
    torch.testing.assert_close(total, want)


def test_mfd_needs_masked_features():
    si, st = _feats(4, 6, 1).float(), _feats(4, 6, 2).float()
    ti, tt = _feats(4, 6, 3, True).float(), _feats(4, 6, 4, True).float()
    dl = L.DistillLoss({"mfd": 1, "clip": 0}, 6, 6)
    with pytest.raises(InputError, match="masked"):
        dl(si, st, torch.tensor(5.0), ti, tt, 5.0)
    masked = _feats(4, 6, 9).float()
    total, parts = dl(si, st, torch.tensor(5.0), ti, tt, 5.0, s_img_masked=masked)
    torch.testing.assert_close(parts["mfd"], L.fd_loss(masked, st, ti, tt))
