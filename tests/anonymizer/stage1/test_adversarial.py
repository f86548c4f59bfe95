"""Adversarial Stage I: the privacy term's gradient reaches the lens, a short min-max run lowers its own
adversary's success on held-out pairs, and the quantisation-aware lens images as its fabricated element."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from anonymizer.stage1.losses import adversarial_privacy_loss
from anonymizer.stage1.trainer import FaceLandmarkSet, Stage1Config, Stage1Trainer
from metrics.inverter import Inverter
from optics.camera import Camera
from optics.lens import Lens, load_lens_config
from optics.quantize import FabricatedLens, QuantizedLens, default_quantize_range, lens_from_state
from tests.helpers import NBA_NAMES, nba_dir

SIZE = 64


def _faces(n: int = 8) -> torch.Tensor:
    from data.datasets import load_image

    return torch.stack([load_image(nba_dir() / name, SIZE) for name in NBA_NAMES[:n]])


def _small_camera() -> Camera:
    # a pupil grid fine enough that the trained phase stays resolvable (Lens.project keeps it so) with room to move
    return Camera(Lens(load_lens_config("in-focus", psf_size=32, pupil_samples=128)), noise=True)


def test_adversarial_gradient_reaches_the_lens():
    camera = _small_camera()
    images = _faces(4)
    torch.manual_seed(0)
    adversary = Inverter(base=4, depth=2).requires_grad_(False)
    loss = adversarial_privacy_loss(adversary(camera(images).clamp(0, 1)), images)
    assert 0.0 < loss.item() <= 1.0  # a sharp lens passes identity-band detail the (even untrained) net keeps
    (grad,) = torch.autograd.grad(loss, camera.lens.zernike_coeffs)
    assert torch.isfinite(grad).all() and float(grad.abs().max()) > 0


class _Faces:
    """Minimal dataset: (image, label, path) items of the real headshots."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], 0, f"face{i}"


@pytest.fixture(scope="module")
def face_sets(tmp_path_factory):
    from anonymizer.stage1.teacher import LandmarkTeacher
    from data.datasets import load_image
    from data.files import save_image

    folder = tmp_path_factory.mktemp("adv_faces")
    files = []
    for name in NBA_NAMES:
        path = folder / f"{Path(name).stem}.png"
        save_image(path, load_image(nba_dir() / name, SIZE).permute(1, 2, 0).numpy())
        files.append(path)
    teacher = LandmarkTeacher("dlib", cache_dir=tmp_path_factory.mktemp("teacher"))
    res = teacher.landmarks_for_files(files, SIZE)
    images = _faces(len(files))
    train = FaceLandmarkSet(_Faces(images[:5]), res.landmarks[:5], res.found[:5])
    val = FaceLandmarkSet(_Faces(images[5:]), res.landmarks[5:], res.found[5:])
    return train, val


def _run(train, val, lambda_adv: float, steps: int = 30) -> float:
    cfg = Stage1Config(img_size=SIZE, batch_size=4, heatmap_mode="landmarks", heatmap_sigma=2.0, lambda_privacy=0.0,
                       lambda_adv=lambda_adv, optics_lr=0.05, regressor_lr=1e-2, seed=1,
                       regressor={"base": 8, "depth": 2}, adversary={"base": 8, "depth": 2}, adversary_lr=3e-3)
    trainer = Stage1Trainer(_small_camera(), cfg, train, val)
    for _ in range(steps):
        trainer.train_step()
    return trainer.evaluate(val)["adversary_identity_correlation"]


def test_wiener_term_trains_the_lens_and_leaves_a_frozen_lens_alone(face_sets):
    train, _ = face_sets
    cfg = Stage1Config(img_size=SIZE, batch_size=4, heatmap_mode="landmarks", heatmap_sigma=2.0, lambda_privacy=0.0,
                       lambda_wiener=1.0, seed=1, regressor={"base": 8, "depth": 2})
    trainer = Stage1Trainer(_small_camera(), cfg, train, None)
    images, landmarks, found = train.batch([0, 1, 2, 3])
    total, scalars, _ = trainer.losses(images, landmarks, found, trainer._generator(0))
    # a sharp lens: Wiener with the true PSF restores identity-band detail
    assert 0.2 < scalars["adv_wiener"] <= 1.0
    grad = torch.autograd.grad(total, trainer.camera.lens.zernike_coeffs, allow_unused=True)[0]
    assert grad is not None and float(grad.abs().max()) > 0
    frozen = Stage1Trainer(_small_camera(), Stage1Config(**{**cfg.__dict__, "freeze_lens": True}), train, None)
    _, s2, _ = frozen.losses(images, landmarks, found, frozen._generator(0))
    assert "adv_wiener" in s2 and s2["total"] == pytest.approx(s2["heatmap"] + s2["nme"], rel=1e-5)


@pytest.mark.slow
def test_short_adversarial_run_lowers_its_adversarys_success(face_sets):
    train, val = face_sets
    # same seeds, data and adversary; only the pressure of the privacy term on the lens differs
    passive = _run(train, val, 1e-9)
    adversarial = _run(train, val, 20.0)
    assert adversarial < passive - 0.1, (adversarial, passive)


def test_fabricated_lens_images_as_the_exported_element(tmp_path):
    from hardware.fabrication import export_height_map, import_height_map, lens_with_height_map

    cfg = load_lens_config("in-focus", psf_size=64, zernike={4: 0.0})
    cfg = cfg.replace(height_range=list(default_quantize_range(cfg)))
    torch.manual_seed(0)
    coeffs = torch.randn(len(cfg.learnable_indices)) * 0.3 * cfg.wave_height
    psfs = {}
    for cls in (QuantizedLens, FabricatedLens):
        lens = cls(cfg, 16)
        with torch.no_grad():
            lens.zernike_coeffs.copy_(coeffs)
        h = lens.height_map().detach().double().numpy()
        paths = export_height_map(tmp_path / cls.__name__, h, 2 * cfg.aperture_radius / h.shape[0], 16,
                                  *cfg.height_range, cfg.material, cfg.wavelengths,
                                  aperture_radius=cfg.aperture_radius)
        made = lens_with_height_map(lens, import_height_map(paths["png"])[0])
        with torch.no_grad():
            design, fab = lens.psf(), made.psf()
        psfs[cls.__name__] = float(torch.linalg.vector_norm(fab - design) / torch.linalg.vector_norm(design))
    # the fabricated model is the element (float32 rounding only); the pupil-sample model is not
    assert psfs["FabricatedLens"] < 1e-4
    assert psfs["QuantizedLens"] > 10 * psfs["FabricatedLens"]
    # a checkpoint's quantize entry rebuilds the same kind of lens
    lens = FabricatedLens(cfg, 16)
    state = {"levels": 16, "h_min": lens.h_range[0], "h_max": lens.h_range[1], "model": "fabricated"}
    rebuilt = lens_from_state(cfg.to_dict(), lens.state_dict(), state)
    assert type(rebuilt) is FabricatedLens
    with pytest.raises(ValueError, match="unknown quantisation model"):
        lens_from_state(cfg.to_dict(), lens.state_dict(), dict(state, model="foo"), source="x.ckpt")
