from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F

from optics.imaging import crop_psf, depth_masks, fft_convolve, image_depth_planes


def direct_same_convolution(image: torch.Tensor, psf: torch.Tensor) -> torch.Tensor:
    """Reference: zero-padded direct convolution with F.conv2d (a cross-correlation, so the PSF is flipped),
    output pixel (i, j) = sum psf[u, v] image[i - (u - h//2), j - (v - w//2)]."""
    C = image.shape[1]
    h, w = psf.shape[-2:]
    cy, cx = h // 2, w // 2
    kernel = torch.flip(psf, dims=(-2, -1))[:, None]
    # after flipping, the PSF centre sits at (h - 1 - cy, w - 1 - cx)
    padded = F.pad(image, (w - 1 - cx, cx, h - 1 - cy, cy))
    return F.conv2d(padded, kernel, groups=C)


@pytest.mark.parametrize("psf_shape", [(3, 7, 7), (3, 8, 6), (3, 31, 40), (3, 45, 45), (1, 9, 9)])
@pytest.mark.parametrize("batch", [1, 3])  # odd batches: the packed path pairs images with a zero image
def test_fft_convolve_equals_direct_convolution_including_edges(psf_shape, batch, device, dtype):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(batch, 3, 37, 41, generator=g, dtype=torch.float64)
    psf = torch.rand(*psf_shape, generator=g, dtype=torch.float64)
    ref = direct_same_convolution(image, psf.expand(3, *psf_shape[1:]))
    out = fft_convolve(image.to(device, dtype), psf.to(device, dtype))
    assert out.shape == image.shape and out.dtype == dtype and out.device.type == device.type
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert torch.allclose(out.double().cpu(), ref, atol=tol * float(ref.abs().max()))
    # linear, not circular: a constant image darkens at the borders (zeros come in, nothing wraps around)
    flat = fft_convolve(torch.ones(1, 3, 37, 41, dtype=dtype, device=device),
                        (psf / psf.sum(dim=(-2, -1), keepdim=True)).to(device, dtype))
    assert bool((flat[0, :, 0, 0] < 0.75 * flat[0, :, 18, 20]).all())


def test_fft_convolve_gradcheck_shared_and_per_sample_psf(device):
    g = torch.Generator().manual_seed(5)
    image = torch.rand(3, 2, 4, 5, generator=g, dtype=torch.float64).to(device).requires_grad_(True)
    for psf_shape in [(2, 3, 5), (1, 4, 4), (3, 2, 3, 5), (2, 11, 3)]:  # the last is taller than the FFT grid
        psf = torch.rand(*psf_shape, generator=g, dtype=torch.float64).to(device).requires_grad_(True)
        assert torch.autograd.gradcheck(fft_convolve, (image, psf))


def test_fft_convolve_matches_scipy_float32_and_per_sample_psf():
    g = torch.Generator().manual_seed(1)
    image = torch.rand(2, 3, 32, 32, generator=g)
    psf = torch.rand(2, 3, 9, 9, generator=g)
    psf = psf / psf.sum(dim=(-2, -1), keepdim=True)
    out = fft_convolve(image, psf)
    for b in range(2):
        for c in range(3):
            ref = scipy.signal.convolve(image[b, c].double().numpy(), psf[b, c].double().numpy(), mode="same")
            np.testing.assert_allclose(out[b, c].numpy(), ref, atol=1e-5)


