"""Stage II networks: shapes at every resolution / domain count, heatmap gating, EMA copies, input errors."""
from __future__ import annotations

import pytest
import torch

from anonymizer.stage2.model import (Generator, HighPass, avg_pool2x, build_model, count_parameters,
                                     default_base_dim, heatmap_masks)



TINY = dict(base_dim=8, max_conv_dim=32, hidden_dim=32, style_dim=16, latent_dim=8)


@pytest.mark.parametrize("img_size", [64, 128, 256])
@pytest.mark.parametrize("num_domains", [1, 2])
def test_output_shapes(img_size: int, num_domains: int) -> None:
    torch.manual_seed(0)
    nets, nets_ema = build_model(img_size=img_size, num_domains=num_domains, **TINY)
    b = 2
    capture = torch.rand(b, 3, img_size, img_size)
    heatmap = torch.rand(b, 2, img_size, img_size)
    y = torch.tensor([0, num_domains - 1])
    z = torch.randn(b, TINY["latent_dim"])
    s = nets.mapping_network(z, y)
    assert s.shape == (b, TINY["style_dim"])
    fake = nets.generator(capture, heatmap, s)
    assert fake.shape == (b, 3, img_size, img_size)
    assert torch.isfinite(fake).all()
    assert nets.style_encoder(fake, y).shape == (b, TINY["style_dim"])
    assert nets.discriminator(fake, y).shape == (b,)
    assert nets_ema.discriminator is None
    assert nets_ema.generator(capture, heatmap, nets_ema.mapping_network(z, y)).shape == fake.shape


def test_domain_heads_are_selected_per_sample() -> None:
    """Sample i's style comes from head y_i: changing another sample's domain does not change it."""
    torch.manual_seed(0)
    nets, _ = build_model(img_size=64, num_domains=3, **TINY)
    z = torch.randn(2, TINY["latent_dim"])
    a = nets.mapping_network(z, torch.tensor([0, 1]))
    b = nets.mapping_network(z, torch.tensor([0, 2]))
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[1], b[1])
    single = nets.mapping_network.unshared[2](nets.mapping_network.shared(z[1:]))
    assert torch.allclose(b[1:], single)


def test_default_widths_match_stargan_v2() -> None:
    assert default_base_dim(256) == 64 and default_base_dim(128) == 128 and default_base_dim(64) == 256
    g = Generator(img_size=256, w_hpf=1)
    assert g.from_rgb.out_channels == 64 and g.skip_sizes == (32, 64, 128)
    # 256 px: 5 down blocks (4 + 1 for the skip paths, down to 8 x 8) + 2 bottleneck blocks
    assert len(g.encode) == 7


def test_heatmap_masks_gate_the_skip_paths() -> None:
    """With w_hpf > 0, encoder features reach the decoder only through heatmap-gated skips: all-zero masks make
    the output independent of where the skip paths' features came from, non-zero masks do not."""
    torch.manual_seed(0)
    g = Generator(img_size=64, style_dim=16, base_dim=8, max_conv_dim=32, w_hpf=1).eval()
    s = torch.randn(1, 16)
    capture = torch.rand(1, 3, 64, 64)
    zero = torch.zeros(1, 2, 64, 64)
    out_zero = g(capture, zero, s)
    # the same net with the skip paths removed gives the same image when the masks are zero
    g_noskip = Generator(img_size=64, style_dim=16, base_dim=8, max_conv_dim=32, w_hpf=1).eval()
    g_noskip.load_state_dict(g.state_dict())
    g_noskip.skip_sizes = ()
    assert torch.allclose(out_zero, g_noskip(capture, zero, s), atol=1e-6)
    ones = torch.ones(1, 2, 64, 64)
    # the heatmap also enters from_rgb; compare gated vs ungated with the same (non-zero) heatmap
    assert not torch.allclose(g(capture, ones, s), g_noskip(capture, ones, s), atol=1e-4)


