"""Reading measured PSF captures of the prototype and the calibrated PSF files every mode uses.

A capture is a photo of a point source (pinhole) through the prototype: PNG / TIFF (8 or 16 bit, gray or RGB)
or NPY / NPZ. A JSON sidecar with the same stem (``psf_red.png`` + ``psf_red.json``) may carry:

    pixel_pitch [m], channel (index or "R"/"G"/"B"/"red"/...), wavelength [m], object_distance [m],
    exposure [s], black_level [ADU], bit_depth, saturation_level [ADU], kind ("psf" | "dark" | "flat")

Values given on the command line (``overrides``) win over the sidecar. A folder holds, per object distance,
either one multi-channel frame or one frame per channel; frames named ``dark*`` / ``flat*`` (or with sidecar
``kind``) are dark frames / flat fields.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

CAPTURE_SUFFIXES = (".png", ".tif", ".tiff", ".npy", ".npz")
SIDECAR_KEYS = {"pixel_pitch", "channel", "wavelength", "object_distance", "object_distances", "exposure",
                "black_level", "bit_depth", "saturation_level", "kind", "notes"}
_CHANNEL_NAMES = {"r": 0, "red": 0, "g": 1, "green": 1, "b": 2, "blue": 2}


class PSFFileError(ValueError):
    """A measured or calibrated PSF file that cannot be used; the message names the file and the problem."""


@dataclass
class Capture:
    """One file read from disk.

    Attributes:
        path: the file.
        data: (H, W, K) float64 raw values [ADU] (K = 1 gray, 3 RGB; a stack file gives (D, H, W, K)).
        meta: sidecar merged with the overrides.
        container_bits: 8 / 16 for integer images, None for float arrays.
    """
    path: Path
    data: np.ndarray
    meta: dict[str, Any]
    container_bits: int | None

    @property
    def saturation_level(self) -> float | None:
        """ADU value at which pixels clip (sidecar ``saturation_level`` or 2**bit_depth - 1)."""
        if self.meta.get("saturation_level") is not None:
            return float(self.meta["saturation_level"])
        bits = self.meta.get("bit_depth", self.container_bits)
        return None if bits is None else float(2 ** int(bits) - 1)


@dataclass
class PSFMeasurement:
    """Measured PSF frames of one prototype, grouped by object distance and channel.

    Attributes:
        frames: (D, C, H, W) float64 raw values [ADU].
        paths: D x C list of the file each frame came from.
        object_distances: (D,) [m] (None where unknown).
        pixel_pitch: sensor pixel pitch [m] (None when no sidecar / override gave it).
        black_level: per frame (D, C) [ADU] (0 when unknown).
        saturation_level: per frame (D, C) [ADU] (inf when unknown).
        exposure: per frame (D, C) [s] (None when unknown).
        dark: (C, H, W) mean dark frame [ADU] or None; dark_paths the files averaged.
        flat: (C, H, W) flat field normalised to mean 1 per channel, or None.
    """
    frames: np.ndarray
    paths: list[list[Path]]
    object_distances: list[float | None]
    pixel_pitch: float | None
    black_level: np.ndarray
    saturation_level: np.ndarray
    exposure: list[list[float | None]]
    dark: np.ndarray | None = None
    dark_paths: list[Path] = field(default_factory=list)
    flat: np.ndarray | None = None
    flat_path: Path | None = None


# ----------------------------------------------------------------------------------------------- reading files
def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar of ``path`` (same folder, same stem)."""
    path = Path(path)
    return path.with_suffix(".json")


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """The sidecar metadata of capture ``path`` ({} when there is none), validated.

    Raises:
        PSFFileError: unreadable JSON, unknown key or a value of the wrong type / range (names file and key).
    """
    side = sidecar_path(path)
    if not side.is_file():
        return {}
    try:
        meta = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PSFFileError(f"{side}: not a readable JSON sidecar ({err})") from err
    if not isinstance(meta, dict):
        raise PSFFileError(f"{side}: sidecar must be a JSON object")
    unknown = set(meta) - SIDECAR_KEYS
    if unknown:
        raise PSFFileError(f"{side}: unknown sidecar key(s) {sorted(unknown)}; allowed: {sorted(SIDECAR_KEYS)}")
    return validate_meta(meta, side)


