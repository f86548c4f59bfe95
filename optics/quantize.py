"""Fabrication-aware height maps: N-level quantisation, its straight-through version for training, and the
quantisation-aware :class:`QuantizedLens`.

The levels here are exactly the ones ``hardware.fabrication`` writes to the fabrication files, so a lens trained
quantised images as the element a lab would make.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from optics.lens import Lens, LensConfig
from optics.lens_config import LensConfigError

log = logging.getLogger(__name__)

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


class FabricatedLens(QuantizedLens):
    """A :class:`QuantizedLens` whose forward model is the fabricated element itself.

    :class:`QuantizedLens` rounds the continuous surface at every pupil sample. The fabrication export instead
    writes the quantised (M, M) aperture map (``height_map``), and the lab's element is simulated from that map
    resampled (bilinear) onto the pupil grids, the outside of the aperture filled with the nearest rim height
    (hardware.fabrication.lens_with_height_map). The two differ at every level edge (a few % of the PSF for a
    16-level design). This lens uses the second model in training (straight-through quantiser on the map, then the
    same bilinear resampling), so ``--mode fabricate --levels N`` re-simulates exactly the PSF it was trained with.
    A checkpoint stores ``quantize = {"levels", "h_min", "h_max", "model": "fabricated"}``.
    """

    quantize_model = "fabricated"

    def __init__(self, config: LensConfig, levels: int, h_range: tuple[float, float] | None = None):
        super().__init__(config, levels, h_range)
        from scipy import ndimage

        m, a = config.height_map_samples, config.aperture_radius
        c = (np.arange(m) - m // 2) * (2 * a / m)
        inside = c[None, :] ** 2 + c[:, None] ** 2 <= a * a
        iy, ix = ndimage.distance_transform_edt(~inside, return_distances=False, return_indices=True)
        self.register_buffer("fill_index", torch.from_numpy(iy * m + ix).long(), persistent=False)
        grids = []
        for pitch in config.pupil_pitches():  # pupil sample -> aperture-grid coordinate (as Lens' pixel map)
            cc = (torch.arange(config.num_pupil, dtype=torch.float64) - config.num_pupil // 2) * pitch
            u = 2 * (cc / (2 * a / m) + m // 2) / (m - 1) - 1
            gy, gx = torch.meshgrid(u, u, indexing="ij")
            grids.append(torch.stack([gx, gy], dim=-1))
        self.register_buffer("fab_grid", torch.stack(grids).float(), persistent=False)

    def pupil_height(self) -> torch.Tensor:
        q = self.height_map()  # (M, M) quantised (straight-through)
        m = q.shape[-1]
        filled = q.reshape(-1)[self.fill_index.reshape(-1)].reshape(m, m)
        hp = filled.to(self.fab_grid.dtype)[None, None].expand(self._L, 1, -1, -1)
        sampled = torch.nn.functional.grid_sample(hp, self.fab_grid, mode="bilinear", padding_mode="border",
                                                  align_corners=True)[:, 0]
        return sampled * (self.aperture > 0).to(sampled.dtype)


QUANTIZE_MODELS = {"pupil": QuantizedLens, "fabricated": FabricatedLens}
"""``quantize["model"]`` of a checkpoint -> lens class (absent = "pupil", the original QuantizedLens)."""


def build_lens(config: LensConfig, quantize_levels: int = 0) -> Lens:
    """A Lens, or, when ``quantize_levels`` > 0, the fabrication-aware :class:`FabricatedLens` with that many
    levels. Its quantiser range is recorded in the config (``height_range``, default
    :func:`default_quantize_range`), so the fabrication export writes the same levels it was trained with."""
    if not quantize_levels:
        return Lens(config)
    if config.height_range is None:
        config = config.replace(height_range=list(default_quantize_range(config)))
    return FabricatedLens(config, quantize_levels)


def trained_sampling(config: LensConfig, lens_state: dict[str, torch.Tensor], source: str | None = None
                     ) -> LensConfig:
    """The config with the pupil grid chosen for the TRAINED surface.

    The automatic sampling (optics.sampling) is chosen from a config's own height map; a stored lens's learned
    Zernike heights live in its state, and training can steepen the surface far beyond what the grid chosen for
    the starting design resolves (a phase step > pi between pupil samples aliases: the PSF then differs from the
    element's). So when ``pupil_samples`` is automatic, the grid is chosen again with the learned coefficients and
    fixed in the returned config (logged); an explicit ``pupil_samples`` is kept, and a grid that then aliases
    is warned about by the lens itself.
    """
    coeffs = lens_state.get("zernike_coeffs")
    if config.pupil_samples is not None or coeffs is None or len(coeffs) != len(config.learnable_indices):
        return config
    learned = dict(config.zernike)
    learned.update({int(j): float(c) for j, c in zip(config.learnable_indices, coeffs.detach().double().cpu())})
    start = config.num_pupil
    try:
        choice = config.replace(zernike=learned).sampling(source)
    except LensConfigError as err:
        log.warning("%s: the trained surface is steeper than the %d x %d pupil grid resolves and no affordable "
                    "grid does (%s): its simulated PSF aliases, i.e. differs from the element's", source or "lens",
                    start, start, err)
        return config
    if choice.samples <= start:
        return config
    log.info("%s: the trained surface needs a %d x %d pupil grid (phase step %.2f rad on it; the starting "
             "design's grid %d aliases it)", source or "lens", choice.samples, choice.samples, choice.phase_step,
             start)
    return config.replace(pupil_samples=choice.samples)


def lens_from_state(lens_config: dict[str, Any], lens_state: dict[str, torch.Tensor],
                    quantize: dict[str, Any] | None = None, source: str | None = None,
                    overrides: dict[str, Any] | None = None) -> Lens:
    """Rebuild a stored lens (a Stage I checkpoint's ``lens_config`` / ``lens`` / ``quantize`` entries).

    Args:
        lens_config: LensConfig as a dict (``LensConfig.to_dict``).
        lens_state: the lens state_dict (learnable heights).
        quantize: {"levels", "h_min", "h_max"[, "model"]} for a quantisation-aware lens, or None.
        source: file name for error messages.
        overrides: config keys to replace (e.g. object_distance).

    Raises:
        ValueError: the weights do not match the config (names ``source``).
    """
    data = dict(lens_config)
    data.update(overrides or {})
    config = LensConfig.from_dict(data, source=source)
    config = trained_sampling(config, lens_state, source)
    if quantize:
        model = quantize.get("model", "pupil")
        if model not in QUANTIZE_MODELS:
            raise ValueError(f"{source}: unknown quantisation model {model!r} (one of {', '.join(QUANTIZE_MODELS)})")
        lens = QUANTIZE_MODELS[model](config, quantize["levels"], (quantize["h_min"], quantize["h_max"]))
    else:
        lens = Lens(config)
    try:
        lens.load_state_dict(lens_state)
    except RuntimeError as err:
        raise ValueError(f"{source}: lens weights do not match its lens_config ({err})") from err
    return lens