def test_heatmap_mask_groups() -> None:
    h = torch.zeros(1, 68, 8, 8)
    h[0, 5, 1, 1] = 1.0  # jaw point -> outline mask
    h[0, 40, 2, 2] = 0.5  # eye point -> inner mask
    outline, inner = heatmap_masks(h)
    assert outline[0, 0, 1, 1] == 1.0 and outline[0, 0, 2, 2] == 0.0
    assert inner[0, 0, 2, 2] == 0.5 and inner[0, 0, 1, 1] == 0.0
    two = torch.rand(1, 2, 4, 4)
    assert torch.equal(heatmap_masks(two)[1], two[:, 1:2])


def test_highpass_is_a_laplacian() -> None:
    """Zero response on a constant, 8/w at an isolated impulse."""
    hp = HighPass(w_hpf=2.0)
    assert torch.allclose(hp(torch.full((1, 2, 5, 5), 3.0))[..., 1:-1, 1:-1], torch.zeros(1, 2, 3, 3))
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 1.0
    assert hp(x)[0, 0, 2, 2] == pytest.approx(4.0)


def test_ema_copy_is_independent_and_frozen() -> None:
    nets, nets_ema = build_model(img_size=64, num_domains=2, **TINY)
    p, p_ema = next(nets.generator.parameters()), next(nets_ema.generator.parameters())
    assert torch.equal(p, p_ema) and p.data_ptr() != p_ema.data_ptr()
    assert not any(q.requires_grad for _, m in nets_ema.items() for q in m.parameters())
    assert count_parameters(nets.generator) == count_parameters(nets_ema.generator)


def test_every_generator_parameter_is_used() -> None:
    """No dead weights (DistributedDataParallel fails on unused parameters)."""
    torch.manual_seed(0)
    for w_hpf in (0.0, 1.0):
        nets, _ = build_model(img_size=64, num_domains=2, w_hpf=w_hpf, **TINY)
        y = torch.tensor([0, 1])
        out = nets.generator(torch.rand(2, 3, 64, 64), torch.rand(2, 2, 64, 64),
                             nets.mapping_network(torch.randn(2, 8), y))
        (out.sum() + nets.discriminator(out, y).sum() + nets.style_encoder(out, y).sum()).backward()
        for name, m in nets.items():
            unused = [n for n, q in m.named_parameters() if q.grad is None]
            if name == "mapping_network":
                continue  # only the heads of domains 0 and 1 are used, both are here
            assert not unused, (w_hpf, name, unused)


def test_bad_configuration_errors() -> None:
    with pytest.raises(ValueError, match="img_size"):
        build_model(img_size=100, **TINY)
    with pytest.raises(ValueError, match="num_domains"):
        build_model(img_size=64, num_domains=0, **TINY)
    nets, _ = build_model(img_size=64, **TINY)
    with pytest.raises(ValueError, match="capture"):
        nets.generator(torch.rand(1, 3, 32, 32), torch.rand(1, 2, 32, 32), torch.randn(1, 16))
    with pytest.raises(ValueError, match="heatmap"):
        nets.generator(torch.rand(1, 3, 64, 64), torch.rand(1, 5, 64, 64), torch.randn(1, 16))


@pytest.mark.parametrize("shape", [(2, 3, 8, 6), (1, 2, 5, 4)])
def test_avg_pool2x_is_the_2x2_average_pool_with_its_gradient(shape) -> None:
    import torch.nn.functional as F

    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    g = torch.randn_like(F.avg_pool2d(x, 2))
    (grad_ref,) = torch.autograd.grad(F.avg_pool2d(x, 2), x, g)
    y = avg_pool2x(x)
    (grad,) = torch.autograd.grad(y, x, g)
    assert torch.allclose(y, F.avg_pool2d(x, 2), atol=1e-12) and torch.allclose(grad, grad_ref, atol=1e-12)
    if shape[-2] % 2 == 0:  # the mean of each 2 x 2 block, by hand
        assert torch.allclose(y[0, 0, 0, 0], x[0, 0, :2, :2].mean())
