"""Camera(nn.Module): optics (a Lens or a fixed / measured PSF) + linear image formation + sensor."""
from __future__ import annotations

import torch
from torch import nn

from optics.imaging import fft_convolve
from optics.lens import Lens
from optics.psf import normalize_psf
from optics.sensor import Generators, Sensor, SensorConfig, mono_mix


class Camera(nn.Module):
    """Simulated capture of an image through a lens and a sensor.

    Image pixels are sensor pixels (pitch = the lens config's pixel_pitch); the object is assumed at the lens'
    object distance (one PSF per channel).

    Args:
        optic: a :class:`~optics.lens.Lens` (learnable) or a fixed PSF tensor (C, h, w) / (h, w) (e.g. a
            calibrated measurement; stored as a buffer and normalised to sum 1 per channel).
        sensor: sensor parameters (default SensorConfig()).
        noise: add sensor noise in forward (can be overridden per call).
        crop_tol: PSF values below crop_tol * max are dropped before the convolution (0, the default: exact
            linear convolution; e.g. 1e-3 crops the face-deid PSF from 256 to 127 px, losing 0.2-0.4 % of its
            energy per channel, i.e. up to 4.2e-3 = 1.1 ADC levels of 8 bits darker than the exact capture, and
            shrinks the padded FFT from 384 to 320 px). The face-deid PSF's diffraction tails fall off slowly
            (5e-4 to 8.5e-4 of the energy lies beyond 112 px from the centre), so no crop of it is exact.
    """

    def __init__(self, optic: Lens | torch.Tensor, sensor: SensorConfig | None = None, noise: bool = True,
                 crop_tol: float = 0.0):
        super().__init__()
        if isinstance(optic, Lens):
            self.lens = optic
        elif isinstance(optic, torch.Tensor):
            psf = optic.detach().clone()
            if psf.ndim == 2:
                psf = psf[None]
            if psf.ndim != 3:
                raise ValueError(f"a fixed PSF must be (C, h, w), got shape {tuple(optic.shape)}")
            if not bool(torch.isfinite(psf).all()) or bool((psf < 0).any()) or bool((psf.sum((1, 2)) <= 0).any()):
                raise ValueError("a fixed PSF must be finite, non-negative and non-zero in every channel")
            self.lens = None
            self.register_buffer("fixed_psf", normalize_psf(psf.float()))
        else:
            raise TypeError(f"optic must be a Lens or a PSF tensor, got {type(optic).__name__}")
        self.sensor = Sensor(sensor)
        self.noise = noise
        self.crop_tol = float(crop_tol)

    def psf(self) -> torch.Tensor:
        """(C, h, w) PSF, each channel summing to 1."""
        return self.lens.psf() if self.lens is not None else self.fixed_psf

    def recorded_psf(self, psf: torch.Tensor | None = None) -> torch.Tensor:
        """(C, h, w) PSF of what each output channel records: the lens PSF per channel for a colour sensor; for a
        monochrome sensor (``SensorConfig.mono_response``) the response-weighted sum of the bands' PSFs (the PSF
        of a grey scene) in every channel, which is what a deconvolution attack on its captures should use."""
        psf = self.psf() if psf is None else psf
        w = self.sensor.config.mono_response
        return psf if w is None else mono_mix(psf, w, dim=0).expand_as(psf)

    def forward(self, image: torch.Tensor, noise: bool | None = None, psf: torch.Tensor | None = None,
                generator: Generators = None) -> torch.Tensor:
        """Capture.

        Args:
            image: (B, C, H, W) in [0, 1] scene radiance (1 = sensor white level).
            noise: override self.noise for this call.
            psf: optional precomputed (C, h, w) PSF (avoids recomputing the lens PSF).
            generator: optional torch.Generator for the noise, or a sequence of one per image (image b's noise
                then depends on its own generator only: a batch can be split anywhere).

        Returns:
            (B, C, H, W) capture in [0, 1].
        """
        psf = self.psf() if psf is None else psf
        blurred = fft_convolve(image, psf.to(image.dtype), self.crop_tol)
        return self.sensor(blurred, noise=self.noise if noise is None else noise, generator=generator)
