"""Stage I optics terms: sensor binning of the PSF, the privacy (identity-band MTF) loss, PSF regularisers and a
fabrication-aware (quantised) lens.

Resolution convention (``capture_psf``). Lens presets describe the reference camera, whose sensor images a
face crop on ``REFERENCE_IMG_SIZE`` = 256 pixels (the face-deid lens blurs a point into a ~61 px disc there).
Training at ``img_size`` S < 256 images the *same* face on the *same* sensor read out with S x S binned pixels:
the PSF is sum-pooled by ``k = 256 / S``. So the blur stays the same fraction of the face at every img_size,
and the lens physics (pupil sampling at the preset pitch) is unchanged. Every consumer of a Stage I lens at a
given img_size must use :func:`capture_psf` (the checkpoint records ``psf_binning``).

Privacy term (``privacy_mtf_loss``). Human and machine face recognition rely most on a band of mid spatial
frequencies, about 8 to 16 cycles per face width (Costen et al. 1996; Näsänen 1999), while the coarse face
geometry that the landmark heatmaps need survives below it (a 16 x 16 face still shows where eyes, nose, mouth
and jaw are). The loss is the fraction of a natural face's signal power in the identity band that the lens
transmits:

    L_priv = sum_{f in band} w(f) MTF(f)^2 / sum_{f in band} w(f),   w(f) = 1 / |f|^2,

with MTF the modulus of the (binned) PSF's optical transfer function on the capture's frequency grid, the band
``|f| >= band[0]`` cycles per face width (default 4, see DEFAULT_PRIVACY_BAND) (up to ``band[1]``, default Nyquist), and w the 1/f^2 power spectrum
of natural images (so every octave counts the same and no single frequency dominates). L_priv is in [0, 1]:
1 for a perfect lens, 0 when no identity-band contrast reaches the sensor (sensor noise then also masks what is
left). It depends only on the optics, so it is cheap, physically meaningful and cannot be gamed by the
regressor. A differentiable identity network is not available offline (dlib's ResNet is not differentiable),
so identity is measured, not optimised, by the benchmark's dlib re-identification.

PSF regularisers (``psf_regularizer``), weighted by ``--lambda_psf``:
  * border energy: fraction of each PSF channel's energy in the outer 1/8 of the PSF window; energy there is
    about to leave the simulated window (the normalisation would silently hide it);
  * phase step: mean squared excess of the pupil phase step between neighbouring pupil samples over 0.75 pi
    (defocus + learnable surface, every wavelength): steeper phases alias in the simulation (the PSF would be
    wrong; Lens.project() warns at pi) and steep surfaces cannot be fabricated.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from optics.lens import Lens, LensConfig

REFERENCE_IMG_SIZE = 256
"""Face-crop side [px] on the reference sensor (the lens presets' pixel pitch)."""

FACE_WIDTH_FRACTION = 0.66
"""Face width over the crop side of the aligned crops: data.align puts the eye centres 0.30 of the side apart,
and a face is ~2.2 inter-pupillary distances wide (bizygomatic width ~140 mm, IPD ~63 mm)."""

DEFAULT_PRIVACY_BAND = (4.0, None)
"""Identity band [cycles per face width]: from 4 up to the capture's Nyquist frequency. Lower than the 8-16
c/face of human studies because a machine attacker with a small gallery still re-identifies from coarser
content: on 36 held-out embedded faces, dlib re-identifies 16 x 16 captures (<= 5.3 c/face) 64 % of the time
(benchmarks/stage1_privacy_utility.py)."""


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


def identity_band_weights(size: int, img_size: int, band: tuple[float, float | None] = DEFAULT_PRIVACY_BAND,
                          face_width_fraction: float = FACE_WIDTH_FRACTION) -> torch.Tensor:
    """1/|f|^2 weights on the (size, size) FFT grid inside the identity band, normalised to sum 1.

    Args:
        size: FFT side [px of the capture].
        img_size: capture side [px] (the face crop).
        band: (low, high) [cycles per face width]; high None = Nyquist.

    Returns:
        (size, size) float64, unshifted FFT order.
    """
    f = torch.fft.fftfreq(size, dtype=torch.float64)  # cycles / px
    fr = torch.sqrt(f[None, :] ** 2 + f[:, None] ** 2) * img_size * face_width_fraction  # cycles / face width
    lo, hi = band
    inside = fr >= lo
    if hi is not None:
        inside &= fr <= hi
    if not bool(inside.any()):
        raise ValueError(f"privacy band {band} cycles/face holds no frequency of a {img_size} px capture")
    w = torch.where(inside, 1.0 / fr.clamp_min(1e-12) ** 2, torch.zeros_like(fr))
    return w / w.sum()


def privacy_mtf_loss(psf: torch.Tensor, img_size: int, band: tuple[float, float | None] = DEFAULT_PRIVACY_BAND,
                     face_width_fraction: float = FACE_WIDTH_FRACTION) -> torch.Tensor:
    """Fraction of identity-band signal power transmitted by the optics (see the module docstring).

    Args:
        psf: (C, h, w) PSF on the capture's pixel grid (after :func:`capture_psf`), each channel summing to 1.
        img_size: capture side [px].
        band: identity band (low, high) [cycles per face width].

    Returns:
        scalar in [0, 1], mean over channels; differentiable in ``psf``.
    """
    c, h, w = psf.shape
    size = max(img_size, h, w)
    otf = torch.fft.fft2(psf, s=(size, size))
    mtf2 = (otf.real ** 2 + otf.imag ** 2) / (psf.sum(dim=(-2, -1)) ** 2)[:, None, None].clamp_min(1e-30)
    weights = identity_band_weights(size, img_size, band, face_width_fraction).to(mtf2)
    return (mtf2 * weights).sum(dim=(-2, -1)).mean()


def psf_border_energy(psf: torch.Tensor, border_fraction: float = 0.125) -> torch.Tensor:
    """Mean fraction of each channel's energy in the outer ``border_fraction`` of the PSF window.

    Args:
        psf: (C, h, w), non-negative.

    Returns:
        scalar in [0, 1].
    """
    c, h, w = psf.shape
    by, bx = max(1, int(round(h * border_fraction))), max(1, int(round(w * border_fraction)))
    inner = psf[:, by:h - by, bx:w - bx].sum(dim=(-2, -1))
    total = psf.sum(dim=(-2, -1)).clamp_min(1e-30)
    return (1.0 - inner / total).mean()


def pupil_phase_penalty(lens: Lens, max_step: float = 0.75 * math.pi) -> torch.Tensor:
    """Mean squared excess [rad^2] of the pupil phase step between neighbouring pupil samples over
    ``max_step``, over all wavelengths, inside the aperture, at the lens' object distance.

    The phase includes the defocus of the design and the learnable surface: steps approaching pi alias in the
    simulation (the PSF would be wrong) and mean surface slopes too steep to fabricate. 0 for a valid design.
    """
    phase = lens.pupil_phase(lens.defocus0[None])[0]  # (L, N, N) [rad]
    inside = (lens.aperture > 0.5).to(phase.dtype)
    mx = inside[:, :, 1:] * inside[:, :, :-1]
    my = inside[:, 1:, :] * inside[:, :-1, :]
    ex = F.relu((phase[:, :, 1:] - phase[:, :, :-1]).abs() - max_step) ** 2 * mx
    ey = F.relu((phase[:, 1:, :] - phase[:, :-1, :]).abs() - max_step) ** 2 * my
    return (ex.sum() + ey.sum()) / (mx.sum() + my.sum()).clamp_min(1.0)


def psf_regularizer(psf: torch.Tensor, lens: Lens | None) -> dict[str, torch.Tensor]:
    """The PSF regularisers: ``{"border": ..., "phase_step": ...}`` (phase_step only with a lens)."""
    out = {"border": psf_border_energy(psf)}
    if lens is not None:
        out["phase_step"] = pupil_phase_penalty(lens)
    return out


def default_quantize_range(config: LensConfig) -> tuple[float, float]:
    """Height range [m] of the quantised surface: config.height_range, else +- one design wavelength of phase
    (+- lambda_d / (n_d - 1), a 2-wave multi-level surface)."""
    if config.height_range is not None:
        return float(config.height_range[0]), float(config.height_range[1])
    from optics.materials import refractive_index

    wave = config.design_wavelength / (refractive_index(config.material, config.design_wavelength) - 1.0)
    return -wave, wave


class QuantizedLens(Lens):
    """A :class:`Lens` whose surface height is quantised to ``levels`` levels in the forward pass
    (fabrication-aware training) with a straight-through gradient.

    The quantiser is ``hardware.fabrication.quantize_height_ste`` (the same levels the fabrication export
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
        from hardware.fabrication import quantize_height_ste  # fabrication levels, identical to the export

        return quantize_height_ste(super().pupil_height(), self.levels, *self.h_range) * self.aperture

    def height_map(self) -> torch.Tensor:
        from hardware.fabrication import quantize_height_ste

        return quantize_height_ste(super().height_map(), self.levels, *self.h_range)
