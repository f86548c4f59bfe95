"""Fit of the differentiable lens model (optics.lens.Lens) to cleaned, measured PSFs.

Model of frame (depth d, channel c):

    model_dc = scale_dc * shift(psf_c(lens(design + delta), object_distance_d, dz), decentre_dc) + background_dc

with ``delta`` the Zernike surface-height changes of the fitted Noll terms, ``dz`` the sensor-distance error,
``decentre`` a sub-pixel Fourier shift, and a per-frame intensity scale and background. The least-squares loss is
summed jointly over channels and depths and minimised by Adam then L-BFGS, after a coarse scan over defocus
(the loss is not convex in defocus).

Optimisation units: Zernike terms in waves of RMS optical path at the design wavelength (1 unit = lambda_d /
(n_d - 1) of height), the sensor distance in units of 2 lambda_d z^2 / a^2 (about one wave peak-to-valley of
defocus), decentre in pixels; the intensity scale and background of each frame are solved in closed form
inside the loss (variable projection).

Degeneracies: piston (Noll 1) has no effect and tilts (2, 3) are the decentre, so they are not fitted. Defocus
(Noll 4) and the sensor-distance error change the pupil phase in the same way (up to the small dispersion of
the lens material and the neglected magnification), so by default the sensor distance is fitted only when
Noll 4 is not; a single-plane measurement cannot tell the sign of the even aberrations of a lens without a
design aberration (twin-image ambiguity): measure at several depths.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from optics.lens import Lens
from optics.materials import refractive_index

log = logging.getLogger(__name__)


@dataclass
class FitConfig:
    """Settings of :func:`fit_lens`.

    Attributes:
        zernike: Noll indices fitted (1, 2, 3 are dropped: see module docstring).
        iters: total optimiser iterations (Adam + L-BFGS).
        lbfgs_fraction: share of ``iters`` given to L-BFGS after Adam (0 = Adam only).
        lr: Adam learning rate in the optimisation units.
        fit_sensor_distance: fit the sensor-distance error; None = only when Noll 4 is not fitted.
        fit_decentre / fit_background / fit_scale: nuisance terms on or off.
        defocus_scan: half-range of the initial scan of Noll 4 [waves RMS] (or of the sensor distance [units of
            2 lambda z^2 / a^2] when Noll 4 is not fitted) about the design; 0 = no scan.
        scan_steps: points of the scan.
        dtype: torch dtype of the fit ("float64" or "float32").
    """
    zernike: Sequence[int] = (4, 5, 6, 7, 8, 9, 10, 11)
    iters: int = 300
    lbfgs_fraction: float = 0.3
    lr: float = 0.05
    fit_sensor_distance: bool | None = None
    fit_decentre: bool = True
    fit_background: bool = True
    fit_scale: bool = True
    defocus_scan: float = 2.0
    scan_steps: int = 41
    dtype: str = "float64"


@dataclass
class FitResult:
    """Outcome of :func:`fit_lens`.

    Attributes:
        zernike: {Noll: fitted surface-height coefficient [m]} (design + change) of the fitted terms.
        zernike_design: {Noll: design coefficient [m]} of the same terms.
        sensor_distance_error: [m].
        decentre_px: (D, 2) fitted (row, col) shift of the model [px] (a pupil tilt, common to the channels).
        background: (D, C) fitted background per pixel (in units of the sum-1 PSF).
        scale: (D, C) fitted intensity scale.
        fitted: (D, C, H, W) model PSFs (with nuisance terms). design: (D, C, H, W) design PSFs (centred).
        residual: (D, C, H, W) measured - fitted.
        residual_rms_relative: ||measured - fitted|| / ||measured|| over all frames.
        loss_history: loss of every Adam step and every L-BFGS function evaluation.
        iterations: (Adam steps, L-BFGS iterations); function_evals: all loss evaluations (scan included).
        seconds: wall time of the fit [s]. scan: the defocus scan (values, losses, best).
        fit_lens: the fitted Lens (design + fitted Zernike terms, without decentre tilt).
        sensor_distance_fitted: whether the sensor distance was a free parameter.
    """
    zernike: dict[int, float]
    zernike_design: dict[int, float]
    sensor_distance_error: float
    decentre_px: np.ndarray
    background: np.ndarray
    scale: np.ndarray
    fitted: np.ndarray
    design: np.ndarray
    residual: np.ndarray
    residual_rms_relative: float
    loss_history: list[float] = field(default_factory=list)
    iterations: tuple[int, int] = (0, 0)
    function_evals: int = 0
    seconds: float = 0.0
    scan: dict[str, Any] = field(default_factory=dict)
    fit_lens: Lens | None = None
    sensor_distance_fitted: bool = False


class _LensModel(nn.Module):
    """PSF of ``lens`` at depth number ``index`` (its Zernike coefficients are given by functional_call)."""

    def __init__(self, lens: Lens, depths: Sequence[float | None]):
        super().__init__()
        self.lens = lens
        self.depths = list(depths)

    def forward(self, index: int, sensor_delta: torch.Tensor | None) -> torch.Tensor:
        return self.lens.psf(self.depths[index], sensor_delta)


class LensFitter:
    """The differentiable model of the measurement and its loss (used by :func:`fit_lens` and benchmarks).

    Args:
        lens: the design (its parameters are not changed; a copy is fitted).
        measured: (D, C, H, W) cleaned PSFs (each summing to 1) at the lens pixel pitch, H = W = psf_size.
        object_distances: (D,) [m] of the measured frames (None = the lens config's object distance).
        config: which terms are fitted.
    """

    def __init__(self, lens: Lens, measured: np.ndarray | torch.Tensor, object_distances: Sequence[float | None],
                 config: FitConfig):
        cfg = lens.config
        dtype = {"float64": torch.float64, "float32": torch.float32}[config.dtype]
        meas = torch.as_tensor(np.asarray(measured), dtype=dtype)
        d_n, c_n, h, w = meas.shape
        if (h, w) != (cfg.psf_size, cfg.psf_size):
            raise ValueError(f"measured PSFs are {h}x{w} but the lens psf_size is {cfg.psf_size}")
        if len(object_distances) != d_n:
            raise ValueError(f"{d_n} measured depths but {len(object_distances)} object distances")
        dropped = [j for j in config.zernike if int(j) < 4]
        if dropped:
            log.warning("not fitting Noll %s (piston has no effect, tilt is the decentre)", dropped)
        self.indices = sorted({int(j) for j in config.zernike if int(j) >= 4})
        fit_dz = config.fit_sensor_distance
        self.fit_dz = (4 not in self.indices) if fit_dz is None else bool(fit_dz)
        # a copy of the design with the fitted terms among its learnable ones
        design = {int(j): float(c) for j, c in zip(lens.indices, lens.zernike_coeffs.detach().cpu().tolist())}
        fit_cfg = cfg.replace(zernike_indices=sorted(set(lens.indices) | set(self.indices) | {2, 3}))
        self.lens = Lens(fit_cfg).to(dtype)
        state = {k: v for k, v in lens.state_dict().items() if k == "height_pixels"}
        if state:
            self.lens.height_pixels.data.copy_(state["height_pixels"].to(dtype))
        base = torch.tensor([design.get(j, 0.0) for j in self.lens.indices], dtype=dtype)
        self.lens.requires_grad_(False)
        self.base = base
        self.design_coeffs = {j: design.get(j, 0.0) for j in self.indices}
        pos = [self.lens.indices.index(j) for j in self.indices]
        self.select = torch.zeros(len(self.lens.indices), len(self.indices), dtype=dtype)
        for k, p in enumerate(pos):
            self.select[p, k] = 1.0
        n_d = refractive_index(cfg.material, cfg.design_wavelength)
        self.z_unit = cfg.design_wavelength / (n_d - 1.0)
        self.dz_unit = 2 * cfg.design_wavelength * cfg.sensor_distance ** 2 / cfg.aperture_radius ** 2
        # decentre = tilt: height c of Noll 2 (3) moves the PSF by 2 c z (n - 1) / (a p) pixels along x (y)
        self.tilt_unit = cfg.aperture_radius * cfg.pixel_pitch / (2 * cfg.sensor_distance * (n_d - 1.0))
        self.tilt = torch.zeros(len(self.lens.indices), 2, dtype=dtype)
        self.tilt[self.lens.indices.index(3), 0] = 1.0
        self.tilt[self.lens.indices.index(2), 1] = 1.0
        self.model = _LensModel(self.lens, object_distances)
        self.meas = meas
        self.meas_norm2 = float((meas ** 2).sum())
        self.config = config
        self.shape = (d_n, c_n)
        self.dtype = dtype
        self.evals = 0

    def new_params(self) -> dict[str, torch.Tensor]:
        d_n, c_n = self.shape
        z = dict(dtype=self.dtype)
        return {"zernike": torch.zeros(len(self.indices), **z), "dz": torch.zeros((), **z),
                "decentre": torch.zeros(d_n, 2, **z)}

    def trainable(self, params: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        c = self.config
        keys = ["zernike"] + (["dz"] if self.fit_dz else []) + (["decentre"] if c.fit_decentre else [])
        return [params[k] for k in keys]

    def coefficients(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """(K,) Zernike heights [m] of the fit lens (learnable indices order), without the decentre tilt."""
        return self.base + self.select @ (params["zernike"] * self.z_unit)

    def lens_psf(self, params: dict[str, torch.Tensor], decentre: torch.Tensor | None = None) -> torch.Tensor:
        """(D, C, H, W) lens PSFs for the parameters, moved by ``decentre`` (D, 2) [px] through a pupil tilt
        (exact also for undersampled PSFs); no scale / background."""
        coeffs = self.coefficients(params)
        dz = params["dz"] * self.dz_unit if self.fit_dz else None
        out = []
        for d in range(self.shape[0]):
            c_d = coeffs if decentre is None else coeffs + self.tilt @ (decentre[d] * self.tilt_unit)
            out.append(functional_call(self.model, {"lens.zernike_coeffs": c_d}, (d, dz)))
        return torch.stack(out)

    def nuisance(self, psf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Least-squares per-frame intensity scale and background for model PSFs (D, C, H, W), in closed form
        and differentiable (variable projection: these linear terms never slow the optimiser down).

        Returns:
            scale (D, C), background (D, C) per pixel (sum-1 PSF units).
        """
        n = psf.shape[-1] * psf.shape[-2]
        m, y = psf.flatten(2), self.meas.flatten(2)
        ms, ys = m.sum(-1), y.sum(-1)
        c = self.config
        if c.fit_scale and c.fit_background:
            mm, my = (m * m).sum(-1), (m * y).sum(-1)
            scale = (n * my - ms * ys) / (n * mm - ms * ms)
            return scale, (ys - scale * ms) / n
        if c.fit_scale:
            return (m * y).sum(-1) / (m * m).sum(-1), torch.zeros_like(ms)
        if c.fit_background:
            return torch.ones_like(ms), (ys - ms) / n
        return torch.ones_like(ms), torch.zeros_like(ms)

    def predict(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """(D, C, H, W) model of the measured frames (lens PSF, decentre, best scale and background)."""
        psf = self.lens_psf(params, params["decentre"] if self.config.fit_decentre else None)
        scale, background = self.nuisance(psf)
        return scale[..., None, None] * psf + background[..., None, None]

    def loss(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sum of squared residuals / sum of squared measurement (the squared relative RMS residual)."""
        self.evals += 1
        return ((self.predict(params) - self.meas) ** 2).sum() / self.meas_norm2

    @torch.no_grad()
    def centroid_shift(self, psf: torch.Tensor) -> torch.Tensor:
        """(D, 2) shift [px] moving the channel-summed centroid of ``psf`` onto that of the measurement."""
        def cen(x: torch.Tensor) -> torch.Tensor:
            x = x.sum(1)
            h, w = x.shape[-2:]
            yy = torch.arange(h, dtype=x.dtype)[:, None]
            xx = torch.arange(w, dtype=x.dtype)[None, :]
            s = x.sum((-2, -1))
            return torch.stack([(x * yy).sum((-2, -1)) / s, (x * xx).sum((-2, -1)) / s], -1)
        return cen(self.meas.clamp_min(0)) - cen(psf)


def fit_lens(lens: Lens, measured: np.ndarray | torch.Tensor, object_distances: Sequence[float | None],
             config: FitConfig | None = None, progress: bool = True) -> FitResult:
    """Fit the lens model to measured PSFs.

    Args:
        lens: design lens (not modified).
        measured: (D, C, H, W) cleaned PSFs each summing to 1, on the lens grid (psf_size, pixel_pitch).
        object_distances: (D,) [m] (None: the lens config's object distance).
        config: fit settings.
        progress: show a tqdm bar.

    Returns:
        FitResult (fitted Zernike heights [m], sensor-distance error [m], nuisance terms, PSFs, residuals).
    """
    from tqdm import tqdm

    config = config or FitConfig()
    start = time.perf_counter()
    fitter = LensFitter(lens, measured, object_distances, config)
    params = fitter.new_params()
    scan_info: dict[str, Any] = {}

    # 1) coarse scan over defocus (Noll 4, or the sensor distance) with closed-form scale / background
    scan_key = "zernike" if 4 in fitter.indices else ("dz" if fitter.fit_dz else None)
    if scan_key and config.defocus_scan > 0 and config.scan_steps > 1:
        values = np.linspace(-config.defocus_scan, config.defocus_scan, config.scan_steps)
        losses = []
        for v in values:
            trial = {k: t.clone() for k, t in params.items()}
            if scan_key == "zernike":
                trial["zernike"][fitter.indices.index(4)] = float(v)
            else:
                trial["dz"] = torch.tensor(float(v), dtype=fitter.dtype)
            with torch.no_grad():
                psf = fitter.lens_psf(trial)
                if config.fit_decentre:
                    trial["decentre"] = fitter.centroid_shift(psf)
                losses.append(float(fitter.loss(trial)))
        best = float(values[int(np.argmin(losses))])
        if scan_key == "zernike":
            params["zernike"][fitter.indices.index(4)] = best
        else:
            params["dz"] = torch.tensor(best, dtype=fitter.dtype)
        scan_info = {"parameter": "noll_4" if scan_key == "zernike" else "sensor_distance",
                     "values": values.tolist(), "loss": losses, "best": best}
    # 2) nuisance initialisation at the scanned point
    with torch.no_grad():
        psf = fitter.lens_psf(params)
        if config.fit_decentre:
            params["decentre"] = fitter.centroid_shift(psf)
    trainable = fitter.trainable(params)
    for t in trainable:
        t.requires_grad_(True)

    # 3) Adam, then L-BFGS
    n_lbfgs = int(round(config.iters * config.lbfgs_fraction))
    n_adam = config.iters - n_lbfgs
    history: list[float] = []
    bar = tqdm(total=config.iters, desc="lens fit", disable=not progress, leave=False)
    adam = torch.optim.Adam(trainable, lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(adam, max(n_adam, 1), eta_min=config.lr * 0.05)
    for _ in range(n_adam):
        adam.zero_grad()
        loss = fitter.loss(params)
        loss.backward()
        adam.step()
        sched.step()
        history.append(loss.item())
        bar.update(1)
    done_lbfgs = 0
    if n_lbfgs:
        lbfgs = torch.optim.LBFGS(trainable, lr=1.0, max_iter=n_lbfgs, max_eval=2 * n_lbfgs, history_size=20,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-10, tolerance_change=1e-14)

        def closure() -> torch.Tensor:
            lbfgs.zero_grad()
            value = fitter.loss(params)
            value.backward()
            history.append(value.item())
            bar.update(0)
            return value

        lbfgs.step(closure)
        done_lbfgs = int(lbfgs.state[lbfgs._params[0]].get("n_iter", 0))
        bar.update(done_lbfgs)
    bar.close()
    seconds = time.perf_counter() - start

    with torch.no_grad():
        fitted = fitter.predict(params)
        scale, background = fitter.nuisance(fitter.lens_psf(params, params["decentre"] if config.fit_decentre
                                                            else None))
        design_psf = torch.stack([lens.psf(d) for d in fitter.model.depths]).to(fitter.dtype)
        residual = fitter.meas - fitted
        rel = float(torch.sqrt((residual ** 2).sum() / fitter.meas_norm2))
        coeffs = fitter.coefficients(params)
        fitter.lens.zernike_coeffs.data.copy_(coeffs)
    zernike = {j: float(coeffs[fitter.lens.indices.index(j)]) for j in fitter.indices}
    dz = params["dz"].item() * fitter.dz_unit if fitter.fit_dz else 0.0
    log.info("lens fit: relative RMS residual %.4g after %d Adam + %d L-BFGS steps (%.1f s)", rel, n_adam,
             done_lbfgs, seconds)
    return FitResult(zernike=zernike, zernike_design=fitter.design_coeffs, sensor_distance_error=dz,
                     decentre_px=params["decentre"].detach().numpy().copy(),
                     background=background.numpy().copy(), scale=scale.numpy().copy(),
                     fitted=fitted.numpy(), design=design_psf.numpy(), residual=residual.numpy(),
                     residual_rms_relative=rel, loss_history=history, iterations=(n_adam, done_lbfgs),
                     function_evals=fitter.evals, seconds=seconds, scan=scan_info, fit_lens=fitter.lens,
                     sensor_distance_fitted=fitter.fit_dz)
