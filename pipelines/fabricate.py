"""``--mode fabricate``: quantise the lens height map, export the fabrication files, re-import them and report
how much the PSF changes through quantisation.

    python main.py --mode fabricate --lens FILE_OR_PRESET_OR_CHECKPOINT --levels 16 --out results/fab
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from pipelines.common import lens_sensor, load_optic
from pipelines.safety import final_path

log = logging.getLogger(__name__)


def load_lens(spec: str, object_distance: float | None = None):
    """The Lens of a preset / YAML / Stage I checkpoint (:func:`pipelines.common.load_optic`), with the
    quantisation it was trained with; a measured-PSF checkpoint has no surface to fabricate (ValueError)."""
    from optics.lens import Lens

    lens = load_optic(spec, object_distance=object_distance)
    if not isinstance(lens, Lens):
        raise ValueError(f"{spec}: holds a measured PSF, not a lens surface (nothing to fabricate or fit)")
    return lens


def run(args: argparse.Namespace) -> None:
    from data.files import save_figure, save_json
    from hardware.fabrication import export_height_map, import_height_map, quantization_report

    out = Path(args.out or "results/fabricate")
    lens = load_lens(args.lens, getattr(args, "object_distance", None))
    cfg = lens.config
    height = lens.height_map().detach().double().numpy()
    mask = _aperture(height.shape[0], 2 * cfg.aperture_radius / height.shape[0], cfg.aperture_radius)
    inside = height[mask]
    h_min = args.min_height if args.min_height is not None else (
        cfg.height_range[0] if cfg.height_range else float(inside.min()))
    h_max = args.max_height if args.max_height is not None else (
        cfg.height_range[1] if cfg.height_range else float(inside.max()))
    if not h_max > h_min:
        # a flat design (e.g. zero height map): give the quantiser a non-empty range around it
        h_min, h_max = h_min - 1e-9, h_max + 1e-9
        log.warning("the height map is flat; using the range [%.4g, %.4g] m", h_min, h_max)
    if not h_max > h_min:
        raise ValueError(f"--min_height {h_min} must be below --max_height {h_max} [m]")
    pitch = 2 * cfg.aperture_radius / height.shape[0]
    paths = export_height_map(out, height, pitch, args.levels, h_min, h_max, cfg.material, cfg.wavelengths,
                              aperture_radius=cfg.aperture_radius,
                              extra={"lens": str(args.lens), "lens_config": cfg.to_dict()})
    imported, meta = import_height_map(paths["png"])
    report = quantization_report(lens, imported, meta)
    report["files"] = {k: str(final_path(v)) for k, v in paths.items()}  # where they are once the run has finished
    sensor = lens_sensor(args.lens)  # the element was designed for this sensor: the lab needs to know
    if sensor is not None:
        report["sensor"] = sensor.to_dict()
        report["sensor_kind"] = "monochrome" if sensor.mono_response is not None else "colour"
    save_json(out / "fabrication_report.json", report)
    save_figure(out / "fabrication.png", _figure(height, imported, mask, report))
    log.info("fabrication: %d levels, step %.4g m, PSF change %.4g (relative RMS), Strehl %.4f",
             args.levels, report["level_step"], report["psf_change_relative_rms"], min(report["strehl"]))


def _aperture(size: int, pitch: float, radius: float) -> np.ndarray:
    from hardware.fabrication import aperture_mask

    return aperture_mask(size, pitch, radius)


def _figure(height: np.ndarray, quantised: np.ndarray, mask: np.ndarray, report: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    um = 1e6
    for ax, img, title in zip(axes, (height, quantised, quantised - np.where(mask, height, quantised)),
                              ("design height [um]", f"quantised ({report['levels']} levels) [um]",
                               "quantisation error [um]")):
        im = ax.imshow(np.where(mask, img, np.nan) * um, cmap="viridis")
        ax.set_title(title)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046)
    return fig
