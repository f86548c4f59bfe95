"""Stage I: optics terms (closed forms), gradients into the lens, training, exact resume, data reports."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from anonymizer.stage1.heatmap import heatmap_loss, landmarks_to_heatmaps
from anonymizer.stage1.trainer import (FaceLandmarkSet, Stage1Config, Stage1Trainer, batch_indices, build_lens,
                               load_optics_checkpoint)
from anonymizer.stage1.losses import privacy_mtf_loss, psf_border_energy
from optics.binning import bin_psf, capture_psf, psf_binning
from optics.quantize import QuantizedLens
from anonymizer.stage1.teacher import LandmarkTeacher
from optics.camera import Camera
from optics.lens import Lens, load_lens_config
from tests.helpers import write_headshots

SIZE = 64
SMALL_REGRESSOR = {"base": 8, "depth": 2}


@pytest.fixture(scope="module")
def face_dir(tmp_path_factory) -> Path:
    """Eight real headshots (centre crops at 64 px), one corrupt PNG and one text file."""
    from data.files import save_bytes

    out = write_headshots(tmp_path_factory.mktemp("faces"), SIZE)
    save_bytes(out / "broken.png", b"\x89PNG\r\n\x1a\n this is not a png")
    save_bytes(out / "notes.txt", b"not an image")
    return out


@pytest.fixture(scope="module")
def face_set(face_dir, tmp_path_factory):
    from data.datasets import SourceDataset, scan

    scanned = scan(face_dir)
    dataset = SourceDataset(scanned, SIZE, cache=True)
    teacher = LandmarkTeacher("dlib", cache_dir=tmp_path_factory.mktemp("teacher"))
    result = teacher.landmarks_for_files(dataset.files, SIZE)
    assert result.found.sum() >= 5  # real faces: dlib finds most of them
    return FaceLandmarkSet(dataset, result.landmarks, result.found)


def _config(**kw) -> Stage1Config:
    base = dict(img_size=SIZE, batch_size=4, heatmap_mode="landmarks", num_landmarks=68, regressor_lr=1e-2,
                optics_lr=1e-3, heatmap_sigma=2.0, seed=3, regressor=dict(SMALL_REGRESSOR))
    base.update(kw)
    return Stage1Config(**base)


def _camera() -> Camera:
    # a small, valid simulation (32 px PSF window, 64-sample pupil) keeps the training tests fast
    return Camera(Lens(load_lens_config("in-focus", psf_size=32, pupil_samples=64)), noise=True)


# ------------------------------------------------------------------------------------------- optics terms
def test_binning_keeps_energy_and_centre_and_scales_the_blur():
    assert psf_binning(256) == 1 and psf_binning(64) == 4
    with pytest.raises(ValueError, match="divide"):
        psf_binning(96)
    delta = torch.zeros(3, 256, 256)
    delta[:, 128, 128] = 1.0
    b = capture_psf(delta, 64)
    assert b[:, b.shape[1] // 2, b.shape[2] // 2].tolist() == [1.0, 1.0, 1.0]
    # a uniform disc of radius 40 px at the reference pitch becomes a disc of radius ~10 px at 64 px
    yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    disc = (((xx - 128) ** 2 + (yy - 128) ** 2) <= 40 ** 2).float()[None]
    disc = disc / disc.sum()
    small = bin_psf(disc, 4)[0]
    assert small.sum().item() == pytest.approx(1.0, abs=1e-5)
    c = small.shape[0] // 2
    y, x = torch.meshgrid(torch.arange(small.shape[0]) - c, torch.arange(small.shape[1]) - c, indexing="ij")
    r2 = (small * (x ** 2 + y ** 2)).sum().item()  # second moment of a uniform disc: R^2 / 2
    assert math.sqrt(2 * r2) == pytest.approx(10.0, rel=0.05)


def test_privacy_term_is_one_for_a_perfect_lens_and_zero_for_a_flat_field():
    delta = torch.zeros(3, 65, 65)
    delta[:, 32, 32] = 1.0
    assert privacy_mtf_loss(delta, SIZE).item() == pytest.approx(1.0, abs=1e-6)  # MTF = 1 at every frequency
    flat = torch.full((3, SIZE, SIZE), 1.0 / SIZE ** 2)  # PSF as wide as the capture: MTF 0 except DC
    assert privacy_mtf_loss(flat, SIZE).item() == pytest.approx(0.0, abs=1e-9)
    # a 2-tap PSF (two points d px apart) has MTF^2 = cos^2(pi f d): its band average lies strictly inside
    two = torch.zeros(1, 65, 65)
    two[0, 32, 32] = two[0, 32, 34] = 0.5
    assert 0.2 < privacy_mtf_loss(two, SIZE).item() < 0.8


def test_defocused_face_deid_lens_transmits_far_less_identity_band_than_an_in_focus_lens():
    blurred = privacy_mtf_loss(capture_psf(Lens(load_lens_config("face-deid", psf_size=128)).psf(), SIZE),
                               SIZE).item()
    sharp = privacy_mtf_loss(capture_psf(Lens(load_lens_config("in-focus", psf_size=128)).psf(), SIZE),
                             SIZE).item()
    assert blurred < 0.05 * sharp


def test_border_energy_counts_only_the_outer_frame():
    psf = torch.zeros(1, 16, 16)
    psf[0, 8, 8] = 0.75
    psf[0, 0, 5] = 0.25  # in the outer 2-px frame
    assert psf_border_energy(psf).item() == pytest.approx(0.25)


def test_quantized_lens_has_the_requested_levels_and_passes_gradients():
    lens = QuantizedLens(load_lens_config("face-deid", psf_size=128), levels=4)
    with torch.no_grad():
        lens.zernike_coeffs[1] = 3e-7  # some tilt/astigmatism to quantise
    h = lens.height_map()
    assert len(torch.unique(h.detach())) <= 4
    privacy_mtf_loss(capture_psf(lens.psf(), SIZE), SIZE).backward()
    assert torch.isfinite(lens.zernike_coeffs.grad).all() and lens.zernike_coeffs.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------- training
def test_heatmap_loss_gradient_reaches_the_lens(face_set):
    cfg = _config(lambda_privacy=0.0, lambda_psf=0.0)
    trainer = Stage1Trainer(_camera(), cfg, face_set)
    images, landmarks, found = face_set.batch(range(4))
    psf = trainer.capture_psf()
    pred = trainer.regressor(trainer.camera(images, psf=psf))
    loss = heatmap_loss(pred, landmarks_to_heatmaps(landmarks, SIZE, cfg.sigma, "landmarks"), found)
    loss.backward()
    grad = trainer.lens.zernike_coeffs.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().max() > 0


def test_batches_depend_only_on_seed_and_step():
    a = [batch_indices(s, 3, 7, seed=5) for s in range(7)]
    assert a == [batch_indices(s, 3, 7, seed=5) for s in range(7)]
    # each epoch of 7 items is a permutation
    flat = sum(a, [])
    assert sorted(flat[:7]) == list(range(7)) and sorted(flat[7:14]) == list(range(7))
    assert a != [batch_indices(s, 3, 7, seed=6) for s in range(7)]


def test_short_run_lowers_the_loss(face_set):
    trainer = Stage1Trainer(_camera(), _config(heatmap_mode="grouped"), face_set)
    before = trainer.evaluate(face_set)
    coeffs = trainer.lens.zernike_coeffs.detach().clone()
    for _ in range(8):
        trainer.train_step()
    after = trainer.evaluate(face_set)
    assert after["heatmap"] < 0.85 * before["heatmap"]
    assert not torch.equal(trainer.lens.zernike_coeffs, coeffs)  # the lens was trained too
    assert after["num_valid"] == int(face_set.found.sum())


def test_kill_and_resume_gives_identical_losses(face_set, tmp_path):
    n = 4
    straight = Stage1Trainer(_camera(), _config(heatmap_mode="grouped"), face_set, checkpoint_dir=tmp_path / "a")
    for _ in range(n):
        straight.train_step()
    first = Stage1Trainer(_camera(), _config(heatmap_mode="grouped"), face_set, checkpoint_dir=tmp_path / "b")
    for _ in range(n // 2):
        first.train_step()
    first.save()
    del first  # "killed"
    torch.manual_seed(12345)  # the global RNG is disturbed between the runs
    resumed = Stage1Trainer(_camera(), _config(heatmap_mode="grouped"), face_set, checkpoint_dir=tmp_path / "b")
    resumed.resume(n // 2)
    for _ in range(n - n // 2):
        resumed.train_step()
    assert [h["total"] for h in resumed.history] == [h["total"] for h in straight.history]
    assert resumed.history == straight.history
    torch.testing.assert_close(resumed.lens.zernike_coeffs, straight.lens.zernike_coeffs, rtol=0, atol=0)
    # the checkpoint loads back as a frozen lens + regressor that reproduce the trained ones
    resumed.save()
    lens, regressor, meta = load_optics_checkpoint(tmp_path / "b" / f"{n:06d}_optics.ckpt")
    assert meta["heatmap"]["num_channels"] == 2 and meta["psf_binning"] == 4 and meta["step"] == n
    torch.testing.assert_close(lens.zernike_coeffs, resumed.lens.zernike_coeffs)
    x = torch.rand(1, 3, SIZE, SIZE)
    torch.testing.assert_close(regressor(x), resumed.regressor.eval()(x))


def test_corrupt_files_are_skipped_and_reported(face_dir, tmp_path):
    from pipelines.train_optics import load_face_set

    report: dict = {}
    teacher = LandmarkTeacher("dlib", cache_dir=tmp_path / "cache")
    data = load_face_set(face_dir, SIZE, teacher, report, "train")
    skipped = {Path(s["file"]).name for s in report["train"]["skipped"]}
    assert {"broken.png", "notes.txt"} <= skipped
    assert len(data) == 8 and report["train"]["num_images"] == 8
    assert report["train"]["num_without_face"] == int((~data.found).sum())
    # the teacher results are cached: a second call reads them (same landmarks, nothing recomputed)
    cached = teacher.landmarks_for_files(data.dataset.files, SIZE)
    np.testing.assert_array_equal(cached.found, data.found.numpy())
    assert len(list((tmp_path / "cache" / "dlib").glob("*.npz"))) == 8


def test_build_lens_quantised_option():
    config = load_lens_config("in-focus", psf_size=32, pupil_samples=64)
    assert type(build_lens(config)) is Lens
    assert isinstance(build_lens(config, 8), QuantizedLens)
    with pytest.raises(ValueError, match="quantize_levels"):
        QuantizedLens(config, 1)


# ------------------------------------------------------------------------------------ linear shape regressor
def test_linear_regressor_is_fitted_refitted_and_trains_the_lens(face_set, tmp_path):
    """The closed-form head starts fitted (train NME below the mean shape's), the lens gets a gradient through it,
    it is refitted every shape_refit_every steps, and a resume reproduces the losses exactly."""
    cfg = _config(regressor={"head": "linear"}, shape_copies=2, shape_refit_every=2, lambda_privacy=0.0)
    trainer = Stage1Trainer(_camera(), cfg, face_set, face_set, checkpoint_dir=tmp_path)
    before = [p.detach().clone() for p in trainer.lens.parameters()]
    first = trainer.train_step()
    assert trainer.shape_fit is not None and trainer.shape_fit["step"] == 0
    keep = face_set.found
    mean = face_set.landmarks[keep].mean(0, keepdim=True)
    from anonymizer.stage1.heatmap import landmark_nme
    mean_nme = float(landmark_nme(mean.expand_as(face_set.landmarks[keep]), face_set.landmarks[keep]).mean())
    assert trainer.shape_fit["train_nme"] < mean_nme
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, trainer.lens.parameters()))
    assert math.isfinite(first["nme"])
    trainer.train_step()
    trainer.save()
    later = [trainer.train_step() for _ in range(2)]
    assert trainer.shape_fit["step"] == 2  # refitted at step 2
    again = Stage1Trainer(_camera(), cfg, face_set, face_set, checkpoint_dir=tmp_path)
    again.resume(2)
    assert [again.train_step()["total"] for _ in range(2)] == [v["total"] for v in later]
    optic, regressor, meta = load_optics_checkpoint(tmp_path / "000002_optics.ckpt")
    assert regressor.config["head"] == "linear" and meta["heatmap"]["num_channels"] == 68


def test_a_monochrome_sensor_is_trained_through_and_travels_with_the_checkpoint(face_set, tmp_path):
    """Stage I through a monochrome sensor (the Wiener term deconvolves with the recorded PSF): the lens learns,
    the checkpoint records the sensor and Stage II's frozen optics rebuild it (grey captures in every channel)."""
    from anonymizer.stage2.sampling import frozen_optics_from_checkpoint
    from optics.sensor import sensor_config

    lens = Lens(load_lens_config("in-focus", psf_size=32, pupil_samples=64))
    camera = Camera(lens, sensor=sensor_config("mono"), noise=True)
    cfg = _config(regressor={"head": "linear"}, shape_copies=2, lambda_privacy=0.0, lambda_wiener=1.0)
    trainer = Stage1Trainer(camera, cfg, face_set, face_set, checkpoint_dir=tmp_path)
    before = [p.detach().clone() for p in trainer.lens.parameters()]
    logs = trainer.train_step()
    assert math.isfinite(logs["adv_wiener"])
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, trainer.lens.parameters()))
    path = trainer.save()
    frozen = frozen_optics_from_checkpoint(path, SIZE, noise=False)
    assert frozen.camera.sensor.config == sensor_config("mono")
    cap = frozen.camera(face_set.batch(range(2))[0])
    assert torch.equal(cap[:, 0], cap[:, 2]) and float(cap.std()) > 0
