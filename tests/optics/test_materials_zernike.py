from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from optics.materials import abbe_number, refractive_index
from optics.zernike import noll_to_nm, zernike_basis, zernike_grid


@pytest.mark.parametrize("material,nd,vd", [("fused_silica", 1.4585, 67.8), ("bk7", 1.5168, 64.17),
                                             ("pmma", 1.4906, None)])
def test_refractive_index_d_line(material, nd, vd):
    assert refractive_index(material, 587.56e-9) == pytest.approx(nd, abs=1e-4)
    if vd is not None:  # catalogue Abbe numbers check the dispersion, not only one index
        assert abbe_number(material) == pytest.approx(vd, abs=0.3)


def test_refractive_index_tensor_matches_float_and_is_normal_dispersion():
    wl = torch.tensor([440e-9, 550e-9, 640e-9], dtype=torch.float64, requires_grad=True)
    n = refractive_index("N-BK7", wl)
    scalar = [refractive_index("bk7", float(w)) for w in wl.detach()]
    assert torch.allclose(n, torch.tensor(scalar, dtype=torch.float64))
    assert bool((n[:-1] > n[1:]).all())  # n decreases with wavelength in the visible
    n.sum().backward()
    assert bool((wl.grad < 0).all())


def test_unknown_material_and_bad_wavelength():
    with pytest.raises(ValueError, match="unobtainium"):
        refractive_index("unobtainium", 550e-9)
    with pytest.raises(ValueError, match="positive"):
        refractive_index("bk7", -550e-9)


def test_noll_indices():
    expected = [(0, 0), (1, 1), (1, -1), (2, 0), (2, -2), (2, 2), (3, -1), (3, 1), (3, -3), (3, 3), (4, 0)]
    assert [noll_to_nm(j) for j in range(1, 12)] == expected


def test_zernike_orthonormal_on_unit_disk():
    # Gauss-Legendre in r (weight r dr) x uniform azimuth integrates these polynomials exactly.
    nr, nt = 40, 64
    x, w = np.polynomial.legendre.leggauss(nr)
    r = 0.5 * (x + 1)
    wr = 0.5 * w * r
    th = np.arange(nt) * 2 * np.pi / nt
    rho = torch.tensor(np.repeat(r[:, None], nt, 1))
    theta = torch.tensor(np.repeat(th[None, :], nr, 0))
    weights = torch.tensor(np.repeat(wr[:, None], nt, 1) * (2 * np.pi / nt) / np.pi)
    idx = list(range(1, 37))
    z = zernike_basis(idx, rho, theta)
    gram = torch.einsum("iab,jab,ab->ij", z, z, weights)
    assert torch.allclose(gram, torch.eye(len(idx), dtype=gram.dtype), atol=1e-10)


def test_zernike_closed_forms_and_zero_outside():
    rho = torch.tensor([0.0, 0.5, 1.0, 1.5], dtype=torch.float64)
    theta = torch.full_like(rho, 0.3)
    z = zernike_basis([4, 6, 11], rho, theta)
    assert torch.allclose(z[0, :3], math.sqrt(3) * (2 * rho[:3] ** 2 - 1))
    assert torch.allclose(z[1, :3], math.sqrt(6) * rho[:3] ** 2 * math.cos(0.6))
    assert torch.allclose(z[2, :3], math.sqrt(5) * (6 * rho[:3] ** 4 - 6 * rho[:3] ** 2 + 1))
    assert bool((z[:, 3] == 0).all())


def test_zernike_grid_is_cached():
    a = zernike_grid([4, 5], 32, 1e-4, 1.5e-3)
    assert zernike_grid((4, 5), 32, 1e-4, 1.5e-3) is a
    assert a.shape == (2, 32, 32)
