"""Automatic pupil sampling: the smallest fast FFT grid on which a lens' PSF is valid.

The PSF model (optics/psf.py) samples the pupil at dx = lambda z / (N p) so that one FFT lands the PSF on the
pixel pitch p for every wavelength. The window N dx = lambda z / p does not depend on N; N only sets how finely
the pupil is sampled. The grid is valid (the limits LensConfig.validate checks) when

1. N >= psf_size (the PSF is a crop of the N x N output);
2. the aperture diameter holds >= MIN_APERTURE_SAMPLES samples at the longest wavelength (the coarsest grid):
   2 a / dx = 2 a N p / (lambda_max z) >= 16;
3. the pupil phase (defocus of every configured depth + the height map, every wavelength) steps by less than
   MAX_PHASE_STEP between neighbouring samples (no aliasing). The defocus alone steps by 2 pi r_blur / N
   (r_blur = geometric blur radius [px]), so it is covered by the PSF-window check r_blur + margin <= psf_size/2
   of condition 1; only a non-zero height map needs the explicit check.

:func:`choose_pupil_samples` returns the first N of [psf_size, then 2^a 3^b 5^c sizes upwards] meeting all three,
and refuses (LensConfigError naming the key that drives the size, with N and the memory) a design whose grid
would need more than MAX_AUTO_MEMORY bytes for one PSF evaluation and its gradient. An explicit pupil_samples may
use up to MAX_PSF_MEMORY.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from optics import psf as psf_model
from optics.materials import refractive_index
from optics.zernike import zernike_grid

MIN_APERTURE_SAMPLES = 16      # pupil samples across the aperture diameter at the longest wavelength
MAX_PHASE_STEP = 0.9 * math.pi  # largest pupil phase step between neighbouring samples [rad]
MAX_AUTO_MEMORY = 4 * 2 ** 30  # [bytes] largest grid the automatic choice picks (one PSF + its gradient)
MAX_PSF_MEMORY = 64 * 2 ** 30  # [bytes] largest grid at all (explicit pupil_samples); beyond: refused


def fast_fft_size(n: int) -> int:
    """Smallest 5-smooth integer (2^a 3^b 5^c, fast for every FFT library incl. cuFFT) >= n."""
    n = max(int(n), 1)
    best = 1 << (n - 1).bit_length()  # the next power of two is always a candidate
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def psf_memory_bytes(samples: int, wavelengths: int, terms: int, depths: int = 1) -> int:
    """Rough peak memory [bytes] of a lens on an N x N pupil grid: the float32 buffers (r^2, aperture, defocus
    phase, K Zernike terms per wavelength) plus one PSF evaluation of ``depths`` depths and its gradient
    (phase, complex pupil and spectrum, intensity, their gradients: ~64 bytes per sample and depth)."""
    per_sample = wavelengths * (4 * (terms + 3) + 64 * depths)
    return int(samples) ** 2 * per_sample


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"  # pragma: no cover


def aperture_samples(cfg: Any, samples: int) -> float:
    """Pupil samples across the aperture diameter at the longest wavelength (the coarsest pupil grid)."""
    dx = psf_model.pupil_pitch(max(cfg.wavelengths), cfg.sensor_distance, cfg.pixel_pitch, samples)
    return 2 * cfg.aperture_radius / dx


def _phases(cfg: Any, samples: int, pitch_of: Callable[[float], float]):
    """Yield (pupil phase (N, N) [rad], inside mask) for every wavelength and configured depth of a flat-or-not
    height map, on an N-sample grid of pitch ``pitch_of(wavelength)`` [m]."""
    idx = sorted(cfg.zernike)
    coef = torch.tensor([float(cfg.zernike[j]) for j in idx], dtype=torch.float64)
    a, z = cfg.aperture_radius, cfg.sensor_distance
    for w, f in zip(cfg.wavelengths, cfg.focal_lengths()):
        dx = pitch_of(w)
        height = torch.einsum("k,kij->ij", coef, zernike_grid(idx, samples, dx, a))
        r2 = psf_model.radius_squared_grid(samples, [dx])[0]
        k = 2 * math.pi / w
        surface = k * (refractive_index(cfg.material, w) - 1) * height
        for d in cfg.depths():
            yield w, k * r2 / 2 * psf_model.defocus_power(d, f, z) + surface, r2 <= a * a


def max_phase_step(cfg: Any, samples: int) -> float:
    """Largest pupil phase step [rad] between neighbouring samples inside the aperture over every configured
    depth and wavelength on the N = ``samples`` pupil grids, for the configured height map (0 when it is flat)."""
    if not any(abs(c) > 0 for c in cfg.zernike.values()):
        return 0.0
    pitch = lambda w: psf_model.pupil_pitch(w, cfg.sensor_distance, cfg.pixel_pitch, samples)  # noqa: E731
    return max(psf_model.max_phase_step(phase, inside) for _, phase, inside in _phases(cfg, samples, pitch))


def phase_limited_samples(cfg: Any, probe: int = 257) -> int:
    """Estimate of the smallest N whose pupil phase steps stay below MAX_PHASE_STEP (0 for a flat height map).

    The largest phase gradient G [rad/m] is measured once on a fine ``probe``-sample grid spanning the aperture;
    on the lens grid the step is G dx = G lambda z / (N p), so N >= G lambda z / (MAX_PHASE_STEP p).
    """
    if not any(abs(c) > 0 for c in cfg.zernike.values()):
        return 0
    h = 2 * cfg.aperture_radius / (probe - 1)
    need = 0.0
    for w, phase, inside in _phases(cfg, probe, lambda w: h):
        step = psf_model.max_phase_step(phase, inside)  # [rad] per probe pitch h
        need = max(need, step / h * w * cfg.sensor_distance / (MAX_PHASE_STEP * cfg.pixel_pitch))
    return math.ceil(need)


@dataclass
class SamplingChoice:
    """Result of :func:`choose_pupil_samples`."""
    samples: int           # N
    aperture_samples: float  # samples across the aperture at the longest wavelength
    phase_step: float      # largest pupil phase step [rad]
    memory: int            # psf_memory_bytes(N, ...)
    reason: str            # what set N


def _affordable(cfg: Any, n: int, key: str, why: str, err: Callable[[str, str], Exception],
                limit: int = MAX_AUTO_MEMORY) -> int:
    mem = psf_memory_bytes(n, len(cfg.wavelengths), len(cfg.learnable_indices), len(cfg.depths()))
    if mem > limit:
        hint = {"psf_size": "reduce psf_size",
                "pupil_samples": "reduce pupil_samples",
                "aperture_radius": "increase aperture_radius or pixel_pitch, or shorten sensor_distance",
                "zernike": "reduce the height-map coefficients"}[key]
        if limit == MAX_AUTO_MEMORY and key != "psf_size":
            hint += f" (or set pupil_samples to use such a grid anyway, up to {format_bytes(MAX_PSF_MEMORY)})"
        raise err(key, f"{why} a {n} x {n} pupil grid, about {format_bytes(mem)} for one PSF and its gradient "
                       f"(affordable: {format_bytes(limit)}); {hint}")
    return mem


def check_memory(cfg: Any, samples: int, key: str, err: Callable[[str, str], Exception],
                 limit: int = MAX_PSF_MEMORY) -> int:
    """Raise ``err(key, ...)`` when an N = ``samples`` grid needs more than ``limit`` bytes; return its memory."""
    return _affordable(cfg, samples, key, f"{key} {samples} needs", err, limit)


def choose_pupil_samples(cfg: Any, err: Callable[[str, str], Exception]) -> SamplingChoice:
    """The smallest valid pupil grid N of a lens config without ``pupil_samples`` (see the module docstring).

    Args:
        cfg: a LensConfig (wavelengths, aperture_radius, sensor_distance, pixel_pitch, psf_size, zernike,
            depths(), focal_lengths(), learnable_indices, material).
        err: ``err(key, message)`` -> exception to raise (LensConfigError naming the source file).

    Returns:
        :class:`SamplingChoice`; N = psf_size whenever psf_size already meets every condition (so a design
        that was valid on its default grid keeps exactly that grid), else the smallest 5-smooth N meeting them.

    Raises:
        err(key, ...): the grid would need more than MAX_AUTO_MEMORY (key psf_size, aperture_radius or zernike:
            whichever sets N), with N and the memory in the message.
    """
    lam = max(cfg.wavelengths)
    need_ap = MIN_APERTURE_SAMPLES * lam * cfg.sensor_distance / (2 * cfg.aperture_radius * cfg.pixel_pitch)
    n_ap = math.ceil(need_ap * (1 - 1e-12))
    check_memory(cfg, cfg.psf_size, "psf_size", err, MAX_AUTO_MEMORY)
    n, key = cfg.psf_size, "psf_size"
    reason = "psf_size"
    if n_ap > n:
        key, reason = "aperture_radius", (f"{MIN_APERTURE_SAMPLES} samples across the "
                                          f"{2 * cfg.aperture_radius:.3g} m aperture at {lam:.4g} m")
        n = n_ap
    n_phase = phase_limited_samples(cfg)
    if n_phase > n:
        key, reason = "zernike", f"pupil phase steps < {MAX_PHASE_STEP:.2f} rad (height map and defocus)"
        n = n_phase
    if n != cfg.psf_size:
        n = fast_fft_size(n)
    for _ in range(8):  # verify on the grid itself (the estimate is first order); grow a little if needed
        _affordable(cfg, n, key, f"sampling the design ({reason}) needs", err)
        step = max_phase_step(cfg, n)
        if step < MAX_PHASE_STEP:
            break
        key, reason = "zernike", f"pupil phase steps < {MAX_PHASE_STEP:.2f} rad (height map and defocus)"
        n = fast_fft_size(max(n + 1, math.ceil(n * step / MAX_PHASE_STEP * 1.02)))
    else:
        raise err("zernike", f"no pupil grid up to {n} samples keeps the pupil phase steps below "
                             f"{MAX_PHASE_STEP:.2f} rad; reduce the height-map coefficients")
    mem = psf_memory_bytes(n, len(cfg.wavelengths), len(cfg.learnable_indices), len(cfg.depths()))
    return SamplingChoice(n, aperture_samples(cfg, n), step, mem, reason)
