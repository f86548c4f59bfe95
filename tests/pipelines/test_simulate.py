"""--mode simulate end to end through pipelines.simulate.run with the real parser."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from data.files import save_image
from main import build_parser
from optics.lens import LensConfigError
from pipelines import simulate


def args_for(*argv):
    return build_parser().parse_args(["--mode", "simulate", "--device", "cpu", *argv])


def test_simulate_face_deid_writes_psf_figures_summary_and_captures(tmp_path):
    images = tmp_path / "faces"
    rng = np.random.default_rng(0)
    save_image(images / "a.png", rng.random((40, 48, 3)).astype(np.float32))
    save_image(images / "b.jpg", np.full((32, 32, 3), 0.5, np.float32))
    out = tmp_path / "out"
    simulate.run(args_for("--lens", "face-deid", "--out", str(out), "--images", str(images), "--no_noise"))

    psf = np.load(out / "psf.npy")
    assert psf.shape == (3, 256, 256) and psf.dtype == np.float32
    np.testing.assert_allclose(psf.sum(axis=(1, 2)), 1.0, atol=1e-5)
    assert (psf >= 0).all()
    for name in ("psf.png", "mtf.png"):
        assert (out / name).stat().st_size > 1000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lens"]["focus_distance"] == 5.0 and summary["pixel_pitch_m"] == pytest.approx(3.713103e-6)
    chans = summary["channels"]
    assert len(chans) == 3
    for ch, geo in zip(chans, summary["geometric_blur_diameter_px"]):
        assert ch["ee80_radius_m"] == pytest.approx(ch["ee80_radius_px"] * 3.713103e-6)
        assert ch["ee50_radius_px"] < ch["ee80_radius_px"] < geo / 2 * 1.1
        assert 0 < ch["strehl"] < 0.05  # strongly defocused
    from data.images import read_image
    a = read_image(out / "captures" / "a.png")
    b = read_image(out / "captures" / "b.png")  # same stem, PNG
    assert a.shape == (40, 48, 3) and b.shape == (32, 32, 3)
    # linear blur of a flat grey 32 x 32 image: pixel (16, 16) collects the PSF offsets (-16, 16] of the centre
    expected = 0.5 * psf[:, 113:145, 113:145].sum(axis=(1, 2))
    np.testing.assert_allclose(b[16, 16], expected, atol=2 / 255)
    assert (b[0, 0] < b[16, 16]).all()  # borders darken: nothing wraps around


def test_simulate_in_focus_at_infinity_override(tmp_path):
    out = tmp_path / "out"
    simulate.run(args_for("--lens", "in-focus", "--out", str(out), "--object_distance", "inf"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lens"]["object_distance"] == "inf"
    # at infinity the 550 nm channel is defocused by 1 / 5 m: geometric blur 2 a z / 5 m = 40 um = 10.8 px
    assert summary["geometric_blur_diameter_px"][1] == pytest.approx(10.77, abs=0.05)


def test_simulate_with_calibrated_psf_file(tmp_path):
    from hardware.psf_io import save_calibrated_psf

    psf = np.zeros((3, 33, 33), np.float32)
    psf[:, 14:19, 14:19] = 1.0
    path = tmp_path / "measured.npy"
    save_calibrated_psf(path, psf, {"pixel_pitch": 3.713103e-6})
    out = tmp_path / "out"
    simulate.run(args_for("--psf", str(path), "--out", str(out)))
    loaded = np.load(out / "psf.npy")
    np.testing.assert_allclose(loaded, psf / 25.0, atol=1e-7)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["source"] == "psf" and summary["pixel_pitch_m"] == pytest.approx(3.713103e-6)
    # a 5 x 5 box: half of the energy within a radius of about sqrt(12.5 / pi) px
    assert summary["channels"][0]["ee50_radius_px"] == pytest.approx(np.sqrt(12.5 / np.pi), rel=0.1)


def test_simulate_bad_lens_file_names_the_key(tmp_path):
    lens = tmp_path / "bad.yaml"
    lens.write_text(yaml.safe_dump({"wavelengths": [550e-9], "aperture_radius": 2e-3, "focus_distance": 5.0,
                                    "sensor_distance": 0.05, "object_distance": 0.75,
                                    "pixel_pitch": 3.713103e-6, "psf_size": 256, "material": "glass"}))
    with pytest.raises(LensConfigError, match="'material'"):
        simulate.run(args_for("--lens", str(lens), "--out", str(tmp_path / "out")))
