"""Stage II losses: closed forms, R1 of a constant / linear discriminator, gradients through the frozen optics."""
from __future__ import annotations

import math

import pytest
import torch

from anonymizer.stage2 import losses as L
from anonymizer.stage1.heatmap import HeatmapRegressor
from anonymizer.stage2.model import Discriminator, build_model
from optics.camera import Camera
from tests.helpers import gaussian_psf


def frozen_optics(channels: int = 2) -> tuple[Camera, HeatmapRegressor]:
    camera = Camera(gaussian_psf(), noise=False).requires_grad_(False)
    regressor = HeatmapRegressor(3, channels, base=4, depth=2).requires_grad_(False).eval()
    return camera, regressor


def test_adversarial_loss_closed_form() -> None:
    assert L.adversarial_loss(torch.zeros(5), 1).item() == pytest.approx(math.log(2))
    logits = torch.tensor([2.0, -1.0])
    expected = -(math.log(1 / (1 + math.exp(-2.0))) + math.log(1 / (1 + math.exp(1.0)))) / 2
    assert L.adversarial_loss(logits, 1).item() == pytest.approx(expected, rel=1e-6)
    assert L.adversarial_loss(logits, 0).item() == pytest.approx(
        (math.log(1 + math.exp(2.0)) + math.log(1 + math.exp(-1.0))) / 2, rel=1e-6)


def test_r1_is_zero_for_a_constant_discriminator() -> None:
    torch.manual_seed(0)
    d = Discriminator(img_size=64, num_domains=2, base_dim=8, max_conv_dim=16)
    last = d.main[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.constant_(last.bias, 0.3)
    x = torch.rand(3, 3, 64, 64, requires_grad=True)
    out = d(x, torch.tensor([0, 1, 1]))
    assert torch.allclose(out, torch.full((3,), 0.3))
    assert L.r1_penalty(out, x).item() == 0.0


def test_r1_closed_form_for_a_linear_discriminator() -> None:
    """D(x) = <w, x>: the input gradient is w for every sample, so R1 = 0.5 ||w||^2."""
    w = torch.randn(3, 4, 4)
    x = torch.rand(5, 3, 4, 4, requires_grad=True)
    out = (x * w).flatten(1).sum(1)
    assert L.r1_penalty(out, x).item() == pytest.approx(0.5 * w.pow(2).sum().item(), rel=1e-5)
    with pytest.raises(ValueError, match="requires_grad|require grad"):
        L.r1_penalty(out.detach(), x.detach())


def test_r1_gradient_reaches_discriminator_weights() -> None:
    torch.manual_seed(0)
    d = Discriminator(img_size=64, num_domains=1, base_dim=8, max_conv_dim=16)
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    L.r1_penalty(d(x, torch.zeros(2, dtype=torch.long)), x).backward()
    assert d.main[0].weight.grad is not None and d.main[0].weight.grad.abs().sum() > 0


def test_style_and_diversity_closed_forms() -> None:
    a, b = torch.zeros(2, 4), torch.full((2, 4), 0.5)
    assert L.style_reconstruction_loss(a, b).item() == pytest.approx(0.5)
    assert L.diversity_loss(torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)).item() == pytest.approx(1.0)


def test_ds_weight_decays_linearly_to_zero() -> None:
    assert L.ds_weight(2.0, 0, 100) == 2.0
    assert L.ds_weight(2.0, 25, 100) == pytest.approx(1.5)
    assert L.ds_weight(2.0, 100, 100) == 0.0
    assert L.ds_weight(2.0, 150, 100) == 0.0
    assert L.ds_weight(2.0, 3, 0) == 0.0


def test_heatmap_consistency_has_a_gradient_on_the_generator() -> None:
    """The frozen camera and regressor receive no gradient, the generator does (the reference's no_grad bug)."""
    torch.manual_seed(0)
    nets, _ = build_model(img_size=64, num_domains=2, base_dim=8, max_conv_dim=16, hidden_dim=16,
                          style_dim=8, latent_dim=4)
    camera, regressor = frozen_optics()
    x = torch.rand(2, 3, 64, 64)
    y = torch.tensor([0, 1])
    with torch.no_grad():
        capture = camera(x)
        target = regressor(capture)
    fake = nets.generator(capture, target, nets.mapping_network(torch.randn(2, 4), y))
    loss = L.heatmap_consistency_loss(camera, regressor, fake, target)
    assert loss.item() > 0
    loss.backward()
    grads = [p.grad for p in nets.generator.parameters()]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0
    assert nets.mapping_network.unshared[0][0].weight.grad.abs().sum() > 0  # through the style too
    assert all(p.grad is None for p in regressor.parameters())
    assert all(p.grad is None for p in camera.parameters())
    # the loss is zero when the fake is the source itself
    assert L.heatmap_consistency_loss(camera, regressor, x, target).item() == pytest.approx(0.0, abs=1e-12)


def test_cycle_loss_closed_form_and_gradient() -> None:
    """With an identity 'generator' and a delta PSF the cycle returns the fake: loss = |fake - real|.

    Values lie on the 8-bit ADC grid (153 / 255, 51 / 255), so quantisation is exact; the ADC's straight-through
    gradient is 1."""
    delta = torch.zeros(3, 3, 3)
    delta[:, 1, 1] = 1.0
    camera = Camera(delta, noise=False)
    fake = torch.full((1, 3, 8, 8), 153 / 255, requires_grad=True)
    real = torch.full((1, 3, 8, 8), 51 / 255)
    ident = lambda capture, heatmap, style: capture  # noqa: E731
    loss = L.cycle_loss(camera, ident, fake, torch.zeros(1, 2, 8, 8), torch.zeros(1, 4), real)
    assert loss.item() == pytest.approx(102 / 255, rel=1e-5)
    loss.backward()
    assert torch.allclose(fake.grad, torch.full_like(fake, 1.0 / fake.numel()), rtol=1e-4)


def test_heatmap_shape_mismatch_is_an_error() -> None:
    camera, regressor = frozen_optics(channels=2)
    with pytest.raises(ValueError, match="heatmap_consistency_loss"):
        L.heatmap_consistency_loss(camera, regressor, torch.rand(1, 3, 16, 16), torch.rand(1, 68, 16, 16))
