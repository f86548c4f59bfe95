"""FID cost: with cached reference statistics (.npz) against from scratch, and the two distance computations.

From scratch = Inception features of the reference set + its statistics + the generated set's features + the
distance; cached = load the .npz + the generated set's features + the distance. Real faces (NBA headshots) as
the reference, the same faces blurred as the "generated" set. Also times pytorch-fid's
``calculate_frechet_distance`` (scipy sqrtm, 2048 x 2048) against the exact low-rank form used when the
generated set has fewer images than feature dimensions, and prints both values.

    python benchmarks/bench_fid.py [--num 32] [--threads N] [--skip_sqrtm]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from scipy.ndimage import gaussian_filter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_mtcnn import faces  # noqa: E402
from metrics.fid import (InceptionFeatures, fid_from_features, frechet_distance,  # noqa: E402
                         reference_statistics, statistics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=32, help="images per set")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip_sqrtm", action="store_true", help="skip timing pytorch-fid's sqrtm distance")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    real = faces(2 * args.num)
    ref, gen = real[:args.num], [gaussian_filter(f, (2, 2, 0)) for f in real[args.num:]]
    net = InceptionFeatures("torchscript")
    net.features(ref[:2], progress=False)  # warm-up
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "ref.npz"
        t0 = time.perf_counter()
        mu, sigma = reference_statistics(ref, net, cache)  # from scratch, writes the cache
        fid_scratch = fid_from_features(net.features(gen, progress=False), mu, sigma)
        t_scratch = time.perf_counter() - t0
        t0 = time.perf_counter()
        mu_c, sigma_c = reference_statistics(None, net, cache)
        feats = net.features(gen, progress=False)
        fid_cached = fid_from_features(feats, mu_c, sigma_c)
        t_cached = time.perf_counter() - t0
    print(f"FID, {args.num} reference + {args.num} generated images, torch threads {torch.get_num_threads()}")
    print(f"  from scratch   : {t_scratch:8.2f} s  FID {fid_scratch:.4f}")
    print(f"  cached ref npz : {t_cached:8.2f} s  FID {fid_cached:.4f}")
    print(f"  ratio scratch / cached: {t_scratch / t_cached:.2f}x")
    t0 = time.perf_counter()
    lowrank = fid_from_features(feats, mu, sigma)
    t_low = time.perf_counter() - t0
    print(f"  distance, exact low-rank form : {t_low:8.3f} s  FID {lowrank:.6f}")
    if not args.skip_sqrtm:
        t0 = time.perf_counter()
        mu_g, sigma_g = statistics(feats)
        full = frechet_distance(mu_g, sigma_g, mu, sigma)
        t_full = time.perf_counter() - t0
        print(f"  distance, pytorch-fid sqrtm   : {t_full:8.3f} s  FID {full:.6f}   "
              f"ratio {t_full / t_low:.0f}x, |difference| {abs(full - lowrank):.2e}")


if __name__ == "__main__":
    main()
