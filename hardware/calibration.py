"""Cleaning measured PSF frames into PSFs on the simulation grid.

Per frame: dark-frame (or black level + corner) background subtraction, hot-pixel removal, saturation check,
flat field, sub-pixel centroid, registration of the centroid to the grid centre (H//2, W//2), resampling from
the sensor pitch to the simulation pitch (area preserving), crop / pad to the simulation size, normalisation
to sum 1. Every step writes what it did into a report dict.

The model fit lives in hardware/fit.py.
"""
from __future__ import annotations

import logging
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from hardware.psf_io import PSFFileError, PSFMeasurement

log = logging.getLogger(__name__)


class SaturatedPSFError(PSFFileError):
    """A PSF capture with clipped pixels (the message names the file and the count)."""


@dataclass
class CleaningConfig:
    """Settings of :func:`clean_measurement`.

    Attributes:
        psf_size: output size [px] at ``target_pitch`` (the lens config's psf_size).
        target_pitch: simulation pixel pitch [m] (None = keep the sensor pitch).
        corner_fraction: side of each corner patch used for the background, as a fraction of the frame side.
        hot_pixel_sigma: a hot pixel exceeds its 3x3 median by this many noise sigmas ...
        hot_pixel_ratio: ... and is this many times brighter than its brightest neighbour.
        allow_saturated: accept clipped pixels (warning instead of error).
        centroid_radius: half-size [px, sensor] of the centroid window; None = from the frame's energy.
        register: move the centroid to the grid centre (else the frame centre stays the centre).
    """
    psf_size: int
    target_pitch: float | None = None
    corner_fraction: float = 0.1
    hot_pixel_sigma: float = 8.0
    hot_pixel_ratio: float = 2.0
    allow_saturated: bool = False
    centroid_radius: float | None = None
    register: bool = True


# --------------------------------------------------------------------------------------------- single steps
def corner_stats(frame: np.ndarray, fraction: float = 0.1) -> tuple[float, float]:
    """Median and robust sigma (1.4826 MAD) of the four corner patches.

    Args:
        frame: (H, W) values.
        fraction: patch side / frame side.
    """
    h, w = frame.shape
    ph, pw = max(2, int(round(h * fraction))), max(2, int(round(w * fraction)))
    patches = np.concatenate([frame[:ph, :pw].ravel(), frame[:ph, -pw:].ravel(),
                              frame[-ph:, :pw].ravel(), frame[-ph:, -pw:].ravel()])
    med = float(np.median(patches))
    return med, float(1.4826 * np.median(np.abs(patches - med)))


