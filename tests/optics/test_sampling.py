"""Automatic pupil sampling (optics/sampling.py): the smallest valid fast grid, closed forms, refusals."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from optics import analysis, sampling
from optics.lens import Lens, LensConfig, LensConfigError, load_lens_config

# a plain diffraction-limited lens as a new user writes it: no sampling key
PLAIN = dict(wavelengths=[550e-9], design_wavelength=550e-9, aperture_radius=1e-3, focal_length=50e-3,
             sensor_distance=50e-3, object_distance=math.inf, pixel_pitch=1e-6, psf_size=128)


def _smooth(n: int) -> bool:
    for f in (2, 3, 5):
        while n % f == 0:
            n //= f
    return n == 1


def test_fast_fft_size_is_the_next_5_smooth_number():
    for n in list(range(1, 300)) + [383, 1000, 4097]:
        m = sampling.fast_fft_size(n)
        assert m >= n and _smooth(m)
        assert not any(_smooth(k) for k in range(n, m))


def test_plain_lens_gets_the_smallest_grid_with_16_aperture_samples(caplog):
    with caplog.at_level(logging.INFO, logger="optics.lens_config"):
        cfg = LensConfig.from_dict(PLAIN)
        n = cfg.num_pupil
    # 2 a / dx >= 16 with dx = lambda z / (N p)  <=>  N >= 16 lambda z / (2 a p) = 220
    need = 16 * 550e-9 * 50e-3 / (2e-3 * 1e-6)
    assert need == pytest.approx(220)
    assert n == 225 and sampling.aperture_samples(cfg, n) >= 16  # 225 = 3^2 5^2, the first fast size >= 220
    assert "pupil grid 225 x 225 chosen automatically" in caplog.text
    # an explicit grid is an override and keeps the strict check
    with pytest.raises(LensConfigError) as info:
        LensConfig.from_dict({**PLAIN, "pupil_samples": 128})
    assert info.value.key == "pupil_samples" and "9.3 pupil samples" in str(info.value)
    assert LensConfig.from_dict({**PLAIN, "pupil_samples": 512}).num_pupil == 512


def test_plain_lens_airy_first_zero():
    psf = Lens(LensConfig.from_dict(PLAIN)).psf().detach()
    r0 = 1.22 * 550e-9 * (50e-3 / 2e-3) / 1e-6  # 1.22 lambda N [px]
    radii, prof = analysis.radial_profile(psf, center=np.array([64.0, 64.0]))
    sel = (radii > 0.7 * r0) & (radii < 1.3 * r0)
    assert radii[sel][np.argmin(prof[0][sel])] == pytest.approx(r0, rel=0.02)


def test_face_deid_keeps_its_grid_and_psf():
    auto = load_lens_config("face-deid")
    explicit = load_lens_config("face-deid", pupil_samples=256)
    assert auto.pupil_samples is None and auto.num_pupil == 256
    assert torch.equal(Lens(auto).psf(), Lens(explicit).psf())


def test_height_map_grows_the_grid_to_the_smallest_unaliased_size():
    base = load_lens_config("face-deid")
    cfg = base.replace(zernike={4: 0.0, 11: 2.0e-6})  # 2 um of spherical aberration
    n = cfg.num_pupil
    assert n > 256 and _smooth(n)
    assert sampling.max_phase_step(cfg, n) < sampling.MAX_PHASE_STEP
    smaller = max(k for k in range(256, n) if _smooth(k))
    assert sampling.max_phase_step(cfg, smaller) >= sampling.MAX_PHASE_STEP
    with pytest.raises(LensConfigError) as info:  # the same design on the default grid aliases
        base.replace(zernike={4: 0.0, 11: 2.0e-6}, pupil_samples=256)
    assert info.value.key == "zernike"


def test_unaffordable_design_is_refused_with_size_and_memory():
    with pytest.raises(LensConfigError) as info:
        load_lens_config("face-deid", zernike={4: 0.0, 11: 2.0e-5})
    msg = str(info.value)
    assert info.value.key == "zernike" and "GiB" in msg and "pupil grid" in msg
    n = int(msg.split(" x ")[0].split()[-1])
    assert sampling.psf_memory_bytes(n, 3, 25) > sampling.MAX_AUTO_MEMORY


def _steep_state(cfg: LensConfig, coeffs: dict[int, float]) -> dict[str, torch.Tensor]:
    state = Lens(cfg).state_dict()
    for j, c in coeffs.items():
        state["zernike_coeffs"][cfg.learnable_indices.index(j)] = c
    return state


def test_stored_trained_surface_gets_the_grid_that_resolves_it():
    from optics.quantize import lens_from_state

    base = load_lens_config("face-deid")
    assert base.num_pupil == 256
    state = _steep_state(base, {11: 2.0e-6})  # learned, not in the config: the starting design's grid aliases it
    lens = lens_from_state(base.to_dict(), state, source="ckpt")
    designed = base.replace(zernike={4: 0.0, 11: 2.0e-6})  # the same surface written in the config
    assert lens.config.num_pupil == designed.num_pupil > 256
    assert lens.max_phase_step() < sampling.MAX_PHASE_STEP
    ref = Lens(designed)  # its learnable coefficients start at the config's
    assert torch.equal(ref.zernike_coeffs.detach(), lens.zernike_coeffs.detach())
    with torch.no_grad():
        assert torch.allclose(lens.psf(), ref.psf(), atol=1e-9)
    # an explicit grid is the user's choice: kept, and the lens itself says it aliases
    fixed = lens_from_state(base.replace(pupil_samples=256).to_dict(), state, source="ckpt")
    assert fixed.config.num_pupil == 256 and fixed.max_phase_step() >= sampling.MAX_PHASE_STEP


def test_projection_scales_a_too_steep_surface_back_onto_its_grid():
    cfg = load_lens_config("face-deid")
    lens = Lens(cfg)
    with torch.no_grad():
        lens.zernike_coeffs[cfg.learnable_indices.index(11)] = 2.0e-6
        lens.zernike_coeffs[cfg.learnable_indices.index(7)] = -0.5e-6
    before = lens.zernike_coeffs.detach().clone()
    assert lens.max_phase_step() >= sampling.MAX_PHASE_STEP
    lens.project()
    after = lens.zernike_coeffs.detach()
    assert lens.max_phase_step() < sampling.MAX_PHASE_STEP
    scale = float(after[cfg.learnable_indices.index(11)] / before[cfg.learnable_indices.index(11)])
    assert 0.2 < scale < 1.0 and torch.allclose(after, before * scale)  # uniform: the surface's shape is kept
