"""Stage II measurements in one run: parameter counts, CPU time per training step, a short FID-tracked training.

    python benchmarks/bench_stage2_step.py [--optics_checkpoint expr/optics/000030_optics.ckpt]
        [--train_minutes 8] [--fid_img_size 64] [--threads 0]

1. Parameter counts of G, F, E, D at StarGAN-v2's widths (256 px, base 64) and at the CPU default (128 px,
   base ``CPU_BASE_DIM``).
2. Time per training step (2 D + 2 G updates + EMA) at 128 x 128, batch 8, CPU default width: wall and process
   CPU seconds, mean of ``--timed_steps`` after one warm-up step.
3. A short training run on the embedded faces (``--fid_img_size``, CPU width): FID (TorchScript Inception,
   metrics.fid) of reference-guided EMA outputs for validation sources x training references against the
   training faces, before training and after ``--train_minutes`` of training.

Optics: ``--optics_checkpoint`` (Stage I, trained at the benchmark's size), else the face-deid lens with its PSF
binned to the capture grid and an untrained heatmap regressor (uninformative heatmaps; documented in the output).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from anonymizer.stage1.heatmap import HeatmapRegressor  # noqa: E402
from anonymizer.stage2.model import build_model, count_parameters  # noqa: E402
from anonymizer.stage2.sampling import FrozenOptics, anonymize, frozen_optics_from_checkpoint  # noqa: E402
from anonymizer.stage2.solver import Solver, StepData, TrainOptions  # noqa: E402

CPU_BASE_DIM = 32
log = logging.getLogger("bench_stage2_step")


def optics_for(img_size: int, checkpoint: str | None) -> FrozenOptics:
    if checkpoint:
        return frozen_optics_from_checkpoint(checkpoint, img_size)
    from optics.binning import capture_psf
    from optics.camera import Camera
    from optics.lens import Lens, load_lens_config

    psf = capture_psf(Camera(Lens(load_lens_config("face-deid"))).psf().detach(), img_size)
    torch.manual_seed(0)
    return FrozenOptics(Camera(psf), HeatmapRegressor(3, 2, base=16, depth=3), {"num_channels": 2},
                        "face-deid lens + UNTRAINED regressor")


def param_counts() -> None:
    print("\n== parameter counts ==")
    for size, base in ((256, None), (128, CPU_BASE_DIM), (64, 16)):
        nets, _ = build_model(img_size=size, num_domains=2, base_dim=base)
        counts = {n: count_parameters(m) for n, m in nets.items()}
        label = f"{size} px, base_dim {nets.config['base_dim']}"
        print(f"{label:24s} " + "  ".join(f"{k[0].upper()}={v / 1e6:7.3f}M" for k, v in counts.items())
              + "  (G = generator, M = mapping F, S = style encoder E, D)")


def step_time(optics_ckpt: str | None, timed_steps: int) -> None:
    print("\n== time per training step: 128 x 128, batch 8, base_dim %d, %d threads ==" % (CPU_BASE_DIM,
                                                                                         torch.get_num_threads()))
    optics = optics_for(128, optics_ckpt if optics_ckpt and "128" in Path(optics_ckpt).parent.name else None)
    torch.manual_seed(0)
    nets, nets_ema = build_model(img_size=128, num_domains=2, base_dim=CPU_BASE_DIM)
    solver = Solver(nets, nets_ema, optics.camera, optics.regressor, TrainOptions())
    from anonymizer.stage2.solver import Batch

    g = torch.Generator().manual_seed(0)
    batch = Batch(torch.rand(8, 3, 128, 128, generator=g), torch.randint(0, 2, (8,), generator=g),
                  torch.rand(8, 3, 128, 128, generator=g), torch.rand(8, 3, 128, 128, generator=g),
                  torch.randint(0, 2, (8,), generator=g), torch.randn(8, 16, generator=g),
                  torch.randn(8, 16, generator=g))
    solver.train_step(batch, 0)
    wall, cpu = [], []
    for i in range(timed_steps):
        t0, c0 = time.perf_counter(), time.process_time()
        solver.train_step(batch, i + 1)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    print(f"wall {np.mean(wall):.2f} s/step (min {np.min(wall):.2f}), process CPU {np.mean(cpu):.2f} s/step "
          f"over {timed_steps} steps; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


def fid_run(img_size: int, optics_ckpt: str | None, minutes: float, batch_size: int, num_real: int = 150,
            num_refs: int = 2) -> None:
    from data.datasets import ReferenceDataset, SourceDataset
    from metrics.fid import InceptionFeatures, fid_from_features, statistics
    from pipelines.faces import default_face_dirs

    base = 16 if img_size <= 64 else CPU_BASE_DIM
    print(f"\n== short training on the embedded faces: {img_size} px, base_dim {base}, batch {batch_size}, "
          f"{minutes:g} min ==")
    train_dir, val_dir = default_face_dirs(img_size)
    source = SourceDataset(train_dir, img_size, augment=True, cache=True)
    reference = ReferenceDataset(train_dir, img_size, augment=True, cache=True, seed=0)
    val = SourceDataset(val_dir, img_size, cache=True)
    optics = optics_for(img_size, optics_ckpt)
    print(f"optics: {optics.source}; train {len(source)} faces, val {len(val)} faces")
    torch.manual_seed(777)
    nets, nets_ema = build_model(img_size=img_size, num_domains=1, base_dim=base)
    solver = Solver(nets, nets_ema, optics.camera, optics.regressor, TrainOptions(ds_iter=2000))
    data = StepData(source, reference, batch_size, 16, seed=777)

    inception = InceptionFeatures()
    ref_idx = np.linspace(0, len(source) - 1, min(num_real, len(source))).round().astype(int)
    real = [source.load(int(i)).permute(1, 2, 0).numpy() for i in ref_idx]
    mu, sigma = statistics(inception.features(real, progress=False))
    srcs = torch.stack([val.load(i) for i in range(len(val))])
    refs = torch.stack([source.load(int(i)) for i in np.linspace(1, len(source) - 2, num_refs).round()])

    def fid() -> float:
        solver.nets_ema.eval()
        res = anonymize(solver.nets_ema, solver.camera, solver.regressor, srcs, refs, 0)
        fakes = res.outputs.reshape(-1, *res.outputs.shape[2:]).permute(0, 2, 3, 1).numpy()
        return fid_from_features(inception.features(list(fakes), progress=False), mu, sigma)

    def fid_capture() -> float:
        caps = solver.camera(srcs).permute(0, 2, 3, 1).numpy()
        return fid_from_features(inception.features(list(caps), progress=False), mu, sigma)

    print(f"FID of the captures themselves (camera(x_val)): {fid_capture():.1f}")
    f0 = fid()
    print(f"step 0 (untrained EMA generator): FID {f0:.1f}  [{len(srcs)} val sources x {len(refs)} references "
          f"vs {len(real)} training faces]")
    t0, step = time.perf_counter(), 0
    next_report = 0.5 * minutes * 60
    while time.perf_counter() - t0 < minutes * 60:
        logs = solver.train_step(data.batch(step), step)
        step += 1
        if time.perf_counter() - t0 >= next_report:
            print(f"step {step}: " + " ".join(f"{k}={v:.3f}" for k, v in sorted(logs.items())), flush=True)
            next_report += 0.5 * minutes * 60
    # the EMA (beta 0.999) lags a short run badly; also report the raw generator
    f1 = fid()
    ema = solver.nets_ema
    solver.nets_ema = type(ema)(solver.nets.generator.eval(), solver.nets.mapping_network.eval(),
                                solver.nets.style_encoder.eval())
    f_raw = fid()
    solver.nets_ema = ema
    print(f"step {step} ({time.perf_counter() - t0:.0f} s): FID EMA {f1:.1f}, raw generator {f_raw:.1f} "
          f"(untrained {f0:.1f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--optics_checkpoint", default=None, help="Stage I checkpoint (at --fid_img_size)")
    p.add_argument("--train_minutes", type=float, default=8.0)
    p.add_argument("--fid_img_size", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--timed_steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--skip", default="", help="comma list of params,step,fid to skip")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if a.threads:
        torch.set_num_threads(a.threads)
    skip = set(a.skip.split(","))
    if "params" not in skip:
        param_counts()
    if "step" not in skip:
        step_time(None, a.timed_steps)
    if "fid" not in skip:
        fid_run(a.fid_img_size, a.optics_checkpoint, a.train_minutes, a.batch_size)


if __name__ == "__main__":
    main()