def find_hot_pixels(frame: np.ndarray, noise_sigma: float, sigma: float = 8.0, ratio: float = 2.0,
                    dark: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask (H, W) of hot pixels (isolated outliers).

    A pixel is hot if it exceeds the median of its 3x3 neighbourhood by ``sigma`` noise sigmas and is more than
    ``ratio`` times (above background) its brightest neighbour; or if it is such an outlier in the mean dark
    frame. A PSF core narrower than one pixel looks the same as a hot pixel: for such lenses give dark frames
    and raise ``ratio``.

    Args:
        frame: (H, W) background-subtracted values.
        noise_sigma: background noise [same unit as frame].
        dark: (H, W) mean dark frame or None.
    """
    def outliers(img: np.ndarray, noise: float) -> np.ndarray:
        med = ndimage.median_filter(img, size=3, mode="nearest")
        footprint = np.ones((3, 3), bool)
        footprint[1, 1] = False
        neigh_max = ndimage.maximum_filter(img, footprint=footprint, mode="nearest")
        noise = max(noise, 1e-12 * max(float(np.abs(img).max()), 1e-300))
        return (img - med > sigma * noise) & (img > ratio * np.maximum(neigh_max, 0.0) + sigma * noise)

    mask = outliers(frame, noise_sigma)
    if dark is not None:
        dmed, dsig = corner_stats(dark)
        mask |= outliers(dark - dmed, max(dsig, 1e-12))
    return mask


def replace_pixels(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``frame`` with masked pixels replaced by the median of their unmasked 3x3 neighbours."""
    out = frame.copy()
    if not mask.any():
        return out
    filled = np.where(mask, np.nan, frame)
    padded = np.pad(filled, 1, mode="edge")
    for y, x in zip(*np.nonzero(mask)):
        vals = padded[y:y + 3, x:x + 3].ravel()
        vals = vals[np.isfinite(vals)]
        out[y, x] = float(np.median(vals)) if vals.size else 0.0
    return out


def centroid(frame: np.ndarray, radius: float | None = None, iters: int = 20) -> tuple[float, float]:
    """Sub-pixel centroid (row, col) [px] of a background-subtracted PSF, iterated in a centred window.

    The window (half-size ``radius``) starts at the maximum of the smoothed frame and moves to the centroid
    of the pixels inside it until it stops moving (1e-4 px); for a symmetric PSF the fixed point is its true
    centre, and the noise far from the PSF does not enter.

    Args:
        frame: (H, W) background-subtracted values (noise may be negative).
        radius: window half-size [px]; None = twice the radius holding 90 % of the positive energy, >= 4.
    """
    h, w = frame.shape
    smooth = ndimage.gaussian_filter(frame, 1.0)
    cy, cx = (float(v) for v in np.unravel_index(np.argmax(smooth), smooth.shape))
    if radius is None:
        pos = np.clip(smooth, 0, None)
        yy, xx = np.mgrid[:h, :w]
        r = np.hypot(yy - cy, xx - cx).ravel()
        order = np.argsort(r)
        cum = np.cumsum(pos.ravel()[order])
        r90 = r[order][min(np.searchsorted(cum, 0.9 * cum[-1]), r.size - 1)] if cum[-1] > 0 else 4.0
        radius = max(4.0, 2.0 * r90)
    ys, xs = np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64)
    for _ in range(iters):
        # soft-edged box window: weights linear over the boundary pixel, so the centroid moves smoothly
        wy = np.clip(radius + 0.5 - np.abs(ys - cy), 0.0, 1.0)
        wx = np.clip(radius + 0.5 - np.abs(xs - cx), 0.0, 1.0)
        weight = wy[:, None] * wx[None, :] * frame
        total = weight.sum()
        if total <= 0:
            raise ValueError("centroid: no positive signal in the window")
        ny, nx = float((weight.sum(1) * ys).sum() / total), float((weight.sum(0) * xs).sum() / total)
        moved = max(abs(ny - cy), abs(nx - cx))
        cy, cx = ny, nx
        if moved < 1e-4:
            break
    return cy, cx


