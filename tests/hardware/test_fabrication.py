"""Height-map quantisation, straight-through quantiser, export / re-import, re-simulation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hardware.fabrication import (FabricationFileError, export_height_map, import_height_map,
                                  lens_with_height_map, level_step, quantization_report, quantize_height,
                                  quantize_height_ste)
from optics.lens import Lens
from tests.helpers import WAVE_HEIGHT, small_lens_config


@settings(max_examples=60, deadline=None)
@given(levels=st.integers(2, 300), lo=st.floats(-2e-6, 0.0), span=st.floats(1e-9, 5e-6), seed=st.integers(0, 99))
def test_quantisation_error_bounded_by_half_a_level(levels, lo, span, seed):
    hi = lo + span
    h = np.random.default_rng(seed).uniform(lo - span, hi + span, size=200)
    q = quantize_height(h, levels, lo, hi)
    step = level_step(levels, lo, hi)
    assert np.all(np.abs(q - np.clip(h, lo, hi)) <= step / 2 * (1 + 1e-9))
    k = (q - lo) / step
    assert np.allclose(k, np.round(k), atol=1e-6) and q.min() >= lo - 1e-18 and q.max() <= hi + 1e-18


def test_straight_through_gradient():
    h = torch.tensor([-1e-6, 0.13e-6, 0.5e-6, 2e-6], dtype=torch.float64, requires_grad=True)
    q = quantize_height_ste(h, 5, 0.0, 1e-6)
    assert torch.allclose(q, torch.tensor([0.0, 0.25e-6, 0.5e-6, 1e-6], dtype=torch.float64))
    q.sum().backward()
    assert h.grad.tolist() == [0.0, 1.0, 1.0, 0.0]  # identity inside the range, zero where clipped
    with pytest.raises(ValueError, match="levels"):
        quantize_height(h, 1, 0.0, 1e-6)
    with pytest.raises(ValueError, match="min < max"):
        quantize_height(h, 4, 1e-6, 1e-6)


def test_export_import_is_exact(tmp_path, rng):
    height = rng.uniform(0, 1.2e-6, size=(33, 33))
    paths = export_height_map(tmp_path, height, 2e-5, 16, 0.0, 1.2e-6, "fused_silica", [640e-9, 550e-9, 440e-9],
                              aperture_radius=3.2e-4)
    npy, meta = import_height_map(paths["npy"])
    for source in ("png", "csv"):
        got, _ = import_height_map(paths["json"], source=source)
        assert np.array_equal(got, npy), source
    inside = (np.arange(33) - 16)[None, :] ** 2 + (np.arange(33) - 16)[:, None] ** 2 <= 16 ** 2
    assert np.array_equal(npy[inside], quantize_height(height, 16, 0.0, 1.2e-6)[inside])
    assert np.all(npy[~inside] == 0.0)
    assert meta["levels"] == 16 and meta["pitch"] == 2e-5 and meta["material"] == "fused_silica"
    assert meta["design_wavelengths"] == [640e-9, 550e-9, 440e-9]
    assert (meta["height_min"], meta["height_max"]) == (0.0, 1.2e-6)
    from PIL import Image
    with Image.open(paths["png"]) as img:
        assert img.mode.startswith("I;16")
    paths["json"].unlink()
    with pytest.raises(FileNotFoundError, match="height_map.json"):
        import_height_map(paths["png"])


def test_resimulation_and_quantisation_report():
    cfg = small_lens_config(zernike={4: 0.4 * WAVE_HEIGHT, 6: 0.3 * WAVE_HEIGHT}, height_map_samples=128)
    lens = Lens(cfg)
    h = lens.height_map().detach().double().numpy()
    # the unquantised height map as a pixel map reproduces the Zernike lens (up to the bilinear resampling)
    same = quantization_report(lens, h)
    assert same["psf_change_relative_rms"] < 0.02
    mask = h != 0
    lo, hi = float(h[mask].min()), float(h[mask].max())
    changes = []
    for levels in (4, 16, 64):
        q = np.where(mask, quantize_height(h, levels, lo, hi), 0.0)
        rep = quantization_report(lens, q)
        assert rep["height_error_max"] <= level_step(levels, lo, hi) / 2 * (1 + 1e-9)
        changes.append(rep["psf_change_relative_rms"])
    assert changes[0] > changes[1] > changes[2]
    with pytest.raises(ValueError, match="aperture grid"):
        lens_with_height_map(lens, h[:10, :10])


def test_import_rejects_wrong_png_and_shape(tmp_path, rng):
    from data.files import save_image

    paths = export_height_map(tmp_path, rng.uniform(0, 1e-6, (8, 8)), 1e-5, 4, 0.0, 1e-6, "pmma", [550e-9])
    save_image(paths["png"], np.zeros((8, 8), np.uint8))
    with pytest.raises(FabricationFileError, match="expected a 16-bit gray PNG") as err:
        import_height_map(paths["png"])
    assert "height_map.png" in str(err.value)
    np.save(paths["npy"], np.zeros((4, 4)))
    with pytest.raises(FabricationFileError, match="metadata says"):
        import_height_map(paths["npy"])