def validate_meta(meta: dict[str, Any], source: str | os.PathLike) -> dict[str, Any]:
    """Check types and ranges of metadata values; ``source`` names where they came from."""
    out = dict(meta)
    positive = ("pixel_pitch", "wavelength", "exposure", "saturation_level")
    for key in positive + ("object_distance", "black_level"):
        if out.get(key) is None:
            continue
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PSFFileError(f"{source}: '{key}' must be a number, got {value!r}")
        value = float(value)
        if np.isnan(value) or (key in positive and value <= 0) or (key == "black_level" and value < 0):
            raise PSFFileError(f"{source}: '{key}' = {value} is out of range")
        if key == "object_distance" and value <= 0:
            raise PSFFileError(f"{source}: 'object_distance' = {value} m must be > 0 (or inf)")
        out[key] = value
    if out.get("pixel_pitch") is not None and out["pixel_pitch"] > 1e-3:
        raise PSFFileError(f"{source}: 'pixel_pitch' = {out['pixel_pitch']} looks like it is not in metres")
    if out.get("wavelength") is not None and not 1e-7 < out["wavelength"] < 2e-5:
        raise PSFFileError(f"{source}: 'wavelength' = {out['wavelength']} is not a wavelength in metres")
    if out.get("bit_depth") is not None:
        bits = out["bit_depth"]
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 32:
            raise PSFFileError(f"{source}: 'bit_depth' must be an integer in 1..32, got {bits!r}")
    if out.get("object_distances") is not None:
        dists = out["object_distances"]
        if not isinstance(dists, list) or not all(isinstance(d, (int, float)) and d > 0 for d in dists):
            raise PSFFileError(f"{source}: 'object_distances' must be a list of distances > 0 [m], got {dists!r}")
        out["object_distances"] = [float(d) for d in dists]
    if out.get("kind") is not None and out["kind"] not in ("psf", "dark", "flat"):
        raise PSFFileError(f"{source}: 'kind' must be 'psf', 'dark' or 'flat', got {out['kind']!r}")
    if out.get("channel") is not None:
        ch = out["channel"]
        if isinstance(ch, str):
            if ch.lower() not in _CHANNEL_NAMES:
                raise PSFFileError(f"{source}: 'channel' {ch!r} is not an index or one of R/G/B")
            out["channel"] = _CHANNEL_NAMES[ch.lower()]
        elif isinstance(ch, bool) or not isinstance(ch, int) or ch < 0:
            raise PSFFileError(f"{source}: 'channel' must be a channel index >= 0 or R/G/B, got {ch!r}")
    return out


