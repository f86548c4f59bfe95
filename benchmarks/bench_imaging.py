"""Image formation cost: optics.imaging.fft_convolve (linear, padded) against the alternatives, side by side.

Batch 8 x 3 x 256 x 256 images, a 3 x 256 x 256 PSF whose support is a 63 px disk (the face-deid blur is ~61 px),
forward + backward (gradients w.r.t. image and PSF) for the torch methods, forward only for scipy.
Ratios are printed against ours (> 1: ours is faster).

Camera cost (--camera): the whole face-deid Camera forward + backward (PSF from the learnable Zernike heights,
linear FFT imaging, Poisson-Gaussian sensor noise, 8-bit ADC) against the reference paper's camera (the same PSF
per call, unpadded circular convolution, no sensor), batch 8 x 3 x 256 x 256, timed alternately (pairs) so that
a changing machine load hits both alike; the median of the per-pair ratios is printed, plus the PSF time.

    python benchmarks/bench_imaging.py [--device cpu|cuda] [--repeats N] [--camera] [--threads T]
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


def camera_cost(device: torch.device, repeats: int) -> None:
    """Face-deid Camera (linear imaging + noise) vs the circular, noise-free reference, forward + backward."""
    from optics.camera import Camera
    from optics.lens import Lens, load_lens_config

    lens = Lens(load_lens_config("face-deid")).to(device)
    camera = Camera(lens, noise=True).to(device)
    image = torch.rand(8, 3, 256, 256, device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def ours():
        lens.zero_grad()
        y = camera(image)
        y.backward(torch.ones_like(y))
        sync()

    def reference():
        lens.zero_grad()
        y = circular(image, lens.psf())
        y.backward(torch.ones_like(y))
        sync()

    def psf_forward():
        with torch.no_grad():
            lens.psf()
        sync()

    def psf_backward():
        lens.zero_grad()
        lens.psf().sum().backward()
        sync()

    cropped = Camera(lens, noise=True, crop_tol=1e-3).to(device)

    def ours_cropped():
        lens.zero_grad()
        y = cropped(image)
        y.backward(torch.ones_like(y))
        sync()

    ours(), reference(), ours_cropped()  # warm-up
    pairs = []
    for _ in range(repeats):
        pairs.append((median_time(ours, 1, False), median_time(reference, 1, False),
                      median_time(ours_cropped, 1, False)))
    t_ours, t_ref, t_crop = (float(np.median([p[i] for p in pairs])) for i in (0, 1, 2))
    ratio = float(np.median([a / b for a, b, _ in pairs]))
    ratio_crop = float(np.median([c / b for _, b, c in pairs]))
    print(f"face-deid PSF: forward {median_time(psf_forward, repeats) * 1e3:.1f} ms, forward + backward "
          f"{median_time(psf_backward, repeats) * 1e3:.1f} ms")
    print(f"camera fwd+bwd (PSF + linear imaging + noise + ADC): {t_ours * 1e3:.1f} ms; reference (PSF + circular, "
          f"no sensor): {t_ref * 1e3:.1f} ms; median pair ratio ours / reference = {ratio:.2f} (target <= 1.5)")
    with torch.no_grad():
        psf = lens.psf()
        lost = 1 - crop_psf(psf, 1e-3).sum(dim=(-2, -1))
    print(f"with crop_tol=1e-3 (PSF cropped to {tuple(crop_psf(psf, 1e-3).shape[-2:])}, energy dropped "
          f"{', '.join(f'{float(v):.2%}' for v in lost)}): {t_crop * 1e3:.1f} ms, ratio {ratio_crop:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--direct_repeats", type=int, default=1, help="F.conv2d is slow on CPU")
    parser.add_argument("--camera", action="store_true", help="only the whole-camera cost comparison")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.camera:
        print(f"device {device}, threads {torch.get_num_threads()}")
        camera_cost(device, args.repeats)
        return
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
