"""Lens PSFs against closed forms: Airy pattern in focus, geometric blur when defocused, chromatic focus."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import j0, j1

from optics import analysis
from optics import propagation as P
from optics.lens import Lens, LensConfigError, load_lens_config
from optics.materials import refractive_index
from optics.psf import geometric_blur_diameter


@pytest.fixture(scope="module")
def airy_lens():
    # object at infinity, focused at infinity (f = z): working f-number N = z / (2a) = 50
    cfg = load_lens_config("in-focus", focus_distance=math.inf, object_distance=math.inf, aperture_radius=0.5e-3,
                           pupil_samples=1024, psf_size=512, wavelengths=[550e-9], design_wavelength=550e-9,
                           zernike_indices=[4])
    return Lens(cfg).double()  # closed-form physics in float64


def test_airy_first_zero_and_encircled_energy(airy_lens):
    cfg = airy_lens.config
    psf = airy_lens.psf().detach()
    assert psf.shape == (1, 512, 512)
    c = np.array([256.0, 256.0])
    r0 = 1.22 * 550e-9 * (cfg.sensor_distance / (2 * cfg.aperture_radius)) / cfg.pixel_pitch  # [px]
    radii, prof = analysis.radial_profile(psf, center=c)
    sel = (radii > 0.7 * r0) & (radii < 1.3 * r0)
    first_zero = radii[sel][np.argmin(prof[0][sel])]
    assert first_zero == pytest.approx(r0, rel=0.02)
    # closed form EE(r) = 1 - J0(x)^2 - J1(x)^2, x = 2 pi a r / (lambda z); the PSF is normalised over the finite
    # window, so compare with EE(first zero) / EE(window-equivalent radius)
    x_zero = 3.8317
    r_win = 512 / math.sqrt(math.pi) * cfg.pixel_pitch
    x_win = 2 * math.pi * cfg.aperture_radius * r_win / (550e-9 * cfg.sensor_distance)
    expected = (1 - j0(x_zero) ** 2 - j1(x_zero) ** 2) / (1 - j0(x_win) ** 2 - j1(x_win) ** 2)
    assert 1 - j0(x_zero) ** 2 - j1(x_zero) ** 2 == pytest.approx(0.838, abs=1e-3)
    ee = analysis.encircled_energy(psf, r0, center=c)[0, 0]
    assert ee == pytest.approx(expected, abs=0.005)
    # FWHM of the Airy disk: 1.029 lambda N
    assert analysis.fwhm(psf)[0] == pytest.approx(1.029 * 550e-9 * 50 / cfg.pixel_pitch, rel=0.02)


def test_lens_psf_equals_single_fft_fresnel_propagation(airy_lens):
    # the lens PSF is |Fresnel(pupil)|^2 on the pixel grid: compare with optics.propagation.fresnel
    cfg = airy_lens.config
    n = cfg.num_pupil
    dx = cfg.pupil_pitches()[0]
    x, y = P.grid(n, dx)
    k = 2 * math.pi / 550e-9
    pupil = airy_lens.aperture[0].double() * torch.exp(-1j * k * (x ** 2 + y ** 2) / (2 * cfg.focal_lengths()[0]))
    field, pitch = P.fresnel(pupil.to(torch.complex128), 550e-9, cfg.sensor_distance, dx)
    assert pitch == pytest.approx(cfg.pixel_pitch, rel=1e-12)
    inten = (field.abs() ** 2)[256:768, 256:768]
    inten = inten / inten.sum()
    assert torch.allclose(airy_lens.psf()[0].detach(), inten, atol=1e-6 * float(inten.max()))


@pytest.fixture(scope="module")
def face_lens():
    return Lens(load_lens_config("face-deid"))


def test_defocus_blur_diameter_matches_geometric_optics(face_lens):
    lens = face_lens
    cfg = lens.config
    psf = lens.psf().detach()
    geo = np.array([geometric_blur_diameter(cfg.aperture_radius, f, cfg.object_distance, cfg.sensor_distance)
                    for f in cfg.focal_lengths()]) / cfg.pixel_pitch
    assert geo[1] == pytest.approx(61.0, abs=0.5)  # the paper's ~61 px at the design wavelength
    # a uniform disk of diameter D holds fraction f of its energy within radius (D / 2) sqrt(f)
    for fraction in (0.5, 0.8):
        measured = 2 * analysis.encircled_energy_radius(psf, fraction) / math.sqrt(fraction)
        np.testing.assert_allclose(measured, geo, rtol=0.10)
    # chromatic: red focuses farther than blue for fused silica, so at 0.75 m red blurs most
    assert geo[0] > geo[1] > geo[2]


def test_psf_nonnegative_normalised_and_centered(face_lens):
    lens = face_lens
    psf = lens.psf().detach()
    assert psf.shape == (3, 256, 256)
    assert bool((psf >= 0).all())
    assert torch.allclose(psf.sum(dim=(1, 2)), torch.ones(3), atol=1e-5)
    cy, cx = analysis.centroid(psf).T
    assert np.allclose(cy, 128, atol=0.05) and np.allclose(cx, 128, atol=0.05)
    stack = lens.psf_stack([0.75, 5.0, math.inf])
    with pytest.raises(LensConfigError) as info:  # a depth whose blur would alias in the 256 px grid
        lens.psf(object_distance=0.2)
    assert info.value.key == "psf_size"
    assert stack.shape == (3, 3, 256, 256)
    assert torch.allclose(stack[0], psf, atol=1e-6)
    # at the focus distance the design wavelength is diffraction-limited
    strehl = analysis.strehl_ratio(stack[1], lens.diffraction_limited_psf())
    assert strehl[1] == pytest.approx(1.0, abs=0.01)
    assert strehl[1] > strehl[0] and strehl[1] > strehl[2]


def test_chromatic_focal_length_closed_form():
    cfg = load_lens_config("face-deid")
    f = cfg.focal_lengths()
    assert cfg.focal_length_design == pytest.approx(1 / (1 / 0.05 + 1 / 5.0), rel=1e-12)
    nd = refractive_index("fused_silica", 550e-9)
    for wl, fl in zip(cfg.wavelengths, f):
        assert fl == pytest.approx(cfg.focal_length_design * (nd - 1) / (refractive_index("fused_silica", wl) - 1))


def test_spectral_response_mixes_wavelengths():
    base = load_lens_config("face-deid", zernike_indices=[4])
    mix = base.replace(spectral_response=[[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    per_wl = Lens(base).psf_per_wavelength().detach()
    psf = Lens(mix).psf().detach()
    assert torch.allclose(psf[0], 0.5 * (per_wl[0] + per_wl[1]), atol=1e-7)
    assert torch.allclose(psf[2], per_wl[2], atol=1e-7)


def test_sensor_distance_delta_is_a_refocus(face_lens):
    # moving the sensor by delta changes the defocus power by 1/(z + delta) - 1/z, like a different object depth
    lens = face_lens
    z, d_o, delta = 0.05, 0.75, 1e-4
    d_equiv = 1 / (1 / d_o + 1 / (z + delta) - 1 / z)
    delta_t = torch.tensor(delta, requires_grad=True)
    a = lens.psf(sensor_distance_delta=delta_t)
    b = lens.psf(object_distance=d_equiv).detach()
    assert torch.allclose(a.detach(), b, atol=1e-6)
    (a * torch.rand_like(a)).sum().backward()
    assert delta_t.grad is not None and bool(torch.isfinite(delta_t.grad)) and float(delta_t.grad) != 0


def test_lens_psf_follows_the_module_device_and_dtype(device, dtype):
    from tests.helpers import small_lens_config

    ref = Lens(small_lens_config(zernike={4: 1e-7, 6: -5e-8})).double().psf().detach()
    lens = Lens(small_lens_config(zernike={4: 1e-7, 6: -5e-8})).to(device, dtype)
    psf = lens.psf()
    assert psf.dtype == dtype and psf.device.type == device.type and psf.shape == (3, 64, 64)
    assert torch.allclose(psf.sum(dim=(-2, -1)), torch.ones(3, dtype=dtype, device=device),
                          atol=100 * torch.finfo(dtype).eps)
    # float32 agrees with the float64 evaluation of the same lens to float32 precision
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert torch.allclose(psf.detach().double().cpu(), ref, atol=tol * float(ref.max()))


def test_incoherent_cutoff_the_privacy_stop_relies_on(airy_lens):
    """The MTF of the in-focus lens is the diffraction-limited one, (2/pi)(acos v - v sqrt(1 - v^2)) with
    v = f / fc, fc = 2a / (lambda z), and nothing passes above fc: the band limit the privacy-stop preset uses."""
    cfg = airy_lens.config
    psf = airy_lens.psf().detach()[0]
    n = psf.shape[-1]
    mtf = torch.fft.fft2(torch.fft.ifftshift(psf)).abs()
    mtf = (mtf / mtf[0, 0]).numpy()
    fc = 2 * cfg.aperture_radius * cfg.pixel_pitch / (550e-9 * cfg.sensor_distance)  # [cycles / px]
    for v in (0.25, 0.5, 0.75):
        k = v * fc * n
        lo, w = int(math.floor(k)), k - math.floor(k)
        measured = (1 - w) * mtf[0, lo] + w * mtf[0, lo + 1]  # along x, linear between bins
        expected = 2 / math.pi * (math.acos(v) - v * math.sqrt(1 - v * v))
        assert measured == pytest.approx(expected, abs=0.02), v
    beyond = mtf[0, int(math.ceil(1.05 * fc * n)): n // 2]
    assert beyond.max() < 2e-3
