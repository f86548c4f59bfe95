"""The frozen optics of Stage II (camera + heatmap regressor), in order of preference:

  1. ``--optics_checkpoint`` (a Stage I ``*_optics.ckpt``); ``--psf`` replaces its lens by a measured PSF;
  2. the shipped ``checkpoints/stage1_optics.ckpt`` when it exists, was trained at ``--img_size`` and predicts the
     68 per-landmark heatmaps (``--heatmap_mode landmarks``) that Stage II warps on;
  3. otherwise a regressor warm-up: Stage I with the lens frozen (``--lens`` / ``--psf``), teacher landmarks
     (dlib) on the clean training faces as 68 per-landmark heatmap targets, ``REGRESSOR_WARMUP_ITERS`` steps, written to
     ``<checkpoint_dir>/optics`` (reused when it is already there).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from data.files import plain
from pipelines.common import SHIPPED_OPTICS, image_dirs

log = logging.getLogger(__name__)

REGRESSOR_WARMUP_ITERS = 300


def build_optics(args: argparse.Namespace, ckpt_dir: Path, device: torch.device, is_main: bool = True):
    """The frozen camera + regressor (see the module docstring for the order of preference)."""
    from anonymizer.stage2.sampling import frozen_optics_from_checkpoint
    from data.checkpoint import checkpoint_path, latest_step

    psf = None
    if args.psf:
        from hardware.psf_io import load_calibrated_psf

        psf = load_calibrated_psf(args.psf)

    if args.optics_checkpoint:
        return frozen_optics_from_checkpoint(args.optics_checkpoint, args.img_size, psf)
    if SHIPPED_OPTICS.is_file():
        try:
            optics = frozen_optics_from_checkpoint(SHIPPED_OPTICS, args.img_size, psf)
            channels = int(optics.regressor.config["out_channels"])
            if channels != 68:
                raise ValueError(f"its regressor predicts {channels} heatmap channels, Stage II needs the 68 "
                                 "per-landmark heatmaps")
            log.info("optics: shipped Stage I checkpoint %s", SHIPPED_OPTICS)
            return optics
        except ValueError as err:
            log.warning("shipped optics not usable (%s); warming up a regressor instead", err)
    warm_dir = ckpt_dir / "optics"
    step = latest_step(warm_dir, "optics")
    if step is None:
        if not is_main:
            raise RuntimeError(f"{warm_dir}: run the regressor warm-up single-process first (or pass "
                               "--optics_checkpoint)")
        log.warning("no --optics_checkpoint: training the heatmap regressor for %d steps on %s teacher "
                    "landmarks with the lens frozen (Stage I warm-up) into %s", REGRESSOR_WARMUP_ITERS,
                    args.teacher, warm_dir)
        _warmup_regressor(args, warm_dir, device)
        step = latest_step(warm_dir, "optics")
    return frozen_optics_from_checkpoint(checkpoint_path(warm_dir, step, "optics"), args.img_size, psf)


def _warmup_regressor(args: argparse.Namespace, out_dir: Path, device: torch.device) -> None:
    from tqdm import tqdm

    from anonymizer.stage1.trainer import Stage1Trainer
    from anonymizer.stage1.teacher import TEACHERS, LandmarkTeacher
    from pipelines.train_optics import build_stage1_camera, load_face_set, stage1_config

    train_dir, _ = image_dirs(args.train_img_dir, args.val_img_dir, args.img_size)
    teacher = LandmarkTeacher(args.teacher, device=str(device))
    train_set = load_face_set(train_dir, args.img_size, teacher, {}, "train")
    args = argparse.Namespace(**{**vars(args), "heatmap_mode": "landmarks"})  # Stage II warps on 68 points
    cfg = stage1_config(args, TEACHERS[args.teacher])
    cfg.freeze_lens = True
    cfg.batch_size = max(cfg.batch_size, 8)
    trainer = Stage1Trainer(build_stage1_camera(args), cfg, train_set, checkpoint_dir=out_dir, device=device,
                            args=plain(vars(args), for_json=False), teacher=args.teacher)
    for _ in tqdm(range(REGRESSOR_WARMUP_ITERS), desc="regressor warm-up"):
        trainer.train_step()
    trainer.save()
