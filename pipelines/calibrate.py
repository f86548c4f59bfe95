"""``--mode calibrate``: measured point-source photos of the prototype -> calibrated PSF + lens-model fit.

    python main.py --mode calibrate --psf_dir DIR [--dark FILE ...] [--flat FILE] --lens FILE_OR_PRESET --out DIR

Writes to --out:
    calibrated_psf.npy (C, H, W), each channel summing to 1 (+ .json: pitch, wavelengths, object distance);
        with several object distances also calibrated_psf_stack.npy (D, C, H, W); use it with --psf FILE.
    fit.json: fitted Zernike heights [m], sensor-distance error [m], nuisance terms, relative RMS residual,
        registration shifts, EE50 radii of measured / fitted / design PSFs, the cleaning report.
    fitted_lens.yaml: the design with the fitted Zernike heights and sensor distance (use with --lens FILE).
    residual.npy (D, C, H, W) and calibration.png (measured | fitted | residual per channel and depth).
"""
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.safety import MAX_FIT_NOLL, final_path, parse_indices  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


def run(args: argparse.Namespace) -> None:
    from data.files import save_figure, save_json, save_npy, save_text
    from hardware.calibration import CleaningConfig, clean_measurement, to_calibrated
    from hardware.fit import FitConfig, fit_lens
    from hardware.psf_io import load_psf_dir, save_calibrated_psf
    from optics.analysis import encircled_energy_radius
    from pipelines.fabricate import load_lens

    out = Path(args.out or "results/calibrate")
    zernike = parse_indices(args.fit_zernike)  # validated before anything is written
    if args.fit_iters < 1:
        raise ValueError(f"--fit_iters must be >= 1, got {args.fit_iters}")
    lens = load_lens(args.lens, getattr(args, "object_distance", None))
    cfg = lens.config
    n_ch = int(lens.response.shape[0])
    identity = cfg.spectral_response is None
    overrides = {"pixel_pitch": args.pixel_pitch, "exposure": args.exposure, "black_level": args.black_level,
                 "bit_depth": args.bit_depth}
    meas = load_psf_dir(args.psf_dir, num_channels=n_ch, wavelengths=cfg.wavelengths if identity else None,
                        dark=args.dark, flat=args.flat, overrides=overrides)
    cleaned = clean_measurement(meas, CleaningConfig(psf_size=cfg.psf_size, target_pitch=cfg.pixel_pitch,
                                                     allow_saturated=args.allow_saturated))
    depths = [cfg.object_distance if d is None else d for d in meas.object_distances]
    calibrated, clipped = to_calibrated(cleaned.psf)
    # the calibrated PSF of the lens' own object distance (nearest measured depth)
    key = [abs(1 / d - (0 if math.isinf(cfg.object_distance) else 1 / cfg.object_distance))
           if not math.isinf(d) else abs(0 if math.isinf(cfg.object_distance) else 1 / cfg.object_distance)
           for d in depths]
    main_d = int(np.argmin(key))
    psf_meta = {"pixel_pitch": cfg.pixel_pitch, "wavelengths": cfg.wavelengths, "object_distance": _num(depths[main_d]),
                "object_distances": [_num(d) for d in depths], "source": str(args.psf_dir), "lens": str(args.lens)}
    save_calibrated_psf(out / "calibrated_psf.npy", calibrated[main_d], psf_meta)
    if len(depths) > 1:
        save_npy(out / "calibrated_psf_stack.npy", calibrated.astype(np.float32))

    fit_cfg = FitConfig(zernike=zernike, iters=args.fit_iters)
    result = fit_lens(lens, cleaned.psf_fit, depths, fit_cfg)
    save_npy(out / "residual.npy", result.residual.astype(np.float32))

    def ee(stack: np.ndarray) -> list[list[float]]:
        return [encircled_energy_radius(np.clip(p, 0, None), 0.5).tolist() for p in stack]

    frames = cleaned.report["frames"]
    shift = {str(c): [float(v) for v in frames[c]["shift_px"]] for c in range(n_ch)}  # depth 0
    fit_json: dict[str, Any] = {
        "zernike": {str(j): v for j, v in result.zernike.items()},
        "zernike_design": {str(j): v for j, v in result.zernike_design.items()},
        "sensor_distance_error": result.sensor_distance_error,
        "sensor_distance_fitted": bool(result.sensor_distance_fitted),
        "residual_rms_relative": result.residual_rms_relative,
        "shift_px": shift,
        "shift_px_per_frame": [[frames[d * n_ch + c]["shift_px"] for c in range(n_ch)] for d in range(len(depths))],
        "decentre_px": result.decentre_px.tolist(),
        "background": result.background.tolist(),
        "scale": result.scale.tolist(),
        "ee50_px": {"measured": ee(calibrated), "fitted": ee(result.fitted), "design": ee(result.design)},
        "object_distances": [_num(d) for d in depths],
        "iterations": {"adam": result.iterations[0], "lbfgs": result.iterations[1],
                       "function_evals": result.function_evals},
        "fit_seconds": result.seconds,
        "defocus_scan": {k: v for k, v in result.scan.items() if k in ("parameter", "best")},
        "negative_energy_clipped": clipped,
        "units": {"zernike": "m (surface height, RMS-normalised Noll)", "sensor_distance_error": "m",
                  "shift_px": "px (row, col) applied to centre the centroid", "ee50_px": "px"},
        "cleaning": cleaned.report,
    }
    save_json(out / "fit.json", _finite(fit_json))
    if cfg.height_map == "zernike":
        import yaml

        fitted_cfg = cfg.to_dict()
        fitted_cfg["zernike"] = {int(j): float(v) for j, v in zip(result.fit_lens.indices,
                                                                 result.fit_lens.zernike_coeffs.tolist())
                                 if j not in (2, 3)}
        fitted_cfg["zernike_indices"] = cfg.zernike_indices
        fitted_cfg["sensor_distance"] = cfg.sensor_distance + result.sensor_distance_error
        fitted_cfg["name"] = f"{cfg.name or 'lens'}-fitted"
        fitted_cfg = {k: (".inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in fitted_cfg.items()}
        save_text(out / "fitted_lens.yaml", yaml.safe_dump(fitted_cfg, sort_keys=True))
    else:
        log.info("the lens has a pixel height map: no fitted_lens.yaml (fit.json holds the fitted Zernike terms)")
    save_figure(out / "calibration.png", _figure(cleaned.psf_fit, result.fitted, result.residual, depths))
    log.info("calibrate: wrote %s (residual %.4g relative RMS)", final_path(out), result.residual_rms_relative)


def _finite(obj: Any) -> Any:
    """JSON has no inf / NaN: write them as strings."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _num(v: float) -> float | str:
    return "inf" if math.isinf(v) else float(v)


def _figure(measured: np.ndarray, fitted: np.ndarray, residual: np.ndarray, depths: list[float]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d_n, c_n = measured.shape[:2]
    rows = d_n * c_n
    fig, axes = plt.subplots(rows, 3, figsize=(9, 3 * rows), squeeze=False)
    for d in range(d_n):
        for c in range(c_n):
            r = d * c_n + c
            vmax = max(measured[d, c].max(), fitted[d, c].max())
            lim = np.abs(residual[d, c]).max()
            for k, (img, title, kw) in enumerate((
                    (measured[d, c], "measured", dict(vmin=0, vmax=vmax, cmap="magma")),
                    (fitted[d, c], "fitted", dict(vmin=0, vmax=vmax, cmap="magma")),
                    (residual[d, c], "residual", dict(vmin=-lim, vmax=lim, cmap="RdBu_r")))):
                ax = axes[r, k]
                im = ax.imshow(img, **kw)
                ax.set_title(f"{title} ch {c}, {_num(depths[d])} m", fontsize=8)
                ax.axis("off")
                fig.colorbar(im, ax=ax, fraction=0.046)
    return fig
