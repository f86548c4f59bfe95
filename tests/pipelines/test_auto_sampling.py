"""A plain lens file without any sampling key works in ``--mode simulate`` and ``--mode calibrate``.

The lens (550 nm, a = 1 mm, f = 50 mm, sensor at the focus, object at infinity, 1 um pixels, psf_size 128) needs
more pupil samples than psf_size; the grid is chosen automatically. Its PSF is the Airy pattern: first zero at
1.22 lambda N with N = f / (2a) = 25, i.e. 16.775 um = 16.8 px.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import main
from optics import analysis
from optics.lens import Lens, load_lens_config
from tests.helpers import WAVE_HEIGHT, write_capture

LENS_YAML = """\
wavelengths: [550.0e-9]
design_wavelength: 550.0e-9
aperture_radius: 1.0e-3
focal_length: 50.0e-3
sensor_distance: 50.0e-3
object_distance: .inf
pixel_pitch: 1.0e-6
psf_size: 128
"""
FIRST_ZERO_PX = 1.22 * 550e-9 * (50e-3 / 2e-3) / 1e-6


def first_zero(psf: np.ndarray) -> float:
    """Radius [px] of the minimum of the azimuthal profile around 1.22 lambda N (centre (64, 64))."""
    radii, prof = analysis.radial_profile(torch.as_tensor(psf), center=np.array([64.0, 64.0]))
    sel = (radii > 0.7 * FIRST_ZERO_PX) & (radii < 1.3 * FIRST_ZERO_PX)
    return float(radii[sel][np.argmin(prof[0][sel])])


@pytest.fixture
def lens_file(tmp_path):
    path = tmp_path / "plain.yaml"
    path.write_text(LENS_YAML)
    return path


def test_simulate_plain_lens_without_sampling_key(tmp_path, lens_file):
    out = tmp_path / "sim"
    rc = main.main(["--mode", "simulate", "--lens", str(lens_file), "--out", str(out), "--device", "cpu",
                    "--log_level", "WARNING"])
    assert rc == 0
    psf = np.load(out / "psf.npy")
    assert psf.shape == (1, 128, 128)
    assert first_zero(psf) == pytest.approx(FIRST_ZERO_PX, rel=0.02)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lens"]["pupil_samples"] is None  # nothing was added to the user's design


def test_calibrate_plain_lens_without_sampling_key(tmp_path, lens_file):
    # "measured" PSF: the lens' own Airy pattern photographed on a 16-bit sensor with shot and read noise
    with torch.no_grad():
        psf = Lens(load_lens_config(lens_file)).psf()[0].double().numpy()
    rng = np.random.default_rng(3)
    background = 40.0
    adu = rng.poisson(psf * (50000.0 / psf.max()) + background) + rng.normal(0, 2.0, psf.shape)
    captures = tmp_path / "captures"
    write_capture(captures / "psf_0.png", np.clip(np.round(adu), 0, 65535).astype(np.uint16), channel=0,
                  object_distance=float("inf"), pixel_pitch=1e-6, bit_depth=16, exposure=0.01)
    dark = np.clip(np.round(rng.normal(background, 2.0, psf.shape)), 0, None).astype(np.uint16)
    dark_file = write_capture(tmp_path / "dark.png", dark, exposure=0.01)
    out = tmp_path / "cal"
    rc = main.main(["--mode", "calibrate", "--psf_dir", str(captures), "--dark", str(dark_file), "--lens",
                    str(lens_file), "--out", str(out), "--fit_zernike", "4", "--fit_iters", "15",
                    "--log_level", "WARNING"])
    assert rc == 0
    calibrated = np.load(out / "calibrated_psf.npy")
    assert calibrated.shape == (1, 128, 128)
    assert first_zero(calibrated) == pytest.approx(FIRST_ZERO_PX, rel=0.02)
    fit = json.loads((out / "fit.json").read_text())
    assert abs(fit["zernike"]["4"]) < 0.05 * WAVE_HEIGHT  # an in-focus lens fits no defocus
    assert load_lens_config(out / "fitted_lens.yaml").num_pupil >= 220  # the fitted design samples itself too
