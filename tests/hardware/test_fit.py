"""Lens-model fit on synthetic measurements of a known lens (noise, background, sub-pixel shift, hot pixels)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hardware.calibration import CleaningConfig, clean_measurement
from hardware.fit import FitConfig, LensFitter, fit_lens
from optics.analysis import centroid as psf_centroid
from optics.lens import Lens
from tests.helpers import WAVE_HEIGHT, measurement, small_lens_config, synthetic_psf_frames

DEPTHS = [5.0, 3.0]
TRUTH = {4: 0.30 * WAVE_HEIGHT, 6: 0.20 * WAVE_HEIGHT, 8: -0.15 * WAVE_HEIGHT}


def test_fit_recovers_zernike_terms_at_the_noise_floor():
    cfg = small_lens_config()
    # the column shift offsets the coma's centroid shift (~ -1.6 px): the frames need no whole-pixel crop, so
    # the 64 px frames match the periodic 64 px model window exactly (real frames are larger than the window)
    frames, expected = synthetic_psf_frames(TRUTH, DEPTHS, shift=(0.3, 1.2))
    hot = [(9, 13), (55, 41)]
    for y, x in hot:
        frames[..., y, x] += 5000.0
    clean_cfg = CleaningConfig(psf_size=64, target_pitch=cfg.pixel_pitch)
    cleaned = clean_measurement(measurement(frames, DEPTHS, cfg.pixel_pitch), clean_cfg)
    for rep in cleaned.report["frames"]:
        assert sorted(map(tuple, rep["hot_pixels"])) == hot
    # noise floor: the same cleaning applied to the noise-free frames
    ideal = clean_measurement(measurement(expected, DEPTHS, cfg.pixel_pitch), clean_cfg).psf_fit
    floor = np.linalg.norm(cleaned.psf_fit - ideal) / np.linalg.norm(cleaned.psf_fit)

    result = fit_lens(Lens(cfg), cleaned.psf_fit, DEPTHS, FitConfig(iters=300), progress=False)
    for j, value in TRUTH.items():
        assert result.zernike[j] == pytest.approx(value, rel=0.10), j
    others = [abs(v) for j, v in result.zernike.items() if j not in TRUTH]
    assert max(others) < 0.03 * WAVE_HEIGHT
    assert not result.sensor_distance_fitted and result.sensor_distance_error == 0.0
    assert result.residual_rms_relative <= 1.05 * floor
    assert result.residual_rms_relative >= 0.8 * floor  # a handful of parameters cannot fit the noise away
    # the decentre is the shift the frames were made with
    assert np.allclose(result.decentre_px, [[0.3, 1.2]] * 2, atol=0.05)
    assert result.fitted.shape == result.residual.shape == (2, 3, 64, 64)


def test_decentre_tilt_moves_the_psf_by_whole_pixels():
    cfg = small_lens_config()
    lens = Lens(cfg)
    with torch.no_grad():
        meas = torch.stack([lens.psf(d) for d in DEPTHS]).double().numpy()
    fitter = LensFitter(lens, meas, DEPTHS, FitConfig())
    params = fitter.new_params()
    with torch.no_grad():
        moved = fitter.lens_psf(params, torch.tensor([[2.0, -3.0], [2.0, -3.0]], dtype=torch.float64))
    # exact at the design wavelength (green); the tilt's dispersion moves red / blue ~1 % more or less
    assert np.allclose(moved.numpy()[:, 1], np.roll(meas, (2, -3), axis=(-2, -1))[:, 1], atol=1e-6)
    shift = psf_centroid(moved[0].numpy()) - psf_centroid(meas[0])
    assert np.allclose(shift, [[2.0, -3.0]] * 3, atol=0.05)
    with pytest.raises(ValueError, match="psf_size is 64"):
        LensFitter(lens, meas[..., :32, :32], DEPTHS, FitConfig())


def test_sensor_distance_error_fitted_when_defocus_is_not():
    """Noll 4 and the sensor distance are degenerate; with 4 left out the fit finds the sensor-distance error."""
    cfg = small_lens_config()
    delta = 2.0e-4  # [m]: ~0.3 waves of defocus; the focal length stays that of the design
    truth = Lens(cfg.replace(focal_length=cfg.focal_length_design, sensor_distance=cfg.sensor_distance + delta,
                             zernike={6: 0.2 * WAVE_HEIGHT}))
    with torch.no_grad():
        psf = torch.stack([truth.psf(d) for d in DEPTHS]).double().numpy()
    frames = np.random.default_rng(0).poisson(psf * 3e6 + 50.0)
    cleaned = clean_measurement(measurement(frames, DEPTHS, cfg.pixel_pitch), CleaningConfig(psf_size=64))
    result = fit_lens(Lens(cfg), cleaned.psf_fit, DEPTHS, FitConfig(iters=150, zernike=(5, 6, 7, 8)),
                      progress=False)
    assert result.sensor_distance_fitted
    assert result.sensor_distance_error == pytest.approx(delta, rel=0.05)
    assert result.zernike[6] == pytest.approx(0.2 * WAVE_HEIGHT, rel=0.05)
