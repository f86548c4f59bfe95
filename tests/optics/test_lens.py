"""Lens configuration files: presets, validation errors naming the key, round trips; Lens parameters."""
from __future__ import annotations

import math

import pytest
import torch
import yaml

from optics.camera import Camera
from optics.lens import Lens, LensConfig, LensConfigError, load_lens_config, preset_names
from optics.sensor import SensorConfig

GOOD = {
    "wavelengths": [640.0e-9, 550.0e-9, 440.0e-9],
    "aperture_radius": 2.0e-3,
    "focal_length": 49.5e-3,
    "sensor_distance": 50.0e-3,
    "object_distance": 0.75,
    "pixel_pitch": 3.713103e-6,
    "psf_size": 256,
    "material": "fused_silica",
    "zernike": {4: 0.0},
}


def write(tmp_path, data, name="lens.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_presets_and_focus_distance():
    assert {"face-deid", "in-focus"} <= set(preset_names())
    cfg = load_lens_config("face-deid")
    assert cfg.focal_length_design == pytest.approx(49.505e-3, abs=1e-6)
    assert cfg.object_distance == 0.75 and cfg.psf_size == 256
    assert load_lens_config("in-focus").object_distance == pytest.approx(5.0)


def test_issue_example_file_loads_and_round_trips(tmp_path):
    cfg = load_lens_config(str(write(tmp_path, GOOD)))
    assert cfg.focal_length == 49.5e-3 and cfg.zernike == {4: 0.0}
    again = LensConfig.from_dict(cfg.to_dict())
    assert again == cfg
    inf = load_lens_config(str(write(tmp_path, {**GOOD, "object_distance": ".inf"}, "inf.yaml")))
    assert math.isinf(inf.object_distance)
    yaml_inf = tmp_path / "inf2.yaml"
    yaml_inf.write_text(yaml.safe_dump({**GOOD, "object_distance": 1.0}).replace("object_distance: 1.0",
                                                                                  "object_distance: .inf"))
    assert math.isinf(load_lens_config(str(yaml_inf)).object_distance)


@pytest.mark.parametrize("change,key", [
    ({"wavelengths": [640.0e-9, -550.0e-9, 440.0e-9]}, "wavelengths"),
    ({"aperture_radius": 5.0e-3}, "aperture_radius"),          # larger than lambda z / p at 440 nm
    ({"object_distance": 0.02}, "object_distance"),             # blur of ~2700 px: hopelessly defocused
    ({"psf_size": 64}, "psf_size"),                             # the 61 px blur does not fit 64 px with margin
    ({"object_distance": 0.2}, "psf_size"),                     # blur radius beyond the 256 px grid's Nyquist
    ({"pupil_samples": 256, "psf_size": 64}, "psf_size"),
    ({"zernike": {4: 0.0, 11: 2.0e-5}, "pupil_samples": 256}, "zernike"),  # 20 um of spherical aberration aliases
    ({"zernike": {4: 0.0, 11: 2.0e-5}}, "zernike"),             # ... and no affordable automatic grid samples it
    ({"material": "unobtainium"}, "material"),
    ({"colour": "red"}, "colour"),                              # unknown key
    ({"focus_distance": 5.0}, "focal_length"),                  # both focal_length and focus_distance
    ({"pixel_pitch": "abc"}, "pixel_pitch"),
])
def test_bad_lens_file_names_the_key(tmp_path, change, key):
    path = write(tmp_path, {**GOOD, **change})
    with pytest.raises(LensConfigError) as info:
        load_lens_config(str(path))
    assert info.value.key == key
    assert f"'{key}'" in str(info.value) and str(path) in str(info.value)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="no-such-lens"):
        load_lens_config("no-such-lens")


