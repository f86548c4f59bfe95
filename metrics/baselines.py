"""Classic anonymisation baselines evaluated next to the optics: low resolution, Gaussian blur, pixelation.

All take and return (H, W, 3) float32 images in [0, 1] of unchanged size.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from metrics.detectors import check_image

DEFAULTS = {"lowres": 16, "blur": 8.0, "pixelate": 16}


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(check_image(image).transpose(2, 0, 1)))[None]


def _numpy(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t[0].clamp(0, 1).permute(1, 2, 0).numpy().astype(np.float32))


def lowres(image: np.ndarray, size: int = 16) -> np.ndarray:
    """Downsample to ``size x size`` (area average, antialiased) and upsample back (bicubic)."""
    if size < 1:
        raise ValueError(f"lowres size must be >= 1, got {size}")
    t = _tensor(image)
    h, w = t.shape[-2:]
    small = F.interpolate(t, size=(size, size), mode="area")
    return _numpy(F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False))


def blur(image: np.ndarray, sigma: float = 8.0) -> np.ndarray:
    """Gaussian blur with standard deviation ``sigma`` [px] (kornia, kernel 2 * ceil(3 sigma) + 1, reflect)."""
    import kornia

    if sigma <= 0:
        raise ValueError(f"blur sigma must be > 0, got {sigma}")
    k = 2 * int(np.ceil(3 * sigma)) + 1
    t = _tensor(image)
    k = min(k, 2 * (min(t.shape[-2:]) // 2) - 1)  # reflect padding needs kernel < image
    return _numpy(kornia.filters.gaussian_blur2d(t, (k, k), (float(sigma), float(sigma)), border_type="reflect"))


def pixelate(image: np.ndarray, block: int = 16) -> np.ndarray:
    """Replace each ``block x block`` cell by its mean (edge cells are partial)."""
    if block < 1:
        raise ValueError(f"pixelate block must be >= 1, got {block}")
    t = _tensor(image)
    h, w = t.shape[-2:]
    pooled = F.avg_pool2d(t, block, stride=block, ceil_mode=True, count_include_pad=False)
    return _numpy(F.interpolate(pooled, scale_factor=block, mode="nearest")[..., :h, :w])


BASELINES: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "lowres": lambda img, p: lowres(img, int(p)),
    "blur": lambda img, p: blur(img, float(p)),
    "pixelate": lambda img, p: pixelate(img, int(p)),
}


def parse_baselines(spec: str) -> dict[str, float]:
    """``"lowres,blur:4,pixelate:8"`` -> {name: parameter} (default parameters from DEFAULTS).

    Raises:
        ValueError: unknown name or bad parameter.
    """
    out: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, param = item.partition(":")
        if name not in BASELINES:
            raise ValueError(f"unknown baseline {name!r} (choose {', '.join(BASELINES)})")
        try:
            out[name if not param else f"{name}:{param}"] = float(param) if param else float(DEFAULTS[name])
        except ValueError as err:
            raise ValueError(f"baseline {item!r}: parameter is not a number") from err
    return out


def apply_baseline(name: str, image: np.ndarray, param: float | None = None) -> np.ndarray:
    """Apply baseline ``name`` ("lowres", "blur", "pixelate", optionally "name:param") to one image."""
    base = name.partition(":")[0]
    if param is None:
        param = parse_baselines(name)[name]
    return BASELINES[base](image, param)
