"""Stage II speed in one run: parameter counts, data-loader images/s (0 and 2 workers), time per training step.

    python benchmarks/bench_stage2_step.py [--optics_checkpoint STAGE1_128PX_LANDMARKS.ckpt] [--timed_steps 3]
        [--batch_size 4] [--base_dim 16]

1. Parameter counts of G, F, E, D at StarGAN-v2's widths (256 px) and at the CPU run's (128 px, ``--base_dim``).
2. The Stage II DataLoader (:mod:`data.loader`, embedded faces at 128 px): source + jittered self-reference +
   two cross references per sample; images/s (source images per second) with ``num_workers`` 0 and 2, over
   ``--loader_steps`` batches after the workers started.
3. Time per training step (one fake, one D update with lazy R1, one G update, EMA) at 128 x 128 with the same
   batches: wall and process CPU seconds, mean of ``--timed_steps`` after a warm-up step; the reference warp's
   share is timed separately. The machine's load average is printed: on a shared machine the wall times scale
   with it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from anonymizer.stage2.model import build_model, count_parameters  # noqa: E402
from anonymizer.stage2.solver import Solver, TrainOptions  # noqa: E402
from anonymizer.stage2.warp import piecewise_affine_warp  # noqa: E402


def param_counts(base_dim: int) -> None:
    print("\n== parameter counts ==")
    for size, base in ((256, None), (128, base_dim)):
        nets, _ = build_model(img_size=size, num_domains=1, base_dim=base, heatmap_channels=68,
                              reference_input=True, max_conv_dim=512 if base is None else 4 * base_dim,
                              hidden_dim=512 if base is None else 64)
        counts = {n: count_parameters(m) for n, m in nets.items()}
        print(f"{size} px, base_dim {nets.config['base_dim']:3d}: "
              + "  ".join(f"{k}={v / 1e6:.3f}M" for k, v in counts.items()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--optics_checkpoint", default=None, help="Stage I checkpoint (128 px, 68 landmark heatmaps)")
    p.add_argument("--timed_steps", type=int, default=3)
    p.add_argument("--loader_steps", type=int, default=6)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--base_dim", type=int, default=16)
    a = p.parse_args()
    from data.loader import Stage2Steps, step_loader
    from pipelines.faces import default_face_dirs
    from pipelines.stage2_loop import load_datasets

    param_counts(a.base_dim)
    train_dir, val_dir = default_face_dirs(128)
    source, landmarks, _ = load_datasets(train_dir, val_dir, 128, 1)
    for i in range(len(source)):
        source.load(i)  # fill the uint8 cache first: the loader then measures batch building, not decoding
    steps = Stage2Steps(source, landmarks, a.batch_size, 16, seed=777)
    print(f"\n== DataLoader: batch {a.batch_size}, {len(source)} cached faces, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores ==")
    for workers in (0, 2):
        it = iter(step_loader(steps, 0, a.loader_steps + 1, num_workers=workers))
        next(it)  # workers started, first batch
        t0 = time.perf_counter()
        for _ in range(a.loader_steps):
            next(it)
        dt = time.perf_counter() - t0
        print(f"num_workers {workers}: {a.loader_steps * a.batch_size / dt:6.1f} images/s "
              f"({dt / a.loader_steps:.2f} s/batch)")
        del it

    if a.optics_checkpoint:
        from anonymizer.stage2.sampling import frozen_optics_from_checkpoint

        optics = frozen_optics_from_checkpoint(a.optics_checkpoint, 128)
        camera, regressor, label = optics.camera, optics.regressor, optics.source
    else:
        from anonymizer.stage1.heatmap import HeatmapRegressor
        from optics.binning import capture_psf
        from optics.camera import Camera
        from optics.lens import Lens, load_lens_config

        camera = Camera(capture_psf(Camera(Lens(load_lens_config("face-deid"))).psf().detach(), 128))
        torch.manual_seed(0)
        regressor, label = HeatmapRegressor(3, 68), "face-deid lens + untrained regressor"
    torch.manual_seed(0)
    nets, nets_ema = build_model(img_size=128, num_domains=1, base_dim=a.base_dim, max_conv_dim=4 * a.base_dim,
                                 hidden_dim=64, style_dim=32, heatmap_channels=68, reference_input=True)
    solver = Solver(nets, nets_ema, camera, regressor, TrainOptions())
    print(f"\n== training step: 128 x 128, batch {a.batch_size}, base_dim {a.base_dim}, "
          f"{torch.get_num_threads()} threads, optics: {label} ==")
    solver.train_step(steps[0], 0)
    wall, cpu = [], []
    for i in range(1, a.timed_steps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        solver.train_step(steps[i], i)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    b = steps[1]
    t0 = time.perf_counter()
    piecewise_affine_warp(b["x_ref"], b["pts_ref"], b["pts_src"], face_only=False)
    warp = time.perf_counter() - t0
    print(f"wall {np.mean(wall):.2f} s/step (min {np.min(wall):.2f}), process CPU {np.mean(cpu):.2f} s/step over "
          f"{a.timed_steps} steps (self and cross alternate); reference warp {warp:.2f} s per batch; load average "
          f"{os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
