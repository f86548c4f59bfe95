"""``--mode simulate``: the PSF of a lens design (or a calibrated PSF), its figures and quality summary, and
optionally the simulated captures of a folder of images.

Writes to --out: psf.npy (C, H, W) float32, each channel summing to 1; psf.png (linear and log per channel);
mtf.png (radial MTF per channel); summary.json (per channel FWHM, EE50 / EE80 radii in px and m, Strehl ratio,
geometric blur diameter, plus the lens configuration); with --images, captures/<name>.png for each image.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


def psf_summary(psf: np.ndarray, pixel_pitch: float | None, reference: np.ndarray | None) -> list[dict]:
    """Per-channel quality numbers of a (C, H, W) PSF (pixel_pitch [m] for the metric values)."""
    from optics import analysis

    fw = analysis.fwhm(psf)
    ee50 = analysis.encircled_energy_radius(psf, 0.5)
    ee80 = analysis.encircled_energy_radius(psf, 0.8)
    strehl = analysis.strehl_ratio(psf, reference) if reference is not None else [None] * len(fw)
    rows = []
    for c in range(psf.shape[0]):
        row = {"channel": c, "fwhm_px": float(fw[c]), "ee50_radius_px": float(ee50[c]),
               "ee80_radius_px": float(ee80[c]), "strehl": None if strehl[c] is None else float(strehl[c])}
        if pixel_pitch is not None:
            row.update(fwhm_m=float(fw[c]) * pixel_pitch, ee50_radius_m=float(ee50[c]) * pixel_pitch,
                       ee80_radius_m=float(ee80[c]) * pixel_pitch)
        rows.append(row)
    return rows


def psf_figure(psf: np.ndarray, labels: list[str], title: str | None = None):
    """PSF per channel, linear and log10. psf: (C, H, W); labels: C channel names."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = psf.shape[0]
    fig, axes = plt.subplots(2, c, figsize=(3.2 * c, 6.2), squeeze=False)
    for i in range(c):
        axes[0, i].imshow(psf[i], cmap="inferno")
        axes[0, i].set_title(f"{labels[i]} (linear)")
        axes[1, i].imshow(np.log10(np.maximum(psf[i], psf[i].max() * 1e-7)), cmap="inferno")
        axes[1, i].set_title(f"{labels[i]} (log10)")
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _mtf_figure(psf: np.ndarray, labels: list[str], pixel_pitch: float | None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from optics.analysis import radial_mtf

    freqs, values = radial_mtf(psf)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    colors = ["tab:red", "tab:green", "tab:blue"] if psf.shape[0] == 3 else [None] * psf.shape[0]
    scale, unit = (1.0, "cycles / pixel") if pixel_pitch is None else (1e-3 / pixel_pitch, "cycles / mm")
    for i in range(psf.shape[0]):
        ax.plot(freqs * scale, values[i], label=labels[i], color=colors[i])
    ax.set_xlabel(f"spatial frequency [{unit}] (Nyquist at right edge)")
    ax.set_ylabel("MTF")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def run(args: argparse.Namespace) -> None:
    """Simulate the PSF of ``args.lens`` (or load ``args.psf``) and write the outputs to ``args.out``."""
    from data.files import save_figure, save_image, save_json, save_npy
    from pipelines.common import build_camera, resolve_device, seed_everything
    from pipelines.safety import final_path

    if not args.out:
        raise ValueError("--mode simulate requires --out DIR")
    out = Path(args.out)
    seed_everything(args.seed)
    device = resolve_device(args.device)
    camera = build_camera(args.lens, args.psf, noise=not args.no_noise, object_distance=args.object_distance,
                          sensor=args.sensor)
    camera.to(device)
    lens = camera.lens
    with torch.no_grad():
        psf_t = camera.psf().double()
        psf_t = psf_t.clamp_min(0) / psf_t.sum(dim=(1, 2), keepdim=True)
    psf = psf_t.cpu().numpy()

    summary: dict[str, Any] = {"source": "psf" if args.psf else "lens"}
    if lens is not None:
        from optics.psf import geometric_blur_diameter

        cfg = lens.config
        pitch = cfg.pixel_pitch
        reference = lens.diffraction_limited_psf().double().cpu().numpy()
        labels = [f"{w * 1e9:.0f} nm" for w in cfg.wavelengths] if psf.shape[0] == len(cfg.wavelengths) \
            else [f"channel {i}" for i in range(psf.shape[0])]
        summary["lens"] = cfg.to_dict()
        summary["focal_lengths_m"] = cfg.focal_lengths()
        summary["geometric_blur_diameter_px"] = [
            geometric_blur_diameter(cfg.aperture_radius, f, cfg.object_distance, cfg.sensor_distance) / pitch
            for f in cfg.focal_lengths()]
    else:
        from hardware.psf_io import calibrated_psf_meta

        meta = calibrated_psf_meta(args.psf)
        pitch = meta.get("pixel_pitch")
        pitch = float(pitch) if isinstance(pitch, (int, float)) else None
        reference = None
        labels = [f"channel {i}" for i in range(psf.shape[0])]
        summary["psf_file"] = str(args.psf)
        summary["psf_meta"] = meta
    summary["pixel_pitch_m"] = pitch
    summary["psf_shape"] = list(psf.shape)
    summary["channels"] = psf_summary(psf, pitch, reference)

    save_npy(out / "psf.npy", psf.astype(np.float32))
    save_figure(out / "psf.png", psf_figure(psf, labels))
    save_figure(out / "mtf.png", _mtf_figure(psf, labels, pitch))

    if args.images:
        from tqdm import tqdm

        from data.images import list_images, read_image, to_numpy, to_tensor
        from pipelines.safety import unique_stems

        files = list_images(args.images)
        if not files:
            raise FileNotFoundError(f"{args.images}: no images found")
        gen = torch.Generator(device=device).manual_seed(args.seed)
        with torch.no_grad():
            psf_dev = psf_t.float().to(device)
            names = unique_stems(files)  # a.png and a.jpg -> a_png.png, a_jpg.png (never one over the other)
            for path, name in zip(tqdm(files, desc="simulate", unit="img"), names):
                img = to_tensor(read_image(path)).to(device)
                capture = camera(img, psf=psf_dev, generator=gen)
                save_image(out / "captures" / f"{name}.png", to_numpy(capture[0]))
        summary["captures"] = len(files)
        summary["capture_files"] = {str(p): f"captures/{n}.png" for p, n in zip(files, names)}
    save_json(out / "summary.json", summary)
    log.info("simulate: wrote %s (PSF %s, FWHM %s px)", final_path(out), tuple(psf.shape),
             ", ".join(f"{r['fwhm_px']:.1f}" for r in summary["channels"]))
