"""Learnable thin lens: Lens(nn.Module) maps its surface height parameters to sensor PSFs.

The physics (pupil phase, chromatic focal length, single-FFT Fresnel to the pixel pitch) is in optics/psf.py;
the description, YAML presets and validation in optics/lens_config.py (re-exported here).
"""
from __future__ import annotations

import logging
import math
from typing import Sequence

import torch
from torch import nn

from optics import psf as psf_model
from optics.lens_config import LensConfig, LensConfigError, load_lens_config, preset_names
from optics.materials import refractive_index
from optics.sampling import MAX_PHASE_STEP
from optics.zernike import zernike_grid

__all__ = ["Lens", "LensConfig", "LensConfigError", "load_lens_config", "preset_names"]

log = logging.getLogger(__name__)


class Lens(nn.Module):
    """Differentiable lens with a learnable surface height map.

    Parameters:
        zernike_coeffs: (K,) surface-height coefficients [m] of the Noll terms ``config.learnable_indices``
            (RMS-normalised Zernike polynomials over the aperture).
        height_pixels: (M, M) free height map [m] on the aperture grid (only when config.height_map == "pixels";
            added to the Zernike height).

    Buffers (not saved in the state_dict: all are functions of ``config``, rebuilt on construction, so a lens
    checkpoint holds only the learnable height parameters; per wavelength l, on each wavelength's pupil grid of N = config.num_pupil samples):
        aperture (L, N, N) in [0, 1] (anti-aliased circle); r2 (L, N, N) [m^2]; basis (L, K, N, N);
        wavenumber (L,) [1/m];
        n_minus_1 (L,); defocus0 (L,) [1/m] = 1/d_o - 1/f(lambda) + 1/z at config.object_distance;
        inv_focal (L,) [1/m]; response (C, L).

    The sensor_distance_delta of psf() enters only the quadratic phase (1/(z + delta) instead of 1/z), with the
    pupil grid kept at the nominal z: the first-order magnification change (1 + delta / z, ~1e-3 for the
    hardware fit) of the PSF is neglected.
    """

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before the config-derived buffers became non-persistent still hold them; they are
        # rebuilt from the config, so drop them instead of reporting unexpected keys.
        for name in self._non_persistent_buffers_set:
            state_dict.pop(prefix + name, None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def __init__(self, config: LensConfig):
        super().__init__()
        config.validate()
        self.config = config
        n, L = config.num_pupil, len(config.wavelengths)
        self.indices = config.learnable_indices
        pitches = config.pupil_pitches()
        focals = config.focal_lengths()
        r2 = psf_model.radius_squared_grid(n, pitches)
        a = config.aperture_radius
        self.register_buffer("r2", r2.float(), persistent=False)
        self.register_buffer("aperture", psf_model.aperture_mask(n, pitches, a).float(), persistent=False)
        # unclipped basis: the anti-aliased edge samples need the polynomial just outside rho = 1
        basis = [zernike_grid(self.indices, n, p, a, clip=False) for p in pitches]
        self.register_buffer("basis", torch.stack(basis).float(), persistent=False)
        self.register_buffer("wavenumber", torch.tensor([2 * math.pi / w for w in config.wavelengths]),
                             persistent=False)
        self.register_buffer("n_minus_1", torch.tensor([refractive_index(config.material, w) - 1.0
                                                        for w in config.wavelengths]), persistent=False)
        self.register_buffer("inv_focal", torch.tensor([1.0 / f for f in focals]), persistent=False)
        self.register_buffer("defocus0", self._defocus(config.object_distance), persistent=False)
        self.register_buffer("response", config.response_matrix().float(), persistent=False)
        init = torch.tensor([float(config.zernike.get(j, 0.0)) for j in self.indices])
        self.zernike_coeffs = nn.Parameter(init)
        if config.height_map == "pixels":
            m = config.height_map_samples
            self.height_pixels = nn.Parameter(torch.zeros(m, m))
            # grid_sample coordinates of every pupil sample on the aperture grid (align_corners=True)
            grids = []
            for p in pitches:
                c = (torch.arange(n, dtype=torch.float64) - n // 2) * p
                idx = c / (2 * a / m) + m // 2
                u = 2 * idx / (m - 1) - 1
                gy, gx = torch.meshgrid(u, u, indexing="ij")
                grids.append(torch.stack([gx, gy], dim=-1))
            self.register_buffer("sample_grid", torch.stack(grids).float(), persistent=False)
        else:
            self.height_pixels = None
        self._L = L
        self._checked_depths: set[float] = set(config.depths())

    # ------------------------------------------------------------------ geometry
    def _defocus(self, object_distance: float) -> torch.Tensor:
        cfg = self.config
        return torch.tensor([psf_model.defocus_power(object_distance, f, cfg.sensor_distance)
                             for f in cfg.focal_lengths()])

    def aperture_grid(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Coordinates (x, y) [m] of the (M, M) aperture grid of :meth:`height_map` (float64, CPU)."""
        m, a = self.config.height_map_samples, self.config.aperture_radius
        c = (torch.arange(m, dtype=torch.float64) - m // 2) * (2 * a / m)
        y, x = torch.meshgrid(c, c, indexing="ij")
        return x, y

    def height_map(self) -> torch.Tensor:
        """Surface height [m] on the (M, M) aperture grid (M = config.height_map_samples, pitch 2a / M),
        zero outside the aperture. Differentiable."""
        m, a = self.config.height_map_samples, self.config.aperture_radius
        basis = zernike_grid(self.indices, m, 2 * a / m, a).to(self.zernike_coeffs)
        h = torch.einsum("k,kij->ij", self.zernike_coeffs, basis)
        if self.height_pixels is not None:
            x, y = self.aperture_grid()
            inside = ((x ** 2 + y ** 2) <= a * a).to(h)
            h = h + self.height_pixels * inside
        return h

    def pupil_height(self) -> torch.Tensor:
        """Surface height [m] sampled on each wavelength's pupil grid: (L, N, N) (meaningful where
        ``aperture`` > 0; the Zernike polynomials are continued past the edge)."""
        L, K, n = self.basis.shape[0], self.basis.shape[1], self.basis.shape[-1]
        # (1, K) @ (L, K, N^2): a batched matrix product on the stored layout (einsum would copy the basis)
        coeffs = self.zernike_coeffs.to(self.basis.dtype)
        h = torch.bmm(coeffs.expand(L, 1, K), self.basis.view(L, K, n * n)).view(L, n, n)
        if self.height_pixels is not None:
            hp = self.height_pixels.to(self.basis.dtype)[None, None].expand(self._L, 1, -1, -1)
            sampled = nn.functional.grid_sample(hp, self.sample_grid.to(hp.dtype), mode="bilinear",
                                                padding_mode="border", align_corners=True)[:, 0]
            h = h + sampled * (self.aperture > 0).to(sampled.dtype)
        return h

    def pupil_phase(self, defocus: torch.Tensor) -> torch.Tensor:
        """Pupil phase [rad] for defocus powers (D, L) [1/m]: (D, L, N, N)."""
        k = self.wavenumber.to(self.r2.dtype)[:, None, None]
        quad = 0.5 * k * self.r2 * defocus.to(self.r2.dtype)[..., None, None]
        surface = k * self.n_minus_1.to(self.r2.dtype)[:, None, None] * self.pupil_height()
        return quad + surface

    # ------------------------------------------------------------------ PSFs
    def _defocus_stack(self, object_distances: Sequence[float | None],
                       sensor_distance_delta: torch.Tensor | None) -> torch.Tensor:
        for d in object_distances:
            if d is not None and float(d) not in self._checked_depths:
                self.config.check_object_distance(float(d))  # LensConfigError if this depth would alias
                self._checked_depths.add(float(d))
        rows = [self.defocus0 if d is None else self._defocus(float(d)).to(self.defocus0) for d in object_distances]
        w = torch.stack(rows)  # (D, L)
        if sensor_distance_delta is not None:
            z = self.config.sensor_distance
            delta = sensor_distance_delta.to(w.dtype).reshape(())
            w = w + (1.0 / (z + delta) - 1.0 / z)
        return w

    def psf_per_wavelength(self, object_distance: float | None = None,
                           sensor_distance_delta: torch.Tensor | None = None) -> torch.Tensor:
        """PSF of each wavelength on the sensor.

        Args:
            object_distance: [m] (inf allowed); default config.object_distance.
            sensor_distance_delta: () tensor [m] added to the sensor distance (differentiable; hardware fit).

        Returns:
            (L, H, W) non-negative, each summing to 1; H = W = psf_size at pixel_pitch, centre (H//2, W//2).
        """
        return self._psf_wavelengths([object_distance], sensor_distance_delta)[0]

    def _psf_wavelengths(self, object_distances, sensor_distance_delta=None) -> torch.Tensor:
        phase = self.pupil_phase(self._defocus_stack(object_distances, sensor_distance_delta))
        pupil = torch.polar(self.aperture.expand_as(phase).contiguous(), phase)
        return psf_model.intensity_psf(pupil, self.config.psf_size)

    def psf(self, object_distance: float | None = None,
            sensor_distance_delta: torch.Tensor | None = None) -> torch.Tensor:
        """Sensor-channel PSF.

        Args:
            object_distance: [m] (inf allowed); default config.object_distance.
            sensor_distance_delta: optional () tensor [m] (see class docstring).

        Returns:
            (C, H, W) non-negative, each channel summing to 1, at config.pixel_pitch.
        """
        return psf_model.combine_channels(self.psf_per_wavelength(object_distance, sensor_distance_delta),
                                          self.response)

    def psf_stack(self, object_distances: Sequence[float] | None = None) -> torch.Tensor:
        """PSFs for several object depths [m] (default config.object_distances or [config.object_distance]).

        Returns:
            (D, C, H, W), each channel summing to 1.
        """
        if object_distances is None:
            object_distances = self.config.object_distances or [self.config.object_distance]
        return psf_model.combine_channels(self._psf_wavelengths(list(object_distances)), self.response)

    def forward(self) -> torch.Tensor:
        """Same as :meth:`psf`: (C, H, W)."""
        return self.psf()

    # ------------------------------------------------------------------ buildability
    def max_phase_step(self, object_distance: float | None = None) -> float:
        """Largest pupil phase step between neighbouring samples [rad] over wavelengths (>= pi: aliasing)."""
        with torch.no_grad():
            phase = self.pupil_phase(self._defocus_stack([object_distance], None))[0]
            return max(psf_model.max_phase_step(phase[i], self.aperture[i]) for i in range(phase.shape[0]))

    @torch.no_grad()
    def project(self) -> None:
        """Keep the design buildable and warn when the pupil phase starts to alias.

        With config.height_range = [lo, hi]: a pixel height map is clamped to [lo, hi]; a Zernike surface
        (defined up to a base thickness) is scaled down uniformly so that its peak-to-valley over the aperture
        is at most hi - lo (the etch depth). A Zernike surface whose pupil phase steps by MAX_PHASE_STEP (0.9 pi)
        or more between neighbouring samples of this lens's grid is scaled down uniformly until it does not (the
        same limit the automatic sampling uses), so a trained lens stays one its own grid simulates correctly.
        """
        hr = self.config.height_range
        if hr is not None:
            lo, hi = float(hr[0]), float(hr[1])
            if self.height_pixels is not None:
                h = self.height_map()
                self.height_pixels.add_(h.clamp(lo, hi) - h)
            else:
                x, y = self.aperture_grid()
                inside = ((x ** 2 + y ** 2) <= self.config.aperture_radius ** 2).to(self.zernike_coeffs.device)
                h = self.height_map()[inside]
                ptv = float(h.max() - h.min()) if h.numel() else 0.0
                if ptv > hi - lo:
                    self.zernike_coeffs.mul_((hi - lo) / ptv)
        step = self.max_phase_step()
        if self.height_pixels is None and self.zernike_coeffs.numel() and step >= MAX_PHASE_STEP:
            # a surface steeper than the pupil grid resolves images differently from the element it describes
            # (the simulated PSF aliases): scale it back onto the largest phase step this grid samples
            for _ in range(4):
                self.zernike_coeffs.mul_(0.97 * MAX_PHASE_STEP / step)
                step = self.max_phase_step()
                if step < MAX_PHASE_STEP:
                    break
        if step >= math.pi:
            log.warning("lens pupil phase steps by %.2f rad between samples (>= pi): the PSF aliases; "
                        "constrain the height map or increase pupil_samples", step)

    def diffraction_limited_psf(self) -> torch.Tensor:
        """Aberration-free, in-focus PSF of the same aperture and sampling (reference of the Strehl ratio).

        Returns:
            (C, H, W), each channel summing to 1.
        """
        with torch.no_grad():
            pupil = torch.complex(self.aperture, torch.zeros_like(self.aperture))
            return psf_model.combine_channels(psf_model.intensity_psf(pupil, self.config.psf_size), self.response)
