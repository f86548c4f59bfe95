"""Stage II training: StarGAN-v2's alternating D / G steps with the frozen privacy camera and heatmap regressor.

One iteration (``Solver.train_step``), as StarGAN-v2 plus the optics:

1. capture ``y = camera(x)`` and heatmap ``h = R(y)`` of the source batch (frozen, no gradient);
2. D step with a latent-guided fake, D step with a reference-guided fake (adversarial + R1 on real);
3. G step, latent-guided (updates G, F, E): adversarial + style reconstruction - diversity + cycle through the
   camera + heatmap consistency through the camera and R (with gradient);
4. G step, reference-guided (updates G): same terms with styles from E(reference);
5. EMA of G, F, E (beta 0.999).

Every random draw of step ``t`` (data order, latents, sensor noise, augmentation) comes from seeds derived from
``(seed, t, rank)``, so a run resumed from a checkpoint repeats the uninterrupted run exactly.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, fields
from typing import Any, Callable, Sequence

import torch
from torch import nn

from anonymizer.stage2 import losses as L
from anonymizer.distributed import DistInfo, wrap_ddp
from anonymizer.stage2.model import Nets

log = logging.getLogger(__name__)

__all__ = ["TrainOptions", "Batch", "FrozenCamera", "StepData", "Solver", "moving_average", "step_seed"]


@dataclass
class TrainOptions:
    """Loss weights and optimiser settings (the reference's flags, same names and defaults)."""

    lambda_reg: float = 1.0
    lambda_sty: float = 1.0
    lambda_ds: float = 1.0
    lambda_cyc: float = 1.0
    lambda_hm: float = 1.0
    ds_iter: int = 100000
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
    """One training batch. Images (B, 3, S, S) in [0, 1]; labels (B,) int64; latents (B, latent_dim)."""

    x_src: torch.Tensor
    y_src: torch.Tensor
    x_ref: torch.Tensor
    x_ref2: torch.Tensor
    y_ref: torch.Tensor
    z_trg: torch.Tensor
    z_trg2: torch.Tensor

    def to(self, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format) -> "Batch":
        def move(t: torch.Tensor) -> torch.Tensor:
            t = t.to(device, non_blocking=True)
            return t.contiguous(memory_format=memory_format) if t.ndim == 4 else t

        return Batch(**{f.name: move(getattr(self, f.name)) for f in fields(self)})


def step_seed(seed: int, step: int, rank: int = 0, stream: int = 0) -> int:
    """Seed of the random draws of ``step`` on ``rank`` (stream separates independent uses)."""
    return (seed * 1_000_003 + step * 7919 + rank * 104_729 + stream * 15_485_863) % (2 ** 63 - 1)


class FrozenCamera(nn.Module):
    """A frozen camera whose PSF is computed once (the lens does not train in Stage II).

    Gradients flow through the image formation to the input image; the camera has no trainable parameter.
    """

    def __init__(self, camera: nn.Module):
        super().__init__()
        camera.requires_grad_(False)
        self.camera = camera
        with torch.no_grad():
            self.register_buffer("psf", camera.psf().detach().clone().float())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image: (B, 3, H, W) in [0, 1] -> capture (B, 3, H, W) in [0, 1]."""
        return self.camera(image, psf=self.psf.to(image.device))


class StepData:
    """Deterministic batches per step: source order from ``DistributedSampler`` (shuffled per epoch), references
    from a second sampler, latents from the step's seed.

    Args:
        source: dataset with items ``(image (3, S, S), label, path)`` (``data.datasets.SourceDataset``).
        reference: dataset with items ``(x_ref, x_ref2, label)`` (``data.datasets.ReferenceDataset``).
        batch_size: per-process batch.
        latent_dim: length of the latents.
        seed: run seed.
        info: process placement (rank / world size).
    """

    def __init__(self, source: Any, reference: Any, batch_size: int, latent_dim: int, seed: int,
                 info: DistInfo | None = None):
        from torch.utils.data import DistributedSampler

        self.info = info or DistInfo()
        self.source, self.reference = source, reference
        self.batch_size, self.latent_dim, self.seed = batch_size, latent_dim, seed
        need = batch_size * self.info.world_size
        for name, ds in (("source", source), ("reference", reference)):
            if len(ds) < need:
                raise ValueError(f"{name} dataset has {len(ds)} images, fewer than one batch "
                                 f"({batch_size} x {self.info.world_size} processes)")
        kw = dict(num_replicas=self.info.world_size, rank=self.info.rank, shuffle=True, drop_last=True)
        self.samplers = (DistributedSampler(source, seed=seed, **kw),
                         DistributedSampler(reference, seed=seed + 1, **kw))
        self._epoch_cache: list[tuple[int, list[int]] | None] = [None, None]

    def _indices(self, which: int, step: int) -> list[int]:
        sampler = self.samplers[which]
        per_epoch = len(sampler) // self.batch_size
        epoch, pos = divmod(step, per_epoch)
        cached = self._epoch_cache[which]
        if cached is None or cached[0] != epoch:
            sampler.set_epoch(epoch)
            cached = (epoch, list(iter(sampler)))
            self._epoch_cache[which] = cached
        return cached[1][pos * self.batch_size:(pos + 1) * self.batch_size]

    def batch(self, step: int) -> Batch:
        """The batch of iteration ``step`` (0-based) on this process."""
        torch.manual_seed(step_seed(self.seed, step, self.info.rank, stream=1))  # augmentation draws
        src = [self.source[i] for i in self._indices(0, step)]
        ref = [self.reference[i] for i in self._indices(1, step)]
        gen = torch.Generator().manual_seed(step_seed(self.seed, step, self.info.rank, stream=2))
        b = len(src)
        return Batch(
            x_src=torch.stack([s[0] for s in src]), y_src=torch.tensor([int(s[1]) for s in src]),
            x_ref=torch.stack([r[0] for r in ref]), x_ref2=torch.stack([r[1] for r in ref]),
            y_ref=torch.tensor([int(r[2]) for r in ref]),
            z_trg=torch.randn(b, self.latent_dim, generator=gen), z_trg2=torch.randn(b, self.latent_dim, generator=gen))


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
        nets, nets_ema: from :func:`anonymizer.stage2.model.build_model` (moved to ``device`` here).
        camera: frozen camera, (B, 3, S, S) in [0, 1] -> capture; wrapped in :class:`FrozenCamera` if it has
            ``psf()``.
        regressor: frozen Stage I heatmap regressor, capture -> (B, K, S, S) in [0, 1].
        options: loss weights and optimiser settings.
        device: where to train.
        info: process placement; when distributed, the trained networks are wrapped in DDP.
    """

    def __init__(self, nets: Nets, nets_ema: Nets, camera: nn.Module, regressor: nn.Module,
                 options: TrainOptions, device: torch.device | str = "cpu", info: DistInfo | None = None):
        self.device = torch.device(device)
        self.opts = options
        self.info = info or DistInfo()
        cuda = self.device.type == "cuda"
        self.amp = bool(options.amp and cuda)
        self.memory_format = torch.channels_last if (options.channels_last and cuda) else torch.contiguous_format
        self.nets = nets.to(self.device, memory_format=self.memory_format).train()
        self.nets_ema = nets_ema.to(self.device, memory_format=self.memory_format).eval()
        if hasattr(camera, "psf") and not isinstance(camera, FrozenCamera):
            camera = FrozenCamera(camera)
        self.camera = camera.to(self.device).eval().requires_grad_(False)
        self.regressor = regressor.to(self.device).eval().requires_grad_(False)
        # forward modules: DDP-wrapped when distributed (gradients averaged over ranks)
        self.G = wrap_ddp(nets.generator, self.info, self.device)
        self.F = wrap_ddp(nets.mapping_network, self.info, self.device)
        self.E = wrap_ddp(nets.style_encoder, self.info, self.device)
        self.D = wrap_ddp(nets.discriminator, self.info, self.device)
        o = options
        adam = dict(betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)
        self.optims = {name: torch.optim.Adam(m.parameters(), lr=o.f_lr if name == "mapping_network" else o.lr,
                                              **adam)
                       for name, m in nets.items()}

    # ------------------------------------------------------------------ losses
    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Capture and heatmap of clean faces x (B, 3, S, S) in [0, 1]: ((B, 3, S, S), (B, K, S, S))."""
        capture = self.camera(x)
        return capture, self.regressor(capture).float()

    def d_loss(self, batch: Batch, capture: torch.Tensor, heatmap: torch.Tensor,
               guide: str) -> tuple[torch.Tensor, dict[str, float]]:
        """Discriminator loss: real -> 1 with R1, fake (latent- or reference-guided) -> 0."""
        x_real = batch.x_src.detach().requires_grad_()
        with self._autocast():
            out = self.D(x_real, batch.y_src)
            loss_real = L.adversarial_loss(out.float(), 1)
        loss_reg = L.r1_penalty(out, x_real)
        with torch.no_grad(), self._autocast():
            s_trg = self.F(batch.z_trg, batch.y_ref) if guide == "latent" else self.E(batch.x_ref, batch.y_ref)
            x_fake = self.G(capture, heatmap, s_trg)
        with self._autocast():
            loss_fake = L.adversarial_loss(self.D(x_fake, batch.y_ref).float(), 0)
        loss = loss_real + loss_fake + self.opts.lambda_reg * loss_reg
        return loss, {"real": loss_real.item(), "fake": loss_fake.item(), "reg": loss_reg.item()}

    def g_loss(self, batch: Batch, capture: torch.Tensor, heatmap: torch.Tensor, guide: str,
               lambda_ds: float) -> tuple[torch.Tensor, dict[str, float]]:
        """Generator loss: adversarial + style reconstruction - diversity + cycle + heatmap consistency."""
        o = self.opts
        with self._autocast():
            if guide == "latent":
                s_trg, s_trg2 = self.F(batch.z_trg, batch.y_ref), self.F(batch.z_trg2, batch.y_ref)
            else:
                s_trg, s_trg2 = self.E(batch.x_ref, batch.y_ref), self.E(batch.x_ref2, batch.y_ref)
            x_fake = self.G(capture, heatmap, s_trg)
            loss_adv = L.adversarial_loss(self.D(x_fake, batch.y_ref).float(), 1)
            loss_sty = L.style_reconstruction_loss(self.E(x_fake, batch.y_ref).float(), s_trg.float())
            x_fake2 = self.G(capture, heatmap, s_trg2).detach()
            loss_ds = L.diversity_loss(x_fake.float(), x_fake2.float())
            s_src = self.E(batch.x_src, batch.y_src)
            loss_cyc = L.cycle_loss(self.camera, self.G, x_fake, heatmap, s_src, batch.x_src).float()
            loss_hm = L.heatmap_consistency_loss(self.camera, self.regressor, x_fake, heatmap)
        loss = (loss_adv + o.lambda_sty * loss_sty - lambda_ds * loss_ds + o.lambda_cyc * loss_cyc
                + o.lambda_hm * loss_hm)
        return loss, {"adv": loss_adv.item(), "sty": loss_sty.item(), "ds": loss_ds.item(),
                      "cyc": loss_cyc.item(), "hm": loss_hm.item()}

    # ------------------------------------------------------------------ one iteration
    def _zero_grad(self) -> None:
        for opt in self.optims.values():
            opt.zero_grad(set_to_none=True)

    def _backward(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise FloatingPointError(f"Stage II loss is not finite ({loss.item()})")
        self._zero_grad()
        loss.backward()

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        """One StarGAN-v2 iteration on ``batch`` (``step``: 0-based index of this iteration).

        Returns:
            Scalar logs, keys ``D/latent_real`` ... ``G/ref_hm`` and ``G/lambda_ds``.
        """
        torch.manual_seed(step_seed(self.opts.seed, step, self.info.rank, stream=3))  # sensor noise draws
        batch = batch.to(self.device, self.memory_format)
        capture, heatmap = self.observe(batch.x_src)
        logs: dict[str, float] = {}
        for guide in ("latent", "ref"):
            loss, parts = self.d_loss(batch, capture, heatmap, "latent" if guide == "latent" else "ref")
            self._backward(loss)
            self.optims["discriminator"].step()
            logs.update({f"D/{guide}_{k}": v for k, v in parts.items()})
        lambda_ds = L.ds_weight(self.opts.lambda_ds, step, self.opts.ds_iter)
        for guide in ("latent", "ref"):
            loss, parts = self.g_loss(batch, capture, heatmap, guide, lambda_ds)
            self._backward(loss)
            self.optims["generator"].step()
            if guide == "latent":
                self.optims["mapping_network"].step()
                self.optims["style_encoder"].step()
            logs.update({f"G/{guide}_{k}": v for k, v in parts.items()})
        for name, ema in self.nets_ema.items():
            moving_average(getattr(self.nets, name), ema, self.opts.ema_beta)
        logs["G/lambda_ds"] = lambda_ds
        return logs

    # ------------------------------------------------------------------ state
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


def run_steps(solver: Solver, data: StepData | Callable[[int], Batch], start: int, stop: int,
              on_step: Callable[[int, dict[str, float]], None] | None = None, progress: bool = True) -> None:
    """Train iterations ``start .. stop - 1``; ``on_step(i + 1, logs)`` after each (i + 1 = finished count)."""
    from tqdm import tqdm

    get = data.batch if isinstance(data, StepData) else data
    for i in tqdm(range(start, stop), initial=start, total=stop, disable=not progress, desc="stage II",
                  dynamic_ncols=True):
        logs = solver.train_step(get(i), i)
        if on_step is not None:
            on_step(i + 1, logs)


def gradients(modules: Sequence[nn.Module]) -> list[torch.Tensor]:
    """Copies of the current gradients (zeros where None) of the modules' parameters, in order."""
    out = []
    for m in modules:
        for p in _unwrap(m).parameters():
            out.append(torch.zeros_like(p) if p.grad is None else p.grad.detach().clone())
    return out
