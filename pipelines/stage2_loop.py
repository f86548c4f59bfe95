"""The Stage II training run behind ``--mode train`` (data, optics, model, loop, samples, checkpoints)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch

from anonymizer.distributed import DistInfo, barrier, mean_over_ranks
from anonymizer.stage2 import checkpoint as ckpt_format
from anonymizer.stage2.model import build_model
from anonymizer.stage2.sampling import STAGE2_NAME, FrozenOptics, anonymize, sample_rows, save_grid
from anonymizer.stage2.solver import Solver, TrainOptions, run_steps
from data.checkpoint import checkpoint_path
from data.files import plain
from pipelines.common import init_wandb
from pipelines.safety import PROGRESS, STAGE2_ARCH, prepare_training_dir

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT_DIR = "expr/checkpoints"


def save_stage2(ckpt_dir: str | Path, solver: Solver, optics: FrozenOptics, step: int,
                args: dict[str, Any]) -> Path:
    """Write ``<ckpt_dir>/<step:06d>_nets.ckpt`` atomically (format: anonymizer/stage2/checkpoint.py)."""
    return ckpt_format.save_stage2(ckpt_dir, solver, optics.regressor, optics.heatmap, optics.source, step, args)


def load_datasets(train_dir: Path, val_dir: Path, img_size: int, num_domains: int, teacher: str = "dlib"):
    """(source, landmarks, val): the cached training faces with a teacher face, their (N, 68, 2) teacher landmarks
    [px] (cached on disk per file) and the validation set; the domain folders must number ``num_domains``."""
    from anonymizer.stage1.teacher import LandmarkTeacher
    from data.datasets import SourceDataset, scan

    if teacher != "dlib":
        raise ValueError(f"--teacher {teacher}: Stage II warps the reference on dlib's 68 points (use --teacher dlib)")
    train_scan = scan(train_dir, verify="header")
    found = LandmarkTeacher("dlib").landmarks_for_files(train_scan.files, img_size)
    if found.num_missing:
        log.warning("Stage II: %d training image(s) without a dlib face are left out", found.num_missing)
        train_scan = train_scan.subset(list(found.found))
    source = SourceDataset(train_scan, img_size, augment=False, cache=len(train_scan) <= 5000)
    if len(source.domains) != num_domains:
        raise ValueError(f"{train_dir}: {len(source.domains)} domain folder(s) {source.domains} but "
                         f"--num_domains {num_domains}")
    val = SourceDataset(scan(val_dir, verify="header", domains=source.domains), img_size, cache=False)
    log.info("train: %d images in %d domain(s) %s (%d skipped); val: %d images", len(source), num_domains,
             source.domains, train_scan.num_skipped, len(val))
    return source, found.landmarks[found.found], val


def fixed_val_batch(val: Any, num: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First ``num`` validation images spread over the set (deterministic): ((N, 3, S, S), (N,))."""
    n = min(num, len(val))
    idx = torch.linspace(0, len(val) - 1, n).round().long().tolist()
    return torch.stack([val[i][0] for i in idx]), torch.tensor([int(val[i][1]) for i in idx])


@torch.no_grad()
def write_samples(sample_dir: Path, step: int, solver: Solver, optics: FrozenOptics, images: torch.Tensor,
                  labels: torch.Tensor, num_domains: int, latent_dim: int, seed: int) -> None:
    """Grids ``source | capture | heatmap | outputs``: one per reference (latent: one per domain)."""
    dev = solver.device
    images = images.to(dev)
    refs, ref_labels = images.flip(0), labels.flip(0)
    res = anonymize(solver.nets_ema, solver.camera, solver.regressor, images, refs, ref_labels.to(dev))
    save_grid(sample_dir / f"{step:06d}_reference.png", [[None, None, None, *refs]] + sample_rows(res, images))
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(num_domains, latent_dim, generator=gen).to(dev)
    res = anonymize(solver.nets_ema, solver.camera, solver.regressor, images, z,
                    torch.arange(num_domains, device=dev))
    save_grid(sample_dir / f"{step:06d}_latent.png", sample_rows(res, images))


class FIDProbe:
    """FID (metrics.fid, TorchScript Inception) of paired reference-guided EMA outputs on up to ``num`` validation
    sources against the statistics of up to ``num_ref`` training faces (computed once)."""

    def __init__(self, source: Any, val: Any, num: int = 64, num_ref: int = 500):
        from metrics.fid import InceptionFeatures, statistics

        self.inception = InceptionFeatures()
        n_ref = min(num_ref, len(source))
        idx = torch.linspace(0, len(source) - 1, n_ref).round().long().tolist()
        real = [source.load(i).permute(1, 2, 0).numpy() for i in idx]
        self.mu, self.sigma = statistics(self.inception.features(real, progress=False))
        self.images, self.labels = fixed_val_batch(val, num)

    @torch.no_grad()
    def __call__(self, solver: Solver) -> float:
        from metrics.fid import fid_from_features

        dev = solver.device
        images = self.images.to(dev)
        res = anonymize(solver.nets_ema, solver.camera, solver.regressor, images, images.roll(1, 0),
                        self.labels.roll(1, 0).to(dev), paired=True)
        fakes = [t.permute(1, 2, 0).cpu().numpy() for t in res.outputs]
        return fid_from_features(self.inception.features(fakes, progress=False), self.mu, self.sigma)