def read_array(path: str | os.PathLike) -> tuple[np.ndarray, int | None]:
    """Read the pixel values of a capture file.

    Returns:
        (values, container_bits): values (H, W, K) float64 raw [ADU], K in {1, 3} (a 3-D NPY/NPZ array
        (D, H, W) or 4-D (D, H, W, K) is a depth stack); container_bits 8 / 16 (integer data) or None (float).

    Raises:
        FileNotFoundError: missing file. PSFFileError: unreadable / unsupported file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: PSF file does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".png":
            from hardware.pngio import read_png

            arr = read_png(path)
        elif suffix in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
        elif suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                keys = list(npz.keys())
                key = "psf" if "psf" in keys else (keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise PSFFileError(f"{path}: NPZ has several arrays {keys}; name the PSF array 'psf'")
                arr = npz[key]
        else:
            raise PSFFileError(f"{path}: unsupported PSF file type {suffix!r}; use {CAPTURE_SUFFIXES}")
    except (PSFFileError, FileNotFoundError):
        raise
    except Exception as err:  # PIL/tifffile/numpy raise many types for corrupt files
        raise PSFFileError(f"{path}: not a readable PSF file ({type(err).__name__}: {err})") from err
    arr = np.asarray(arr)
    if arr.dtype.kind not in "uif":
        raise PSFFileError(f"{path}: unsupported pixel type {arr.dtype}")
    bits = None
    if arr.dtype.kind in "ui":
        bits = 8 if arr.itemsize == 1 else 16 if arr.itemsize == 2 else 32
    if suffix in (".png", ".tif", ".tiff"):
        if arr.ndim == 3 and arr.shape[2] == 4:
            arr = arr[..., :3]
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 3):
            raise PSFFileError(f"{path}: expected a gray or RGB image, got shape {arr.shape}")
    return arr.astype(np.float64), bits


def load_capture(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> Capture:
    """Read one capture with its sidecar; ``overrides`` (command line, None values ignored) win.

    Raises:
        PSFFileError: bad file, NaN / inf values, or values that do not fit the declared bit depth.
    """
    path = Path(path)
    data, bits = read_array(path)
    meta = read_sidecar(path)
    over = {k: v for k, v in (overrides or {}).items() if v is not None}
    if over:
        meta.update(validate_meta(over, "command line"))
    if not np.all(np.isfinite(data)):
        raise PSFFileError(f"{path}: contains {int((~np.isfinite(data)).sum())} NaN/inf value(s)")
    declared = meta.get("bit_depth")
    if declared is not None:
        if bits is not None and declared > bits:
            raise PSFFileError(f"{path}: bit_depth {declared} in the sidecar/command line does not fit the "
                               f"{bits}-bit file")
        top = float(data.max()) if data.size else 0.0
        if top > 2 ** declared - 1:
            raise PSFFileError(f"{path}: values up to {top:g} exceed bit_depth {declared} (max {2 ** declared - 1});"
                               f" wrong bit_depth in the sidecar, or MSB-aligned data?")
    if data.ndim == 2 and path.suffix.lower() in (".npy", ".npz"):
        data = data[..., None]
    return Capture(path=path, data=data, meta=meta, container_bits=bits)


def _frame_kind(capture: Capture) -> str:
    if capture.meta.get("kind"):
        return capture.meta["kind"]
    stem = capture.path.stem.lower()
    return "dark" if stem.startswith("dark") else "flat" if stem.startswith("flat") else "psf"


def _channel_from_name(path: Path) -> int | None:
    tokens = re.split(r"[_\-. ]+", path.stem.lower())
    hits = [_CHANNEL_NAMES[t] for t in tokens if t in _CHANNEL_NAMES]
    return hits[-1] if hits else None


def _planes(cap: Capture) -> list[tuple[Capture, np.ndarray, float | None]]:
    """Split a capture into (capture, (H, W, K) frame, object distance) per depth.

    Array layouts: images (H, W, K); NPY / NPZ (H, W), (H, W, K) with K in {1, 3}, (C, H, W) with C <= 4,
    and with ``object_distances`` in the sidecar (D, H, W) or (D, C, H, W).
    """
    data, dists = cap.data, cap.meta.get("object_distances")
    is_array = cap.path.suffix.lower() in (".npy", ".npz")
    if dists is not None:
        if not is_array or data.ndim not in (3, 4) or data.shape[0] != len(dists):
            raise PSFFileError(f"{cap.path}: 'object_distances' has {len(dists)} entries but the data has shape "
                               f"{data.shape}; a depth stack is an NPY/NPZ (D, H, W) or (D, C, H, W) array")
        stack = data[..., None] if data.ndim == 3 else data.transpose(0, 2, 3, 1)
        return [(cap, stack[d], float(dists[d])) for d in range(len(dists))]
    if data.ndim == 3 and is_array and data.shape[0] <= 4 and data.shape[-1] > 4:
        data = data.transpose(1, 2, 0)
    if data.ndim != 3 or data.shape[-1] not in (1, 3):
        raise PSFFileError(f"{cap.path}: cannot read shape {cap.data.shape} as one frame (H, W), (H, W, 3) or "
                           f"(C, H, W); a depth stack needs 'object_distances' in the sidecar")
    return [(cap, data, cap.meta.get("object_distance"))]


def _channels_of(capture: Capture, planes: int, num_channels: int | None,
                 wavelengths: Sequence[float] | None) -> list[int]:
    """The lens channel index of each of the ``planes`` colour planes of ``capture``."""
    if planes > 1 and (num_channels in (None, planes)) and capture.meta.get("channel") is None:
        return list(range(planes))
    if planes != 1 and capture.meta.get("channel") is not None:
        raise PSFFileError(f"{capture.path}: the sidecar names one 'channel' but the file has {planes} colour "
                           f"planes")
    if planes != 1:
        raise PSFFileError(f"{capture.path}: has {planes} colour planes but the lens has {num_channels} "
                           f"channel(s)")
    if capture.meta.get("channel") is not None:
        return [int(capture.meta["channel"])]
    if capture.meta.get("wavelength") is not None and wavelengths is not None:
        wl = np.asarray(wavelengths, dtype=np.float64)
        return [int(np.argmin(np.abs(wl - capture.meta["wavelength"])))]
    named = _channel_from_name(capture.path)
    if named is not None:
        return [named]
    if num_channels == 1:
        return [0]
    raise PSFFileError(f"{capture.path}: cannot tell which channel this gray frame is; give 'channel' or "
                       f"'wavelength' in its sidecar, or name it *_R / *_G / *_B")


def load_psf_dir(psf_dir: str | os.PathLike, num_channels: int | None = None,
                 wavelengths: Sequence[float] | None = None,
                 dark: Sequence[str | os.PathLike] | None = None, flat: str | os.PathLike | None = None,
                 overrides: dict[str, Any] | None = None) -> PSFMeasurement:
    """Read every capture in ``psf_dir`` into a (depth, channel) grid of raw frames.

    Args:
        psf_dir: folder of captures (+ sidecars); ``dark*`` / ``flat*`` files in it are used as such.
        num_channels: channels the lens has (checked against what the files hold); None = infer.
        wavelengths: (C,) lens wavelengths [m], to map sidecar ``wavelength`` to a channel.
        dark: extra dark frame file(s) (averaged); flat: flat-field file.
        overrides: command-line metadata (pixel_pitch, exposure, black_level, bit_depth) over every sidecar.

    Raises:
        FileNotFoundError: missing folder / file. PSFFileError: anything inconsistent, naming the file(s).
    """
    psf_dir = Path(psf_dir)
    if not psf_dir.is_dir():
        raise FileNotFoundError(f"{psf_dir}: PSF folder does not exist")
    files = sorted(p for p in psf_dir.iterdir() if p.is_file() and p.suffix.lower() in CAPTURE_SUFFIXES)
    captures = [load_capture(p, overrides) for p in files]
    psfs = [c for c in captures if _frame_kind(c) == "psf"]
    darks = [c for c in captures if _frame_kind(c) == "dark"] + [load_capture(p, overrides) for p in dark or []]
    flats = [c for c in captures if _frame_kind(c) == "flat"]
    if flat is not None:
        flats.append(load_capture(flat, overrides))
    if not psfs:
        raise PSFFileError(f"{psf_dir}: no PSF captures found ({', '.join(CAPTURE_SUFFIXES)})")

    expanded = [item for cap in psfs for item in _planes(cap)]
    grid: dict[float | None, dict[int, tuple[Capture, np.ndarray]]] = {}
    for cap, plane_data, dist in expanded:
        chans = _channels_of(cap, plane_data.shape[-1], num_channels, wavelengths)
        slot = grid.setdefault(dist, {})
        for k, ch in enumerate(chans):
            if num_channels is not None and ch >= num_channels:
                raise PSFFileError(f"{cap.path}: channel {ch} but the lens has {num_channels} channel(s)")
            if ch in slot:
                raise PSFFileError(f"{cap.path}: channel {ch} at object distance {dist} is also given by "
                                   f"{slot[ch][0].path}")
            slot[ch] = (cap, plane_data[..., k])
    n_ch = num_channels if num_channels is not None else 1 + max(max(s) for s in grid.values())
    if None in grid and len(grid) > 1:
        names = [str(c.path) for c, _ in grid[None].values()]
        raise PSFFileError(f"{', '.join(names)}: no object_distance, but other captures give one; give it for all")
    depths = sorted(grid, key=lambda d: (d is None, d if d is not None else 0.0))
    shape = None
    frames, paths, black, sat, expo = [], [], [], [], []
    for dist in depths:
        slot = grid[dist]
        missing = [c for c in range(n_ch) if c not in slot]
        if missing:
            have = ", ".join(str(cap.path) for cap, _ in slot.values())
            raise PSFFileError(f"{have}: object distance {dist}: channel(s) {missing} missing; the lens has "
                               f"{n_ch} channel(s)")
        row, prow, brow, srow, erow = [], [], [], [], []
        for c in range(n_ch):
            cap, plane = slot[c]
            if shape is None:
                shape = plane.shape
            elif plane.shape != shape:
                raise PSFFileError(f"{cap.path}: frame size {plane.shape} differs from {shape} of "
                                   f"{paths[0][0] if paths else prow[0]}")
            row.append(plane)
            prow.append(cap.path)
            brow.append(float(cap.meta.get("black_level") or 0.0))
            level = cap.saturation_level
            srow.append(np.inf if level is None else level)
            erow.append(cap.meta.get("exposure"))
        frames.append(np.stack(row))
        paths.append(prow)
        black.append(brow)
        sat.append(srow)
        expo.append(erow)
    pitches = {c.meta.get("pixel_pitch") for c, _, _ in expanded} - {None}
    if len(pitches) > 1:
        raise PSFFileError(f"{psf_dir}: captures disagree on pixel_pitch {sorted(pitches)}")
    meas = PSFMeasurement(frames=np.stack(frames), paths=paths, object_distances=list(depths),
                          pixel_pitch=pitches.pop() if pitches else None, black_level=np.asarray(black),
                          saturation_level=np.asarray(sat), exposure=expo)
    if darks:
        meas.dark, meas.dark_paths = _mean_frame(darks, n_ch, shape), [d.path for d in darks]
        dark_exp = {d.meta.get("exposure") for d in darks} - {None}
        psf_exp = {e for row in expo for e in row} - {None}
        if dark_exp and psf_exp and dark_exp != psf_exp:
            log.warning("dark frame exposure %s s differs from PSF exposure %s s: dark current will not match",
                        sorted(dark_exp), sorted(psf_exp))
    if flats:
        flat_mean = _mean_frame(flats, n_ch, shape)
        if meas.dark is not None:
            flat_mean = flat_mean - meas.dark
        level = flat_mean.mean(axis=(1, 2), keepdims=True)
        if np.any(level <= 0) or np.any(flat_mean <= 0):
            raise PSFFileError(f"{flats[0].path}: flat field has pixels <= 0 (after dark subtraction)")
        meas.flat, meas.flat_path = flat_mean / level, flats[0].path
    log.info("read %d depth(s) x %d channel(s) of %s px from %s", len(depths), n_ch, shape, psf_dir)
    return meas


def _mean_frame(captures: list[Capture], n_ch: int, shape: tuple[int, int] | None) -> np.ndarray:
    """Average of dark / flat captures as (C, H, W); a gray frame serves every channel."""
    acc = []
    for cap in captures:
        data = _planes(cap)[0][1]
        if data.ndim != 3 or data.shape[:2] != shape:
            raise PSFFileError(f"{cap.path}: frame size {data.shape[:2]} differs from the PSF frames {shape}")
        planes = data.shape[2]
        if planes == 1:
            frame = np.repeat(data.transpose(2, 0, 1), n_ch, axis=0)
        elif planes == n_ch:
            frame = data.transpose(2, 0, 1)
        else:
            raise PSFFileError(f"{cap.path}: {planes} colour planes, the lens has {n_ch} channel(s)")
        acc.append(frame)
    return np.mean(acc, axis=0)


# ---------------------------------------------------------------------------------------- calibrated PSF files
def check_psf_array(psf: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """Validate a PSF array and normalise each channel to sum 1.

    Args:
        psf: (C, H, W) or (H, W) values >= 0.
        path: the file it came from (named in every error).

    Returns:
        (C, H, W) float64, each channel summing to 1.
    """
    arr = np.asarray(psf, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3 or min(arr.shape) < 1:
        raise PSFFileError(f"{path}: PSF must be (C, H, W) or (H, W), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise PSFFileError(f"{path}: PSF contains {int((~np.isfinite(arr)).sum())} NaN/inf value(s)")
    if np.any(arr < 0):
        raise PSFFileError(f"{path}: PSF has {int((arr < 0).sum())} negative value(s) (min {arr.min():.3g}); "
                           f"a PSF is an intensity")
    sums = arr.sum(axis=(1, 2))
    zero = [int(c) for c in np.nonzero(sums <= 0)[0]]
    if zero:
        raise PSFFileError(f"{path}: PSF channel(s) {zero} are all zero")
    return arr / sums[:, None, None]


def load_calibrated_psf(path: str | os.PathLike) -> torch.Tensor:
    """Load a calibrated PSF file (what every mode's ``--psf FILE`` uses).

    Args:
        path: .npy with a (C, H, W) or (H, W) array, or .npz with key ``psf`` (or a single array).

    Returns:
        (C, H, W) float32 tensor, non-negative, each channel summing to 1 (centre at (H//2, W//2)).

    Raises:
        FileNotFoundError: missing file. PSFFileError (ValueError): NaN, negative, all-zero or misshaped PSF.
    """
    path = Path(path)
    if path.suffix.lower() not in (".npy", ".npz"):
        raise PSFFileError(f"{path}: a calibrated PSF is a .npy or .npz file (made by --mode calibrate)")
    arr, _ = read_array(path)
    return torch.from_numpy(check_psf_array(arr, path)).float()


def calibrated_psf_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON written next to a calibrated PSF by :func:`save_calibrated_psf` ({} if absent)."""
    side = Path(path).with_suffix(".json")
    if not side.is_file():
        return {}
    try:
        return json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PSFFileError(f"{side}: not a readable JSON file ({err})") from err


def save_calibrated_psf(path: str | os.PathLike, psf: np.ndarray | torch.Tensor, meta: dict[str, Any]) -> Path:
    """Write ``psf`` (C, H, W) (validated, renormalised) as .npy plus ``meta`` (pixel_pitch [m], ...) as .json."""
    from data.files import save_json, save_npy

    arr = psf.detach().cpu().numpy() if isinstance(psf, torch.Tensor) else np.asarray(psf)
    arr = check_psf_array(arr, path).astype(np.float32)
    out = save_npy(path, arr)
    save_json(Path(path).with_suffix(".json"), meta)
    return out
