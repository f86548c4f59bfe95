"""Cleaning of measured frames: registration, hot pixels, saturation, resampling, background."""
from __future__ import annotations

import numpy as np
import pytest

from hardware.calibration import (CleaningConfig, SaturatedPSFError, area_matrix, centroid, clean_measurement,
                                  to_calibrated)
from optics.analysis import centroid as psf_centroid
from tests.helpers import gaussian_spot, measurement

PITCH = 3.0e-6


def spot_frame(rng, centre=(41.37, 38.81), shape=(80, 80), photons=1e6, bg=100.0, sigma=(2.5, 3.0)):
    expected = gaussian_spot(shape, centre, sigma) * photons + bg
    return rng.poisson(expected).astype(float), expected


def test_registration_recovers_known_subpixel_shift(rng):
    truth = (41.37, 38.81)
    frame, _ = spot_frame(rng, truth)
    cy, cx = centroid(frame - 100.0)
    assert abs(cy - truth[0]) < 0.05 and abs(cx - truth[1]) < 0.05
    cleaned = clean_measurement(measurement(frame[None, None], [1.0], PITCH), CleaningConfig(psf_size=64))
    shift = cleaned.report["frames"][0]["shift_px"]
    assert shift == pytest.approx([40 - truth[0], 40 - truth[1]], abs=0.05)
    # the registered PSF has its centroid on the grid centre (32, 32)
    got = psf_centroid(np.clip(cleaned.psf[0], 0, None))[0]
    assert got == pytest.approx([32.0, 32.0], abs=0.05)
    assert cleaned.psf[0, 0].sum() == pytest.approx(1.0)


def test_hot_pixels_removed_and_reported(rng):
    frame, expected = spot_frame(rng)
    hot = [(5, 70), (60, 12), (44, 30)]  # the last one sits on the PSF's flank
    for y, x in hot:
        frame[y, x] += 3000.0
    cleaned = clean_measurement(measurement(frame[None, None], [1.0], PITCH), CleaningConfig(psf_size=80))
    rep = cleaned.report["frames"][0]
    assert sorted(map(tuple, rep["hot_pixels"])) == sorted(hot)
    no_hot = clean_measurement(measurement(spot_frame(np.random.default_rng(1234))[0][None, None], [1.0], PITCH),
                               CleaningConfig(psf_size=80))
    assert no_hot.report["frames"][0]["hot_pixels"] == []
    # replaced values are close to what the pixel should have held (within a few noise sigma)
    for y, x in hot:
        assert abs(cleaned.psf_fit[0, 0, y, x] - no_hot.psf_fit[0, 0, y, x]) < 5 * np.sqrt(expected[y, x]) / 1e6


def test_saturated_psf_is_an_error_naming_file_and_count(rng):
    frame, _ = spot_frame(rng, photons=3e6)
    level = 4095.0
    n_clipped = int((frame >= level).sum())
    assert n_clipped > 3
    frame = np.minimum(frame, level)
    paths = [["psf_green.png"]]
    with pytest.raises(SaturatedPSFError, match=f"{n_clipped} saturated pixel") as err:
        clean_measurement(measurement(frame[None, None], [1.0], PITCH, paths, saturation=level),
                          CleaningConfig(psf_size=64))
    assert "psf_green.png" in str(err.value)
    ok = clean_measurement(measurement(frame[None, None], [1.0], PITCH, paths, saturation=level),
                           CleaningConfig(psf_size=64, allow_saturated=True))
    assert ok.report["frames"][0]["saturated_pixels"] == n_clipped


def test_area_resampling_preserves_energy_and_centroid(rng):
    # 2x coarser output pitch: a 2x2 block sum, energy and centroid kept exactly
    img = rng.random((40, 40))
    a = area_matrix(40, 1.0, 20.5, 20, 2.0)  # input spans [-21, 19], output pixel i [2(i - 10) -+ 1]
    out = a @ img @ a.T
    assert out.sum() == pytest.approx(img.sum())
    assert np.allclose(out, img.reshape(20, 2, 20, 2).sum((1, 3)))
    frame, _ = spot_frame(rng, centre=(40.0, 40.0), photons=1e7)
    cleaned = clean_measurement(measurement(frame[None, None], [1.0], PITCH),
                                CleaningConfig(psf_size=48, target_pitch=1.5 * PITCH))
    assert cleaned.report["frames"][0]["resample"] == "area_rebin"
    got = psf_centroid(np.clip(cleaned.psf[0], 0, None))[0]
    assert got == pytest.approx([24.0, 24.0], abs=0.05)


def test_dark_frame_subtraction_and_calibrated_output(rng):
    frame, _ = spot_frame(rng)
    dark = np.full((80, 80), 100.0)
    meas = measurement(frame[None, None] + 500.0, [1.0], PITCH)
    meas.dark = dark[None] + 500.0
    cleaned = clean_measurement(meas, CleaningConfig(psf_size=64))
    rep = cleaned.report["frames"][0]
    assert rep["background"] == "dark_frame" and abs(rep["corner_background_adu"]) < 2.0
    cal, clipped = to_calibrated(cleaned.psf)
    assert cal.min() >= 0 and np.allclose(cal.sum((-2, -1)), 1.0) and 0 <= clipped < 0.2


def test_flat_signal_frame_is_an_error(rng):
    frame = rng.normal(100.0, 3.0, (64, 64))
    with pytest.raises(ValueError, match="frame_d0_c0.png: no PSF signal"):
        clean_measurement(measurement(frame[None, None], [1.0], PITCH), CleaningConfig(psf_size=32))
