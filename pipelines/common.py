"""Helpers shared by the modes: device, seeding, the camera every face-imaging mode builds."""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

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


def image_dirs(train_img_dir: str | None, val_img_dir: str | None, img_size: int) -> tuple[Path, Path | None]:
    """(train_dir, val_dir) of a training mode: the given folders (which must exist), or the embedded face set
    at ``img_size`` (its deterministic train / val split). ``val_dir`` is None when only a training folder is given.

    Raises:
        FileNotFoundError: a given folder does not exist (names the flag and the folder).
    """
    if train_img_dir:
        train, val = Path(train_img_dir), (Path(val_img_dir) if val_img_dir else None)
    else:
        from pipelines.faces import default_face_dirs

        train, val = default_face_dirs(img_size)
        val = Path(val_img_dir) if val_img_dir else val
    for flag, folder in (("--train_img_dir", train), ("--val_img_dir", val)):
        if folder is not None and not folder.is_dir():
            raise FileNotFoundError(f"{flag} {folder}: folder not found (see download.sh for CelebA-HQ / AFHQ, "
                                    "or omit the image folders to train on the embedded face set)")
    return train, val


def init_wandb(enabled: bool, job_type: str, config: dict[str, Any]):
    """The one Weights & Biases set-up: a run when ``enabled`` (``--wandb``; ``WANDB_MODE=offline`` works), else
    None. wandb is imported only then.

    Raises:
        RuntimeError: ``enabled`` without the wandb package installed.
    """
    if not enabled:
        return None
    try:
        import wandb
    except ImportError as err:
        raise RuntimeError("--wandb needs the wandb package (pip install -e \".[wandb]\")") from err
    from data.files import plain

    return wandb.init(project="privacy-optics", job_type=job_type, config=plain(config))


def is_checkpoint_file(path: str | Path) -> bool:
    return Path(path).suffix in (".ckpt", ".pt", ".pth")


def measured_psf(path: str | None):
    """``--psf``: the calibrated (C, H, W) PSF tensor of that file, or None when no file is given."""
    if not path:
        return None
    from hardware.psf_io import load_calibrated_psf

    return load_calibrated_psf(path)


def load_optic(lens: str = "face-deid", psf: str | None = None, quantize_levels: int | None = None,
               object_distance: float | None = None, trainable: bool = False):
    """The one factory from a lens spec to an optic (what ``optics.camera.Camera`` images through).

    Args:
        lens: preset name, lens YAML file, or a Stage I checkpoint (its lens, with the quantisation it was
            trained with).
        psf: calibrated PSF file ((C, H, W) .npy / .npz / image); when given it replaces the lens entirely.
        quantize_levels: None keeps what the spec says (a checkpoint's own quantisation, none for a preset or
            YAML); 0 turns quantisation off; N >= 2 makes the lens quantisation-aware with N levels.
        object_distance: override of the lens's object distance [m].
        trainable: leave the lens parameters trainable (Stage I); else they are frozen.

    Returns:
        ``optics.lens.Lens`` (a ``QuantizedLens`` when quantised) or a (C, h, w) PSF tensor.

    Raises:
        ValueError / LensConfigError / CheckpointError / PSFFileError: one message naming the file.
    """
    from optics.lens import LensConfig, load_lens_config
    from optics.quantize import build_lens, lens_from_state

    if psf is not None:
        optic = measured_psf(psf)
        log.info("optic: measured PSF %s, shape %s", psf, tuple(optic.shape))
        return optic
    overrides = {} if object_distance is None else {"object_distance": object_distance}
    if is_checkpoint_file(lens):
        from data.checkpoint import load_checkpoint

        state = load_checkpoint(lens)
        if state.get("lens") is None:
            if isinstance(state.get("psf"), torch.Tensor) and "regressor" in state:
                log.info("optic: the measured PSF stored in %s", lens)
                return state["psf"].float()
            raise ValueError(f"{lens}: not a Stage I checkpoint (needs keys 'lens_config' and 'lens')")
        if "lens_config" not in state:
            raise ValueError(f"{lens}: not a Stage I checkpoint (needs keys 'lens_config' and 'lens')")
        quant = state.get("quantize") if quantize_levels is None else None
        optic = lens_from_state(state["lens_config"], state["lens"], quant, source=str(lens), overrides=overrides)
        if quantize_levels:
            stored = optic
            optic = build_lens(stored.config, quantize_levels)
            optic.load_state_dict(stored.state_dict())
        log.info("optic: trained lens from %s%s", lens, f" ({optic.levels} levels)" if
                 getattr(optic, "levels", None) else "")
    else:
        config: LensConfig = load_lens_config(lens, **overrides)
        optic = build_lens(config, quantize_levels or 0)
        log.info("optic: lens %s", lens)
    optic.requires_grad_(trainable)
    return optic


def lens_sensor(lens: str):
    """The optics.sensor.SensorConfig a Stage I / II checkpoint ``lens`` records (None for a preset or YAML)."""
    from optics.sensor import SensorConfig

    if not is_checkpoint_file(lens):
        return None
    from data.checkpoint import load_checkpoint

    return SensorConfig.from_state(load_checkpoint(lens), str(lens))


def build_camera(lens: str = "face-deid", psf: str | None = None, noise: bool = True,
                 object_distance: float | None = None, img_size: int | None = None,
                 quantize_levels: int | None = None, trainable: bool = False, sensor: str | None = None):
    """The camera of every mode that images faces (:func:`load_optic` + optional binning to the image grid).

    Args:
        lens, psf, quantize_levels, object_distance, trainable: as :func:`load_optic`.
        noise: sensor noise on.
        sensor: "color" or "mono" (optics.sensor.sensor_config); None = a checkpoint's own sensor (Stage I and II
            checkpoints record it), else the colour sensor.
        img_size: side [px] of the face crops this camera images. Below the reference sensor side (256) the
            PSF is sum-binned to that grid (``optics.binning.capture_psf``), as in training, so the blur covers
            the same fraction of the face (the camera then holds a fixed PSF); None images at the sensor pitch
            (``--mode simulate``, Stage I training, which bins inside the trainer).

    Returns:
        optics.camera.Camera; frozen (requires_grad False) unless ``trainable``.
    """
    from optics.binning import capture_psf, psf_binning
    from optics.camera import Camera
    from optics.sensor import sensor_config

    optic = load_optic(lens, psf, quantize_levels, object_distance, trainable)
    if img_size is not None:
        factor = psf_binning(img_size)
        if factor > 1:  # factor 1 keeps the lens itself (capture_psf would return its PSF unchanged)
            optic = capture_psf(Camera(optic).psf().detach().float(), img_size)
            log.info("camera: PSF binned x%d to the %d px image grid", factor, img_size)
    camera = Camera(optic, sensor=sensor_config(sensor, lens_sensor(lens) if psf is None else None), noise=noise)
    log.info("camera: %s sensor", "monochrome" if camera.sensor.config.mono_response else "colour")
    if not trainable:
        camera.requires_grad_(False)
    return camera
