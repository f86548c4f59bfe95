"""Sensor / prototype specifications in SI units, usable as the simulator's optics.sensor.SensorConfig.

    spec = load_prototype("example-mono")           # or a JSON / YAML file with the same keys
    camera = Camera(lens, sensor=spec.sensor_config())
    lens_config = load_lens_config("face-deid", **spec.lens_overrides())
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class PrototypeSpecError(ValueError):
    """Invalid prototype specification; the message names the key (and the file)."""


@dataclass(frozen=True)
class PrototypeSpec:
    """A physical camera: sensor + the fabricated optic in front of it.

    Attributes:
        name: label.
        pixel_pitch: sensor pixel pitch [m].
        resolution: (rows, cols) [px].
        bit_depth: ADC bits.
        full_well: full-well capacity [e-].
        read_noise: read-noise standard deviation [e-].
        qe: quantum efficiency in (0, 1] [e-/photon].
        dark_current: [e-/s] per pixel.
        black_level: ADC offset [ADU].
        sensor_distance: optic-to-sensor distance [m] as built (None = the lens design's).
    """
    name: str
    pixel_pitch: float
    resolution: tuple[int, int]
    bit_depth: int
    full_well: float
    read_noise: float
    qe: float = 0.6
    dark_current: float = 0.0
    black_level: float = 0.0
    sensor_distance: float | None = None

    def __post_init__(self) -> None:
        def bad(key: str, msg: str) -> PrototypeSpecError:
            return PrototypeSpecError(f"prototype {self.name!r}: key '{key}' {msg}")

        for key in ("pixel_pitch", "full_well"):
            v = getattr(self, key)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise bad(key, f"must be a positive number, got {v!r}")
        if self.pixel_pitch > 1e-3:
            raise bad("pixel_pitch", f"= {self.pixel_pitch} is not in metres (e.g. 3.45e-6)")
        if not (isinstance(self.bit_depth, int) and 1 <= self.bit_depth <= 24):
            raise bad("bit_depth", f"must be an integer in 1..24, got {self.bit_depth!r}")
        if len(self.resolution) != 2 or any(not isinstance(v, int) or v < 1 for v in self.resolution):
            raise bad("resolution", f"must be (rows, cols) positive integers, got {self.resolution!r}")
        if not 0 < self.qe <= 1:
            raise bad("qe", f"must be in (0, 1], got {self.qe!r}")
        for key in ("read_noise", "dark_current", "black_level"):
            if not getattr(self, key) >= 0:
                raise bad(key, f"must be >= 0, got {getattr(self, key)!r}")
        if self.sensor_distance is not None and not self.sensor_distance > 0:
            raise bad("sensor_distance", f"must be > 0 [m], got {self.sensor_distance!r}")

    @property
    def sensor_size(self) -> tuple[float, float]:
        """(height, width) of the active area [m]."""
        return self.resolution[0] * self.pixel_pitch, self.resolution[1] * self.pixel_pitch

    @property
    def gain(self) -> float:
        """Conversion gain [e-/ADU] when the ADC full scale is the full well."""
        return self.full_well / (2 ** self.bit_depth - 1)

    def sensor_config(self, exposure_fraction: float = 1.0):
        """optics.sensor.SensorConfig of this sensor.

        Args:
            exposure_fraction: signal of a white (1.0) input as a fraction of the full well (1 = white just
                saturates, as an auto-exposed capture).
        """
        from optics.sensor import SensorConfig

        if not exposure_fraction > 0:
            raise PrototypeSpecError(f"exposure_fraction must be > 0, got {exposure_fraction!r}")
        return SensorConfig(photons_at_white=self.full_well * exposure_fraction / self.qe, qe=self.qe,
                            full_well=self.full_well, read_noise=self.read_noise, bit_depth=self.bit_depth)

    def lens_overrides(self) -> dict[str, float]:
        """Lens-config keys this prototype fixes (pixel pitch, and the as-built sensor distance if known)."""
        out = {"pixel_pitch": self.pixel_pitch}
        if self.sensor_distance is not None:
            out["sensor_distance"] = self.sensor_distance
        return out

    def psf_sidecar(self, **extra: Any) -> dict[str, Any]:
        """Sidecar metadata (hardware.psf_io) of a capture with this sensor."""
        return {"pixel_pitch": self.pixel_pitch, "bit_depth": self.bit_depth, "black_level": self.black_level,
                **extra}

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["resolution"] = list(self.resolution)
        return out


# Example specs (typical datasheet-class values of small machine-vision sensors, not a calibration).
PROTOTYPES: dict[str, PrototypeSpec] = {
    "example-mono": PrototypeSpec(name="example-mono", pixel_pitch=3.45e-6, resolution=(2048, 2448), bit_depth=12,
                                  full_well=10500.0, read_noise=2.4, qe=0.65, dark_current=3.0, black_level=0.0),
    "face-deid-prototype": PrototypeSpec(name="face-deid-prototype", pixel_pitch=3.713103e-6,
                                         resolution=(1024, 1280), bit_depth=12, full_well=10000.0, read_noise=3.0,
                                         qe=0.6, dark_current=5.0, black_level=64.0, sensor_distance=50.0e-3),
}


def load_prototype(name_or_path: str | os.PathLike) -> PrototypeSpec:
    """A prototype by name (PROTOTYPES) or from a JSON / YAML file with the PrototypeSpec keys.

    Raises:
        FileNotFoundError: neither a known name nor a file. PrototypeSpecError: bad or unknown keys.
    """
    if str(name_or_path) in PROTOTYPES:
        return PROTOTYPES[str(name_or_path)]
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such prototype file or name (known: {', '.join(PROTOTYPES)})")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(path.read_text())
        else:
            data = json.loads(path.read_text())
    except Exception as err:
        raise PrototypeSpecError(f"{path}: not readable ({type(err).__name__}: {err})") from err
    if not isinstance(data, dict):
        raise PrototypeSpecError(f"{path}: expected a mapping of keys")
    names = {f.name for f in dataclasses.fields(PrototypeSpec)}
    unknown = set(data) - names
    if unknown:
        raise PrototypeSpecError(f"{path}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    data.setdefault("name", path.stem)
    if "resolution" in data:
        data["resolution"] = tuple(data["resolution"])
    try:
        return PrototypeSpec(**data)
    except PrototypeSpecError as err:
        raise PrototypeSpecError(f"{path}: {err}") from None
    except TypeError as err:
        raise PrototypeSpecError(f"{path}: {err}") from None
