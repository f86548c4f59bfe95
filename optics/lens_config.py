"""Lens description (SI units), its YAML files / presets and validation with errors that name the key."""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from optics import psf as psf_model
from optics import sampling
from optics.materials import canonical_material, refractive_index
from optics.sampling import MAX_PHASE_STEP, MAX_PSF_MEMORY, MIN_APERTURE_SAMPLES  # noqa: F401 (re-exported)
from optics.zernike import zernike_grid

log = logging.getLogger(__name__)

PRESET_DIR = Path(__file__).resolve().parent / "presets"
MAX_WINDOW = 2048          # largest PSF window [px] a design may need
DIFFRACTION_MARGIN = 2.0   # Airy first-zero radii added to the geometric blur radius in the window checks


class LensConfigError(ValueError):
    """Invalid lens description. ``key`` is the offending key; the message names it and the source file."""

    def __init__(self, key: str, message: str, source: str | None = None):
        self.key = key
        where = f"{source}: " if source else ""
        super().__init__(f"{where}lens key '{key}': {message}")


@dataclass
class LensConfig:
    """Thin lens + surface height map + sensor sampling. All lengths in metres.

    Attributes:
        wavelengths: L sampled wavelengths [m].
        aperture_radius: a [m].
        focal_length: f at ``design_wavelength`` [m]; or None when ``focus_distance`` is given.
        focus_distance: object distance in focus [m] (inf allowed); sets f = 1 / (1/z + 1/focus_distance).
        design_wavelength: wavelength at which ``focal_length`` holds [m].
        sensor_distance: lens-sensor distance z [m].
        object_distance: object depth [m] (inf allowed) used by Lens.psf() by default.
        object_distances: optional depth stack [m] for Lens.psf_stack().
        pixel_pitch: sensor pixel pitch p [m]; PSF and image pixels are on this pitch.
        psf_size: PSF side length [px].
        pupil_samples: pupil grid side N (>= psf_size; default psf_size); larger = finer pupil sampling.
        material: lens material (optics.materials).
        zernike: {Noll index: surface height coefficient [m]} initial height map.
        zernike_indices: Noll indices of the learnable coefficients (default 4..28 plus the keys of ``zernike``).
        height_map: "zernike" (learnable coefficients) or "pixels" (free height map, initialised from zernike).
        height_map_samples: side of the pixel height map grid spanning the aperture diameter.
        height_range: [min, max] buildable height [m] enforced by Lens.project(), or None.
        spectral_response: (C, L) channel weights of each wavelength; default identity.
        name: label of the design.
    """
    wavelengths: list = field(default_factory=lambda: [640.0e-9, 550.0e-9, 440.0e-9])
    aperture_radius: float = 2.0e-3
    focal_length: Optional[float] = None
    focus_distance: Optional[float] = None
    design_wavelength: float = 550.0e-9
    sensor_distance: float = 50.0e-3
    object_distance: float = 0.75
    object_distances: Optional[list] = None
    pixel_pitch: float = 3.713103e-6
    psf_size: int = 256
    pupil_samples: Optional[int] = None
    material: str = "fused_silica"
    zernike: dict = field(default_factory=dict)
    zernike_indices: Optional[list] = None
    height_map: str = "zernike"
    height_map_samples: int = 256
    height_range: Optional[list] = None
    spectral_response: Optional[list] = None
    name: Optional[str] = None

    # ---------------------------------------------------------------- derived quantities
    @property
    def focal_length_design(self) -> float:
        """f at the design wavelength [m]."""
        if self.focal_length is not None:
            return float(self.focal_length)
        return psf_model.focal_length_for_focus(float(self.focus_distance), self.sensor_distance)

    @property
    def wave_height(self) -> float:
        """Surface height [m] of one wave of phase at the design wavelength: lambda_d / (n_d - 1)."""
        return self.design_wavelength / (refractive_index(self.material, self.design_wavelength) - 1.0)

    @property
    def num_pupil(self) -> int:
        """Pupil grid side N: ``pupil_samples`` when given, else chosen automatically (optics.sampling: the
        smallest fast FFT size >= psf_size that samples the aperture and the pupil phase; logged once)."""
        if self.pupil_samples is not None:
            return int(self.pupil_samples)
        return self.sampling().samples

    def sampling(self, source: str | None = None) -> sampling.SamplingChoice:
        """The automatic pupil sampling of this design (cached until a field it depends on changes).

        Raises:
            LensConfigError: no affordable grid samples the design (message names the key, N and the memory).
        """
        key = (tuple(self.wavelengths), self.aperture_radius, self.focal_length, self.focus_distance,
               self.design_wavelength, self.sensor_distance, tuple(self.depths()), self.pixel_pitch, self.psf_size,
               self.material, tuple(sorted(self.zernike.items())), tuple(self.learnable_indices))
        cached = self.__dict__.get("_sampling_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        choice = sampling.choose_pupil_samples(self, lambda k, m: LensConfigError(k, m, source))
        self.__dict__["_sampling_cache"] = (key, choice)
        name = self.name or "(unnamed)"
        if choice.samples != self.psf_size:
            log.info("lens %s: pupil grid %d x %d chosen automatically (%s; %.1f samples across the aperture, "
                     "phase step %.2f rad, ~%s); set pupil_samples to override", name, choice.samples,
                     choice.samples, choice.reason, choice.aperture_samples, choice.phase_step,
                     sampling.format_bytes(choice.memory))
        else:
            log.info("lens %s: pupil grid %d x %d (= psf_size) samples the design (%.1f samples across the "
                     "aperture); set pupil_samples to override", name, choice.samples, choice.samples,
                     choice.aperture_samples)
        return choice

    @property
    def learnable_indices(self) -> list[int]:
        base = list(self.zernike_indices) if self.zernike_indices is not None else list(range(4, 29))
        return sorted(set(int(j) for j in base) | set(int(j) for j in self.zernike))

    def focal_lengths(self) -> list[float]:
        """f(lambda) per wavelength [m] (chromatic)."""
        return psf_model.chromatic_focal_lengths(self.focal_length_design, self.material, self.wavelengths,
                                                 self.design_wavelength)

    def pupil_pitches(self) -> list[float]:
        """Pupil sample spacing per wavelength [m]."""
        return [psf_model.pupil_pitch(w, self.sensor_distance, self.pixel_pitch, self.num_pupil)
                for w in self.wavelengths]

    def response_matrix(self) -> torch.Tensor:
        """(C, L) float64 spectral response."""
        if self.spectral_response is None:
            return torch.eye(len(self.wavelengths), dtype=torch.float64)
        return torch.tensor(self.spectral_response, dtype=torch.float64)

    def depths(self) -> list[float]:
        return [float(self.object_distance)] + [float(d) for d in (self.object_distances or [])]

    # ---------------------------------------------------------------- (de)serialisation
    @classmethod
    def from_dict(cls, data: dict, source: str | None = None) -> "LensConfig":
        """Build and validate from a mapping (YAML / checkpoint). Unknown keys raise LensConfigError."""
        if not isinstance(data, dict):
            raise LensConfigError("<root>", f"expected a mapping of keys, got {type(data).__name__}", source)
        names = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in names:
                raise LensConfigError(str(key), f"unknown key; known keys: {', '.join(sorted(names))}", source)
        kwargs = {}
        for key, value in data.items():
            try:
                kwargs[key] = _coerce(key, value)
            except (TypeError, ValueError) as err:
                raise LensConfigError(key, str(err), source) from None
        cfg = cls(**kwargs)
        cfg.validate(source)
        return cfg

    def to_dict(self) -> dict:
        """Plain dict (floats, ints, lists; inf stays float('inf'); zernike keys are ints)."""
        out = dataclasses.asdict(self)
        out["zernike"] = {int(k): float(v) for k, v in self.zernike.items()}
        return out

    def replace(self, **overrides: Any) -> "LensConfig":
        """Validated copy with some fields replaced."""
        data = self.to_dict()
        data.update(overrides)
        if "focal_length" in overrides and overrides["focal_length"] is not None:
            data["focus_distance"] = None
        if "focus_distance" in overrides and overrides["focus_distance"] is not None:
            data["focal_length"] = None
        return LensConfig.from_dict(data)

    # ---------------------------------------------------------------- validation
    def validate(self, source: str | None = None) -> "LensConfig":
        """Check types, ranges and the sampling of the design; raise LensConfigError naming the key."""
        def err(key: str, msg: str) -> LensConfigError:
            return LensConfigError(key, msg, source)

        def positive(key: str, value: Any, allow_inf: bool = False) -> None:
            if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value) \
                    or value <= 0 or (math.isinf(value) and not allow_inf):
                raise err(key, f"must be a positive{' (or inf)' if allow_inf else ' finite'} number [m], "
                               f"got {value!r}")

        if not isinstance(self.wavelengths, list) or not self.wavelengths:
            raise err("wavelengths", "must be a non-empty list of wavelengths [m]")
        for w in self.wavelengths:
            positive("wavelengths", w)
            if not 100e-9 <= w <= 20e-6:
                raise err("wavelengths", f"{w!r} is not an optical wavelength in metres (e.g. 550.0e-9)")
        positive("aperture_radius", self.aperture_radius)
        if (self.focal_length is None) == (self.focus_distance is None):
            raise err("focal_length", "give exactly one of focal_length and focus_distance")
        if self.focal_length is not None:
            positive("focal_length", self.focal_length)
        else:
            positive("focus_distance", self.focus_distance, allow_inf=True)
        positive("design_wavelength", self.design_wavelength)
        positive("sensor_distance", self.sensor_distance)
        positive("object_distance", self.object_distance, allow_inf=True)
        if self.object_distances is not None:
            if not isinstance(self.object_distances, list) or not self.object_distances:
                raise err("object_distances", "must be a non-empty list of distances [m]")
            for d in self.object_distances:
                positive("object_distances", d, allow_inf=True)
        positive("pixel_pitch", self.pixel_pitch)
        if not isinstance(self.psf_size, int) or self.psf_size < 8:
            raise err("psf_size", f"must be an integer >= 8, got {self.psf_size!r}")
        if self.pupil_samples is not None and (not isinstance(self.pupil_samples, int)
                                               or self.pupil_samples < self.psf_size):
            raise err("pupil_samples", f"must be an integer >= psf_size ({self.psf_size}), "
                                       f"got {self.pupil_samples!r}")
        try:
            self.material = canonical_material(self.material)
        except ValueError as e:
            raise err("material", str(e)) from None
        for j, c in self.zernike.items():
            if not isinstance(j, int) or j < 1:
                raise err("zernike", f"keys must be Noll indices >= 1, got {j!r}")
            if not isinstance(c, (int, float)) or not math.isfinite(c):
                raise err("zernike", f"coefficient of Noll index {j} must be a finite height [m], got {c!r}")
            if abs(c) > 1e-3:
                raise err("zernike", f"coefficient {c!r} of Noll index {j} is larger than 1 mm: heights are "
                                     "in metres")
        if self.zernike_indices is not None:
            if not isinstance(self.zernike_indices, list) or any(
                    not isinstance(j, int) or j < 1 for j in self.zernike_indices):
                raise err("zernike_indices", "must be a list of Noll indices >= 1")
        if self.height_map not in ("zernike", "pixels"):
            raise err("height_map", f"must be 'zernike' or 'pixels', got {self.height_map!r}")
        if not isinstance(self.height_map_samples, int) or self.height_map_samples < 4:
            raise err("height_map_samples", f"must be an integer >= 4, got {self.height_map_samples!r}")
        if self.height_range is not None:
            hr = self.height_range
            if not (isinstance(hr, list) and len(hr) == 2 and all(isinstance(v, (int, float)) for v in hr)
                    and hr[0] < hr[1]):
                raise err("height_range", f"must be [min, max] in metres with min < max, got {hr!r}")
        if self.spectral_response is not None:
            r = self.spectral_response
            ok = isinstance(r, list) and r and all(isinstance(row, list) and len(row) == len(self.wavelengths)
                                                   for row in r)
            if not ok:
                raise err("spectral_response", f"must be a (channels x {len(self.wavelengths)}) nested list")
            t = torch.tensor(r, dtype=torch.float64)
            if not bool(torch.isfinite(t).all()) or bool((t < 0).any()) or bool((t.sum(1) <= 0).any()):
                raise err("spectral_response", "weights must be finite, >= 0, each channel with a positive sum")
        self._check_sampling(err, source)
        return self

    def _check_sampling(self, err, source: str | None = None) -> None:
        """Window, pupil sampling, aliasing and PSF-window checks (see optics.psf for the model).

        Without ``pupil_samples`` the grid is chosen to pass them (optics.sampling); an explicit ``pupil_samples``
        is checked strictly.
        """
        p, z, a = self.pixel_pitch, self.sensor_distance, self.aperture_radius
        for w in self.wavelengths:  # the window lambda z / p does not depend on the number of samples
            if 2 * a > w * z / p:
                raise err("aperture_radius", f"aperture diameter {2 * a:.4g} m does not fit the sampled pupil "
                                             f"window lambda z / p = {w * z / p:.4g} m at {w:.4g} m; reduce "
                                             "aperture_radius or pixel_pitch")
        wl = len(self.wavelengths)
        if self.pupil_samples is None:
            sampling.check_memory(self, self.psf_size, "psf_size", err)
            self.sampling(source)  # raises when no affordable grid samples the design
        else:
            sampling.check_memory(self, self.pupil_samples, "pupil_samples", err)
        if not isinstance(self.height_map_samples, int) or \
                4 * 4 * self.height_map_samples ** 2 * wl > MAX_PSF_MEMORY:
            raise err("height_map_samples", f"{self.height_map_samples} x {self.height_map_samples} would need "
                                            f"{sampling.format_bytes(16 * wl * self.height_map_samples ** 2)}")
        n = self.num_pupil
        pitches = self.pupil_pitches()
        focals = self.focal_lengths()
        for d in self.depths():
            self._check_depth(d, err)
        if self.pupil_samples is None:
            return  # the automatic grid passes the aperture and phase checks below by construction
        if 2 * a / max(pitches) < MIN_APERTURE_SAMPLES:
            raise err("pupil_samples", f"only {2 * a / max(pitches):.1f} pupil samples across the aperture "
                                       f"(need >= {MIN_APERTURE_SAMPLES}); increase pupil_samples (or "
                                       "remove it to let the grid be chosen automatically)")
        if any(abs(c) > 0 for c in self.zernike.values()):
            idx = sorted(self.zernike)
            coef = torch.tensor([float(self.zernike[j]) for j in idx], dtype=torch.float64)
            for d in self.depths():
                for w, f, dx in zip(self.wavelengths, focals, pitches):
                    basis = zernike_grid(idx, n, dx, a)
                    r2 = psf_model.radius_squared_grid(n, [dx])[0]
                    k = 2 * math.pi / w
                    phase = k * r2 / 2 * psf_model.defocus_power(d, f, z) \
                        + k * (refractive_index(self.material, w) - 1) * torch.einsum("k,kij->ij", coef, basis)
                    step = psf_model.max_phase_step(phase, r2 <= a * a)
                    if step >= MAX_PHASE_STEP:
                        raise err("zernike", f"the height map makes the pupil phase change by {step:.2f} rad "
                                             f"between samples at {w:.4g} m (aliasing, limit 0.9 pi); reduce the "
                                             "coefficients or increase pupil_samples")

    def check_object_distance(self, object_distance: float, source: str | None = None) -> None:
        """Raise LensConfigError('object_distance' / 'psf_size' ...) if the PSF of an object at this distance [m]
        does not fit the sampled windows (used for depths other than the configured ones)."""
        def err(key: str, msg: str) -> LensConfigError:
            return LensConfigError(key, msg, source)
        if not (object_distance > 0):
            raise err("object_distance", f"must be a positive distance [m] (or inf), got {object_distance!r}")
        self._check_depth(float(object_distance), err)

    def _check_depth(self, d: float, err) -> None:
        n, p, z, a = self.num_pupil, self.pixel_pitch, self.sensor_distance, self.aperture_radius
        for w, f in zip(self.wavelengths, self.focal_lengths()):
            blur_r = 0.5 * psf_model.geometric_blur_diameter(a, f, d, z)
            margin = DIFFRACTION_MARGIN * psf_model.airy_first_zero(w, z, a)
            need = 2 * math.ceil((blur_r + margin) / p)  # samples the PSF window needs [px]
            what = (f"at object distance {d} m the PSF at {w:.4g} m (geometric blur radius {blur_r / p:.1f} px "
                    f"+ {DIFFRACTION_MARGIN:g} Airy radii) needs a window of >= {need} px")
            if need > MAX_WINDOW:
                raise err("object_distance", f"{what}: too defocused to simulate; move the object closer to "
                                             "the focus distance")
            if need > n:
                key = "psf_size" if self.pupil_samples is None else "pupil_samples"
                raise err(key, f"{what}, but the {n}-sample pupil grid aliases beyond {n} px; increase {key}")
            if need > self.psf_size:
                raise err("psf_size", f"{what}, but psf_size is {self.psf_size}; increase psf_size")


