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
``<checkpoint_dir>/<step:06d>_nets.ckpt`` (default expr/checkpoints, format in anonymizer/stage2/sampling.py),
sample
grids ``<sample_dir>/<step:06d>_{latent,reference}.png``.
"""
from __future__ import annotations

import argparse
import logging

from pipelines.common import resolve_device

log = logging.getLogger(__name__)

def run(args: argparse.Namespace) -> None:
    from anonymizer.distributed import cleanup, init_distributed
    from pipelines.stage2_loop import train_stage2

    if args.total_iters < 1:
        raise ValueError(f"--total_iters must be >= 1, got {args.total_iters}")
    if not 0 <= args.resume_iter <= args.total_iters:
        raise ValueError(f"--resume_iter {args.resume_iter} must be in [0, --total_iters {args.total_iters}]")
    if args.img_size not in (32, 64, 128, 256, 512):
        raise ValueError(f"--img_size must be one of 32, 64, 128, 256, 512, got {args.img_size}")
    info, device = init_distributed(resolve_device(args.device))
    try:
        train_stage2(args, info, device)
    finally:
        cleanup(info)
