"""Refractive indices of lens materials from Sellmeier dispersion formulas.

All wavelengths are in metres (SI); the tabulated Sellmeier coefficients use micrometres internally.

Sources of the coefficients (standard published fits):
    fused_silica: I. H. Malitson, JOSA 55, 1205 (1965), 0.21-3.71 um.
    bk7: SCHOTT N-BK7 data sheet, 0.3-2.5 um.
    pmma, polycarbonate: N. Sultanova et al., Acta Phys. Pol. A 116, 585 (2009), one-term fits, 0.4-1.1 um.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch

Number = Union[float, torch.Tensor]

# material -> ((B1, C1), (B2, C2), ...) with n^2 - 1 = sum_i B_i lam^2 / (lam^2 - C_i), lam in [um], C_i in [um^2]
SELLMEIER: dict[str, tuple[tuple[float, float], ...]] = {
    "fused_silica": ((0.6961663, 0.0684043 ** 2), (0.4079426, 0.1162414 ** 2), (0.8974794, 9.896161 ** 2)),
    "bk7": ((1.03961212, 0.00600069867), (0.231792344, 0.0200179144), (1.01046945, 103.560653)),
    "pmma": ((1.1819, 0.011313),),
    "polycarbonate": ((1.4182, 0.021304),),
}

# wavelength range [m] over which each fit is valid (a warning-free range check)
VALID_RANGE: dict[str, tuple[float, float]] = {
    "fused_silica": (0.21e-6, 3.71e-6),
    "bk7": (0.3e-6, 2.5e-6),
    "pmma": (0.4e-6, 1.1e-6),
    "polycarbonate": (0.4e-6, 1.1e-6),
}

ALIASES = {"silica": "fused_silica", "fusedsilica": "fused_silica", "n-bk7": "bk7", "nbk7": "bk7",
           "acrylic": "pmma", "pc": "polycarbonate"}


def materials() -> list[str]:
    """Names of the materials known to :func:`refractive_index`."""
    return sorted(SELLMEIER)


def canonical_material(material: str) -> str:
    """Canonical material name (lower case, aliases resolved). Raises ValueError naming an unknown material."""
    key = str(material).strip().lower().replace(" ", "_").replace("-", "_")
    key = ALIASES.get(key, ALIASES.get(key.replace("_", "-"), key))
    if key not in SELLMEIER:
        raise ValueError(f"unknown material {material!r}; known materials: {', '.join(materials())}")
    return key


def refractive_index(material: str, wavelength: Number) -> Number:
    """Refractive index n(lambda) from the material's Sellmeier formula.

    Args:
        material: one of :func:`materials` (case-insensitive; 'N-BK7', 'acrylic' ... accepted).
        wavelength: vacuum wavelength [m]; float or tensor of any shape (positive).

    Returns:
        n, same type (and shape / dtype / device) as ``wavelength``; differentiable for tensors.

    Raises:
        ValueError: unknown material, or a non-positive wavelength.
    """
    coeffs = SELLMEIER[canonical_material(material)]
    if isinstance(wavelength, torch.Tensor):
        if bool((wavelength <= 0).any()):
            raise ValueError("wavelength must be positive [m]")
        lam2 = (wavelength * 1e6) ** 2
        n2 = torch.ones_like(lam2)
        for b, c in coeffs:
            n2 = n2 + b * lam2 / (lam2 - c)
        return torch.sqrt(n2)
    wl = float(wavelength)
    if not wl > 0:
        raise ValueError(f"wavelength must be positive [m], got {wavelength!r}")
    lam2 = (wl * 1e6) ** 2
    n2 = 1.0 + sum(b * lam2 / (lam2 - c) for b, c in coeffs)
    return n2 ** 0.5


def refractive_indices(material: str, wavelengths: Sequence[float]) -> list[float]:
    """n(lambda) for a list of wavelengths [m]."""
    return [float(refractive_index(material, w)) for w in wavelengths]


def abbe_number(material: str) -> float:
    """Abbe number V_d = (n_d - 1) / (n_F - n_C) (d = 587.56 nm, F = 486.13 nm, C = 656.27 nm)."""
    nd, nf, nc = (refractive_index(material, w) for w in (587.56e-9, 486.13e-9, 656.27e-9))
    return (nd - 1.0) / (nf - nc)