_FLOAT_KEYS = {"aperture_radius", "focal_length", "focus_distance", "design_wavelength", "sensor_distance",
               "object_distance", "pixel_pitch"}
_INT_KEYS = {"psf_size", "pupil_samples", "height_map_samples"}


def _to_float(v: Any) -> float:
    if isinstance(v, bool):
        raise TypeError(f"expected a number, got {v!r}")
    if isinstance(v, str):
        s = v.strip().lower()
        if s in ("inf", ".inf", "+inf", "infinity"):
            return math.inf
        return float(s)
    if isinstance(v, (int, float)):
        return float(v)
    raise TypeError(f"expected a number, got {v!r}")


def _coerce(key: str, value: Any) -> Any:
    if value is None:
        return None
    if key in _FLOAT_KEYS:
        return _to_float(value)
    if key in _INT_KEYS:
        if isinstance(value, bool) or not float(value).is_integer():
            raise TypeError(f"expected an integer, got {value!r}")
        return int(value)
    if key in ("wavelengths", "object_distances"):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list of numbers, got {value!r}")
        return [_to_float(v) for v in value]
    if key == "zernike":
        if not isinstance(value, dict):
            raise TypeError(f"expected a mapping {{Noll index: height [m]}}, got {value!r}")
        return {int(k): _to_float(v) for k, v in value.items()}
    if key == "zernike_indices":
        return [int(v) for v in value]
    if key == "height_range":
        return [_to_float(v) for v in value]
    if key == "spectral_response":
        return [[_to_float(v) for v in row] for row in value]
    if key in ("material", "height_map", "name"):
        return str(value)
    return value


