"""PSF quality measures: FWHM, encircled energy, MTF, Strehl ratio. Results in pixels of the PSF grid
(multiply by the pixel pitch for metres). Inputs are (H, W) or (C, H, W); outputs are per channel."""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage


def _as_channels(psf: torch.Tensor | np.ndarray) -> np.ndarray:
    arr = psf.detach().cpu().double().numpy() if isinstance(psf, torch.Tensor) else np.asarray(psf, np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"psf must be (H, W) or (C, H, W), got shape {arr.shape}")
    return arr


def centroid(psf: torch.Tensor | np.ndarray) -> np.ndarray:
    """Intensity centroid (y, x) [px] per channel: (C, 2)."""
    arr = _as_channels(psf)
    h, w = arr.shape[-2:]
    yy, xx = np.mgrid[0:h, 0:w]
    s = arr.sum(axis=(1, 2))
    return np.stack([(arr * yy).sum(axis=(1, 2)) / s, (arr * xx).sum(axis=(1, 2)) / s], axis=1)


def radial_profile(psf: torch.Tensor | np.ndarray, step: float = 0.05, angles: int = 64,
                   center: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Azimuthally averaged profile about the centroid (cubic-spline interpolation).

    Returns:
        radii (R,) [px] and profiles (C, R).
    """
    arr = _as_channels(psf)
    h, w = arr.shape[-2:]
    centers = centroid(arr) if center is None else np.broadcast_to(np.asarray(center, float), (arr.shape[0], 2))
    rmax = min(h, w) / 2 - 1
    radii = np.arange(0, rmax, step)
    th = np.linspace(0, 2 * np.pi, angles, endpoint=False)
    out = []
    for c, (cy, cx) in zip(arr, centers):
        ys = cy + radii[:, None] * np.sin(th)[None]
        xs = cx + radii[:, None] * np.cos(th)[None]
        vals = ndimage.map_coordinates(c, [ys.ravel(), xs.ravel()], order=3, mode="constant")
        out.append(vals.reshape(radii.size, angles).mean(axis=1))
    return radii, np.stack(out)


def fwhm(psf: torch.Tensor | np.ndarray) -> np.ndarray:
    """Full width at half maximum [px] per channel: twice the outermost radius at which the azimuthally averaged
    profile (about the centroid) is still >= half its maximum (linear interpolation at the crossing).

    Args:
        psf: (H, W) or (C, H, W) non-negative.

    Returns:
        (C,) FWHM [px].
    """
    radii, prof = radial_profile(psf)
    out = []
    for p in prof:
        half = p.max() / 2
        above = np.nonzero(p >= half)[0]
        i = above[-1]
        if i + 1 >= p.size:
            out.append(2 * radii[-1])
            continue
        t = (p[i] - half) / max(p[i] - p[i + 1], 1e-300)
        out.append(2 * (radii[i] + t * (radii[i + 1] - radii[i])))
    return np.asarray(out)


def _ee_curve(c: np.ndarray, cy: float, cx: float, supersample: int, step: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative energy fraction (R,) at radii (R,) [px] (bin edges of width ``step``) about (cy, cx)."""
    h, w = c.shape
    s = int(supersample)
    sub = (np.arange(s) + 0.5) / s - 0.5
    yy = (np.arange(h)[:, None] + sub[None, :]).ravel() - cy
    xx = (np.arange(w)[:, None] + sub[None, :]).ravel() - cx
    d = np.sqrt(yy[:, None] ** 2 + xx[None, :] ** 2)
    vals = np.repeat(np.repeat(c, s, axis=0), s, axis=1) / (s * s)
    nbins = int(np.ceil(d.max() / step)) + 1
    hist = np.bincount(np.minimum((d / step).astype(np.int64), nbins - 1).ravel(), weights=vals.ravel(),
                       minlength=nbins)
    cum = np.concatenate([[0.0], np.cumsum(hist)]) / c.sum()
    return np.arange(nbins + 1) * step, cum


def encircled_energy(psf: torch.Tensor | np.ndarray, radii: np.ndarray | float, supersample: int = 4,
                     center: np.ndarray | None = None, step: float = 0.02) -> np.ndarray:
    """Fraction of each channel's energy within circles about the centroid (pixels split into s x s
    sub-pixels and distances binned at ``step`` px, linear interpolation between bins).

    Args:
        psf: (H, W) or (C, H, W) non-negative. radii: scalar or (R,) [px]. center: optional (y, x) [px].

    Returns:
        (C, R) fractions in [0, 1] of the total energy in the window.
    """
    arr = _as_channels(psf)
    radii = np.atleast_1d(np.asarray(radii, np.float64))
    centers = centroid(arr) if center is None else np.broadcast_to(np.asarray(center, float), (arr.shape[0], 2))
    out = []
    for c, (cy, cx) in zip(arr, centers):
        r, cum = _ee_curve(c, cy, cx, supersample, step)
        out.append(np.interp(radii, r, cum))
    return np.stack(out)


def encircled_energy_radius(psf: torch.Tensor | np.ndarray, fraction: float, supersample: int = 4,
                            step: float = 0.02) -> np.ndarray:
    """Radius [px] of the circle about the centroid that holds ``fraction`` of each channel's energy.

    Args:
        psf: (H, W) or (C, H, W) non-negative. fraction: in (0, 1).

    Returns:
        (C,) radii [px].
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    arr = _as_channels(psf)
    out = []
    for c, (cy, cx) in zip(arr, centroid(arr)):
        r, cum = _ee_curve(c, cy, cx, supersample, step)
        i = int(np.searchsorted(cum, fraction))
        i = min(max(i, 1), len(cum) - 1)
        t = (fraction - cum[i - 1]) / max(cum[i] - cum[i - 1], 1e-300)
        out.append(float(r[i - 1] + t * (r[i] - r[i - 1])))
    return np.asarray(out)


def mtf(psf: torch.Tensor | np.ndarray) -> np.ndarray:
    """Modulation transfer function |OTF| / |OTF(0)|, centred (zero frequency at (H//2, W//2)).

    Returns:
        (C, H, W) in [0, 1]; frequency step 1 / H (rows) and 1 / W (cols) [cycles / px].
    """
    arr = _as_channels(psf)
    otf = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(arr, axes=(-2, -1))), axes=(-2, -1))
    mag = np.abs(otf)
    h, w = arr.shape[-2:]
    return mag / mag[:, h // 2, w // 2][:, None, None]


def radial_mtf(psf: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Azimuthally averaged MTF. Returns frequencies (F,) [cycles / px] up to Nyquist 0.5 and values (C, F)."""
    m = mtf(psf)
    h, w = m.shape[-2:]
    fy = (np.arange(h) - h // 2) / h
    fx = (np.arange(w) - w // 2) / w
    fr = np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    nbins = min(h, w) // 2
    edges = np.linspace(0, 0.5, nbins + 1)
    idx = np.digitize(fr.ravel(), edges) - 1
    ok = (idx >= 0) & (idx < nbins)
    counts = np.bincount(idx[ok], minlength=nbins)
    vals = np.stack([np.bincount(idx[ok], weights=c.ravel()[ok], minlength=nbins) / np.maximum(counts, 1)
                     for c in m])
    return 0.5 * (edges[1:] + edges[:-1]), vals


def strehl_ratio(psf: torch.Tensor | np.ndarray, ref: torch.Tensor | np.ndarray) -> np.ndarray:
    """Peak of the PSF over the peak of the reference (diffraction-limited) PSF, both normalised to unit sum.

    Args:
        psf, ref: (H, W) or (C, H, W) on the same grid.

    Returns:
        (C,) Strehl ratios (1 for an aberration-free system).
    """
    a, b = _as_channels(psf), _as_channels(ref)
    a = a / a.sum(axis=(1, 2), keepdims=True)
    b = b / b.sum(axis=(1, 2), keepdims=True)
    return a.max(axis=(1, 2)) / b.max(axis=(1, 2))
