"""calibrate validates before writing; align skips what it cannot align and refuses folders that nest wrongly."""
from __future__ import annotations

import json

import numpy as np

from data.files import save_image


def test_calibrate_bad_fit_zernike_writes_nothing(tmp_path, cli, digest):
    psf_dir = tmp_path / "captures"
    save_image(psf_dir / "psf.png", np.zeros((16, 16), np.uint8))
    before = digest(tmp_path)
    out = tmp_path / "calib"
    rc, log = cli("--mode", "calibrate", "--psf_dir", psf_dir, "--out", out, "--fit_zernike", "4,100000")
    assert rc == 2 and "--fit_zernike '4,100000'" in log and "100000" in log.split("got ")[-1]
    assert not out.exists() and digest(tmp_path) == before


def test_align_skips_and_reports_an_image_too_small_for_a_face(tmp_path, cli, astronaut):
    inp, out = tmp_path / "inp", tmp_path / "out"
    save_image(inp / "astronaut.png", astronaut)
    save_image(inp / "tiny.png", np.full((12, 15, 3), 0.5, np.float32))
    rc, _ = cli("--mode", "align", "--inp_dir", inp, "--out_dir", out, "--img_size", "64")
    assert rc == 0
    report = json.loads((out / "align_report.json").read_text())
    assert report["aligned"] == 1 and report["num_inputs"] == 2
    assert report["failures"] == [{"file": "tiny.png", "reason": "too small: 15x12 px (a face needs at least 20 px)"}]
    assert (out / "astronaut.png").is_file()


def test_align_refuses_an_out_dir_that_contains_the_inp_dir(tmp_path, cli, astronaut, digest):
    inp = tmp_path / "data" / "faces"
    save_image(inp / "astronaut.png", astronaut)
    before = digest(tmp_path)
    rc, log = cli("--mode", "align", "--inp_dir", inp, "--out_dir", tmp_path / "data", "--img_size", "64")
    assert rc == 2
    assert f"--out_dir {tmp_path / 'data'} contains --inp_dir {inp}" in log
    assert digest(tmp_path) == before
