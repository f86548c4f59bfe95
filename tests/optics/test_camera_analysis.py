from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from optics import analysis
from optics.camera import Camera
from optics.sensor import SensorConfig


def gaussian_psf(sigma: float, size: int = 129) -> np.ndarray:
    c = np.arange(size) - size // 2
    g = np.exp(-(c[:, None] ** 2 + c[None, :] ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def test_fwhm_ee_mtf_of_a_gaussian():
    sigma = 4.0
    psf = gaussian_psf(sigma)
    assert analysis.fwhm(psf)[0] == pytest.approx(2 * math.sqrt(2 * math.log(2)) * sigma, rel=0.01)
    for f in (0.5, 0.8):
        # EE of a 2-D Gaussian: 1 - exp(-r^2 / 2 sigma^2)
        assert analysis.encircled_energy_radius(psf, f)[0] == pytest.approx(sigma * math.sqrt(-2 * math.log(1 - f)),
                                                                            rel=0.01)
    freqs, values = analysis.radial_mtf(psf)
    sel = freqs < 0.15
    np.testing.assert_allclose(values[0][sel], np.exp(-2 * math.pi ** 2 * sigma ** 2 * freqs[sel] ** 2), atol=0.02)
    m = analysis.mtf(psf)
    assert m[0, 64, 64] == pytest.approx(1.0)


def test_strehl_ratio():
    ref = gaussian_psf(2.0)
    assert analysis.strehl_ratio(ref, ref)[0] == pytest.approx(1.0)
    # a Gaussian twice as wide has a peak four times lower
    assert analysis.strehl_ratio(gaussian_psf(4.0), ref)[0] == pytest.approx(0.25, rel=0.01)


def test_camera_with_delta_psf_and_no_noise_is_quantised_identity():
    psf = torch.zeros(3, 15, 15)
    psf[:, 7, 7] = 2.0  # normalised by the camera
    cam = Camera(psf, SensorConfig(bit_depth=8), noise=False)
    img = torch.rand(2, 3, 20, 20)
    out = cam(img)
    assert torch.allclose(out, torch.round(img * 255) / 255, atol=1e-6)
    assert "fixed_psf" in dict(cam.named_buffers())


def test_camera_noise_statistics_and_gradient():
    psf = torch.ones(3, 5, 5)
    cfg = SensorConfig(photons_at_white=1000.0, qe=1.0, full_well=1e5, read_noise=2.0, bit_depth=None)
    cam = Camera(psf, cfg)
    img = torch.full((1, 3, 64, 64), 0.5, requires_grad=True)
    out = cam(img, generator=torch.Generator().manual_seed(0))
    interior = out[..., 4:-4, 4:-4]
    assert float(interior.detach().std()) == pytest.approx(math.sqrt(500 + 4) / 1000, rel=0.05)
    out.sum().backward()
    assert img.grad is not None and bool(torch.isfinite(img.grad).all())


def test_camera_rejects_bad_psf():
    with pytest.raises(ValueError, match="non-negative"):
        Camera(-torch.ones(3, 5, 5))


def test_camera_follows_the_input_and_a_delta_psf_is_the_identity(device, dtype):
    from tests.helpers import small_lens_config
    from optics.lens import Lens

    delta = torch.zeros(3, 5, 5)
    delta[:, 2, 2] = 1
    camera = Camera(delta, SensorConfig(bit_depth=None, full_well=1e9), noise=False).to(device, dtype)
    image = torch.rand(3, 3, 16, 20, dtype=dtype, generator=torch.Generator().manual_seed(0)).to(device) * 0.9
    out = camera(image)
    assert out.dtype == dtype and out.device.type == device.type
    assert torch.allclose(out, image, atol=10 * torch.finfo(dtype).eps)
    # a lens camera on the device: PSF, capture and the Zernike gradient follow the module
    lens_cam = Camera(Lens(small_lens_config()), noise=True).to(device, dtype)
    capture = lens_cam(image, generator=torch.Generator(device=device).manual_seed(1))
    assert capture.dtype == dtype and capture.device.type == device.type
    capture.mean().backward()
    grad = lens_cam.lens.zernike_coeffs.grad
    assert grad.dtype == dtype and grad.device.type == device.type and bool(torch.isfinite(grad).all())
