"""``--mode calibrate`` and ``--mode fabricate`` end to end on files written by the test."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
import yaml

import main
from hardware.psf_io import load_calibrated_psf
from optics.lens import Lens, load_lens_config
from tests.helpers import WAVE_HEIGHT, small_lens_config, synthetic_psf_frames, write_capture

TRUTH = {4: 0.30 * WAVE_HEIGHT, 6: 0.20 * WAVE_HEIGHT, 8: -0.15 * WAVE_HEIGHT}


def write_lens_yaml(path, cfg) -> str:
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return str(path)


def write_measurement(folder, depths, peak_adu=50000.0, background=50.0):
    frames, _ = synthetic_psf_frames(TRUTH, depths, shift=(0.3, 1.2), photons=1.0, background=0.0, noise=False)
    rng = np.random.default_rng(7)
    photons = peak_adu / frames.max()
    for d, dist in enumerate(depths):
        for c, name in enumerate("RGB"):
            adu = rng.poisson(frames[d, c] * photons + background) + rng.normal(0, 2.0, frames.shape[-2:])
            write_capture(folder / f"psf_{d}_{name}.png", np.clip(np.round(adu), 0, 65535).astype(np.uint16),
                          channel=name, object_distance=dist, pixel_pitch=small_lens_config().pixel_pitch,
                          bit_depth=16, exposure=0.01)
    dark = np.clip(np.round(rng.normal(background, 2.0, frames.shape[-2:])), 0, None).astype(np.uint16)
    return write_capture(folder.parent / "dark.png", dark, exposure=0.01)


def test_calibrate_end_to_end_png16(tmp_path):
    depths = [5.0, 3.0]
    psf_dir = tmp_path / "captures"
    dark = write_measurement(psf_dir, depths)
    lens_file = write_lens_yaml(tmp_path / "lens.yaml", small_lens_config())
    out = tmp_path / "out"
    rc = main.main(["--mode", "calibrate", "--psf_dir", str(psf_dir), "--dark", str(dark), "--lens", lens_file,
                    "--out", str(out), "--fit_iters", "200", "--log_level", "WARNING"])
    assert rc == 0
    psf = np.load(out / "calibrated_psf.npy")
    assert psf.shape == (3, 64, 64) and psf.min() >= 0 and np.allclose(psf.sum((1, 2)), 1.0, atol=1e-5)
    assert load_calibrated_psf(out / "calibrated_psf.npy").shape == (3, 64, 64)
    assert np.load(out / "calibrated_psf_stack.npy").shape == (2, 3, 64, 64)
    fit = json.loads((out / "fit.json").read_text())
    for j, value in TRUTH.items():
        assert fit["zernike"][str(j)] == pytest.approx(value, rel=0.10)
    assert fit["sensor_distance_error"] == 0.0 and fit["residual_rms_relative"] < 0.05
    assert set(fit["shift_px"]) == {"0", "1", "2"} and fit["shift_px"]["0"][0] == pytest.approx(-0.3, abs=0.05)
    ee = fit["ee50_px"]
    assert len(ee["measured"]) == len(ee["fitted"]) == len(ee["design"]) == 2
    assert np.allclose(ee["measured"], ee["fitted"], rtol=0.05)
    assert (out / "calibration.png").stat().st_size > 0 and (out / "residual.npy").is_file()
    # the fitted lens file is a lens every mode can use, and it images like the truth
    fitted = Lens(load_lens_config(out / "fitted_lens.yaml"))
    truth = Lens(small_lens_config(zernike=TRUTH))
    with torch.no_grad():
        diff = torch.linalg.vector_norm(fitted.psf(3.0) - truth.psf(3.0)) / torch.linalg.vector_norm(truth.psf(3.0))
    assert float(diff) < 0.1
    # --psf FILE replaces the lens in the camera of every mode
    from pipelines.common import build_camera
    cam = build_camera(psf=str(out / "calibrated_psf.npy"), noise=False)
    assert torch.allclose(cam.psf(), load_calibrated_psf(out / "calibrated_psf.npy"))
    flat = cam(torch.full((1, 3, 128, 128), 0.5))  # energy-preserving: a flat field stays flat in the middle
    assert torch.allclose(flat[..., 64, 64], torch.full((1, 3), 0.5), atol=0.01)


def test_calibrate_reports_bad_input_without_traceback(tmp_path, caplog):
    psf_dir = tmp_path / "captures"
    write_measurement(psf_dir, [5.0], peak_adu=80000.0)  # clipped at 65535
    lens_file = write_lens_yaml(tmp_path / "lens.yaml", small_lens_config())
    with caplog.at_level(logging.ERROR):
        rc = main.main(["--mode", "calibrate", "--psf_dir", str(psf_dir), "--lens", lens_file,
                        "--out", str(tmp_path / "o"), "--log_level", "WARNING"])
    assert rc == 2
    assert "saturated pixel" in caplog.text and "psf_0_" in caplog.text
    two = tmp_path / "two_channels"
    two.mkdir()
    for p in sorted(psf_dir.glob("psf_0_[RG].*")):
        (two / p.name).write_bytes(p.read_bytes())
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        rc = main.main(["--mode", "calibrate", "--psf_dir", str(two), "--lens", lens_file, "--allow_saturated",
                        "--out", str(tmp_path / "o"), "--log_level", "WARNING"])
    assert rc == 2 and "channel(s) [2] missing" in caplog.text


def test_fabricate_from_stage1_checkpoint(tmp_path):
    from data.checkpoint import save_checkpoint
    from hardware.fabrication import import_height_map, level_step

    cfg = small_lens_config(zernike={4: 0.4 * WAVE_HEIGHT, 7: 0.2 * WAVE_HEIGHT}, height_map_samples=64)
    lens = Lens(cfg)
    ckpt = tmp_path / "000010_optics.ckpt"
    from optics.sensor import sensor_config

    save_checkpoint(ckpt, {"step": 10, "lens_config": cfg.to_dict(), "lens": lens.state_dict(),
                           "sensor": sensor_config("mono").to_dict()})
    out = tmp_path / "fab"
    rc = main.main(["--mode", "fabricate", "--lens", str(ckpt), "--levels", "8", "--out", str(out),
                    "--log_level", "WARNING"])
    assert rc == 0
    report = json.loads((out / "fabrication_report.json").read_text())
    h, meta = import_height_map(out / "height_map.png")
    assert np.array_equal(h, np.load(out / "height_map.npy"))
    assert meta["levels"] == 8 and report["levels_used"] <= 8
    assert report["height_error_max"] <= level_step(8, meta["height_min"], meta["height_max"]) / 2 * (1 + 1e-9)
    assert 0 < report["psf_change_relative_rms"] < 1 and (out / "fabrication.png").is_file()
    assert report["sensor_kind"] == "monochrome"  # the element was designed for the checkpoint's sensor
