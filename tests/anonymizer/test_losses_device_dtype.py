"""Stage I and Stage II losses under the ``device`` / ``dtype`` fixtures: values follow the closed forms and the
result stays on the input's device and in its dtype (house style 4: device and dtype follow the input)."""
from __future__ import annotations

import math

import pytest
import torch

from anonymizer.stage1.heatmap import heatmap_loss, landmark_nme, landmarks_to_heatmaps, soft_argmax
from anonymizer.stage1.losses import identity_band_weights, privacy_mtf_loss, psf_border_energy
from anonymizer.stage2 import losses as L

SIZE = 64


def _same(t: torch.Tensor, device: torch.device, dtype: torch.dtype) -> None:
    assert t.device.type == device.type and t.dtype == dtype


def test_privacy_term_of_a_gaussian_psf_matches_its_analytic_mtf(device, dtype):
    """A Gaussian PSF of std s [px] has MTF(f) = exp(-2 pi^2 s^2 |f|^2); the loss is that MTF^2 averaged with the
    identity-band weights (computed here from the closed form, not from the code's FFT)."""
    s = 1.3
    r = torch.arange(SIZE, dtype=torch.float64) - SIZE // 2
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * s ** 2))
    psf = (g / g.sum())[None].to(device=device, dtype=dtype)
    loss = privacy_mtf_loss(psf, SIZE)
    _same(loss, device, dtype)
    f = torch.fft.fftfreq(SIZE, dtype=torch.float64)
    f2 = f[None, :] ** 2 + f[:, None] ** 2
    expected = (identity_band_weights(SIZE, SIZE) * torch.exp(-4 * math.pi ** 2 * s ** 2 * f2)).sum().item()
    tol = 1e-4 if dtype == torch.float32 else 1e-6  # sampled Gaussian: aliasing ~1e-8
    assert loss.item() == pytest.approx(expected, abs=tol)


def test_border_energy_follows_the_input(device, dtype):
    psf = torch.zeros(2, 16, 16, device=device, dtype=dtype)
    psf[:, 8, 8] = 0.6
    psf[:, 15, 15] = 0.4  # corner: in the outer frame
    out = psf_border_energy(psf)
    _same(out, device, dtype)
    assert out.item() == pytest.approx(0.4, abs=1e-6)


def test_soft_argmax_heatmap_loss_and_nme_follow_the_input(device, dtype):
    lm = torch.tensor([[[20.25, 30.5], [40.0, 22.75], [31.0, 44.0]]], device=device, dtype=dtype)
    h = landmarks_to_heatmaps(lm, SIZE, 2.0, mode="landmarks")
    _same(h, device, dtype)
    pts = soft_argmax(h)
    _same(pts, device, dtype)
    assert (pts - lm).abs().max().item() < 0.05
    loss = heatmap_loss(h, h)
    _same(loss, device, dtype)
    assert loss.item() == pytest.approx(0.0, abs=1e-12)


def test_nme_closed_form(device, dtype):
    """68 points shifted by (3, 4) px: NME = 5 / outer-eye-corner distance (points 36 and 45)."""
    target = torch.zeros(1, 68, 2, device=device, dtype=dtype)
    target[0, 36] = torch.tensor([10.0, 20.0])
    target[0, 45] = torch.tensor([50.0, 20.0])
    pred = target + torch.tensor([3.0, 4.0], device=device, dtype=dtype)
    nme = landmark_nme(pred, target)
    _same(nme, device, dtype)
    assert nme.mean().item() == pytest.approx(5.0 / 40.0, rel=1e-6)


def test_stage2_closed_forms_follow_the_input(device, dtype):
    logits = torch.tensor([2.0, -1.0], device=device, dtype=dtype)
    adv = L.adversarial_loss(logits, 1)
    _same(adv, device, dtype)
    expected = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(1.0))) / 2
    assert adv.item() == pytest.approx(expected, rel=1e-6)
    w = torch.randn(3, 4, 4, device=device, dtype=dtype)
    x = torch.rand(5, 3, 4, 4, device=device, dtype=dtype, requires_grad=True)
    r1 = L.r1_penalty((x * w).flatten(1).sum(1), x)
    _same(r1, device, dtype)
    assert r1.item() == pytest.approx(0.5 * w.pow(2).sum().item(), rel=1e-5)
    a = torch.zeros(2, 3, 8, 8, device=device, dtype=dtype)
    b = torch.full_like(a, 0.25)
    ds = L.diversity_loss(a, b)
    _same(ds, device, dtype)
    assert ds.item() == pytest.approx(0.25, rel=1e-6)
