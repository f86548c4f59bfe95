"""PSF binning to the image grid: the sensor read out with larger (binned) pixels.

Resolution convention. Lens presets describe the reference camera, whose sensor images a face crop on
``REFERENCE_IMG_SIZE`` = 256 pixels (the face-deid lens blurs a point into a ~61 px disc there). Imaging the
*same* face at ``img_size`` S < 256 means the *same* sensor read out with S x S binned pixels: the PSF is
sum-pooled by ``k = 256 / S``. So the blur stays the same fraction of the face at every img_size, and the lens
physics (pupil sampling at the preset pitch) is unchanged. Every consumer of a lens at a given img_size uses
:func:`capture_psf` (Stage I checkpoints record ``psf_binning``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["REFERENCE_IMG_SIZE", "psf_binning", "bin_psf", "capture_psf"]

REFERENCE_IMG_SIZE = 256
"""Face-crop side [px] on the reference sensor (the lens presets' pixel pitch)."""


def psf_binning(img_size: int, reference_size: int = REFERENCE_IMG_SIZE) -> int:
    """Sensor binning factor k = reference_size / img_size (>= 1).

    Raises:
        ValueError: img_size does not divide reference_size (and is smaller than it).
    """
    if img_size >= reference_size:
        return 1
    if reference_size % img_size:
        raise ValueError(f"img_size {img_size} must divide {reference_size} (the reference sensor side) so that "
                         "the sensor can be binned by an integer factor")
    return reference_size // img_size


def bin_psf(psf: torch.Tensor, factor: int) -> torch.Tensor:
    """Sum-pool a PSF by ``factor`` (the PSF seen by a sensor with ``factor`` x larger pixels).

    The window is zero-padded symmetrically about its centre so that the centre pixel (h//2, w//2) maps to the
    centre of the binned PSF.

    Args:
        psf: (C, h, w), each channel summing to 1.
        factor: integer >= 1.

    Returns:
        (C, ceil(h'/factor), ...) each channel summing to 1, centre at (h_out//2, w_out//2).
    """
    if factor == 1:
        return psf
    c, h, w = psf.shape
    pads: list[int] = []
    for n in (w, h):  # F.pad order: last dim first
        centre = n // 2
        before = (factor // 2 - centre) % factor  # centre lands at offset factor // 2 of its bin
        m = (before + centre) // factor  # index of the centre's bin
        after = factor * (2 * m + 1) - before - n  # 2m + 1 bins: the centre bin is the middle one
        if after < 0:
            before, after = before + factor, after + factor
        pads += [before, after]
    padded = F.pad(psf, pads)
    out = F.avg_pool2d(padded[None], factor)[0] * factor * factor
    return out / out.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-30)


def capture_psf(psf: torch.Tensor, img_size: int) -> torch.Tensor:
    """The PSF on the capture's pixel grid at ``img_size`` (see the module docstring).

    Args:
        psf: (C, h, w) at the reference sensor pitch, each channel summing to 1.

    Returns:
        (C, h', w'), each channel summing to 1.
    """
    return bin_psf(psf, psf_binning(img_size))