def fourier_shift(frame: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """Shift (H, W) ``frame`` by (dy, dx) [px] (sub-pixel, band-limited; periodic, so pad first)."""
    h, w = frame.shape
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    phase = np.exp(-2j * np.pi * (fy * dy + fx * dx))
    return np.fft.irfft2(np.fft.rfft2(frame) * phase, s=(h, w))


def area_matrix(n_in: int, pitch_in: float, centre_in: float, n_out: int, pitch_out: float) -> np.ndarray:
    """(n_out, n_in) overlap matrix of 1-D pixel bins: how much of input pixel j falls in output pixel i.

    Input pixel j spans [(j - centre_in - 0.5) pitch_in, (j - centre_in + 0.5) pitch_in]; output pixel i spans
    the same around (i - n_out // 2) pitch_out. Column sums are 1 for input pixels inside the output window,
    so ``A @ x`` preserves the energy there (and the first moment when the pitches are equal).
    """
    j = np.arange(n_in, dtype=np.float64)
    i = np.arange(n_out, dtype=np.float64)
    lo_in, hi_in = (j - centre_in - 0.5) * pitch_in, (j - centre_in + 0.5) * pitch_in
    lo_out, hi_out = (i - n_out // 2 - 0.5) * pitch_out, (i - n_out // 2 + 0.5) * pitch_out
    overlap = np.minimum(hi_out[:, None], hi_in[None, :]) - np.maximum(lo_out[:, None], lo_in[None, :])
    return np.clip(overlap, 0.0, None) / pitch_in


def resample_to_grid(frame: np.ndarray, centre: tuple[float, float], size: int, pitch_in: float,
                     pitch_out: float) -> tuple[np.ndarray, str]:
    """Put ``centre`` of ``frame`` at (size//2, size//2) of a ``size`` grid at ``pitch_out``.

    Same pitch: integer crop/pad plus a band-limited Fourier sub-pixel shift (no extra blur). Different
    pitch: area-weighted rebinning (each output pixel integrates the input pixels it covers: energy
    preserving, as a sensor pixel integrates light).

    Args:
        frame: (H, W) values. centre: (row, col) [px, input]. pitch_in / pitch_out: [m].

    Returns:
        ((size, size) array, method name).
    """
    cy, cx = centre
    if abs(pitch_in / pitch_out - 1.0) < 1e-9:
        iy, ix = int(round(cy)), int(round(cx))
        margin = 8
        half = size // 2 + margin
        big = size + 2 * margin
        padded = np.zeros((big, big))
        h, w = frame.shape
        y0, x0 = iy - half, ix - half
        sy0, sx0 = max(0, y0), max(0, x0)
        sy1, sx1 = min(h, y0 + big), min(w, x0 + big)
        if sy1 > sy0 and sx1 > sx0:
            padded[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = frame[sy0:sy1, sx0:sx1]
        shifted = fourier_shift(padded, -(cy - iy), -(cx - ix))
        return shifted[margin:margin + size, margin:margin + size], "fourier_shift"
    ay = area_matrix(frame.shape[0], pitch_in, cy, size, pitch_out)
    ax = area_matrix(frame.shape[1], pitch_in, cx, size, pitch_out)
    return ay @ frame @ ax.T, "area_rebin"


# ------------------------------------------------------------------------------------------ whole measurement
@dataclass
class CleanedPSF:
    """Result of :func:`clean_measurement`.

    Attributes:
        psf: (D, C, S, S) registered PSFs (centroid at (S//2, S//2)), each summing to 1; background noise may
            leave small negative values (use :func:`to_calibrated` for the non-negative file).
        psf_fit: (D, C, S, S) the same frames moved by whole pixels only (same pitch) so that no interpolation
            touches the data the lens fit sees; the remaining sub-pixel shift is ``subpixel_shift``.
        subpixel_shift: (D, C, 2) (row, col) [px] that ``psf`` has and ``psf_fit`` lacks.
        report: what every step did, per frame.
    """
    psf: np.ndarray
    psf_fit: np.ndarray
    subpixel_shift: np.ndarray
    report: dict[str, Any]


def _clean_frame(raw: np.ndarray, meas: PSFMeasurement, d: int, c: int, config: CleaningConfig,
                 rep: dict[str, Any]) -> np.ndarray:
    """Background, hot pixels, saturation, flat field of one frame (H, W) [ADU] -> (H, W) [ADU above bg]."""
    path = Path(meas.paths[d][c])
    if meas.dark is not None:
        frame = raw - meas.dark[c]
        rep["background"] = "dark_frame"
        dark_sub = meas.dark[c]
    else:
        frame = raw - meas.black_level[d, c]
        rep["background"] = "black_level+corners" if meas.black_level[d, c] else "corners"
        dark_sub = None
    bg, noise = corner_stats(frame, config.corner_fraction)
    frame = frame - bg
    rep["black_level_adu"] = None if meas.dark is not None else float(meas.black_level[d, c])
    rep["corner_background_adu"] = bg
    rep["noise_sigma_adu"] = noise
    # hot pixels first: a saturated hot pixel is a hot pixel, not a clipped PSF
    hot = find_hot_pixels(frame, noise, config.hot_pixel_sigma, config.hot_pixel_ratio, dark_sub)
    frame = replace_pixels(frame, hot)
    rep["hot_pixels"] = [[int(y), int(x)] for y, x in zip(*np.nonzero(hot))]
    level = meas.saturation_level[d, c]
    clipped = int(((raw >= level) & ~hot).sum()) if np.isfinite(level) else 0
    rep["saturated_pixels"] = clipped
    if clipped:
        msg = f"{path}: {clipped} saturated pixel(s) (>= {level:g} ADU); shorten the exposure"
        if not config.allow_saturated:
            raise SaturatedPSFError(msg + " or pass --allow_saturated")
        log.warning(msg)
    if meas.flat is not None:
        frame = frame / meas.flat[c]
        rep["flat_field"] = str(meas.flat_path)
    if not frame.sum() > 0 or frame.max() <= 5 * noise:
        raise PSFFileError(f"{path}: no PSF signal above the background (peak {frame.max():.3g} ADU, "
                           f"noise {noise:.3g} ADU)")
    rep["peak_snr"] = float(frame.max() / max(noise, 1e-12))
    return frame


def clean_measurement(meas: PSFMeasurement, config: CleaningConfig, register: str = "joint") -> CleanedPSF:
    """Clean every frame of ``meas`` and put it on the simulation grid.

    Args:
        meas: frames (D, C, H, W) raw [ADU] with dark / flat / metadata.
        config: sizes, thresholds.
        register: "joint" (default: one shift per depth, from the centroid of the channel sum, which keeps
            the lateral colour of the lens), "per_channel" (each channel's own centroid) or "none".

    Returns:
        CleanedPSF with the registered PSFs, the whole-pixel-registered frames for the fit and the report.

    Raises:
        SaturatedPSFError: clipped pixels and not ``config.allow_saturated`` (names the file and the count).
        PSFFileError: no pixel pitch, or a frame without signal after background subtraction.
    """
    if register not in ("joint", "per_channel", "none"):
        raise ValueError(f"register must be 'joint', 'per_channel' or 'none', got {register!r}")
    d_n, c_n, h, w = meas.frames.shape
    size = config.psf_size
    pitch_in = meas.pixel_pitch
    pitch_out = config.target_pitch or pitch_in
    if pitch_in is None:
        if config.target_pitch is None:
            raise PSFFileError(f"{meas.paths[0][0]}: pixel_pitch unknown; give it in the sidecar or --pixel_pitch")
        pitch_in = pitch_out
        log.warning("no pixel_pitch in the sidecars: assuming the simulation pitch %.3g m", pitch_out)
    same_pitch = abs(pitch_in / pitch_out - 1.0) < 1e-9
    out = np.zeros((d_n, c_n, size, size))
    out_fit = np.zeros_like(out)
    sub = np.zeros((d_n, c_n, 2))
    frames_report = []
    for d in range(d_n):
        reps = [{"file": str(meas.paths[d][c]), "depth_index": d, "channel": c,
                 "object_distance": meas.object_distances[d]} for c in range(c_n)]
        frames = np.stack([_clean_frame(meas.frames[d, c], meas, d, c, config, reps[c]) for c in range(c_n)])
        if register == "joint":
            joint = centroid(frames.sum(0), config.centroid_radius)
            centres = [joint] * c_n
        elif register == "per_channel":
            centres = [centroid(frames[c], config.centroid_radius) for c in range(c_n)]
        else:
            centres = [(float(h // 2), float(w // 2))] * c_n
        for c in range(c_n):
            rep, frame = reps[c], frames[c]
            cy, cx = centres[c]
            rep["centroid_px"] = [cy, cx]
            rep["shift_px"] = [h // 2 - cy, w // 2 - cx]
            grid, method = resample_to_grid(frame, (cy, cx), size, pitch_in, pitch_out)
            total, kept = frame.sum(), grid.sum()
            if kept <= 0:
                raise PSFFileError(f"{rep['file']}: no energy inside the {size}px simulation window")
            out[d, c] = grid / kept
            if same_pitch:
                iy, ix = float(round(cy)), float(round(cx))
                whole, _ = resample_to_grid(frame, (iy, ix), size, pitch_in, pitch_out)
                out_fit[d, c] = whole / whole.sum()
                sub[d, c] = (iy - cy, ix - cx)
            else:
                out_fit[d, c] = out[d, c]
            rep.update(resample=method, pitch_in=pitch_in, pitch_out=pitch_out,
                       energy_kept_fraction=float(kept / total))
            frames_report.append(rep)
            log.info("%s: shift (%.3f, %.3f) px, %d hot px, background %.4g ADU, energy kept %.3f",
                     Path(rep["file"]).name, rep["shift_px"][0], rep["shift_px"][1], len(rep["hot_pixels"]),
                     rep["corner_background_adu"], rep["energy_kept_fraction"])
    report = {"frames": frames_report, "register": register, "pixel_pitch_in": pitch_in,
              "pixel_pitch_out": pitch_out, "psf_size": size, "dark_frames": [str(p) for p in meas.dark_paths],
              "flat": None if meas.flat_path is None else str(meas.flat_path)}
    return CleanedPSF(psf=out, psf_fit=out_fit, subpixel_shift=sub, report=report)


def to_calibrated(psf: np.ndarray) -> tuple[np.ndarray, float]:
    """Clip negatives of cleaned PSFs and renormalise each channel to sum 1.

    Args:
        psf: (..., H, W) cleaned PSFs, each summing to 1.

    Returns:
        (non-negative PSFs of the same shape summing to 1, largest clipped negative energy fraction).
    """
    neg = np.clip(-psf, 0, None).sum(axis=(-2, -1))
    pos = np.clip(psf, 0, None)
    return pos / pos.sum(axis=(-2, -1), keepdims=True), float(neg.max())
