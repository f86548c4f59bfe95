from __future__ import annotations

import math

import pytest
import torch

from optics import propagation as P

WL, DX, N = 0.5e-6, 2e-6, 128


def gaussian_beam(n=N, dx=DX, waist=20e-6, tilt=0.0):
    x, y = P.grid(n, dx)
    return torch.exp(-(x ** 2 + y ** 2) / waist ** 2 + 1j * tilt * x).to(torch.complex128)


@pytest.mark.parametrize("name", ["fraunhofer", "fresnel", "fresnel_tf", "angular_spectrum"])
def test_energy_conservation(name):
    u = gaussian_beam(tilt=2e4)
    z = 1e-3
    e0 = P.field_energy(u, DX)
    if name in ("fraunhofer", "fresnel"):
        out, dx_out = getattr(P, name)(u, WL, z, DX)
        assert dx_out == pytest.approx(WL * z / (N * DX))
    else:
        out, dx_out = getattr(P, name)(u, WL, z, DX), DX
    assert float(P.field_energy(out, dx_out)) == pytest.approx(float(e0), rel=1e-6)


def test_angular_spectrum_zero_distance_is_identity():
    u = gaussian_beam(tilt=3e4) * (1 + 0.1j)
    assert torch.allclose(P.angular_spectrum(u, WL, 0.0, DX), u, atol=1e-12)


@pytest.mark.parametrize("name", ["fresnel_tf", "angular_spectrum"])
def test_forward_then_backward_recovers_field(name):
    u = gaussian_beam(tilt=1e4)
    f = getattr(P, name)
    back = f(f(u, WL, 1e-3, DX), WL, -1e-3, DX)
    assert torch.allclose(back, u, atol=1e-9)


def test_gaussian_beam_width_after_propagation():
    # closed form: w(z) = w0 sqrt(1 + (z / zR)^2), zR = pi w0^2 / lambda
    w0, z = 20e-6, 3e-3
    out = P.angular_spectrum(gaussian_beam(n=256, waist=w0), WL, z, DX)
    x, y = P.grid(256, DX)
    inten = out.abs() ** 2
    second = float((inten * x ** 2).sum() / inten.sum())  # = w^2 / 4 for a Gaussian intensity
    zr = math.pi * w0 ** 2 / WL
    assert math.sqrt(4 * second) == pytest.approx(w0 * math.sqrt(1 + (z / zr) ** 2), rel=1e-3)


@pytest.mark.parametrize("name", ["fresnel", "fresnel_tf"])
def test_fresnel_gaussian_beam_width(name):
    # the paraxial Gaussian beam is an exact Fresnel solution: w(z) = w0 sqrt(1 + (z / zR)^2)
    n, dx, z, w0 = 256, 2e-6, 4e-3, 20e-6
    u = gaussian_beam(n=n, dx=dx, waist=w0)
    if name == "fresnel":
        out, dx_out = P.fresnel(u, WL, z, dx)
    else:
        out, dx_out = P.fresnel_tf(u, WL, z, dx), dx
    x, _ = P.grid(n, dx_out)
    inten = out.abs() ** 2
    width = math.sqrt(4 * float((inten * x ** 2).sum() / inten.sum()))
    zr = math.pi * w0 ** 2 / WL
    assert width == pytest.approx(w0 * math.sqrt(1 + (z / zr) ** 2), rel=2e-3)


def test_choose_propagator():
    assert P.choose_propagator(256, 1e-6, 0.5e-6, 10.0, 10e-6).name == "fraunhofer"
    assert P.choose_propagator(256, 2e-6, 0.5e-6, 1e-3, 100e-6).name == "angular_spectrum"
    assert P.choose_propagator(256, 2e-6, 0.5e-6, 5e-3, 100e-6).name == "fresnel"
    with pytest.raises(P.SamplingError, match="aperture"):
        P.choose_propagator(64, 1e-6, 0.5e-6, 1e-3, 1e-4)
