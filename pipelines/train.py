"""``--mode train``: Stage II, the anonymizer behind the frozen privacy camera, guided by a warped reference.

    python main.py --mode train --img_size 128 --optics_checkpoint STAGE1_68_LANDMARKS.ckpt \
        --base_dim 16 --max_conv_dim 64 --hidden_dim 64 --style_dim 32 --batch_size 4 --lr 3e-4 --lambda_ds 0 \
        [--lambda_rec 10] [--lambda_ref 1] [--lambda_hm 1] [--lambda_cyc 0] [--num_workers 2] \
        [--init_nets WARM.ckpt] [--resume_iter K] [--train_img_dir D --val_img_dir D] [--amp] [--wandb]
    torchrun --nproc_per_node 4 main.py --mode train ...        (DistributedDataParallel, one GPU per process)

Design (anonymizer/stage2/solver.py): the Stage I regressor's 68 per-landmark heatmaps give the source's points
(soft-argmax) from the capture; the reference's points come from the dlib teacher on the clean reference
(cached); the whole reference is warped piecewise-affinely onto the source points (anonymizer/stage2/warp.py,
folds masked) and enters the generator with its validity mask; the generator learns the blend. Training
alternates self-supervised steps (the reference is the source itself under a random similarity + smooth
displacement + photometric change; L1 reconstruction) and cross-identity steps (another person; keep the warped
reference, style reconstruction, optional diversity / cycle); adversarial loss with lazy R1 in both, heatmap
consistency with gradient in the cross steps. Batches come from a step-indexed DataLoader (data/loader.py;
``--num_workers``), a function of (seed, step, rank), so ``--resume_iter`` repeats the uninterrupted run exactly.

Frozen optics (camera + heatmap regressor), in order of preference:
  1. ``--optics_checkpoint`` (a Stage I ``*_optics.ckpt`` with 68 per-landmark heatmaps); ``--psf`` replaces its
     lens by a measured PSF;
  2. the shipped ``checkpoints/stage1_optics.ckpt`` when it was trained at ``--img_size`` with 68 heatmaps;
  3. otherwise a regressor warm-up (pipelines/stage2_optics.py).
The camera is one fixed-PSF Camera; resuming with optics whose PSF differs from the checkpoint's is an error.

``--num_domains`` defaults to the number of domain folders of the training set (a flat folder is one domain);
without image folders the embedded face set (one domain) is used. Checkpoints
``<checkpoint_dir>/<step:06d>_nets.ckpt`` (default expr/checkpoints, format in anonymizer/stage2/checkpoint.py),
sample grids ``<sample_dir>/<step:06d>_{latent,reference}.png``.
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
