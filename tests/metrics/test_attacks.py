"""Attacks on the capture: deconvolution with the true PSF really recovers identity; the learned inverter learns."""
from __future__ import annotations

import numpy as np
import pytest

from metrics.attacks import (apply_psf, attribute_attack, check_psf, gaussian_psf, invert, majority_rate,
                             richardson_lucy_attack, train_inverter, wiener_attack)
from metrics.identity import gallery_reid, mean_match_distance, rank_k, reid_metrics
from metrics.inverter import Inverter, band_pass, identity_correlation, inverter_loss, train_camera_inverter


def test_apply_psf_delta_and_shift():
    img = np.random.default_rng(0).random((20, 24, 3)).astype(np.float32)
    delta = np.zeros((3, 5, 5))
    delta[:, 2, 2] = 1
    np.testing.assert_allclose(apply_psf(img, delta), img, atol=1e-6)
    shifted = np.zeros((3, 5, 5))
    shifted[:, 2, 3] = 1  # PSF centre (h // 2, w // 2): one pixel right of it moves the image right by 1
    np.testing.assert_allclose(apply_psf(img, shifted)[:, 1:], img[:, :-1], atol=1e-6)


def test_wiener_raises_reid_over_blurred_capture(embedder, nba_faces):
    psf = gaussian_psf(2.0)
    rng = np.random.default_rng(0)
    captures = [np.clip(apply_psf(f, psf) + rng.normal(0, 0.005, f.shape), 0, 1).astype(np.float32)
                for f in nba_faces]
    restored = [wiener_attack(c, psf, balance=1e-2) for c in captures]
    gallery = embedder.embed(nba_faces)
    d_capture = mean_match_distance(embedder.embed(captures), gallery)
    d_wiener = mean_match_distance(embedder.embed(restored), gallery)
    # the attack is real: the deconvolved images are closer to the originals' identities than the captures
    assert d_wiener < d_capture - 0.02
    assert reid_metrics(embedder.embed(restored), gallery)["reid_rank1"] == 1.0
    # and closer in pixels (interior, away from the zero-padded border)
    inner = (slice(16, -16), slice(16, -16))
    err = lambda a: np.mean([np.mean((x[inner] - f[inner]) ** 2) for x, f in zip(a, nba_faces)])
    assert err(restored) < err(captures)


def test_richardson_lucy_sharpens(nba_faces):
    psf = gaussian_psf(1.5)
    clean = nba_faces[0][40:104, 90:154]
    blurred = apply_psf(clean, psf)
    restored = richardson_lucy_attack(blurred, psf, num_iter=20)
    inner = (slice(8, -8), slice(8, -8))
    assert np.mean((restored[inner] - clean[inner]) ** 2) < 0.8 * np.mean((blurred[inner] - clean[inner]) ** 2)


def test_inverter_learns(nba_faces):
    psf = gaussian_psf(2.0)
    crops = [f[30:126, 80:176] for f in nba_faces]  # 96 x 96 face crops
    captures = [apply_psf(c, psf) for c in crops]
    net = train_inverter(captures[:6], crops[:6], iters=60, batch_size=4, crop=48, base=8)
    out = invert(net, captures[6:])  # held-out people
    assert out[0].shape == crops[6].shape
    mse = lambda a: np.mean([np.mean((x - c) ** 2) for x, c in zip(a, crops[6:])])
    assert mse(out) < mse(captures[6:])


def test_attribute_attack_learns_a_visible_attribute():
    # label = horizontal vs vertical stripes under noise: a texture attribute a pooled CNN can learn
    rng = np.random.default_rng(0)
    stripes = (np.arange(32) // 2 % 2).astype(np.float32) * 0.5

    def sample(label: int) -> np.ndarray:
        pattern = stripes[:, None] * np.ones(32) if label == 0 else stripes[None, :] * np.ones((32, 1))
        img = pattern[..., None] + rng.random((32, 32, 3)) * 0.5
        return img.astype(np.float32)

    labels = [i % 2 for i in range(40)]
    images = [sample(y) for y in labels]
    acc = attribute_attack(images[:30], labels[:30], images[30:], labels[30:], iters=60, size=32)
    assert acc > majority_rate(labels[30:])
    with pytest.raises(ValueError, match="count"):
        attribute_attack(images[:3], labels[:2], images[30:], labels[30:])


def test_psf_validation():
    with pytest.raises(ValueError, match="negative"):
        check_psf(-np.ones((3, 3, 3)))
    with pytest.raises(ValueError, match="all-zero"):
        check_psf(np.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match=r"\(C, h, w\)"):
        check_psf(np.ones((2, 3, 3)))
    np.testing.assert_allclose(check_psf(np.ones((1, 2, 2))).sum(axis=(1, 2)), 1.0)


# ------------------------------------------------------------------------------------- the learned inverter
def test_band_pass_keeps_in_band_cosines_and_removes_the_rest():
    import torch

    n = 64  # face width = 0.66 * 64 px: k cycles per image = k / 0.66 cycles per face width
    x = torch.arange(n, dtype=torch.float64)
    inside = torch.cos(2 * np.pi * 8 * x / n)[None, None, None, :].expand(1, 1, n, n)  # 5.3 c/face: in band
    outside = torch.cos(2 * np.pi * 2 * x / n)[None, None, None, :].expand(1, 1, n, n)  # 1.3 c/face: below
    torch.testing.assert_close(band_pass(inside + outside, (4.0, 16.0)), inside, atol=1e-9, rtol=0)
    assert float(identity_correlation(inside + 3 * outside, inside)) == pytest.approx(1.0, abs=1e-9)
    assert float(identity_correlation(outside, inside + outside)) == pytest.approx(0.0, abs=1e-6)
    assert float(identity_correlation(-inside, inside)) == pytest.approx(-1.0, abs=1e-9)


def test_inverter_shapes_and_loss_validation():
    import torch

    net = Inverter(base=4, depth=3)
    x = torch.rand(2, 3, 32, 40)
    assert net(x).shape == x.shape and net.multiple == 8
    with pytest.raises(ValueError, match="unknown inverter loss"):
        inverter_loss(x, x, "vgg")
    assert float(inverter_loss(x, x, "band")) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="multiples of 8"):
        train_camera_inverter(lambda im, generator=None: im, torch.rand(2, 3, 30, 32), iters=1, depth=3)