def tiny_config(**kw):
    # 24-sample pupil, one wavelength, slightly defocused: small enough for gradcheck
    base = dict(wavelengths=[550e-9], aperture_radius=3.0e-3, focus_distance=10.0, sensor_distance=0.05,
                object_distance=math.inf, pixel_pitch=3.713103e-6, psf_size=24, material="fused_silica",
                zernike={}, zernike_indices=[4, 5, 7])
    base.update(kw)
    return LensConfig.from_dict(base)


def test_gradcheck_from_zernike_coefficients_to_captured_image():
    camera = Camera(Lens(tiny_config()), SensorConfig(bit_depth=None, full_well=1e9), noise=False).double()
    image = torch.rand(1, 1, 10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.8
    scale = 1e-7  # coefficients in units of 100 nm so that finite differences are well conditioned

    def capture(coeffs):
        return torch.func.functional_call(camera, {"lens.zernike_coeffs": coeffs * scale}, (image,))

    coeffs = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(capture, (coeffs,), eps=1e-6, atol=1e-7, rtol=1e-4)


def test_pixel_height_map_matches_zernike_and_gets_gradients():
    cfg = tiny_config(height_map="pixels", zernike={4: 5e-8}, height_map_samples=32)
    lens = Lens(cfg)
    ref = Lens(tiny_config(zernike={4: 5e-8}))
    assert torch.allclose(lens.psf(), ref.psf(), atol=1e-7)  # zero pixel map adds nothing
    lens.psf().pow(2).sum().backward()
    assert lens.height_pixels.grad is not None and float(lens.height_pixels.grad.abs().sum()) > 0
    # a constant height (piston) inside the aperture does not change the PSF
    with torch.no_grad():
        lens.height_pixels.fill_(1e-7)
    assert torch.allclose(lens.psf(), ref.psf(), atol=1e-5)


def test_project_enforces_height_range():
    lens = Lens(tiny_config(zernike={4: 2e-7, 5: 1e-7}, height_range=[0.0, 2e-7]))
    lens.project()
    x, y = lens.aperture_grid()
    h = lens.height_map().detach()[(x ** 2 + y ** 2) <= lens.config.aperture_radius ** 2]
    assert float(h.max() - h.min()) <= 2e-7 * (1 + 1e-5)
    pix = Lens(tiny_config(height_map="pixels", height_range=[-1e-7, 1e-7], height_map_samples=16))
    with torch.no_grad():
        pix.height_pixels.normal_(0, 1e-6)
    pix.project()
    assert float(pix.height_map().detach().abs().max()) <= 1e-7 * (1 + 1e-6)


def test_state_dict_round_trip():
    lens = Lens(tiny_config(zernike={5: 1e-7}))
    other = Lens(LensConfig.from_dict(lens.config.to_dict()))
    other.load_state_dict(lens.state_dict())
    assert torch.equal(other.psf(), lens.psf())


@pytest.mark.parametrize("content,key,words", [
    (b"- 550.0e-9\n- 1.0e-3\n", "<root>", "got a YAML list"),
    (bytes(range(256)) * 4, "<file>", "not a text (UTF-8) YAML file"),
    (b"", "<root>", "the file is empty"),
    (b"# only a comment\n", "<root>", "the file is empty"),
])
def test_unreadable_lens_file_is_one_error_naming_the_file(tmp_path, content, key, words):
    path = tmp_path / "lens.yaml"
    path.write_bytes(content)
    with pytest.raises(LensConfigError) as info:
        load_lens_config(str(path))
    assert info.value.key == key and words in str(info.value) and str(path) in str(info.value)


def test_huge_psf_size_is_refused_with_the_memory_before_allocating(tmp_path):
    path = write(tmp_path, {**GOOD, "psf_size": 1000000})
    with pytest.raises(LensConfigError) as info:
        load_lens_config(str(path))
    msg = str(info.value)
    assert info.value.key == "psf_size" and str(path) in msg
    # 1e12 samples x 3 wavelengths x (4 bytes x (25 Zernike terms + 3 buffers) + 64 bytes of PSF and gradient)
    assert "1000000 x 1000000 pupil grid" in msg and "about 480 TiB" in msg
