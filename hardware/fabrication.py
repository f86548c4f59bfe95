"""Fabrication files of a learned height map: quantisation to N levels, export, re-import, re-simulation.

Files written for a height map ``<stem>`` (all heights in metres, SI):
    <stem>.png   16-bit gray, code = round((h - h_min) / (h_max - h_min) * 65535) (grayscale lithography)
    <stem>.npy   float64 (N, N) heights [m]
    <stem>.csv   N rows of N heights [m] (17 significant digits: exact float64 round trip)
    <stem>.json  metadata: pitch [m], levels, height range [m], material, design wavelengths [m], aperture ...
Pixels outside the aperture hold h_min.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

from optics.quantize import (PNG_MAX, level_step, quantize_height,  # noqa: F401  (re-exported)
                             quantize_height_ste)
FORMAT_VERSION = 1


class FabricationFileError(ValueError):
    """A fabrication file that is missing a part, inconsistent or of the wrong kind (names the file)."""


def height_to_levels(height: np.ndarray, levels: int, h_min: float, h_max: float) -> np.ndarray:
    """Level index k in 0..levels-1 of each (already quantised or not) height [m] (int64)."""
    step = level_step(levels, h_min, h_max)
    return np.round((np.clip(height, h_min, h_max) - h_min) / step).astype(np.int64)


def levels_to_png_codes(k: np.ndarray, levels: int) -> np.ndarray:
    """Level index -> 16-bit gray code, linear in height (level levels-1 -> 65535)."""
    return np.round(k.astype(np.float64) * PNG_MAX / (levels - 1)).astype(np.uint16)


def png_codes_to_levels(codes: np.ndarray, levels: int) -> np.ndarray:
    """Inverse of :func:`levels_to_png_codes` (exact for levels <= 65536)."""
    return np.round(codes.astype(np.float64) * (levels - 1) / PNG_MAX).astype(np.int64)


def export_height_map(out_dir: str | os.PathLike, height: np.ndarray | torch.Tensor, pitch: float, levels: int,
                      h_min: float, h_max: float, material: str, wavelengths: Sequence[float],
                      aperture_radius: float | None = None, stem: str = "height_map",
                      extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """Quantise ``height`` and write PNG + NPY + CSV + JSON.

    Args:
        out_dir: folder (created).
        height: (N, N) surface height [m] (quantised here; outside the aperture set to h_min if
            ``aperture_radius`` is given).
        pitch: sample spacing of ``height`` [m].
        levels, h_min, h_max: quantisation (h_min / h_max [m]).
        material: lens material name. wavelengths: design wavelengths [m].
        aperture_radius: [m] or None.
        extra: more metadata to store (JSON-serialisable).

    Returns:
        {"png", "npy", "csv", "json"} -> written paths.
    """
    from data.files import save_image, save_json, save_npy, save_text

    h = height.detach().cpu().double().numpy() if isinstance(height, torch.Tensor) else np.asarray(height, float)
    if h.ndim != 2:
        raise ValueError(f"height map must be (N, N), got shape {h.shape}")
    if not np.all(np.isfinite(h)):
        raise ValueError("height map contains NaN/inf")
    if not pitch > 0:
        raise ValueError(f"pitch must be > 0 [m], got {pitch!r}")
    q = quantize_height(h, levels, h_min, h_max)
    if aperture_radius is not None:
        q = np.where(aperture_mask(h.shape[0], pitch, aperture_radius), q, h_min)
    k = height_to_levels(q, levels, h_min, h_max)
    q = h_min + k * level_step(levels, h_min, h_max)  # exactly what the PNG decodes to
    out = Path(out_dir)
    paths = {"png": out / f"{stem}.png", "npy": out / f"{stem}.npy", "csv": out / f"{stem}.csv",
             "json": out / f"{stem}.json"}
    save_image(paths["png"], levels_to_png_codes(k, levels))
    save_npy(paths["npy"], q)
    save_text(paths["csv"], "\n".join(",".join(f"{v:.17g}" for v in row) for row in q) + "\n")
    meta = {"format_version": FORMAT_VERSION, "unit": "m", "shape": list(q.shape), "pitch": float(pitch),
            "levels": int(levels), "height_min": float(h_min), "height_max": float(h_max),
            "level_step": level_step(levels, h_min, h_max), "material": material,
            "design_wavelengths": [float(w) for w in wavelengths],
            "aperture_radius": None if aperture_radius is None else float(aperture_radius),
            "png_encoding": "code = round(level * 65535 / (levels - 1)); height = height_min + level * level_step",
            "files": {k2: p.name for k2, p in paths.items() if k2 != "json"}}
    if extra:
        meta.update(extra)
    save_json(paths["json"], meta)
    log.info("exported %dx%d height map, %d levels in [%.4g, %.4g] m to %s", *q.shape, levels, h_min, h_max, out)
    return paths


def aperture_mask(size: int, pitch: float, radius: float) -> np.ndarray:
    """(size, size) bool: sample centres within ``radius`` [m] of the centre sample (size // 2)."""
    c = (np.arange(size) - size // 2) * pitch
    return c[None, :] ** 2 + c[:, None] ** 2 <= radius ** 2


def import_height_map(path: str | os.PathLike, source: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Read back an exported height map.

    Args:
        path: any of the exported files (.json / .png / .npy / .csv); the JSON with the same stem is required.
        source: which file to decode ("png" | "npy" | "csv"); default from the suffix (.json -> "png", the
            file a fab house receives).

    Returns:
        ((N, N) float64 heights [m], metadata dict).

    Raises:
        FileNotFoundError: missing file. FabricationFileError: inconsistent / malformed file.
    """
    import json

    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: metadata of the height map not found")
    try:
        meta = json.loads(meta_path.read_text())
        levels, h_min, h_max = int(meta["levels"]), float(meta["height_min"]), float(meta["height_max"])
        shape = tuple(meta["shape"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise FabricationFileError(f"{meta_path}: not a height-map metadata file ({err})") from err
    source = source or {".png": "png", ".npy": "npy", ".csv": "csv", ".json": "png"}.get(path.suffix.lower())
    if source not in ("png", "npy", "csv"):
        raise FabricationFileError(f"{path}: unknown height-map file type")
    data_path = path.with_suffix(f".{source}")
    if not data_path.is_file():
        raise FileNotFoundError(f"{data_path}: height-map file not found")
    try:
        if source == "png":
            from hardware.pngio import png_header, read_png

            _, _, depth, ctype, _ = png_header(data_path)
            if depth != 16 or ctype != 0:
                raise FabricationFileError(f"{data_path}: expected a 16-bit gray PNG, got {depth}-bit type {ctype}")
            k = png_codes_to_levels(read_png(data_path), levels)
            height = h_min + k * level_step(levels, h_min, h_max)
        elif source == "npy":
            height = np.load(data_path, allow_pickle=False).astype(np.float64)
        else:
            height = np.loadtxt(data_path, delimiter=",", dtype=np.float64, ndmin=2)
    except FabricationFileError:
        raise
    except Exception as err:
        raise FabricationFileError(f"{data_path}: unreadable height map ({type(err).__name__}: {err})") from err
    if height.shape != shape:
        raise FabricationFileError(f"{data_path}: shape {height.shape} but the metadata says {shape}")
    if not np.all(np.isfinite(height)) or height.min() < h_min - 1e-15 or height.max() > h_max + 1e-15:
        raise FabricationFileError(f"{data_path}: heights outside the range [{h_min}, {h_max}] m of the metadata")
    return height, meta


def lens_with_height_map(lens, height: np.ndarray):
    """A copy of ``lens`` whose surface is the given height map (a free pixel map, no Zernike terms).

    Args:
        lens: optics.lens.Lens.
        height: (M, M) heights [m] on the lens aperture grid (M = config.height_map_samples).

    Returns:
        optics.lens.Lens (parameters frozen) with ``height_map() == height`` inside the aperture.
    """
    from optics.lens import Lens

    cfg = lens.config
    m = cfg.height_map_samples
    if height.shape != (m, m):
        raise ValueError(f"height map is {height.shape}, the lens aperture grid is ({m}, {m})")
    from scipy import ndimage

    # outside the aperture the map holds h_min (or 0); extend the rim heights outwards so that the bilinear
    # resampling onto the pupil grids does not mix them into the rim
    inside = aperture_mask(m, 2 * cfg.aperture_radius / m, cfg.aperture_radius)
    idx = ndimage.distance_transform_edt(~inside, return_distances=False, return_indices=True)
    filled = np.asarray(height, np.float64)[idx[0], idx[1]]
    new = Lens(cfg.replace(height_map="pixels", zernike={}, zernike_indices=[]))
    with torch.no_grad():
        new.zernike_coeffs.zero_()
        new.height_pixels.copy_(torch.as_tensor(filled, dtype=new.height_pixels.dtype))
    new.requires_grad_(False)
    return new


def quantization_report(lens, quantised: np.ndarray, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """How much the PSF changes when the lens surface is replaced by the quantised height map.

    Args:
        lens: the design (optics.lens.Lens).
        quantised: (M, M) re-imported fabrication heights [m].
        meta: the metadata of the fabrication files (levels, level_step, height range are copied).

    Returns:
        dict: levels / step [m], height error RMS / max [m] inside the aperture, relative RMS PSF change
        (||q - d|| / ||d|| over channels and depths), per channel (worst over depths): ``peak_ratio`` (peak of
        the quantised PSF over the design's peak; not bounded by 1: quantising a deliberately blurred design can
        sharpen it), ``strehl`` (the true Strehl ratio of the quantised element: its peak over the peak of the
        diffraction-limited PSF of the same aperture, <= 1) and ``strehl_design`` (the same for the design),
        and EE50 radii [px] of design and quantised PSFs, per depth.
    """
    from optics.analysis import encircled_energy_radius, strehl_ratio

    cfg = lens.config
    design_h = lens.height_map().detach().double().numpy()
    mask = aperture_mask(design_h.shape[0], 2 * cfg.aperture_radius / design_h.shape[0], cfg.aperture_radius)
    err = (quantised - design_h)[mask]
    qlens = lens_with_height_map(lens, quantised)
    depths = cfg.depths()
    with torch.no_grad():
        d_psf = torch.stack([lens.psf(d) for d in depths]).double()
        q_psf = torch.stack([qlens.psf(d) for d in depths]).double()
    change = float(torch.linalg.vector_norm(q_psf - d_psf) / torch.linalg.vector_norm(d_psf))
    peak_ratio = (q_psf.amax((-2, -1)) / d_psf.amax((-2, -1))).numpy()
    reference = lens.diffraction_limited_psf().double().numpy()
    strehl_q = np.stack([strehl_ratio(p.numpy(), reference) for p in q_psf])  # (D, C)
    strehl_d = np.stack([strehl_ratio(p.numpy(), reference) for p in d_psf])
    values = np.unique(np.round(quantised[mask] / 1e-15))
    meta = meta or {}
    return {"levels_used": int(values.size), "levels": meta.get("levels"), "level_step": meta.get("level_step"),
            "height_min": meta.get("height_min"), "height_max": meta.get("height_max"),
            "height_error_rms": float(np.sqrt(np.mean(err ** 2))), "height_error_max": float(np.abs(err).max()),
            "object_distances": depths, "psf_change_relative_rms": change,
            "peak_ratio": peak_ratio.min(0).tolist(), "strehl": strehl_q.min(0).tolist(),
            "strehl_design": strehl_d.min(0).tolist(),
            "ee50_px": {"design": [encircled_energy_radius(p.numpy(), 0.5).tolist() for p in d_psf],
                        "quantised": [encircled_energy_radius(p.numpy(), 0.5).tolist() for p in q_psf]}}
