"""Point spread functions of a thin lens with a surface height map, sampled at the sensor pixel pitch.

Model (paraxial scalar diffraction, Goodman ch. 5):
    pupil  P(x, y) = A(x, y) exp(i phi),  A = circular aperture of radius a,
    phi = k r^2 / 2 * (1/d_o - 1/f(lambda) + 1/z) + k (n(lambda) - 1) h(x, y),
where d_o is the object distance (1/d_o = 0 at infinity; the spherical wave from a point object), f(lambda) the
chromatic thin-lens focal length f(lambda) = f_d (n_d - 1) / (n(lambda) - 1), z the lens-sensor distance and h
the learnable surface height. The + k r^2 / 2z term is the chirp of the single-FFT Fresnel transform, which maps
the pupil to the sensor; sampling the pupil at dx = lambda z / (N p) puts the sensor samples exactly on the pixel
pitch p for every wavelength. The PSF is |FFT(P)|^2 cropped to the central psf_size and normalised to sum 1.
In focus (1/z = 1/f - 1/d_o) and with h = 0 this gives the Airy pattern (first zero 1.22 lambda f / (2a)).

Sampling validity (checked by LensConfig.validate): the single-FFT form is exact (within the paraxial
approximation) whenever the *total* pupil phase phi is sampled without aliasing, |grad phi| dx < pi; the chirp
exp(i k r^2 / 2z) alone is not resolvable on the pupil grid (dx >> p), but the lens phase cancels it up to the small
defocus W. For pure defocus the condition is "geometric blur radius < N p / 2", i.e. the PSF fits the periodic
N p output window; a margin of two Airy radii is required. The general-purpose propagators (Fraunhofer, Fresnel,
angular spectrum) and their validity rules are in optics/propagation.py.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from optics.materials import refractive_index


def chromatic_focal_lengths(focal_length: float, material: str, wavelengths: Sequence[float],
                            design_wavelength: float) -> list[float]:
    """Thin-lens focal length per wavelength: f(lambda) = f_d (n(lambda_d) - 1) / (n(lambda) - 1).

    Args:
        focal_length: f_d at ``design_wavelength`` [m]; wavelengths, design_wavelength: [m].

    Returns:
        L focal lengths [m].
    """
    nd = refractive_index(material, design_wavelength)
    return [focal_length * (nd - 1.0) / (refractive_index(material, w) - 1.0) for w in wavelengths]


def focal_length_for_focus(focus_distance: float, sensor_distance: float) -> float:
    """Focal length [m] that images an object at ``focus_distance`` [m] (inf allowed) onto the sensor plane at
    ``sensor_distance`` [m]: 1/f = 1/z + 1/d."""
    return 1.0 / (1.0 / sensor_distance + (0.0 if math.isinf(focus_distance) else 1.0 / focus_distance))


def defocus_power(object_distance: float, focal_length: float, sensor_distance: float) -> float:
    """W = 1/d_o - 1/f + 1/z [1/m]: the quadratic pupil phase is k W r^2 / 2 (0 in focus)."""
    inv_do = 0.0 if math.isinf(object_distance) else 1.0 / object_distance
    return inv_do - 1.0 / focal_length + 1.0 / sensor_distance


def geometric_blur_diameter(aperture_radius: float, focal_length: float, object_distance: float,
                            sensor_distance: float) -> float:
    """Geometric-optics blur-circle diameter [m] on the sensor: D |v - z| / v with 1/v = 1/f - 1/d_o
    (equal to 2 a z |W|)."""
    return 2.0 * aperture_radius * sensor_distance * abs(defocus_power(object_distance, focal_length,
                                                                       sensor_distance))


def airy_first_zero(wavelength: float, focal_length: float, aperture_radius: float) -> float:
    """Radius [m] of the first dark ring of the Airy pattern, 1.22 lambda f / (2 a)."""
    return 1.2196698912665045 * wavelength * focal_length / (2.0 * aperture_radius)


def pupil_pitch(wavelength: float, sensor_distance: float, pixel_pitch: float, samples: int) -> float:
    """Pupil sample spacing [m] that makes the single-FFT Fresnel output pitch equal to ``pixel_pitch``:
    dx = lambda z / (N p)."""
    return wavelength * sensor_distance / (samples * pixel_pitch)


def radius_squared_grid(samples: int, pitches: Sequence[float]) -> torch.Tensor:
    """r^2 [m^2] on a centred (N, N) grid for each pupil pitch: (L, N, N) float64."""
    c = torch.arange(samples, dtype=torch.float64) - samples // 2
    idx2 = c[None, :] ** 2 + c[:, None] ** 2
    return torch.stack([idx2 * p * p for p in pitches])


def aperture_mask(samples: int, pitches: Sequence[float], radius: float, supersample: int = 4) -> torch.Tensor:
    """Circular aperture transmission on each pupil grid, anti-aliased by the fraction of each sample cell
    inside the circle (s x s sub-samples): (L, N, N) float64 in [0, 1]."""
    c = torch.arange(samples, dtype=torch.float64) - samples // 2
    sub = (torch.arange(supersample, dtype=torch.float64) + 0.5) / supersample - 0.5
    fine = (c[:, None] + sub[None, :]).reshape(-1)
    out = []
    for p in pitches:
        inside = ((fine[:, None] * p) ** 2 + (fine[None, :] * p) ** 2 <= radius * radius).double()
        out.append(inside.reshape(samples, supersample, samples, supersample).mean(dim=(1, 3)))
    return torch.stack(out)


def intensity_psf(pupil: torch.Tensor, psf_size: int) -> torch.Tensor:
    """Sensor-plane intensity of a pupil field through a single-FFT Fresnel transform.

    Args:
        pupil: (..., N, N) complex pupil field including the Fresnel chirp exp(i k r^2 / 2z), centred at N//2.
        psf_size: output crop (<= N), centred so that the optical axis lands on index psf_size // 2.

    Returns:
        (..., psf_size, psf_size) real, non-negative, each PSF summing to 1.
    """
    n = pupil.shape[-1]
    spectrum = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(pupil, dim=(-2, -1))), dim=(-2, -1))
    intensity = spectrum.real ** 2 + spectrum.imag ** 2
    if psf_size < n:
        s = n // 2 - psf_size // 2
        intensity = intensity[..., s:s + psf_size, s:s + psf_size]
    return normalize_psf(intensity)


def normalize_psf(psf: torch.Tensor, eps: float = 1e-30) -> torch.Tensor:
    """Clamp to >= 0 and divide each (H, W) slice by its sum. psf: (..., H, W)."""
    psf = psf.clamp_min(0)
    return psf / psf.sum(dim=(-2, -1), keepdim=True).clamp_min(eps)


def combine_channels(psf_wavelengths: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
    """Sensor-channel PSFs from per-wavelength PSFs through a spectral response matrix.

    Args:
        psf_wavelengths: (..., L, H, W) each summing to 1.
        response: (C, L) non-negative weights of wavelength l in channel c.

    Returns:
        (..., C, H, W), each channel normalised to sum 1.
    """
    out = torch.einsum("cl,...lhw->...chw", response.to(psf_wavelengths.dtype), psf_wavelengths)
    return normalize_psf(out)


def max_phase_step(phase: torch.Tensor, mask: torch.Tensor) -> float:
    """Largest phase difference [rad] between neighbouring samples inside ``mask`` (both (N, N)); must stay
    below pi for the pupil to be sampled without aliasing (local frequency < Nyquist)."""
    m = mask.bool()
    dx = (phase[:, 1:] - phase[:, :-1]).abs()[m[:, 1:] & m[:, :-1]]
    dy = (phase[1:, :] - phase[:-1, :]).abs()[m[1:, :] & m[:-1, :]]
    vals = torch.cat([dx, dy])
    return float(vals.max()) if vals.numel() else 0.0
