"""Zernike polynomials with Noll indices, RMS-orthonormal on the unit disk.

Normalisation (Noll 1976): Z_j = sqrt(n + 1) R_n^0(rho) for m = 0 and sqrt(2 (n + 1)) R_n^|m|(rho) cos / sin(|m|
theta) otherwise, so that (1 / pi) * integral over the unit disk of Z_i Z_j = delta_ij. Even j carry cos, odd j
carry sin. Z_1 piston, Z_2 / Z_3 tilt x / y, Z_4 defocus sqrt(3) (2 rho^2 - 1), Z_5 / Z_6 astigmatism, ...
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import torch


def noll_to_nm(j: int) -> tuple[int, int]:
    """Noll index j >= 1 -> (radial order n, signed azimuthal order m); m < 0 means sin(|m| theta)."""
    j = int(j)
    if j < 1:
        raise ValueError(f"Noll index must be >= 1, got {j}")
    n, rest = 0, j - 1
    while rest > n:
        n += 1
        rest -= n
    m_abs = (n % 2) + 2 * ((rest + ((n + 1) % 2)) // 2)
    m = m_abs if (j % 2 == 0) else -m_abs
    return n, m


def _radial_coefficients(n: int, m: int) -> list[tuple[int, float]]:
    """(power, coefficient) pairs of R_n^|m|."""
    m = abs(m)
    return [(n - 2 * s, (-1) ** s * math.factorial(n - s)
             / (math.factorial(s) * math.factorial((n + m) // 2 - s) * math.factorial((n - m) // 2 - s)))
            for s in range((n - m) // 2 + 1)]


def radial_polynomial(n: int, m: int, rho: torch.Tensor) -> torch.Tensor:
    """Zernike radial polynomial R_n^|m|(rho) (un-normalised, R(1) = 1)."""
    out = torch.zeros_like(rho)
    for power, c in _radial_coefficients(n, m):
        out = out + c * rho ** power
    return out


def zernike_basis(indices: Sequence[int], rho: torch.Tensor, theta: torch.Tensor, clip: bool = True
                  ) -> torch.Tensor:
    """Noll-indexed Zernike polynomials evaluated at polar coordinates.

    Args:
        indices: K Noll indices (>= 1).
        rho: (...) normalised radius (1 on the aperture edge); points with rho > 1 give 0.
        theta: (...) azimuth [rad], same shape as ``rho``.
        clip: zero outside the unit disk (False: the polynomials continue beyond rho = 1, which is what a pupil
            with an anti-aliased edge needs).

    Returns:
        (K, ...) same dtype / device as ``rho``; RMS-orthonormal on the unit disk.
    """
    nms = [noll_to_nm(j) for j in indices]
    out = rho.new_zeros((len(nms), *rho.shape))
    if not nms:
        return out
    inside = rho <= 1.0 if clip else torch.ones_like(rho, dtype=torch.bool)
    r = rho[inside]
    t = theta[inside]
    max_n = max(n for n, _ in nms)
    powers = [torch.ones_like(r)]
    for _ in range(max_n):
        powers.append(powers[-1] * r)
    angular: dict[int, torch.Tensor] = {0: torch.ones_like(t)}
    for i, (n, m) in enumerate(nms):
        radial = sum(c * powers[p] for p, c in _radial_coefficients(n, m))
        if m not in angular:
            angular[m] = torch.cos(m * t) if m > 0 else torch.sin(-m * t)
        norm = math.sqrt(n + 1) if m == 0 else math.sqrt(2 * (n + 1))
        out[i][inside] = norm * radial * angular[m]
    return out


def grid_coordinates(size: int, pitch: float, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Polar coordinates (rho, theta) of a centred square grid (sample size//2 on the axis), float64 CPU.

    Args:
        size: samples per side.
        pitch: sample spacing [m].
        radius: aperture radius [m] (rho = r / radius).

    Returns:
        rho, theta: (size, size) each; x runs along the last axis, y along the first.
    """
    coord = (torch.arange(size, dtype=torch.float64) - size // 2) * pitch
    y, x = torch.meshgrid(coord, coord, indexing="ij")
    return torch.sqrt(x ** 2 + y ** 2) / radius, torch.atan2(y, x)


@functools.lru_cache(maxsize=32)
def _cached_grid_basis(indices: tuple[int, ...], size: int, pitch: float, radius: float, clip: bool
                       ) -> torch.Tensor:
    rho, theta = grid_coordinates(size, pitch, radius)
    basis = zernike_basis(indices, rho, theta, clip)
    basis.requires_grad_(False)
    return basis


def zernike_grid(indices: Sequence[int], size: int, pitch: float, radius: float, clip: bool = True
                 ) -> torch.Tensor:
    """Zernike basis on a centred square grid, cached per (indices, grid). Do not modify the result in place.

    Args:
        indices: K Noll indices.
        size: samples per side; pitch: sample spacing [m]; radius: aperture radius [m].
        clip: zero outside the aperture (see :func:`zernike_basis`).

    Returns:
        (K, size, size) float64 CPU tensor.
    """
    return _cached_grid_basis(tuple(int(j) for j in indices), int(size), float(pitch), float(radius), bool(clip))
