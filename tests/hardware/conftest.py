"""Synthetic measurement helpers shared by the hardware tests (no files of the project are needed)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.special import erf


def gaussian_spot(shape: tuple[int, int], centre: tuple[float, float], sigma: tuple[float, float]) -> np.ndarray:
    """Pixel-integrated 2-D Gaussian (closed form via erf), sums to ~1; centre (row, col) [px]."""
    def axis(n: int, c: float, s: float) -> np.ndarray:
        edges = (np.arange(n + 1) - 0.5 - c) / (np.sqrt(2) * s)
        return 0.5 * np.diff(erf(edges))
    return np.outer(axis(shape[0], centre[0], sigma[0]), axis(shape[1], centre[1], sigma[1]))


def write_capture(path: Path, image: np.ndarray, **meta) -> Path:
    """Write a capture (PNG via the project's writers, or NPY) plus its JSON sidecar."""
    from data.files import save_image, save_npy

    path = Path(path)
    if path.suffix == ".npy":
        save_npy(path, image)
    elif image.ndim == 3:
        from hardware.pngio import encode_png
        path.write_bytes(encode_png(image))
    else:
        save_image(path, image)
    if meta:
        path.with_suffix(".json").write_text(json.dumps(meta))
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small FFTs run several times faster on one thread on a shared machine; restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


WAVE_HEIGHT = 550e-9 / 0.46  # ~ one wave of RMS optical path per unit of Zernike height in fused silica [m]


def small_lens_config(**overrides):
    """The in-focus preset on a 64 px grid (fast), in SI units."""
    from optics.lens import load_lens_config

    return load_lens_config("in-focus", psf_size=64, **overrides)


def synthetic_psf_frames(truth: dict, depths: list, shift=(0.3, -0.4), photons=3e6, background=50.0,
                         read_noise=3.0, seed=0, noise=True):
    """Measured frames (D, 3, 64, 64) [ADU] of a lens whose Zernike heights are ``truth`` {Noll: [m]}.

    The sub-pixel shift (row, col) [px] is made by a pupil tilt (exact, also for the undersampled blue PSF);
    noise: Poisson on photons * psf + background, plus Gaussian read noise [ADU]. Returns (frames, expected
    frames without noise).
    """
    import torch

    from optics.lens import Lens
    from optics.materials import refractive_index

    cfg = small_lens_config()
    n1 = refractive_index(cfg.material, cfg.design_wavelength) - 1
    unit = cfg.aperture_radius * cfg.pixel_pitch / (2 * cfg.sensor_distance * n1)  # tilt height per pixel
    lens = Lens(cfg.replace(zernike={**cfg.zernike, **truth, 3: shift[0] * unit, 2: shift[1] * unit}))
    with torch.no_grad():
        psf = torch.stack([lens.psf(d) for d in depths]).double().numpy()
    expected = psf * photons + background
    rng = np.random.default_rng(seed)
    frames = rng.poisson(expected) + rng.normal(0.0, read_noise, psf.shape) if noise else expected.copy()
    return frames, expected


def measurement(frames: np.ndarray, depths: list, pitch: float, paths=None, saturation=np.inf):
    """A PSFMeasurement of in-memory frames (D, C, H, W) [ADU]."""
    from hardware.psf_io import PSFMeasurement

    d_n, c_n = frames.shape[:2]
    paths = paths or [[Path(f"frame_d{d}_c{c}.png") for c in range(c_n)] for d in range(d_n)]
    return PSFMeasurement(frames=np.asarray(frames, float), paths=paths, object_distances=list(depths),
                          pixel_pitch=pitch, black_level=np.zeros((d_n, c_n)),
                          saturation_level=np.full((d_n, c_n), float(saturation)),
                          exposure=[[None] * c_n for _ in range(d_n)])