def test_rank_k_and_large_gallery_closed_form():
    g = np.eye(4)
    p = g[[1, 0, 2, 3]] + 0.01  # probes 0 and 1 look like each other's photo
    assert rank_k(p, g, k=1) == 0.5 and rank_k(p, g, k=2) == 1.0
    # an identity with two gallery images counts once (probe 0 is 2nd nearest identity, not 3rd)
    g2 = np.concatenate([g, g[1:2] * 0.99])
    assert rank_k(p[:1], g2, [0], [0, 1, 2, 3, 1], k=2) == 1.0
    # a distractor nearer than the own photo defeats rank-1 in the large gallery only
    distractor = g[2:3] * 1.0 + 0.011
    out = gallery_reid(p, [0, 1, 2, 3], g, [0, 1, 2, 3], distractor)
    assert out["heldout"]["rank1"] == 0.5 and out["heldout"]["chance_rank1"] == 0.25
    assert out["large"]["rank1"] == 0.25 and out["large"]["num_identities"] == 5
    assert out["large"]["chance_rank5"] == 1.0
    with pytest.raises(ValueError, match="not in the gallery"):
        gallery_reid(p, [0, 1, 2, 9], g, [0, 1, 2, 3])


@pytest.mark.slow
def test_camera_inverter_recovers_identity_from_a_mild_blur(embedder, nba_faces):
    """The attack is real: trained on 5 people's fresh captures, it brings 3 other people's blurred captures
    closer to their own identity (dlib) and restores their identity band."""
    import torch

    from optics.camera import Camera

    crops = [np.ascontiguousarray(f[30:126, 80:176]) for f in nba_faces]  # 96 px face crops
    x = torch.from_numpy(np.stack(crops).transpose(0, 3, 1, 2))
    camera = Camera(torch.from_numpy(gaussian_psf(2.0)).float(), noise=True)
    net = train_camera_inverter(camera, x[:5], iters=150, batch_size=4, base=8, depth=2, lr=2e-3, seed=0)
    with torch.no_grad():
        caps = camera(x[5:], generator=torch.Generator().manual_seed(0))
    captures = [c.permute(1, 2, 0).numpy().copy() for c in caps]
    restored = invert(net, captures)
    gallery = embedder.embed(crops[5:])
    assert mean_match_distance(embedder.embed(restored), gallery) < mean_match_distance(
        embedder.embed(captures), gallery) - 0.02
    as_t = lambda ims: torch.from_numpy(np.stack(ims).transpose(0, 3, 1, 2))  # noqa: E731
    rho_capture = identity_correlation(as_t(captures), x[5:]).mean()
    rho_restored = identity_correlation(as_t(restored), x[5:]).mean()
    assert rho_restored > rho_capture + 0.1


def test_differentiable_wiener_equals_the_attack_and_its_gradient_reaches_the_psf():
    import torch

    from data.datasets import load_image
    from metrics.inverter import wiener_deconvolve
    from tests.helpers import NBA_NAMES, nba_dir

    face = load_image(nba_dir() / NBA_NAMES[0], 64).permute(1, 2, 0).numpy()
    for psf in (gaussian_psf(1.5, 9), gaussian_psf(2.0, 12)):  # odd and even windows
        capture = np.clip(apply_psf(face, psf), 0, 1).astype(np.float32)
        ref = wiener_attack(capture, psf, balance=1e-2)  # skimage's filter, clipped
        ours = wiener_deconvolve(torch.from_numpy(capture).permute(2, 0, 1)[None].double(),
                                 torch.from_numpy(psf).double(), 1e-2)
        np.testing.assert_allclose(ours[0].permute(1, 2, 0).clamp(0, 1).numpy(), ref, atol=1e-5)
    p = torch.from_numpy(gaussian_psf(1.5, 9)).requires_grad_(True)
    est = wiener_deconvolve(torch.from_numpy(capture).permute(2, 0, 1)[None], p)
    (grad,) = torch.autograd.grad(identity_correlation(est, torch.from_numpy(face).permute(2, 0, 1)[None]).sum(), p)
    assert torch.isfinite(grad).all() and float(grad.abs().max()) > 0
    with pytest.raises(ValueError, match="psf"):
        wiener_deconvolve(torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 3))
