"""The Stage II checkpoint format: written AND read here only.

``<checkpoint_dir>/<step:06d>_nets.ckpt`` (atomic, ``data.checkpoint.save_checkpoint``; loaded with
``weights_only=True``)::

    {version, step, args: plain dict of the run's flags (+ "domains"),
     model: build_model kwargs (MODEL_KEYS), nets, nets_ema, optims, rng,
     psf: (C, h, w) the ONE fixed capture PSF the generator was trained with,
     sensor: its optics.sensor.SensorConfig dict (colour / monochrome; absent in older files: colour),
     regressor_config, regressor: the frozen Stage I heatmap regressor,
     heatmap: Stage I heatmap metadata, optics: {"source": where the PSF / regressor came from}}

A checkpoint is self-contained: :func:`read_stage2` + :func:`build_camera_and_regressor` rebuild the camera
(``optics.camera.Camera`` holding that PSF) and the regressor without the Stage I file. On resume
(:func:`restore_training`) the optics are NOT silently replaced: a PSF of another shape or other values than
the run's camera is an error naming the file (resume with the optics the run started with, or start a new
run).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data.checkpoint import CheckpointError, checkpoint_path, latest_step, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

STAGE2_NAME = "nets"
STAGE2_VERSION = 2
REQUIRED = ("model", "nets_ema", "psf", "regressor", "regressor_config")

__all__ = ["STAGE2_NAME", "STAGE2_VERSION", "stage2_state", "save_stage2", "read_stage2", "resolve_stage2_checkpoint",
           "restore_training", "build_camera_and_regressor"]


def stage2_state(solver: Any, regressor: nn.Module, heatmap: dict[str, Any], source: str, step: int,
                 args: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint payload of a :class:`anonymizer.stage2.solver.Solver` at ``step`` (finished iterations)."""
    return {"version": STAGE2_VERSION, "step": int(step), "args": args, "model": dict(solver.nets.config),
            **solver.state(), "psf": solver.psf.detach().float().cpu().clone(),
            "sensor": solver.camera.sensor.config.to_dict(),
            "regressor_config": dict(regressor.config),
            "regressor": {k: v.detach().cpu() for k, v in regressor.state_dict().items()},
            "heatmap": dict(heatmap), "optics": {"source": str(source)}}


def save_stage2(ckpt_dir: str | os.PathLike, solver: Any, regressor: nn.Module, heatmap: dict[str, Any],
                source: str, step: int, args: dict[str, Any]) -> Path:
    """Write ``<ckpt_dir>/<step:06d>_nets.ckpt`` atomically; returns the path."""
    path = save_checkpoint(checkpoint_path(ckpt_dir, step, STAGE2_NAME),
                           stage2_state(solver, regressor, heatmap, source, step, args))
    log.info("saved %s", path)
    return path


def resolve_stage2_checkpoint(checkpoint: str | os.PathLike, step: int | None = None) -> Path:
    """A Stage II checkpoint file from a file path, or from a folder + step (None or 0: the latest).

    Raises:
        CheckpointError: nothing found (names the folder / file).
    """
    p = Path(checkpoint)
    if p.is_file():
        return p
    if not p.is_dir():
        raise CheckpointError(f"{p}: no such checkpoint file or folder")
    if not step:
        step = latest_step(p, STAGE2_NAME)
        if step is None:
            raise CheckpointError(f"{p}: no Stage II checkpoint (*_{STAGE2_NAME}.ckpt) in this folder")
    path = checkpoint_path(p, step, STAGE2_NAME)
    if not path.is_file():
        raise CheckpointError(f"{path}: no Stage II checkpoint at step {step}")
    return path


def read_stage2(checkpoint: str | os.PathLike, step: int | None = None,
                map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], Path]:
    """Load and validate a Stage II checkpoint: (state, path).

    Raises:
        CheckpointError: no such file; ValueError: the file lacks a required entry (names file and key).
    """
    path = resolve_stage2_checkpoint(checkpoint, step)
    state = load_checkpoint(path, map_location=map_location)
    for key in REQUIRED:
        if key not in state:
            raise ValueError(f"{path}: not a Stage II checkpoint (no '{key}' entry)")
    psf = state["psf"]
    if not isinstance(psf, torch.Tensor) or psf.ndim != 3:
        raise ValueError(f"{path}: 'psf' must be a (C, h, w) tensor")
    return state, path


def build_camera_and_regressor(state: dict[str, Any], noise: bool = True, psf: torch.Tensor | None = None,
                               device: str | torch.device = "cpu") -> tuple[nn.Module, nn.Module]:
    """The fixed-PSF camera and the frozen regressor of a checkpoint (``psf``: optional measured (C, h, w) PSF at
    the sensor pitch replacing the stored one, binned to the model's grid)."""
    from anonymizer.stage1.shape import build_regressor
    from optics.camera import Camera
    from optics.sensor import SensorConfig

    fixed = state["psf"].float()
    if psf is not None:
        from optics.binning import capture_psf

        fixed = capture_psf(psf.float(), int(state["model"]["img_size"]))
    camera = Camera(fixed, sensor=SensorConfig.from_state(state), noise=noise).requires_grad_(False).eval().to(device)
    regressor = build_regressor(state["regressor_config"])
    regressor.load_state_dict(state["regressor"])
    return camera, regressor.requires_grad_(False).eval().to(device)


def restore_training(solver: Any, regressor: nn.Module, state: dict[str, Any], path: str | os.PathLike) -> None:
    """Resume: networks, optimisers and RNG from ``state``; the run's camera PSF and regressor must be the
    checkpoint's.

    Raises:
        ValueError: the PSF differs in shape or values, or the regressor's weights differ (names the file).
    """
    from optics.sensor import SensorConfig

    psf = state.get("psf")
    if psf is None:
        raise ValueError(f"{path}: no 'psf' entry; cannot check the optics of the resumed run")
    mine = solver.psf.detach().float().cpu()
    if tuple(psf.shape) != tuple(mine.shape):
        raise ValueError(f"{path}: the checkpoint's capture PSF has shape {tuple(psf.shape)}, this run's camera "
                         f"{tuple(mine.shape)}: resume with the optics the run was trained with")
    if not torch.allclose(psf.float(), mine, rtol=1e-5, atol=1e-7):
        raise ValueError(f"{path}: the checkpoint's capture PSF differs from this run's camera (max abs diff "
                         f"{(psf.float() - mine).abs().max().item():.3g}): resume with the same optics")
    mine_sensor = solver.camera.sensor.config
    if SensorConfig.from_state(state, str(path)) != mine_sensor:
        raise ValueError(f"{path}: the checkpoint's sensor {state.get('sensor')} differs from this run's "
                         f"{mine_sensor.to_dict()}: resume with the optics the run was trained with")
    reg = state.get("regressor") or {}
    for k, v in regressor.state_dict().items():
        if k not in reg or reg[k].shape != v.shape or not torch.equal(reg[k].to(v), v):
            raise ValueError(f"{path}: the checkpoint's heatmap regressor differs from this run's ({k})")
    solver.load_state(state)
