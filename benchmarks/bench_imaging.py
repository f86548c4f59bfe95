"""Image formation cost: optics.imaging.fft_convolve (linear, padded) against the alternatives, side by side.

Batch 8 x 3 x 256 x 256 images, a 3 x 256 x 256 PSF whose support is a 63 px disk (the face-deid blur is ~61 px),
forward + backward (gradients w.r.t. image and PSF) for the torch methods, forward only for scipy.
Ratios are printed against ours (> 1: ours is faster).

    python benchmarks/bench_imaging.py [--device cpu|cuda] [--repeats N]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import scipy.signal
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from optics.imaging import crop_psf, fft_convolve  # noqa: E402


def disk_psf(size: int, diameter: int, channels: int, device) -> torch.Tensor:
    c = torch.arange(size, device=device) - size // 2
    r = torch.sqrt(c[:, None].float() ** 2 + c[None, :].float() ** 2)
    psf = (r <= diameter / 2).float() * (1 + 0.1 * torch.rand(channels, size, size, device=device))
    return psf / psf.sum(dim=(-2, -1), keepdim=True)


def circular(image, psf):
    """Cost floor: unpadded circular FFT convolution (wrong at the edges)."""
    k = torch.fft.ifftshift(psf, dim=(-2, -1))
    return torch.fft.irfft2(torch.fft.rfft2(image) * torch.fft.rfft2(k), s=image.shape[-2:])


def direct(image, psf):
    """F.conv2d with the PSF cropped to its support ('same', zero padding)."""
    k = crop_psf(psf)
    h, w = k.shape[-2:]
    kern = torch.flip(k, dims=(-2, -1))[:, None]
    pad = F.pad(image, (w - 1 - w // 2, w // 2, h - 1 - h // 2, h // 2))
    return F.conv2d(pad, kern, groups=image.shape[1])


def time_torch(fn, image, psf, repeats, device, warmup=True):
    def once():
        img = image.detach().requires_grad_(True)
        k = psf.detach().requires_grad_(True)
        out = fn(img, k)
        out.backward(torch.ones_like(out))
        if device.type == "cuda":
            torch.cuda.synchronize()
    return median_time(once, repeats, warmup)


def median_time(once, repeats: int, warmup: bool = True) -> float:
    """Median wall time [s] of ``once()`` over ``repeats`` calls (after one untimed warm-up call)."""
    if warmup:
        once()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        once()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def time_scipy(image, psf, repeats):
    img = image.detach().cpu().numpy()
    k = crop_psf(psf).detach().cpu().numpy()

    def once():
        return scipy.signal.fftconvolve(img, k[None], mode="same", axes=(-2, -1))
    return median_time(once, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--direct_repeats", type=int, default=1, help="F.conv2d is slow on CPU")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    image = torch.rand(8, 3, 256, 256, device=device)
    psf = disk_psf(256, 63, 3, device)

    # correctness first: ours equals direct convolution, circular differs at the edges
    with torch.no_grad():
        ours, ref = fft_convolve(image, psf), direct(image, psf)
        err = float((ours - ref).abs().max())
        edge = float((circular(image, psf) - ref)[..., :8, :].abs().max())
    print(f"device {device}, threads {torch.get_num_threads()}, image {tuple(image.shape)}, "
          f"PSF {tuple(psf.shape)} (support {tuple(crop_psf(psf).shape[-2:])})")
    print(f"max |ours - conv2d| = {err:.2e}; max |circular - conv2d| at the top edge = {edge:.2e}")

    rows = [("ours: fft_convolve (linear)", time_torch(fft_convolve, image, psf, args.repeats, device), "fwd+bwd"),
            ("circular rfft (floor, wrong edges)", time_torch(circular, image, psf, args.repeats, device),
             "fwd+bwd"),
            ("F.conv2d, PSF cropped to support", time_torch(direct, image, psf, args.direct_repeats, device,
                                                                  warmup=device.type == "cuda"),
             "fwd+bwd")]
    if device.type == "cpu":
        rows.append(("scipy.signal.fftconvolve", time_scipy(image, psf, args.repeats), "fwd only"))
    ours_t = rows[0][1]
    print(f"{'method':38s} {'pass':8s} {'time [ms]':>10s} {'time / ours':>12s}")
    for name, t, kind in rows:
        print(f"{name:38s} {kind:8s} {t * 1e3:10.1f} {t / ours_t:12.2f}")
    print(f"ours / circular floor = {ours_t / rows[1][1]:.2f} (target <= 1.5); "
          f"conv2d / ours = {rows[2][1] / ours_t:.1f} (target >= 10)")


if __name__ == "__main__":
    main()
