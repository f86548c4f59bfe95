"""Stage I: joint training of the camera's lens and the HeatmapRegressor, its checkpoints and their loading.

Objective per step (weights are explicit arguments, see :class:`Stage1Config`):

    L = L_heatmap(R(Camera(x)), H(teacher(x)))              relative weighted heatmap error, 1 = predict zeros
      + lambda_coord * NME(soft_argmax(R(Camera(x))), teacher(x))     per-landmark mode only
      + lambda_privacy * L_priv(PSF)                        identity-band power transmitted (stage1/losses.py)
      + lambda_adv * max(0, rho_band(A(Camera(x)), x))       adversarial privacy: identity-band correlation that
                                                            the inverter adversary A restores (stage1/losses.py)
      + lambda_wiener * max(0, rho_band(W_PSF(Camera(x)), x)) the same for Wiener deconvolution with the true PSF
                                                            (the harness's Wiener attack, differentiable; no training)
      + lambda_psf * (border energy + phase step)(PSF)      buildability / valid simulation (stage1/losses.py)

With ``lambda_adv > 0`` the adversary A (metrics.attacks.Inverter) is trained in the same step, after the lens
and regressor update, on the detached captures with the attacker's own loss (metrics.attacks.inverter_loss):
a min-max game in which the lens is rewarded only for identity detail that the current best inverter cannot
restore (the objective is explained in stage1/losses.py). Its state and optimiser are in the checkpoint
(``adversary``, ``optims["adversary"]``); ``evaluate`` reports its identity-band correlation on held-out pairs.

Captures use the camera's sensor noise, drawn from a generator seeded by (seed, step); the images of step t
are a function of (seed, t) (a fresh permutation per epoch). A checkpoint holds the optimisers and the RNG
states, so a run killed after step K and resumed with ``resume_iter = K`` produces the same losses as an
uninterrupted run. Images whose teacher found no face stay in the batches but are excluded from the heatmap and
coordinate losses (their count is logged and written to ``<checkpoint_dir>/stage1_data.json``).

Checkpoint (``checkpoint_path(dir, step, "optics")``): ``{"step", "args", "lens_config", "lens", "quantize",
"psf", "psf_binning", "regressor_config", "regressor", "heatmap": {"mode", "sigma", "num_channels", "img_size",
"teacher", "num_landmarks"}, "optims", "rng", "history"}``. ``lens`` / ``lens_config`` are None when a fixed
(measured) PSF was used; ``psf`` is then that PSF.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from anonymizer.stage1.data import FaceLandmarkSet, batch_indices, rng_state, set_rng_state  # noqa: F401 (re-exported)
from anonymizer.stage1.heatmap import (HeatmapRegressor, heatmap_loss, landmark_nme, landmarks_to_heatmaps,
                                       num_heatmap_channels, soft_argmax)
from anonymizer.stage1.shape import LinearShapeRegressor, build_regressor, fit_shape_regressor, similarity_augment
from anonymizer.stage1.losses import (DEFAULT_PRIVACY_BAND, adversarial_privacy_loss, privacy_mtf_loss,
                                      psf_regularizer)
from metrics.inverter import IDENTITY_BAND, Inverter, identity_correlation, inverter_loss, wiener_deconvolve
from data.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from data.files import plain
from optics.binning import capture_psf, psf_binning
from optics.lens import Lens
from optics.quantize import QuantizedLens, build_lens, lens_from_state  # noqa: F401  (build_lens re-exported)

log = logging.getLogger(__name__)

PROJECT_EVERY = 5
"""Lens.project() (height-range clamp, phase-step limit of the pupil grid: a few pupil-phase evaluations, no PSF)
runs every this many steps."""


@dataclass
class Stage1Config:
    """Hyper-parameters of Stage I (everything the loop needs; no argparse object).

    Attributes:
        img_size: capture side S [px] (divides 256, see optics.binning.capture_psf).
        batch_size: images per step.
        heatmap_mode: "grouped" (2 masks) or "landmarks" (one channel per point; enables the NME loss).
        heatmap_sigma: Gaussian sigma [px]; None = img_size / 64 (at least 1).
        num_landmarks: 68 (dlib teacher) or 5 (MTCNN).
        lambda_privacy, lambda_psf, lambda_coord: loss weights.
        optics_lr: lens learning rate in waves of surface height per step (1 wave = lambda_d / (n_d - 1)).
        regressor_lr: Adam learning rate of the regressor.
        freeze_lens: train the regressor only.
        privacy_band: identity band (low, high) [cycles per face width], high None = Nyquist.
        seed: seed of the data order, the noise and the initialisation.
        regressor: HeatmapRegressor keyword arguments (besides in/out channels).
        lambda_adv: weight of the adversarial privacy term (0 = no adversary).
        lambda_wiener: weight of the same term for Wiener deconvolution with the true PSF (0 = off).
        adversary: metrics.attacks.Inverter keyword arguments (base, depth) of the adversary.
        adversary_lr: Adam learning rate of the adversary.
        adversary_steps: adversary updates per Stage I step.
        adversary_loss: the adversary's loss (metrics.attacks.INVERTER_LOSSES).
        identity_band: band [cycles per face width] of the adversarial term.
        augment: strength of the random similarity transform applied to each training face (and its teacher
            landmarks) before the capture, 0 = off; 1 = rotation up to 10 deg, scale 0.92-1.08, shift up to 5 %
            of the side. The embedded faces are aligned crops, so without it the regressor can score well by
            memorising the mean shape; with it, it has to read the landmarks from the capture.
        shape_copies, shape_refit_every: the linear shape regressor (``regressor={"head": "linear"}``,
            stage1/shape.py) is fitted in closed form on this many (augmented, noisy) captures of every training
            face, before the first step and, while the lens trains, again every this many steps (the lens then
            learns through the current fit; the map is not updated by gradient).
    """
    img_size: int = 128
    batch_size: int = 8
    heatmap_mode: str = "grouped"
    heatmap_sigma: float | None = None
    num_landmarks: int = 68
    lambda_privacy: float = 1.0
    lambda_psf: float = 0.1
    lambda_coord: float = 1.0
    optics_lr: float = 1e-3
    regressor_lr: float = 1e-3
    freeze_lens: bool = False
    privacy_band: tuple = DEFAULT_PRIVACY_BAND
    seed: int = 777
    regressor: dict = field(default_factory=lambda: {"base": 16, "depth": 3})
    lambda_adv: float = 0.0
    adversary: dict = field(default_factory=lambda: {"base": 16, "depth": 3})
    adversary_lr: float = 1e-3
    adversary_steps: int = 1
    adversary_loss: str = "band"
    lambda_wiener: float = 0.0
    identity_band: tuple = IDENTITY_BAND
    augment: float = 0.0
    shape_copies: int = 8
    shape_refit_every: int = 50

    @property
    def sigma(self) -> float:
        return float(self.heatmap_sigma) if self.heatmap_sigma else max(1.0, self.img_size / 64.0)


class Stage1Trainer:
    """Joint training of a camera (learnable Lens, fixed Lens or fixed PSF) and a HeatmapRegressor.

    Args:
        camera: optics.camera.Camera (its ``lens`` is trained unless ``config.freeze_lens``), or any module
            ``forward(image, psf=None, generator=None) -> capture`` without a lens (e.g. a low-res baseline);
            captures are made with the camera's own noise setting.
        config: :class:`Stage1Config`.
        train_set, val_set: :class:`FaceLandmarkSet` (val_set optional; used for samples and val metrics).
        checkpoint_dir: where checkpoints and samples go (None: nothing is written).
        device: torch device.
        args: plain dict stored in checkpoints (e.g. vars(argparse namespace)).
        logger: optional callable(step, dict of floats) (e.g. wandb.log).
    """

    def __init__(self, camera: nn.Module, config: Stage1Config, train_set: FaceLandmarkSet,
                 val_set: FaceLandmarkSet | None = None, checkpoint_dir: str | Path | None = None,
                 device: str | torch.device = "cpu", args: dict | None = None,
                 logger: Callable[[int, dict], None] | None = None, teacher: str = "dlib"):
        self.cfg = config
        self.device = torch.device(device)
        self.camera = camera.to(self.device)
        self.lens: Lens | None = getattr(camera, "lens", None)
        self.train_set, self.val_set = train_set, val_set
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.args = dict(args or {})
        self.logger = logger
        self.teacher = teacher
        self.num_channels = num_heatmap_channels(config.num_landmarks, config.heatmap_mode)
        torch.manual_seed(config.seed)
        reg_kwargs = dict(config.regressor)
        if reg_kwargs.get("head", "heatmap") == "linear":
            if config.heatmap_mode != "landmarks":
                raise ValueError("the linear shape regressor needs heatmap_mode 'landmarks'")
            reg_kwargs.update(sigma=config.sigma, img_size=config.img_size)
        self.regressor = build_regressor({"in_channels": 3, "out_channels": self.num_channels,
                                          **reg_kwargs}).to(self.device)
        self.opt_regressor = torch.optim.Adam(self.regressor.parameters(), lr=config.regressor_lr,
                                              betas=(0.9, 0.999))
        self.train_lens = self.lens is not None and not config.freeze_lens
        if self.lens is not None:
            self.lens.requires_grad_(self.train_lens)
        self.opt_lens = None
        if self.train_lens:
            self.opt_lens = torch.optim.Adam(self.lens.parameters(), lr=config.optics_lr * self.lens.config.wave_height, betas=(0.9, 0.999))
        self.adversary: Inverter | None = None
        self.opt_adversary = None
        if config.lambda_adv > 0:
            self.adversary = Inverter(**config.adversary).to(self.device)
            self.opt_adversary = torch.optim.Adam(self.adversary.parameters(), lr=config.adversary_lr)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self._fixed_psf: torch.Tensor | None = None
        self.linear_regressor = isinstance(self.regressor, LinearShapeRegressor)
        self.shape_fit: dict | None = None  # the last closed-form fit of the linear regressor

    def fit_regressor(self) -> dict:
        """Fit the linear shape regressor in closed form on the current camera's captures (stage1/shape.py)."""
        if not self.linear_regressor:
            raise ValueError("only the linear shape regressor is fitted in closed form")
        with torch.no_grad():
            psf = self.capture_psf()
        images, landmarks, _ = self.train_set.batch(range(len(self.train_set)))
        gen = self._generator(self.step, salt=5)

        def capture_fn(x: torch.Tensor) -> torch.Tensor:
            return self._capture(x.to(self.device), psf, gen)

        self.regressor.eval()
        info = fit_shape_regressor(self.regressor, capture_fn, images.to(self.device), landmarks.to(self.device),
                                   copies=self.cfg.shape_copies, seed=self.cfg.seed + self.step)
        info["step"] = self.step
        self.shape_fit = info
        log.info("linear shape regressor fitted at step %d: ridge %.0e, train NME %.4f (CV %s)", self.step,
                 info["lambda"], info["train_nme"], {f"{k:.0e}": round(v, 4) for k, v in info["cv_nme"].items()})
        return info

    def _refit_if_stale(self, every: int) -> None:
        """Fit the linear regressor if it never was, or, while the lens trains, if its fit is older than this step
        and the step is a multiple of ``every``."""
        if not self.linear_regressor:
            return
        if self.shape_fit is None or (self.train_lens and self.shape_fit["step"] != self.step
                                      and self.step % every == 0):
            self.fit_regressor()

    # ------------------------------------------------------------------------------------------------ forward
    def capture_psf(self) -> torch.Tensor | None:
        """(C, h, w) PSF on the capture grid, or None for a camera without a PSF (computed once when the
        optics are fixed)."""
        if not hasattr(self.camera, "psf"):
            return None
        if self.train_lens:
            return capture_psf(self.camera.psf(), self.cfg.img_size)
        if self._fixed_psf is None:
            with torch.no_grad():
                self._fixed_psf = capture_psf(self.camera.psf(), self.cfg.img_size)
        return self._fixed_psf

    def _recorded(self, psf: torch.Tensor) -> torch.Tensor:
        """The PSF each capture channel records (a monochrome sensor: the response-weighted PSF; the PSF a
        Wiener attacker deconvolves with)."""
        return self.camera.recorded_psf(psf) if hasattr(self.camera, "recorded_psf") else psf

    def _capture(self, images: torch.Tensor, psf: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        if psf is None:
            return self.camera(images, generator=generator)
        return self.camera(images, psf=psf, generator=generator)

    def losses(self, images: torch.Tensor, landmarks: torch.Tensor, found: torch.Tensor,
               generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float], dict[str, torch.Tensor]]:
        """Total loss and its parts for one batch (see the module docstring)."""
        cfg = self.cfg
        psf = self.capture_psf()
        capture = self._capture(images, psf, generator)
        pred = self.regressor(capture)
        target = landmarks_to_heatmaps(landmarks, cfg.img_size, cfg.sigma, cfg.heatmap_mode)
        l_hm = heatmap_loss(pred, target, found)
        total = l_hm
        parts = {"heatmap": l_hm}
        if cfg.heatmap_mode == "landmarks":
            nme = landmark_nme(soft_argmax(pred), torch.nan_to_num(landmarks))
            l_coord = torch.where(found, nme, torch.zeros_like(nme)).sum() / found.sum().clamp_min(1)
            total = total + cfg.lambda_coord * l_coord
            parts["nme"] = l_coord
        if psf is not None:
            grad_ok = self.train_lens
            with torch.set_grad_enabled(grad_ok and torch.is_grad_enabled()):
                l_priv = privacy_mtf_loss(psf, cfg.img_size, tuple(cfg.privacy_band))
                regs = psf_regularizer(psf, self.lens)
            parts["privacy"] = l_priv
            for k, v in regs.items():
                parts[f"psf_{k}"] = v
            if grad_ok:
                total = total + cfg.lambda_privacy * l_priv + cfg.lambda_psf * sum(regs.values())
        if self.adversary is not None:
            # the adversary is a fixed opponent in this pass: gradients flow through it into the capture only
            self.adversary.requires_grad_(False)
            l_adv = adversarial_privacy_loss(self.adversary(capture.clamp(0, 1)), images, tuple(cfg.identity_band))
            self.adversary.requires_grad_(True)
            parts["adv_privacy"] = l_adv
            if psf is not None and self.train_lens:
                total = total + cfg.lambda_adv * l_adv
        if cfg.lambda_wiener > 0 and psf is not None:
            # the attacker who knows the PSF deconvolves: the lens is also charged for what Wiener restores
            l_wiener = adversarial_privacy_loss(wiener_deconvolve(capture, self._recorded(psf)), images,
                                                tuple(cfg.identity_band))
            parts["adv_wiener"] = l_wiener
            if self.train_lens:
                total = total + cfg.lambda_wiener * l_wiener
        parts["total"] = total
        scalars = {k: float(v.detach()) for k, v in parts.items()}
        return total, scalars, {"capture": capture, "pred": pred, "target": target}

    def _generator(self, step: int, salt: int = 0) -> torch.Generator:
        seed = (self.cfg.seed * 1_000_003 + step * 7919 + salt) % (2 ** 63 - 1)
        return torch.Generator(device=self.device).manual_seed(seed)

    def train_step(self) -> dict[str, float]:
        """One optimisation step (the one numbered ``self.step``); returns its scalar losses."""
        self._refit_if_stale(max(1, self.cfg.shape_refit_every))
        self.regressor.train()
        idx = batch_indices(self.step, self.cfg.batch_size, len(self.train_set), self.cfg.seed)
        images, landmarks, found = (t.to(self.device) for t in self.train_set.batch(idx))
        if self.cfg.augment > 0:
            images, landmarks = similarity_augment(images, landmarks, self.cfg.augment,
                                                   self._generator(self.step, salt=3))
        total, scalars, extras = self.losses(images, landmarks, found, self._generator(self.step))
        self.opt_regressor.zero_grad(set_to_none=True)
        if self.opt_lens is not None:
            self.opt_lens.zero_grad(set_to_none=True)
        total.backward()
        if not self.linear_regressor:  # the linear map is fitted in closed form, not by gradient
            self.opt_regressor.step()
        if self.opt_lens is not None:
            self.opt_lens.step()
            if self.step % PROJECT_EVERY == PROJECT_EVERY - 1:
                self.lens.project()
        if self.adversary is not None:
            scalars.update(self.adversary_step(images, extras["capture"].detach()))
        scalars["valid"] = float(found.sum())
        self.step += 1
        self.history.append(scalars)
        return scalars

    def adversary_step(self, images: torch.Tensor, capture: torch.Tensor) -> dict[str, float]:
        """``adversary_steps`` Adam steps of the adversary on (capture (B, 3, S, S) detached, clean images)."""
        out = {}
        for _ in range(max(1, self.cfg.adversary_steps)):
            est = self.adversary(capture.clamp(0, 1))
            loss = inverter_loss(est, images, self.cfg.adversary_loss, tuple(self.cfg.identity_band))
            self.opt_adversary.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_adversary.step()
            out["adversary_loss"] = float(loss.detach())
        return out

    # --------------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, data: FaceLandmarkSet, batch_size: int = 32, salt: int = 1) -> dict[str, Any]:
        """Heatmap loss and (per-landmark mode) NME on a set; noise from a fixed generator.

        The linear shape regressor is first refitted for the current lens when its fit is older (the refit is
        part of the state a checkpoint saved after the evaluation holds).

        Returns:
            {"heatmap", "nme" (or None), "num_images", "num_valid", "per_image_nme" (list, NaN when no face)}.
        """
        self._refit_if_stale(1)  # report the NME of the current lens with its own fit, not a stale one
        self.regressor.eval()
        psf = self.capture_psf()
        gen = self._generator(-1, salt)
        hm, nmes, n_valid, rho, rho_w = [], [], 0, [], []
        for start in range(0, len(data), batch_size):
            idx = list(range(start, min(len(data), start + batch_size)))
            images, landmarks, found = (t.to(self.device) for t in data.batch(idx))
            capture = self._capture(images, psf, gen)
            pred = self.regressor(capture)
            target = landmarks_to_heatmaps(landmarks, self.cfg.img_size, self.cfg.sigma, self.cfg.heatmap_mode)
            if found.any():
                hm.append(float(heatmap_loss(pred, target, found)) * int(found.sum()))
            n_valid += int(found.sum())
            if self.adversary is not None:
                self.adversary.eval()
                rho += identity_correlation(self.adversary(capture.clamp(0, 1)), images,
                                            tuple(self.cfg.identity_band)).cpu().tolist()
                self.adversary.train()
            if psf is not None:
                rho_w += identity_correlation(wiener_deconvolve(capture, self._recorded(psf)), images,
                                              tuple(self.cfg.identity_band)).cpu().tolist()
            if self.cfg.heatmap_mode == "landmarks":
                nme = landmark_nme(soft_argmax(pred), torch.nan_to_num(landmarks))
                nmes += [float(v) if ok else float("nan") for v, ok in zip(nme.cpu(), found.cpu())]
        self.regressor.train()
        valid_nme = [v for v in nmes if v == v]
        return {"heatmap": sum(hm) / max(1, n_valid), "nme": float(np.mean(valid_nme)) if valid_nme else None,
                "num_images": len(data), "num_valid": n_valid, "per_image_nme": nmes,
                "adversary_identity_correlation": float(np.mean(rho)) if rho else None,
                "wiener_identity_correlation": float(np.mean(rho_w)) if rho_w else None}

    @torch.no_grad()
    def sample_grid(self, data: FaceLandmarkSet, num: int = 4) -> np.ndarray:
        """Rows of ``clean | capture | predicted heatmap | target heatmap`` for the first ``num`` images.

        Returns:
            (num * S, 4 * S, 3) float32 in [0, 1].
        """
        self.regressor.eval()
        idx = list(range(min(num, len(data))))
        images, landmarks, found = (t.to(self.device) for t in data.batch(idx))
        capture = self._capture(images, self.capture_psf(), self._generator(-1, 2))
        pred = self.regressor(capture)
        target = landmarks_to_heatmaps(landmarks, self.cfg.img_size, self.cfg.sigma, self.cfg.heatmap_mode)
        self.regressor.train()
        gray = [t.amax(dim=1, keepdim=True).expand(-1, 3, -1, -1) for t in (pred, target)]
        rows = torch.cat([images, capture.clamp(0, 1), *gray], dim=-1)  # (B, 3, S, 4S)
        return torch.cat(list(rows), dim=-2).permute(1, 2, 0).cpu().numpy()

    # -------------------------------------------------------------------------------------------- checkpoints
    def state(self) -> dict[str, Any]:
        """The checkpoint dict (see the module docstring)."""
        cfg = self.cfg
        lens = self.lens
        quant = None
        if isinstance(lens, QuantizedLens):
            quant = {"levels": lens.levels, "h_min": lens.h_range[0], "h_max": lens.h_range[1],
                     "model": getattr(lens, "quantize_model", "pupil")}
        psf = None
        if lens is None and hasattr(self.camera, "fixed_psf"):
            psf = self.camera.fixed_psf.detach().cpu()
        return {
            "step": self.step,
            "args": plain(self.args, for_json=False),
            "stage1_config": plain(asdict(cfg), for_json=False),
            "lens_config": plain(lens.config.to_dict(), for_json=False) if lens is not None else None,
            "lens": {k: v.detach().cpu() for k, v in lens.state_dict().items()} if lens is not None else None,
            "quantize": quant,
            "psf": psf,
            "sensor": self.camera.sensor.config.to_dict() if hasattr(self.camera, "sensor") else None,
            "psf_binning": psf_binning(cfg.img_size),
            "regressor_config": dict(self.regressor.config),
            "regressor": {k: v.detach().cpu() for k, v in self.regressor.state_dict().items()},
            "heatmap": {"mode": cfg.heatmap_mode, "sigma": cfg.sigma, "num_channels": self.num_channels,
                        "img_size": cfg.img_size, "teacher": self.teacher, "num_landmarks": cfg.num_landmarks},
            "adversary_config": dict(self.cfg.adversary) if self.adversary is not None else None,
            "adversary": ({k: v.detach().cpu() for k, v in self.adversary.state_dict().items()}
                          if self.adversary is not None else None),
            "optims": {"regressor": self.opt_regressor.state_dict(),
                       "lens": self.opt_lens.state_dict() if self.opt_lens is not None else None,
                       "adversary": self.opt_adversary.state_dict() if self.opt_adversary is not None else None},
            "rng": rng_state(),
            "shape_fit": plain(self.shape_fit, for_json=False) if self.shape_fit is not None else None,
            "history": [dict(h) for h in self.history],
        }

    def save(self) -> Path:
        """Write ``<checkpoint_dir>/<step>_optics.ckpt`` atomically."""
        if self.checkpoint_dir is None:
            raise ValueError("Stage1Trainer has no checkpoint_dir to save to")
        path = save_checkpoint(checkpoint_path(self.checkpoint_dir, self.step, "optics"), self.state())
        log.info("saved %s", path)
        return path

    def resume(self, step: int) -> None:
        """Load ``<checkpoint_dir>/<step>_optics.ckpt`` (networks, optimisers, RNG, history).

        Raises:
            CheckpointError: missing / unreadable file. ValueError: incompatible checkpoint (names the key).
        """
        path = checkpoint_path(self.checkpoint_dir, step, "optics")
        state = load_checkpoint(path, map_location=self.device)
        if state["heatmap"]["num_channels"] != self.num_channels:
            raise ValueError(f"{path}: heatmap num_channels {state['heatmap']['num_channels']} differs from this "
                             f"run's {self.num_channels} (--heatmap_mode / --teacher)")
        self.regressor.load_state_dict(state["regressor"])
        self.opt_regressor.load_state_dict(state["optims"]["regressor"])
        if self.linear_regressor:
            self.shape_fit = state.get("shape_fit") or {"step": int(state["step"])}
        if self.lens is not None and state["lens"] is not None:
            self.lens.load_state_dict(state["lens"])
            self._fixed_psf = None
        if self.opt_lens is not None and state["optims"]["lens"] is not None:
            self.opt_lens.load_state_dict(state["optims"]["lens"])
        if self.adversary is not None:
            if state.get("adversary") is None:
                raise ValueError(f"{path}: no 'adversary' in this checkpoint, but this run has --lambda_adv "
                                 f"{self.cfg.lambda_adv} (resume with --lambda_adv 0 or start a new run)")
            self.adversary.load_state_dict(state["adversary"])
            self.opt_adversary.load_state_dict(state["optims"]["adversary"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.history = [dict(h) for h in state.get("history", [])][: self.step]
        log.info("resumed from %s (step %d)", path, self.step)


def load_optics_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"
                           ) -> tuple[Lens | torch.Tensor, HeatmapRegressor, dict[str, Any]]:
    """Load a Stage I checkpoint (frozen, eval mode).

    Args:
        path: a ``*_optics.ckpt`` file.

    Returns:
        (optic, regressor, meta): optic is the trained Lens (a QuantizedLens when trained quantised) or, for a
        run on a measured PSF, that (C, h, w) PSF tensor (both accepted by optics.camera.Camera); meta holds
        "heatmap", "psf_binning", "step", "args", "lens_config", "quantize", "stage1_config", "sensor" (the
        SensorConfig dict; None in older checkpoints: the colour sensor). The PSF of the
        captures the regressor was trained on is ``anonymizer.stage1.losses.capture_psf(Camera(optic).psf(),
        meta["heatmap"]["img_size"])``.

    Raises:
        CheckpointError: missing / unreadable. ValueError: not a Stage I checkpoint (names the missing key).
    """
    state = load_checkpoint(path, map_location=map_location)
    for key in ("regressor", "regressor_config", "heatmap"):
        if key not in state:
            raise ValueError(f"{path}: not a Stage I optics checkpoint (no '{key}' key)")
    if state.get("lens") is not None:
        optic: Lens | torch.Tensor = lens_from_state(state["lens_config"], state["lens"], state.get("quantize"),
                                                     source=str(path))
        optic.requires_grad_(False).eval()
    elif state.get("psf") is not None:
        optic = state["psf"].float()
    else:
        raise ValueError(f"{path}: Stage I checkpoint holds neither 'lens' nor 'psf'")
    regressor = build_regressor(state["regressor_config"])
    regressor.load_state_dict(state["regressor"])
    regressor.requires_grad_(False).eval()
    meta = {k: state.get(k) for k in ("step", "args", "lens_config", "quantize", "heatmap", "psf_binning",
                                      "stage1_config", "sensor")}
    return optic, regressor, meta
