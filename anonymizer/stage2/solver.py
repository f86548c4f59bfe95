"""Stage II training: the anonymizer learns to render the WARPED reference in the source's geometry.

One iteration (``Solver.train_step``) on a batch of :mod:`data.loader` (``Stage2Steps``):

1. capture ``y = camera(x)``, heatmaps ``h = R(y)`` and points ``p = soft_argmax(h)`` of the source (frozen, no
   gradient); the geometry of everything below is ``p``, what the capture gives at test time;
2. the WHOLE reference frame is warped onto ``p`` (:func:`anonymizer.stage2.warp.piecewise_affine_warp` with
   ``face_only=False``: the face triangles carry the face, the triangles anchored at the image corners carry the
   reference's own hair / background, folds are masked) and its style ``s = E(reference)``. Taking the
   surroundings from the reference too is deliberate: outside the face the capture still shows the source's hair,
   ears and background, which identify (and dominate the pixel difference between two sources);
3. one fake per step (generated once: D sees it detached, then G's losses use it), of one of two kinds
   alternating with ``step % 2``:

   * **self** (even steps): the reference is the SAME face under a random similarity + smooth displacement +
     photometric change (``x_self``); the generator must give back the source: ``lambda_rec * |G - x|_1``.
     Geometry can only come from the capture / heatmap / points, appearance from the reference;
   * **cross** (odd steps): the reference is another person (``x_ref``); no target exists, so: the output keeps
     the warped reference where the warp is valid (``lambda_ref * |mask (G - warped)|_1``), StarGAN-v2's style
     reconstruction ``|E(G) - s|`` and diversity between two references (``- lambda_ds * |G(ref) - G(ref2)|``,
     decaying), and optionally the cycle through the camera (``lambda_cyc``: the fake's capture + the
     self-reference must give back the source; one more generator pass);

   both kinds add the adversarial loss (non-saturating, D with R1 on real faces); the cross steps add the
   heatmap consistency WITH gradient ``MSE(R(camera(G)), h)`` (in self steps the reconstruction already pins the
   geometry, and the regressor's backward pass is a third of a CPU step);
4. EMA of G, F, E (beta ``ema_beta``).

The mapping network F (latent-guided styles) is kept in the model and the checkpoint but not trained here:
appearance comes from a reference.

The camera is ONE fixed-PSF ``optics.camera.Camera`` (its PSF is the checkpoint's ``psf``; a lens camera is
refused, so the PSF the generator trains with is never ambiguous). Every random draw of step ``t`` (data,
augmentation, sensor noise) comes from seeds derived from ``(seed, t, rank)``, so a resumed run repeats the
uninterrupted one exactly.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from anonymizer.distributed import DistInfo, wrap_ddp
from anonymizer.stage1.heatmap import soft_argmax
from anonymizer.stage2 import losses as L
from anonymizer.stage2.model import Nets
from anonymizer.stage2.warp import piecewise_affine_warp
from data.loader import BATCH_KEYS, step_seed

log = logging.getLogger(__name__)

__all__ = ["TrainOptions", "Batch", "Solver", "moving_average", "step_seed", "run_steps", "gradients",
           "check_fixed_camera"]


@dataclass
class TrainOptions:
    """Loss weights and optimiser settings (StarGAN-v2's flag names and defaults where they exist)."""

    lambda_reg: float = 1.0
    lambda_sty: float = 1.0
    lambda_ds: float = 1.0
    lambda_cyc: float = 0.0
    lambda_hm: float = 1.0
    lambda_rec: float = 10.0
    lambda_ref: float = 1.0
    ds_iter: int = 100000
    r1_every: int = 4
    lr: float = 1e-4
    f_lr: float = 1e-6
    beta1: float = 0.0
    beta2: float = 0.99
    weight_decay: float = 1e-4
    ema_beta: float = 0.999
    latent_dim: int = 16
    seed: int = 777
    amp: bool = False
    channels_last: bool = False

    @classmethod
    def from_args(cls, args: Any) -> "TrainOptions":
        """From an argparse namespace / dict; missing keys keep their defaults."""
        src = args if isinstance(args, dict) else vars(args)
        return cls(**{f.name: src[f.name] for f in fields(cls) if src.get(f.name) is not None})


@dataclass
class Batch:
    """One training batch (the dict of :class:`data.loader.Stage2Steps` as attributes).

    Images (B, 3, S, S) in [0, 1]; ``pts_*`` (B, 68, 2) teacher landmarks [px]; labels (B,) int64; latents
    (B, latent_dim).
    """

    x_src: torch.Tensor
    pts_src: torch.Tensor
    y_src: torch.Tensor
    x_self: torch.Tensor
    pts_self: torch.Tensor
    x_ref: torch.Tensor
    pts_ref: torch.Tensor
    x_ref2: torch.Tensor
    pts_ref2: torch.Tensor
    y_ref: torch.Tensor
    z_trg: torch.Tensor
    z_trg2: torch.Tensor

    @classmethod
    def from_dict(cls, d: dict[str, torch.Tensor]) -> "Batch":
        missing = [k for k in BATCH_KEYS if k not in d]
        if missing:
            raise KeyError(f"Stage II batch lacks {missing}")
        return cls(**{k: d[k] for k in BATCH_KEYS})

    def to(self, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format) -> "Batch":
        def move(t: torch.Tensor) -> torch.Tensor:
            t = t.to(device, non_blocking=True)
            return t.contiguous(memory_format=memory_format) if t.ndim == 4 else t

        return Batch(**{f.name: move(getattr(self, f.name)) for f in fields(self)})


def check_fixed_camera(camera: nn.Module) -> nn.Module:
    """The Stage II camera must be an ``optics.camera.Camera`` holding a FIXED PSF (``Camera(psf_tensor)``).

    Raises:
        TypeError: a lens camera (its PSF could change) or something without a PSF.
    """
    if not hasattr(camera, "psf") or getattr(camera, "lens", None) is not None or not hasattr(camera, "fixed_psf"):
        raise TypeError("Stage II needs one fixed-PSF Camera (optics.camera.Camera(psf)); got "
                        f"{type(camera).__name__} with a lens or without a fixed PSF")
    return camera.requires_grad_(False).eval()


@torch.no_grad()
def moving_average(model: nn.Module, model_ema: nn.Module, beta: float = 0.999) -> None:
    """``ema <- beta * ema + (1 - beta) * param`` for every parameter; buffers are copied."""
    for p, p_ema in zip(model.parameters(), model_ema.parameters()):
        p_ema.lerp_(p.detach().to(p_ema.dtype), 1.0 - beta)
    for b, b_ema in zip(model.buffers(), model_ema.buffers()):
        b_ema.copy_(b)


def _unwrap(module: nn.Module) -> nn.Module:
    return getattr(module, "module", module)


class Solver:
    """Stage II trainer.

    Args:
        nets, nets_ema: from :func:`anonymizer.stage2.model.build_model` with ``reference_input=True``.
        camera: fixed-PSF ``optics.camera.Camera`` (frozen here), (B, 3, S, S) in [0, 1] -> capture.
        regressor: frozen Stage I heatmap regressor with 68 per-landmark channels, capture -> (B, 68, S, S).
        options: loss weights and optimiser settings.
        device: where to train.
        info: process placement; when distributed, the trained networks are wrapped in DDP.
    """

    def __init__(self, nets: Nets, nets_ema: Nets, camera: nn.Module, regressor: nn.Module,
                 options: TrainOptions, device: torch.device | str = "cpu", info: DistInfo | None = None):
        self.device = torch.device(device)
        self.opts = options
        self.info = info or DistInfo()
        if not nets.generator.reference_input:
            raise ValueError("Stage II training needs a generator built with reference_input=True")
        cuda = self.device.type == "cuda"
        self.amp = bool(options.amp and cuda)
        self.memory_format = torch.channels_last if (options.channels_last and cuda) else torch.contiguous_format
        self.nets = nets.to(self.device, memory_format=self.memory_format).train()
        self.nets_ema = nets_ema.to(self.device, memory_format=self.memory_format).eval()
        self.camera = check_fixed_camera(camera).to(self.device)
        self.regressor = regressor.to(self.device).eval().requires_grad_(False)
        self.G = wrap_ddp(nets.generator, self.info, self.device)
        self.F = wrap_ddp(nets.mapping_network, self.info, self.device)
        self.E = wrap_ddp(nets.style_encoder, self.info, self.device)
        self.D = wrap_ddp(nets.discriminator, self.info, self.device)
        o = options
        adam = dict(betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)
        self.optims = {name: torch.optim.Adam(m.parameters(), lr=o.f_lr if name == "mapping_network" else o.lr,
                                              **adam)
                       for name, m in nets.items()}

    @property
    def psf(self) -> torch.Tensor:
        """(C, h, w) the capture PSF the generator trains with."""
        return self.camera.fixed_psf

    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Capture, heatmaps and soft-argmax points of clean faces x (B, 3, S, S) in [0, 1]:
        ((B, 3, S, S), (B, 68, S, S), (B, 68, 2) [px])."""
        capture = self.camera(x)
        heatmap = self.regressor(capture).float()
        return capture, heatmap, soft_argmax(heatmap)

    def generate(self, capture: torch.Tensor, heatmap: torch.Tensor, points: torch.Tensor, ref: torch.Tensor,
                 ref_points: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(fake, style, warp mask) for references ``ref`` with landmarks ``ref_points`` onto ``points``."""
        warp = piecewise_affine_warp(ref, ref_points, points, face_only=False)  # whole frame, folds masked
        s = self.E(ref, y)
        return self.G(capture, heatmap, s, warp.warped, warp.valid), s, warp

    def d_loss(self, batch: Batch, x_fake: torch.Tensor, y_fake: torch.Tensor, r1: bool = True
               ) -> tuple[torch.Tensor, dict[str, float]]:
        """Discriminator loss: real source -> 1 (+ R1 when ``r1``, weighted ``lambda_reg * r1_every``: lazy R1 as
        StyleGAN2, the double backward is the most expensive part of a CPU D step), this step's fake -> 0."""
        x_real = batch.x_src.detach().requires_grad_(r1)
        with self._autocast():
            out = self.D(x_real, batch.y_src)
            loss_real = L.adversarial_loss(out.float(), 1)
        loss_reg = L.r1_penalty(out, x_real) * self.opts.r1_every if r1 else torch.zeros(())
        with self._autocast():
            loss_fake = L.adversarial_loss(self.D(x_fake.detach(), y_fake).float(), 0)
        loss = loss_real + loss_fake + self.opts.lambda_reg * loss_reg
        return loss, {"real": loss_real.item(), "fake": loss_fake.item(), "reg": loss_reg.item()}

    def fake(self, batch: Batch, capture: torch.Tensor, heatmap: torch.Tensor, points: torch.Tensor,
             kind: str) -> tuple[torch.Tensor, torch.Tensor, Any, torch.Tensor]:
        """(fake, style, warp, y) of a ``"self"`` or ``"cross"`` step, with gradient."""
        if kind == "self":
            x_fake, s, warp = self.generate(capture, heatmap, points, batch.x_self, batch.pts_self, batch.y_src)
            return x_fake, s, warp, batch.y_src
        x_fake, s, warp = self.generate(capture, heatmap, points, batch.x_ref, batch.pts_ref, batch.y_ref)
        return x_fake, s, warp, batch.y_ref

    def g_loss(self, batch: Batch, capture: torch.Tensor, heatmap: torch.Tensor, points: torch.Tensor, kind: str,
               lambda_ds: float, generated: tuple | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Generator (+ style encoder) loss of a ``"self"`` or ``"cross"`` step (see the module docstring).

        ``generated``: the step's :meth:`fake` when already computed (the D step used it detached)."""
        o = self.opts
        logs: dict[str, float] = {}
        with self._autocast():
            x_fake, s, warp, y = generated or self.fake(batch, capture, heatmap, points, kind)
            if kind == "self":
                loss_rec = (x_fake.float() - batch.x_src.float()).abs().mean()
                loss = o.lambda_rec * loss_rec
                logs["rec"] = loss_rec.item()
            else:
                m = warp.valid
                loss_ref = ((x_fake.float() - warp.warped.float()).abs() * m).sum() / (3 * m.sum()).clamp_min(1)
                loss_sty = L.style_reconstruction_loss(self.E(x_fake, y).float(), s.float())
                loss = o.lambda_ref * loss_ref + o.lambda_sty * loss_sty
                logs.update(ref=loss_ref.item(), sty=loss_sty.item())
                if lambda_ds > 0:
                    with torch.no_grad():
                        x_fake2 = self.generate(capture, heatmap, points, batch.x_ref2, batch.pts_ref2, y)[0]
                    loss_ds = L.diversity_loss(x_fake.float(), x_fake2.float())
                    loss = loss - lambda_ds * loss_ds
                    logs["ds"] = loss_ds.item()
                if o.lambda_cyc > 0:
                    cap_f = self.camera(x_fake)
                    hm_f = self.regressor(cap_f).float()
                    back = self.generate(cap_f, hm_f, points, batch.x_self, batch.pts_self, batch.y_src)[0]
                    loss_cyc = (back.float() - batch.x_src.float()).abs().mean()
                    loss = loss + o.lambda_cyc * loss_cyc
                    logs["cyc"] = loss_cyc.item()
                # heatmap consistency with gradient (cross steps: the self steps' reconstruction pins geometry)
                loss_hm = L.heatmap_consistency_loss(self.camera, self.regressor, x_fake, heatmap)
                loss = loss + o.lambda_hm * loss_hm
                logs["hm"] = loss_hm.item()
            loss_adv = L.adversarial_loss(self.D(x_fake, y).float(), 1)
        loss = loss + loss_adv
        logs.update(adv=loss_adv.item(), warp_valid=warp.valid.mean().item())
        return loss, logs

    def _zero_grad(self) -> None:
        for opt in self.optims.values():
            opt.zero_grad(set_to_none=True)

    def _backward(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise FloatingPointError(f"Stage II loss is not finite ({loss.item()})")
        self._zero_grad()
        loss.backward()

    def train_step(self, batch: Batch | dict[str, torch.Tensor], step: int) -> dict[str, float]:
        """One iteration on ``batch`` (``step``: 0-based index of this iteration; even = self, odd = cross).

        Returns:
            Scalar logs ``D/<kind>_real`` ... ``G/<kind>_hm`` and ``G/lambda_ds``.
        """
        if isinstance(batch, dict):
            batch = Batch.from_dict(batch)
        torch.manual_seed(step_seed(self.opts.seed, step, self.info.rank, stream=3))  # sensor noise draws
        batch = batch.to(self.device, self.memory_format)
        capture, heatmap, points = self.observe(batch.x_src)
        kind = "self" if step % 2 == 0 else "cross"
        generated = self.fake(batch, capture, heatmap, points, kind)
        loss, parts = self.d_loss(batch, generated[0], generated[3], r1=step % max(1, self.opts.r1_every) == 0)
        self._backward(loss)
        self.optims["discriminator"].step()
        logs = {f"D/{kind}_{k}": v for k, v in parts.items()}
        lambda_ds = L.ds_weight(self.opts.lambda_ds, step, self.opts.ds_iter)
        self.D.requires_grad_(False)  # G's adversarial term: no gradient into D
        try:
            loss, parts = self.g_loss(batch, capture, heatmap, points, kind, lambda_ds, generated)
            self._backward(loss)
        finally:
            self.D.requires_grad_(True)
        self.optims["generator"].step()
        self.optims["style_encoder"].step()
        logs.update({f"G/{kind}_{k}": v for k, v in parts.items()})
        for name, ema in self.nets_ema.items():
            moving_average(getattr(self.nets, name), ema, self.opts.ema_beta)
        logs["G/lambda_ds"] = lambda_ds
        return logs

    def state(self) -> dict[str, Any]:
        """Networks, EMA networks, optimisers and RNG states (checkpoint payload, plain tensors only)."""
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
        return {"nets": self.nets.state_dict(), "nets_ema": self.nets_ema.state_dict(),
                "optims": {k: v.state_dict() for k, v in self.optims.items()}, "rng": rng}

    def load_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state` (KeyError names a missing entry)."""
        for key in ("nets", "nets_ema", "optims"):
            if key not in state:
                raise KeyError(f"Stage II checkpoint has no '{key}' entry")
        self.nets.load_state_dict(state["nets"])
        self.nets_ema.load_state_dict(state["nets_ema"])
        for name, opt in self.optims.items():
            opt.load_state_dict(state["optims"][name])
        rng = state.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"].cpu())
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])


def run_steps(solver: Solver, batches: Iterable[Any] | Callable[[int], Any], start: int, stop: int,
              on_step: Callable[[int, dict[str, float]], None] | None = None, progress: bool = True) -> None:
    """Train iterations ``start .. stop - 1``; ``batches`` is an iterable yielding the batches of exactly those
    steps in order (``data.loader.step_loader``) or a function ``step -> batch``; ``on_step(i + 1, logs)`` after
    each (i + 1 = finished count)."""
    from tqdm import tqdm

    it = None if callable(batches) else iter(batches)
    for i in tqdm(range(start, stop), initial=start, total=stop, disable=not progress, desc="stage II",
                  dynamic_ncols=True):
        batch = batches(i) if it is None else next(it)
        logs = solver.train_step(batch, i)
        if on_step is not None:
            on_step(i + 1, logs)


def gradients(modules: Sequence[nn.Module]) -> list[torch.Tensor]:
    """Copies of the current gradients (zeros where None) of the modules' parameters, in order."""
    out = []
    for m in modules:
        for p in _unwrap(m).parameters():
            out.append(torch.zeros_like(p) if p.grad is None else p.grad.detach().clone())
    return out
