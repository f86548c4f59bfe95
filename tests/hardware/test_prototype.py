"""Prototype specs in SI units feed the simulator's sensor and lens."""
from __future__ import annotations

import json

import pytest

from hardware.prototype import PROTOTYPES, PrototypeSpecError, load_prototype


def test_spec_to_sensor_config_and_lens_overrides():
    spec = load_prototype("face-deid-prototype")
    sensor = spec.sensor_config()
    assert sensor.electrons_at_white == pytest.approx(spec.full_well)  # white input just fills the well
    assert (sensor.read_noise, sensor.bit_depth, sensor.qe) == (spec.read_noise, spec.bit_depth, spec.qe)
    assert spec.gain == pytest.approx(spec.full_well / 4095)
    assert spec.sensor_size == pytest.approx((1024 * 3.713103e-6, 1280 * 3.713103e-6))
    from optics.lens import load_lens_config
    cfg = load_lens_config("in-focus", psf_size=64, **spec.lens_overrides())
    assert cfg.pixel_pitch == spec.pixel_pitch


def test_spec_file_and_errors(tmp_path):
    data = PROTOTYPES["example-mono"].to_dict()
    path = tmp_path / "cam.json"
    path.write_text(json.dumps(data))
    assert load_prototype(path) == PROTOTYPES["example-mono"]
    path.write_text(json.dumps({**data, "pixel_pitch": 3.45}))
    with pytest.raises(PrototypeSpecError, match="pixel_pitch") as err:
        load_prototype(path)
    assert "cam.json" in str(err.value)
    path.write_text(json.dumps({**data, "gain": 1.0}))
    with pytest.raises(PrototypeSpecError, match="unknown key"):
        load_prototype(path)
    with pytest.raises(FileNotFoundError, match="nope"):
        load_prototype(tmp_path / "nope.json")
