"""Helpers shared by the modes: device, seeding, the camera every face-imaging mode builds."""
from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_DIR = REPO_ROOT / "checkpoints"
SHIPPED_OPTICS = SHIPPED_DIR / "stage1_optics.ckpt"
SHIPPED_ANONYMIZER = SHIPPED_DIR / "stage2_anonymizer.ckpt"


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU. An explicit CUDA device without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name}: CUDA is not available on this machine")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def is_checkpoint_file(path: str | Path) -> bool:
    return Path(path).suffix in (".ckpt", ".pt", ".pth")


def build_camera(lens: str = "face-deid", psf: str | None = None, noise: bool = True,
                 object_distance: float | None = None, img_size: int | None = None):
    """The camera of every mode that images faces.

    Args:
        lens: preset name, lens YAML file, or a Stage I checkpoint (its trained lens is used, frozen).
        psf: calibrated PSF file ((C, H, W) .npy / .npz); when given it replaces the lens entirely.
        noise: sensor noise on.
        object_distance: override of the lens file's object distance [m].
        img_size: side [px] of the face crops this camera images. Below the reference sensor side (256) the
            PSF is sum-binned to that grid (``anonymizer.stage1_losses.capture_psf``), as in training, so the
            blur covers the same fraction of the face; None images at the sensor pitch (``--mode simulate``).

    Returns:
        optics.camera.Camera with every parameter frozen (requires_grad False).
    """
    from optics.camera import Camera

    if psf is not None:
        from hardware.psf_io import load_calibrated_psf

        optic = load_calibrated_psf(psf)
        log.info("camera: measured PSF %s, shape %s", psf, tuple(optic.shape))
    elif is_checkpoint_file(lens):
        from anonymizer.stage1 import load_optics_checkpoint

        optic, _, _ = load_optics_checkpoint(lens)
        log.info("camera: trained lens from %s", lens)
    else:
        from optics.lens import Lens, load_lens_config

        overrides = {} if object_distance is None else {"object_distance": object_distance}
        optic = Lens(load_lens_config(lens, **overrides))
        log.info("camera: lens %s", lens)
    if img_size is not None:
        from anonymizer.stage1_losses import capture_psf, psf_binning

        factor = psf_binning(img_size)
        if factor > 1:  # factor 1 keeps the lens itself (capture_psf would return its PSF unchanged)
            optic = capture_psf(Camera(optic).psf().detach().float(), img_size)
            log.info("camera: PSF binned x%d to the %d px image grid", factor, img_size)
    camera = Camera(optic, noise=noise)
    camera.requires_grad_(False)
    return camera
