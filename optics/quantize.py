"""Fabrication-aware height maps: N-level quantisation, its straight-through version for training, and the
quantisation-aware :class:`QuantizedLens`.

The levels here are exactly the ones ``hardware.fabrication`` writes to the fabrication files, so a lens trained
quantised images as the element a lab would make.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from optics.lens import Lens, LensConfig

PNG_MAX = 65535
"""Largest 16-bit code: at most PNG_MAX + 1 levels."""


def _check_levels(levels: int, h_min: float, h_max: float) -> None:
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or not 2 <= levels <= PNG_MAX + 1:
        raise ValueError(f"levels must be an integer in 2..{PNG_MAX + 1}, got {levels!r}")
    if not (np.isfinite(h_min) and np.isfinite(h_max)) or not h_max > h_min:
        raise ValueError(f"height range must satisfy min < max [m], got [{h_min!r}, {h_max!r}]")


def level_step(levels: int, h_min: float, h_max: float) -> float:
    """Height difference between neighbouring levels [m]: (h_max - h_min) / (levels - 1)."""
    _check_levels(levels, h_min, h_max)
    return (h_max - h_min) / (levels - 1)


def quantize_height(height: np.ndarray | torch.Tensor, levels: int, h_min: float, h_max: float):
    """Clip to [h_min, h_max] and round to the nearest of ``levels`` equally spaced heights.

    Args:
        height: any shape [m] (numpy array or tensor; the result has the same type, dtype and device).
        levels: number of heights N >= 2 (h_min and h_max are levels).
        h_min, h_max: buildable range [m].

    Returns:
        quantised heights [m]; |q - clip(h)| <= step / 2.
    """
    step = level_step(levels, h_min, h_max)
    if isinstance(height, torch.Tensor):
        k = torch.round((height.clamp(h_min, h_max) - h_min) / step)
        return h_min + k * step
    k = np.round((np.clip(height, h_min, h_max) - h_min) / step)
    return h_min + k * step


def quantize_height_ste(height: torch.Tensor, levels: int, h_min: float, h_max: float) -> torch.Tensor:
    """Straight-through quantiser for fabrication-aware training.

    Forward: :func:`quantize_height`. Backward: the gradient of ``clamp(height, h_min, h_max)`` (identity
    inside the range, zero outside), so the optimiser sees the continuous height.

    Args:
        height: (...) [m] tensor. levels, h_min, h_max: as :func:`quantize_height`.
    """
    clipped = height.clamp(h_min, h_max)
    return clipped + (quantize_height(clipped, levels, h_min, h_max) - clipped).detach()


def default_quantize_range(config: LensConfig) -> tuple[float, float]:
    """Height range [m] of the quantised surface: config.height_range, else +- one design wavelength of phase
    (+- lambda_d / (n_d - 1), a 2-wave multi-level surface)."""
    if config.height_range is not None:
        return float(config.height_range[0]), float(config.height_range[1])
    return -config.wave_height, config.wave_height


class QuantizedLens(Lens):
    """A :class:`Lens` whose surface height is quantised to ``levels`` levels in the forward pass
    (fabrication-aware training) with a straight-through gradient.

    The quantiser is :func:`quantize_height_ste` (the same levels the fabrication export
    writes), applied to the height sampled on each wavelength's pupil grid. Its state_dict equals the plain
    Lens's, so a checkpoint stores ``quantize = {"levels", "h_min", "h_max"}`` next to it.

    Args:
        config: the lens.
        levels: number of height levels (>= 2).
        h_range: (h_min, h_max) [m]; default :func:`default_quantize_range`.
    """

    def __init__(self, config: LensConfig, levels: int, h_range: tuple[float, float] | None = None):
        super().__init__(config)
        if int(levels) < 2:
            raise ValueError(f"quantize_levels must be >= 2 (or 0 = off), got {levels}")
        self.levels = int(levels)
        self.h_range = tuple(float(v) for v in (h_range or default_quantize_range(config)))

    def pupil_height(self) -> torch.Tensor:
        return quantize_height_ste(super().pupil_height(), self.levels, *self.h_range) * self.aperture

    def height_map(self) -> torch.Tensor:
        return quantize_height_ste(super().height_map(), self.levels, *self.h_range)


def build_lens(config: LensConfig, quantize_levels: int = 0) -> Lens:
    """A Lens, or a QuantizedLens with ``quantize_levels`` levels when that is > 0."""
    return QuantizedLens(config, quantize_levels) if quantize_levels else Lens(config)


def lens_from_state(lens_config: dict[str, Any], lens_state: dict[str, torch.Tensor],
                    quantize: dict[str, Any] | None = None, source: str | None = None,
                    overrides: dict[str, Any] | None = None) -> Lens:
    """Rebuild a stored lens (a Stage I checkpoint's ``lens_config`` / ``lens`` / ``quantize`` entries).

    Args:
        lens_config: LensConfig as a dict (``LensConfig.to_dict``).
        lens_state: the lens state_dict (learnable heights).
        quantize: {"levels", "h_min", "h_max"} for a quantisation-aware lens, or None.
        source: file name for error messages.
        overrides: config keys to replace (e.g. object_distance).

    Raises:
        ValueError: the weights do not match the config (names ``source``).
    """
    data = dict(lens_config)
    data.update(overrides or {})
    config = LensConfig.from_dict(data, source=source)
    lens = (QuantizedLens(config, quantize["levels"], (quantize["h_min"], quantize["h_max"])) if quantize
            else Lens(config))
    try:
        lens.load_state_dict(lens_state)
    except RuntimeError as err:
        raise ValueError(f"{source}: lens weights do not match its lens_config ({err})") from err
    return lens
