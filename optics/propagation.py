"""Scalar free-space propagation of complex fields: Fraunhofer, Fresnel, angular spectrum.

Conventions: fields are complex tensors (..., N, N) sampled on a centred square grid of pitch ``dx`` [m]
(sample N//2 on the optical axis, x along the last axis). Propagation is along +z; a negative ``z``
back-propagates. Every propagator is unitary in the discrete sense (Parseval): the energy
sum(|U|^2) * dx^2 is conserved (exactly for Fraunhofer / single-FFT Fresnel / transfer functions with |H| = 1,
up to the removed evanescent / band-limited part for the angular spectrum).

Validity (Goodman, Introduction to Fourier Optics; Voelz, Computational Fourier Optics):
    Fraunhofer: Fresnel number a^2 / (lambda z) << 1.
    Fresnel, single FFT (impulse-response form): output pitch lambda z / (N dx); good when z >= N dx^2 / lambda.
    Fresnel transfer function / angular spectrum: same pitch in and out; good when z <= N dx^2 / lambda.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


class SamplingError(ValueError):
    """A propagation whose sampling would alias. The message names the offending quantity."""


def _centered_fft2(field: torch.Tensor) -> torch.Tensor:
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(field, dim=(-2, -1))), dim=(-2, -1))


def _centered_ifft2(field: torch.Tensor) -> torch.Tensor:
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(field, dim=(-2, -1))), dim=(-2, -1))


def grid(n: int, dx: float, like: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred coordinates (x, y) [m] of an (n, n) grid of pitch ``dx`` [m] (sample n//2 at 0); real dtype of
    ``like`` (float64 when None)."""
    dtype = torch.float64 if like is None else (like.real.dtype if like.is_complex() else like.dtype)
    device = None if like is None else like.device
    c = (torch.arange(n, dtype=dtype, device=device) - n // 2) * dx
    y, x = torch.meshgrid(c, c, indexing="ij")
    return x, y


def frequency_grid(n: int, dx: float, like: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred spatial frequencies (fx, fy) [1/m] matching :func:`_centered_fft2` of an (n, n) grid."""
    return grid(n, 1.0 / (n * dx), like)


def fraunhofer(field: torch.Tensor, wavelength: float, z: float, dx: float) -> tuple[torch.Tensor, float]:
    """Fraunhofer (far-field) propagation over distance ``z``.

    U(u) = exp(ikz) exp(ik u^2 / 2z) / (i lambda z) * FT[U0](u / (lambda z)).

    Args:
        field: (..., N, N) complex input field.
        wavelength: [m]; z: propagation distance [m] (non-zero); dx: input pitch [m].

    Returns:
        (output field (..., N, N) complex, output pitch lambda |z| / (N dx) [m]).
    """
    if z == 0:
        raise SamplingError("Fraunhofer propagation needs z != 0")
    n = field.shape[-1]
    k = 2 * math.pi / wavelength
    dx_out = wavelength * abs(z) / (n * dx)
    if z > 0:
        spectrum = _centered_fft2(field) * dx * dx
    else:  # back-propagation: the adjoint (inverse) transform
        spectrum = _centered_ifft2(field) * (n * dx) ** 2
    u, v = grid(n, dx_out, field)
    phase = torch.exp(1j * (k * z + k * (u ** 2 + v ** 2) / (2 * z))).to(field.dtype)
    return spectrum * phase / (1j * wavelength * z), dx_out


def fresnel(field: torch.Tensor, wavelength: float, z: float, dx: float) -> tuple[torch.Tensor, float]:
    """Single-FFT Fresnel propagation (impulse-response form): chirp, Fraunhofer, chirp.

    The output pitch is lambda |z| / (N dx): choosing dx = lambda z / (N p) puts the output on pitch p.

    Args:
        field: (..., N, N) complex; wavelength [m]; z [m] (non-zero); dx: input pitch [m].

    Returns:
        (output field (..., N, N) complex, output pitch [m]).
    """
    if z == 0:
        raise SamplingError("single-FFT Fresnel propagation needs z != 0")
    k = 2 * math.pi / wavelength
    x, y = grid(field.shape[-1], dx, field)
    chirp = torch.exp(1j * k * (x ** 2 + y ** 2) / (2 * z)).to(field.dtype)
    return fraunhofer(field * chirp, wavelength, z, dx)


def _apply_transfer(field: torch.Tensor, transfer: torch.Tensor, pad: bool) -> torch.Tensor:
    n = field.shape[-1]
    if pad:
        p = n // 2
        field = torch.nn.functional.pad(field, (p, n - p, p, n - p))
    out = _centered_ifft2(_centered_fft2(field) * transfer)
    if pad:
        out = out[..., p:p + n, p:p + n]
    return out


def fresnel_tf(field: torch.Tensor, wavelength: float, z: float, dx: float, pad: bool = False) -> torch.Tensor:
    """Fresnel propagation with the transfer function H = exp(ikz) exp(-i pi lambda z (fx^2 + fy^2)).

    Args:
        field: (..., N, N) complex; wavelength [m]; z [m]; dx: pitch [m] (unchanged by the propagation).
        pad: zero-pad to 2N (linear instead of circular convolution; then energy leaving the window is lost).

    Returns:
        (..., N, N) complex field at pitch dx.
    """
    n = field.shape[-1] * (2 if pad else 1)
    fx, fy = frequency_grid(n, dx, field)
    h = torch.exp(1j * (2 * math.pi / wavelength * z - math.pi * wavelength * z * (fx ** 2 + fy ** 2)))
    return _apply_transfer(field, h.to(field.dtype), pad)


def angular_spectrum(field: torch.Tensor, wavelength: float, z: float, dx: float, pad: bool = False,
                     band_limit: bool = True) -> torch.Tensor:
    """Exact scalar (angular spectrum) propagation; evanescent waves removed.

    H = exp(i 2 pi z sqrt(1/lambda^2 - fx^2 - fy^2)); with ``band_limit`` the frequencies beyond
    |f| < 1 / (lambda sqrt((2 df z)^2 + 1)) (df = 1 / (N dx)) are removed (Matsushima & Shimobaba 2009), which
    avoids the aliasing of the transfer function at long distances. z = 0 is the identity.

    Args:
        field: (..., N, N) complex; wavelength [m]; z [m] (any sign); dx: pitch [m].
        pad: zero-pad to 2N (linear convolution). band_limit: apply the band limit.

    Returns:
        (..., N, N) complex field at pitch dx.
    """
    n = field.shape[-1] * (2 if pad else 1)
    fx, fy = frequency_grid(n, dx, field)
    arg = 1.0 / wavelength ** 2 - fx ** 2 - fy ** 2
    keep = arg > 0
    if band_limit and z != 0:
        df = 1.0 / (n * dx)
        limit = 1.0 / (wavelength * math.sqrt((2 * df * abs(z)) ** 2 + 1))
        keep = keep & (fx.abs() < limit) & (fy.abs() < limit)
    h = torch.exp(1j * 2 * math.pi * z * torch.sqrt(arg.clamp_min(0))) * keep
    return _apply_transfer(field, h.to(field.dtype), pad)


@dataclass
class PropagatorChoice:
    """Result of :func:`choose_propagator`."""
    name: str              # "fraunhofer" | "fresnel" (single FFT) | "angular_spectrum"
    fresnel_number: float  # a^2 / (lambda z)
    critical_distance: float  # N dx^2 / lambda [m]
    reason: str


def choose_propagator(n: int, dx: float, wavelength: float, z: float, aperture_radius: float
                      ) -> PropagatorChoice:
    """Pick the propagator valid for a geometry.

    Args:
        n: samples per side; dx: input pitch [m]; wavelength [m]; z: distance [m] (> 0);
        aperture_radius: radius of the illuminated region [m].

    Returns:
        :class:`PropagatorChoice`. Fraunhofer when the Fresnel number is < 0.1, otherwise the angular spectrum
        for z <= N dx^2 / lambda (same sampling in and out, well-sampled transfer function) and the single-FFT
        Fresnel propagator beyond (well-sampled impulse response).

    Raises:
        SamplingError: the aperture does not fit the window, or z <= 0.
    """
    if z <= 0:
        raise SamplingError(f"propagation distance must be positive, got z = {z} m")
    if 2 * aperture_radius > n * dx:
        raise SamplingError(f"aperture diameter {2 * aperture_radius:.3e} m exceeds the sampled window "
                            f"{n * dx:.3e} m")
    nf = aperture_radius ** 2 / (wavelength * z)
    zc = n * dx * dx / wavelength
    if nf < 0.1:
        return PropagatorChoice("fraunhofer", nf, zc, f"Fresnel number {nf:.3g} < 0.1 (far field)")
    if z <= zc:
        return PropagatorChoice("angular_spectrum", nf, zc, f"z = {z:.3g} m <= N dx^2 / lambda = {zc:.3g} m")
    return PropagatorChoice("fresnel", nf, zc, f"z = {z:.3g} m > N dx^2 / lambda = {zc:.3g} m (single FFT)")


def field_energy(field: torch.Tensor, dx: float) -> torch.Tensor:
    """Energy sum(|U|^2) dx^2 over the last two axes."""
    return (field.abs() ** 2).sum(dim=(-2, -1)) * dx * dx
