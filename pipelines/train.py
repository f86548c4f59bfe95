"""``--mode train``: Stage II, the anonymizer (StarGAN-v2-style) behind the frozen privacy camera.

    python main.py --mode train --num_domains 2 --w_hpf 1 --lambda_reg 1 --lambda_sty 1 --lambda_ds 1 \
        --lambda_cyc 1 --train_img_dir data/celeba_hq/train --val_img_dir data/celeba_hq/val \
        [--optics_checkpoint expr/optics/002000_optics.ckpt] [--psf PSF.npy] [--lambda_hm 1] \
        [--img_size 256] [--base_dim 32] [--resume_iter K] [--amp] [--channels_last] [--wandb]
    torchrun --nproc_per_node 4 main.py --mode train ...        (DistributedDataParallel, one GPU per process)

Frozen optics (camera + heatmap regressor), in order of preference:
  1. ``--optics_checkpoint`` (a Stage I ``*_optics.ckpt``); ``--psf`` replaces its lens by a measured PSF;
  2. the shipped ``checkpoints/stage1_optics.ckpt`` when it exists and was trained at ``--img_size``;
  3. otherwise a regressor warm-up: Stage I with the lens frozen (``--lens`` / ``--psf``), teacher landmarks
     (``--teacher``) on the clean training faces as heatmap targets, ``REGRESSOR_WARMUP_ITERS`` steps, written to
     ``<checkpoint_dir>/optics`` (reused when it is already there).

``--num_domains`` defaults to the number of domain folders of the training set (a flat folder is one domain);
without image folders the embedded face set (one domain) is used. Checkpoints
``<checkpoint_dir>/<step:06d>_nets.ckpt`` (default expr/checkpoints, format in anonymizer/sampling.py), sample
grids ``<sample_dir>/<step:06d>_{latent,reference}.png``.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch

from pipelines.common import SHIPPED_OPTICS, resolve_device

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT_DIR = "expr/checkpoints"
REGRESSOR_WARMUP_ITERS = 300


def image_dirs(args: argparse.Namespace) -> tuple[Path, Path]:
    """(train_dir, val_dir): the given folders (must exist), or the embedded face set at ``img_size``."""
    if args.train_img_dir:
        train = Path(args.train_img_dir)
        val = Path(args.val_img_dir) if args.val_img_dir else train
        for flag, folder in (("--train_img_dir", train), ("--val_img_dir", val)):
            if not folder.is_dir():
                raise FileNotFoundError(f"{flag} {folder}: folder not found (see download.sh for CelebA-HQ / AFHQ, "
                                        "or omit the image folders to train on the embedded face set)")
        return train, val
    from pipelines.faces import default_face_dirs

    train, val = default_face_dirs(args.img_size)
    return train, Path(args.val_img_dir) if args.val_img_dir else val


def plain_args(args: argparse.Namespace | dict) -> dict[str, Any]:
    """Checkpoint-safe copy of the arguments (numbers, strings, bools, None; anything else as str)."""
    src = args if isinstance(args, dict) else vars(args)
    return {k: v if v is None or isinstance(v, (bool, int, float, str)) else str(v) for k, v in src.items()}


def build_optics(args: argparse.Namespace, ckpt_dir: Path, device: torch.device, is_main: bool = True):
    """The frozen camera + regressor (see the module docstring for the order of preference)."""
    from anonymizer.checkpoint import checkpoint_path, latest_step
    from anonymizer.sampling import frozen_optics_from_checkpoint

    if args.optics_checkpoint:
        return frozen_optics_from_checkpoint(args.optics_checkpoint, args.img_size, args.psf)
    if SHIPPED_OPTICS.is_file():
        try:
            optics = frozen_optics_from_checkpoint(SHIPPED_OPTICS, args.img_size, args.psf)
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
    return frozen_optics_from_checkpoint(checkpoint_path(warm_dir, step, "optics"), args.img_size, args.psf)


def _warmup_regressor(args: argparse.Namespace, out_dir: Path, device: torch.device) -> None:
    from tqdm import tqdm

    from anonymizer.stage1 import Stage1Trainer
    from anonymizer.teacher import TEACHERS, LandmarkTeacher
    from pipelines.train_optics import build_stage1_camera, load_face_set, stage1_config

    train_dir, _ = image_dirs(args)
    teacher = LandmarkTeacher(args.teacher, device=str(device))
    train_set = load_face_set(train_dir, args.img_size, teacher, {}, "train")
    cfg = stage1_config(args, TEACHERS[args.teacher])
    cfg.freeze_lens = True
    cfg.batch_size = max(cfg.batch_size, 8)
    trainer = Stage1Trainer(build_stage1_camera(args), cfg, train_set, checkpoint_dir=out_dir, device=device,
                            args=plain_args(args), teacher=args.teacher)
    for _ in tqdm(range(REGRESSOR_WARMUP_ITERS), desc="regressor warm-up"):
        trainer.train_step()
    trainer.save()


def run(args: argparse.Namespace) -> None:
    from anonymizer.distributed import cleanup, init_distributed
    from pipelines.stage2_loop import train_stage2

    if args.total_iters < 1:
        raise ValueError(f"--total_iters must be >= 1, got {args.total_iters}")
    if not 0 <= args.resume_iter <= args.total_iters:
        raise ValueError(f"--resume_iter {args.resume_iter} must be in [0, --total_iters {args.total_iters}]")
    if args.img_size not in (32, 64, 128, 256, 512):
        raise ValueError(f"--img_size must be 64, 128 or 256, got {args.img_size}")
    info, device = init_distributed(resolve_device(args.device))
    try:
        train_stage2(args, info, device)
    finally:
        cleanup(info)