def test_delta_psf_leaves_image_unchanged():
    g = torch.Generator().manual_seed(2)
    image = torch.rand(1, 3, 30, 30, generator=g, dtype=torch.float64)
    for size in (1, 16, 17, 64):
        psf = torch.zeros(3, size, size, dtype=torch.float64)
        psf[:, size // 2, size // 2] = 1
        assert torch.allclose(fft_convolve(image, psf), image, atol=1e-12)


def test_shifted_delta_shifts_image_with_zero_fill():
    image = torch.rand(1, 1, 20, 20, dtype=torch.float64)
    psf = torch.zeros(1, 5, 5, dtype=torch.float64)
    psf[0, 2, 4] = 1  # offset +2 columns -> image moves right by 2, zeros enter on the left
    out = fft_convolve(image, psf)
    assert torch.allclose(out[..., :, 2:], image[..., :, :-2], atol=1e-12)
    assert torch.allclose(out[..., :, :2], torch.zeros(1, 1, 20, 2, dtype=torch.float64), atol=1e-12)


def test_crop_psf_keeps_centre_and_values():
    psf = torch.zeros(2, 256, 256)
    psf[0, 120:140, 125:131] = 1.0
    psf[1, 128, 128] = 2.0
    c = crop_psf(psf)
    h, w = c.shape[-2:]
    assert (h, w) == (2 * 11 + 1, 2 * 3 + 1)  # rows -8..+11, cols -3..+2
    assert float(c[1, h // 2, w // 2]) == 2.0
    assert float(c.sum()) == float(psf.sum())


def test_fft_convolve_gradients_match_direct():
    g = torch.Generator().manual_seed(3)
    image = torch.rand(1, 2, 12, 12, generator=g, dtype=torch.float64, requires_grad=True)
    psf = torch.rand(2, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.rand(1, 2, 12, 12, generator=g, dtype=torch.float64)
    ga = torch.autograd.grad((fft_convolve(image, psf) * w).sum(), (image, psf))
    gb = torch.autograd.grad((direct_same_convolution(image, psf) * w).sum(), (image, psf))
    for a, b in zip(ga, gb):
        assert torch.allclose(a, b, atol=1e-10)


def test_depth_planes_sum_of_layer_convolutions():
    g = torch.Generator().manual_seed(4)
    planes = torch.rand(2, 3, 3, 16, 16, generator=g, dtype=torch.float64)
    psfs = torch.rand(3, 3, 5, 5, generator=g, dtype=torch.float64)
    depth = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)[torch.randint(0, 3, (2, 1, 16, 16),
                                                                               generator=g)]
    masks = depth_masks(depth, [0.5, 1.0, 2.0])
    assert torch.allclose(masks.sum(dim=1), torch.ones(2, 1, 16, 16, dtype=torch.float64))
    out = image_depth_planes(planes, psfs, masks)
    ref = sum(fft_convolve(planes[:, d] * masks[:, d], psfs[d]) for d in range(3))
    assert torch.allclose(out, ref, atol=1e-12)
    # a pixel exactly at a plane depth belongs to that plane only
    assert torch.allclose(masks[:, 1][depth == 1.0], torch.ones(1, dtype=torch.float64).expand(
        int((depth == 1.0).sum())))


def test_shape_errors():
    with pytest.raises(ValueError, match="psf shape"):
        fft_convolve(torch.rand(1, 3, 8, 8), torch.rand(2, 3, 3))


def test_fft_convolve_psf_window_larger_than_image_matches_conv2d_float32():
    # the face-deid geometry in small: a dense PSF window wider than the image (every output pixel sees the whole
    # window), float32 against float64 direct zero-padded convolution
    g = torch.Generator().manual_seed(6)
    image = torch.rand(4, 3, 40, 36, generator=g, dtype=torch.float64)
    psf = torch.rand(3, 64, 64, generator=g, dtype=torch.float64)
    psf = psf / psf.sum(dim=(-2, -1), keepdim=True)
    ref = direct_same_convolution(image, psf)
    out = fft_convolve(image.float(), psf.float())
    assert float((out.double() - ref).abs().max()) < 1e-5 * float(ref.abs().max())


def test_fft_convolve_reused_workspace_frames_give_fresh_results():
    # the CPU workspace keeps the zero-padded frames between calls: a second image, an odd batch after an even one
    # (its last imaginary slot must be zero again) and another image size on the same FFT grid must each equal
    # the direct convolution
    g = torch.Generator().manual_seed(7)
    psf = torch.rand(3, 9, 9, generator=g, dtype=torch.float64)
    for shape in [(4, 3, 30, 30), (4, 3, 30, 30), (3, 3, 30, 30), (4, 3, 29, 30), (1, 3, 30, 30)]:
        image = torch.rand(*shape, generator=g, dtype=torch.float64, requires_grad=True)
        k = psf.clone().requires_grad_(True)
        w = torch.rand(*shape, generator=g, dtype=torch.float64)
        out = fft_convolve(image, k)
        ref = direct_same_convolution(image, k)
        assert torch.allclose(out, ref, atol=1e-12)
        ga = torch.autograd.grad((out * w).sum(), (image, k))
        gb = torch.autograd.grad((ref * w).sum(), (image, k))
        assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(ga, gb))