def train_stage2(args: argparse.Namespace, info: DistInfo, device: torch.device) -> None:
    from pipelines.common import image_dirs
    from pipelines.stage2_optics import build_optics

    ckpt_dir = Path(args.checkpoint_dir or DEFAULT_CHECKPOINT_DIR)
    sample_dir = Path(args.sample_dir)
    train_dir, val_dir = image_dirs(args.train_img_dir, args.val_img_dir, args.img_size)
    val_dir = val_dir or train_dir
    from data.datasets import find_domains

    found = max(1, len(find_domains(train_dir)))
    if args.num_domains is None:  # default: as many domains as the training folder has
        args.num_domains = found
    elif not args.train_img_dir:
        if found != args.num_domains:
            log.warning("embedded face set: %d domain(s), using --num_domains %d instead of %d", found, found,
                        args.num_domains)
            args.num_domains = found
    if info.is_main:  # one run per folder; a resume must keep the architecture (sets args.run_id)
        prepare_training_dir(ckpt_dir, STAGE2_NAME, args, STAGE2_ARCH)
    source, landmarks, val = load_datasets(train_dir, val_dir, args.img_size, args.num_domains, args.teacher)
    if info.is_main:
        optics = build_optics(args, ckpt_dir, device, True)
        barrier(info)
    else:
        barrier(info)
        optics = build_optics(args, ckpt_dir, device, False)
    torch.manual_seed(args.seed)
    channels = int(optics.regressor.config["out_channels"])
    if channels != 68:
        raise ValueError(f"{optics.source}: the Stage I regressor predicts {channels} heatmap channels; Stage II "
                         "needs the 68 per-landmark heatmaps (train Stage I with --heatmap_mode landmarks)")
    nets, nets_ema = build_model(**{**vars(args), "heatmap_channels": channels, "reference_input": True})
    opts = TrainOptions.from_args(args)
    solver = Solver(nets, nets_ema, optics.camera, optics.regressor, opts, device, info)
    optics.camera, optics.regressor = solver.camera, solver.regressor
    saved_args = {**plain(vars(args), for_json=False), "domains": ",".join(source.domains)}
    if args.init_nets and not args.resume_iter:  # warm start: weights only, fresh optimisers, this run's optics
        init, init_path = ckpt_format.read_stage2(args.init_nets, map_location=device)
        if {k: init["model"].get(k) for k in solver.nets.config} != dict(solver.nets.config):
            raise ValueError(f"--init_nets {init_path}: its networks {init['model']} differ from this run's "
                             f"{dict(solver.nets.config)}")
        solver.nets.load_state_dict(init["nets"])
        solver.nets_ema.load_state_dict(init["nets_ema"])
        log.info("networks initialised from %s (step %s); optimisers fresh", init_path, init.get("step"))
    if args.resume_iter:
        path = checkpoint_path(ckpt_dir, args.resume_iter, STAGE2_NAME)
        state, path = ckpt_format.read_stage2(path, map_location=device)
        ckpt_format.restore_training(solver, solver.regressor, state, path)
        log.info("resumed from step %d", args.resume_iter)
    from data.loader import Stage2Steps, step_loader

    steps = Stage2Steps(source, landmarks, args.batch_size, args.latent_dim, args.seed, info.rank, info.world_size)
    data = step_loader(steps, args.resume_iter, args.total_iters, args.num_workers)
    val_images, val_labels = fixed_val_batch(val, min(8, args.val_batch_size))

    wandb_run = init_wandb(args.wandb and info.is_main, "train", saved_args)

    probe: FIDProbe | None = None

    PROGRESS.step = PROGRESS.saved = args.resume_iter

    def on_step(step: int, logs: dict[str, float]) -> None:
        PROGRESS.step = step
        if step % max(1, args.print_every) == 0 or step == args.total_iters:
            logs = mean_over_ranks(logs, info, device)
            if info.is_main:
                log.info("step %d/%d: %s", step, args.total_iters,
                         " ".join(f"{k}={v:.4f}" for k, v in sorted(logs.items())))
                if wandb_run is not None:
                    wandb_run.log(logs, step=step)
        if not info.is_main:
            return
        if step % max(1, args.sample_every) == 0:
            solver.nets_ema.eval()
            write_samples(sample_dir, step, solver, optics, val_images, val_labels, args.num_domains,
                          args.latent_dim, args.seed)
        if args.eval_every > 0 and step % args.eval_every == 0:
            nonlocal probe
            probe = probe or FIDProbe(source, val)
            fid = probe(solver)
            log.info("step %d: FID %.2f (val reference-guided vs train)", step, fid)
            if wandb_run is not None:
                wandb_run.log({"val/fid": fid}, step=step)
        if step % max(1, args.save_every) == 0 or step == args.total_iters:
            save_stage2(ckpt_dir, solver, optics, step, saved_args)
            PROGRESS.saved = step

    run_steps(solver, data, args.resume_iter, args.total_iters, on_step, progress=info.is_main)
    barrier(info)
    if wandb_run is not None:
        wandb_run.finish()