def preset_names() -> list[str]:
    """Names of the presets in optics/presets/*.yaml."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_lens_config(name_or_path: str | os.PathLike, **overrides: Any) -> LensConfig:
    """Load a lens from a preset name (optics/presets/<name>.yaml) or a YAML file, then apply overrides.

    Args:
        name_or_path: preset name (e.g. "face-deid") or path to a YAML file.
        overrides: field values replacing those of the file (None values are ignored).

    Raises:
        FileNotFoundError: neither a preset nor an existing file.
        LensConfigError: invalid content (message names the key and the file).
    """
    import yaml

    path = Path(name_or_path)
    if not path.is_file():
        preset = PRESET_DIR / f"{name_or_path}.yaml"
        if not preset.is_file():
            raise FileNotFoundError(f"{name_or_path}: no such lens file or preset (presets: "
                                    f"{', '.join(preset_names())})")
        path = preset
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise LensConfigError("<file>", f"not a text (UTF-8) YAML file: undecodable byte at offset {e.start}",
                              str(path)) from None
    except OSError as e:
        raise LensConfigError("<file>", f"cannot be read ({e.strerror or e})", str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise LensConfigError("<yaml>", f"not valid YAML ({e})", str(path)) from None
    if data is None:
        raise LensConfigError("<root>", "the file is empty; expected a mapping of lens keys such as wavelengths, "
                                        "aperture_radius, focal_length (or focus_distance), sensor_distance, "
                                        "pixel_pitch, psf_size", str(path))
    if not isinstance(data, dict):
        raise LensConfigError("<root>", f"expected a mapping of lens keys (key: value lines), got a YAML "
                                        f"{type(data).__name__}", str(path))
    data = dict(data)
    for key, value in overrides.items():
        if value is not None:
            data[key] = value
            if key == "focal_length":
                data.pop("focus_distance", None)
            if key == "focus_distance":
                data.pop("focal_length", None)
    if "name" not in data:
        data["name"] = path.stem
    return LensConfig.from_dict(data, source=str(path))
