"""Lens-model fit on a 3-channel 256 x 256 measured PSF (CPU): time and iterations of the default schedule
(defocus scan + Adam + L-BFGS) against Adam alone with the same iteration budget, in the same run.

    python benchmarks/bench_calibration_fit.py [--iters 100] [--threads N]

The measurement is synthetic: the face-deid lens (face at 0.75 m) with known Zernike errors, a sub-pixel shift,
Poisson + read noise; "floor" is the relative RMS of the noise itself (what a perfect fit leaves).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hardware.calibration import CleaningConfig, clean_measurement  # noqa: E402
from hardware.fit import FitConfig, fit_lens  # noqa: E402
from hardware.psf_io import PSFMeasurement  # noqa: E402
from optics.lens import Lens, load_lens_config  # noqa: E402
from optics.materials import refractive_index  # noqa: E402


def synthetic(cfg, truth: dict, shift=(0.3, -0.2), photons=1e7, background=50.0, read_noise=3.0, seed=0):
    n1 = refractive_index(cfg.material, cfg.design_wavelength) - 1
    unit = cfg.aperture_radius * cfg.pixel_pitch / (2 * cfg.sensor_distance * n1)
    lens = Lens(cfg.replace(zernike={**cfg.zernike, **truth, 3: shift[0] * unit, 2: shift[1] * unit}))
    with torch.no_grad():
        psf = lens.psf().double().numpy()[None]
    expected = psf * photons + background
    rng = np.random.default_rng(seed)
    return rng.poisson(expected) + rng.normal(0, read_noise, psf.shape), expected


def measurement(frames, cfg):
    c = frames.shape[1]
    return PSFMeasurement(frames=frames, paths=[[Path(f"synthetic_c{i}") for i in range(c)]],
                          object_distances=[cfg.object_distance], pixel_pitch=cfg.pixel_pitch,
                          black_level=np.zeros((1, c)), saturation_level=np.full((1, c), np.inf),
                          exposure=[[None] * c])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_lens_config("face-deid")
    wave = cfg.design_wavelength / (refractive_index(cfg.material, cfg.design_wavelength) - 1)
    truth = {4: 0.5 * wave, 5: -0.3 * wave, 7: 0.2 * wave}
    frames, expected = synthetic(cfg, truth)
    clean_cfg = CleaningConfig(psf_size=cfg.psf_size, target_pitch=cfg.pixel_pitch)
    t0 = time.perf_counter()
    cleaned = clean_measurement(measurement(frames, cfg), clean_cfg)
    t_clean = time.perf_counter() - t0
    ideal = clean_measurement(measurement(expected, cfg), clean_cfg).psf_fit
    floor = np.linalg.norm(cleaned.psf_fit - ideal) / np.linalg.norm(cleaned.psf_fit)
    print(f"PSF {tuple(cleaned.psf.shape[1:])} (channels, H, W), torch threads {torch.get_num_threads()}, "
          f"cleaning {t_clean:.2f} s, noise floor (relative RMS) {floor:.4g}")
    print(f"truth [waves]: {{{', '.join(f'{j}: {v / wave:+.3f}' for j, v in truth.items())}}}")
    lens = Lens(cfg)
    rows = []
    for name, fc in (("scan + Adam + L-BFGS (default)", FitConfig(iters=args.iters)),
                     ("Adam only (same budget, same scan)", FitConfig(iters=args.iters, lbfgs_fraction=0.0)),
                     ("default schedule, float32", FitConfig(iters=args.iters, dtype="float32"))):
        res = fit_lens(lens, cleaned.psf_fit, [cfg.object_distance], fc, progress=False)
        err = max(abs(res.zernike[j] - v) / abs(v) for j, v in truth.items())
        rows.append((name, res))
        print(f"{name:38s} {res.seconds:7.2f} s  iterations adam {res.iterations[0]:4d} lbfgs "
              f"{res.iterations[1]:4d}  function evals {res.function_evals:4d}  residual "
              f"{res.residual_rms_relative:.4g} ({res.residual_rms_relative / floor:.3f} x floor)  "
              f"worst Zernike error {100 * err:.2f} %")
    base, adam, f32 = (r for _, r in rows)
    excess = (adam.residual_rms_relative - floor) / max(base.residual_rms_relative - floor, 1e-12)
    print(f"ratio time Adam-only / default: {adam.seconds / base.seconds:.2f}; residual above floor "
          f"Adam-only / default: {excess:.1f}; time float32 / float64: {f32.seconds / base.seconds:.2f}")


if __name__ == "__main__":
    main()
