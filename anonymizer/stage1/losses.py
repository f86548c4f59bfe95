"""Stage I optics terms: the privacy (identity-band MTF) loss and the PSF regularisers.

PSF binning to the capture grid lives in optics/binning.py (``capture_psf``); the quantisation-aware lens in
optics/quantize.py.

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

Adversarial privacy term (``adversarial_privacy_loss``), the one that holds against a learned attacker. The
threat model: the attacker owns the camera (or measured its PSF), has public faces and compute, and steals raw
captures. So Stage I trains, alongside the lens and the regressor, an inverter adversary A (a U-Net,
metrics.attacks.Inverter) that turns captures back into faces, and plays the min-max game

    min_A   E[ L_inv(A(y), x) ]                                          (the attacker, on detached captures)
    min_{lens, R}  L_task(R(y)) + lambda_adv * E[ max(0, rho_band(A(y), x)) ] + lambda_privacy * L_priv + ...

with y = Camera(x) (fresh sensor noise every step) and rho_band the normalised cross-correlation of the
identity band (4-16 cycles per face width) of the adversary's reconstruction and the clean face
(metrics.attacks.identity_correlation). rho_band is bounded (a lens cannot "win" by making the pixel error
arbitrarily large, e.g. through a brightness shift the regressor does not care about), is 0 when the band is
gone, and is exactly what the adversary's loss (L1 + 1 - rho_band, metrics.attacks.inverter_loss) maximises:
the lens is rewarded only for identity detail the current best inverter cannot restore, i.e. for information
destroyed below the sensor noise and the ADC step, not merely attenuated (the frequency-band proxy above rewards
attenuation, which a learned inverter undoes). The task term keeps the landmark geometry decodable.

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

from metrics.inverter import IDENTITY_BAND, identity_correlation
from optics.lens import Lens

FACE_WIDTH_FRACTION = 0.66
"""Face width over the crop side of the aligned crops: data.align puts the eye centres 0.30 of the side apart,
and a face is ~2.2 inter-pupillary distances wide (bizygomatic width ~140 mm, IPD ~63 mm)."""

DEFAULT_PRIVACY_BAND = (4.0, None)
"""Identity band [cycles per face width]: from 4 up to the capture's Nyquist frequency. Lower than the 8-16
c/face of human studies because a machine attacker with a small gallery still re-identifies from coarser
content: on 36 held-out embedded faces, dlib re-identifies 16 x 16 captures (<= 5.3 c/face) 64 % of the time
(benchmarks/stage1_privacy_utility.py)."""


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


def adversarial_privacy_loss(estimate: torch.Tensor, clean: torch.Tensor,
                             band: tuple[float, float | None] | None = None) -> torch.Tensor:
    """Identity-band correlation the adversary achieves, clipped at 0 (see the module docstring).

    Args:
        estimate: (B, 3, H, W) the adversary's reconstruction A(y) (differentiable in the capture y).
        clean: (B, 3, H, W) in [0, 1] the clean faces.
        band: identity band [cycles per face width]; default metrics.attacks.IDENTITY_BAND.

    Returns:
        scalar in [0, 1].
    """
    return identity_correlation(estimate, clean, band or IDENTITY_BAND).clamp_min(0.0).mean()


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
