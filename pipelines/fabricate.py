"""``--mode fabricate``: quantise the lens height map, export the fabrication files, re-import them and report
how much the PSF changes through quantisation.

    python main.py --mode fabricate --lens FILE_OR_PRESET_OR_CHECKPOINT --levels 16 --out results/fab
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def load_lens(spec: str, object_distance: float | None = None):
    """A Lens from a preset name, a lens YAML file or a Stage I checkpoint (keys lens_config + lens).

    Args:
        spec: preset / YAML path / checkpoint path (.ckpt, .pt, .pth).
        object_distance: override of the config's object distance [m].

    Returns:
        optics.lens.Lens with its parameters frozen.
    """
    from optics.lens import Lens, LensConfig, load_lens_config

    overrides = {} if object_distance is None else {"object_distance": object_distance}
    if Path(spec).suffix in (".ckpt", ".pt", ".pth"):
        from anonymizer.checkpoint import load_checkpoint

        state = load_checkpoint(spec)
        if "lens_config" not in state or "lens" not in state:
            raise ValueError(f"{spec}: not a Stage I checkpoint (needs keys 'lens_config' and 'lens')")
        data = dict(state["lens_config"])
        data.update(overrides)
        lens = Lens(LensConfig.from_dict(data, source=str(spec)))
        try:
            lens.load_state_dict(state["lens"])
        except RuntimeError as err:
            raise ValueError(f"{spec}: lens weights do not match its lens_config ({err})") from err
    else:
        lens = Lens(load_lens_config(spec, **overrides))
    lens.requires_grad_(False)
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
                              extra={"lens": str(args.lens), "lens_config": _jsonable(cfg.to_dict())})
    imported, meta = import_height_map(paths["png"])
    report = quantization_report(lens, imported, meta)
    report["files"] = {k: str(v) for k, v in paths.items()}
    save_json(out / "fabrication_report.json", report)
    save_figure(out / "fabrication.png", _figure(height, imported, mask, report))
    log.info("fabrication: %d levels, step %.4g m, PSF change %.4g (relative RMS), Strehl %.4f",
             args.levels, report["level_step"], report["psf_change_relative_rms"], min(report["strehl"]))


def _aperture(size: int, pitch: float, radius: float) -> np.ndarray:
    from hardware.fabrication import aperture_mask

    return aperture_mask(size, pitch, radius)


def _jsonable(d: dict) -> dict:
    import math

    out = {}
    for k, v in d.items():
        if isinstance(v, float) and math.isinf(v):
            v = "inf"
        elif isinstance(v, dict):
            v = {str(a): b for a, b in v.items()}
        out[k] = v
    return out


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
