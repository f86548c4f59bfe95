"""Using a trained Stage II model: the frozen optics, checkpoint loading, :func:`anonymize`, sample grids.

Stage II checkpoint (``<checkpoint_dir>/<step:06d>_nets.ckpt``, written by ``pipelines/train.py``)::

    {version, step, args, model: build_model kwargs, nets, nets_ema, optims, rng,
     psf: (C, h, w) capture PSF the generator was trained with, regressor_config, regressor, heatmap: dict,
     optics: {"source": optics checkpoint / PSF file / lens preset it came from}}

It is self-contained: :func:`load_anonymizer` rebuilds the EMA networks, the camera (a fixed-PSF Camera with
the PSF used in training) and the frozen heatmap regressor from it alone.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data.checkpoint import CheckpointError, checkpoint_path, latest_step, load_checkpoint
from anonymizer.stage2.model import MODEL_KEYS, Nets, build_model

log = logging.getLogger(__name__)

STAGE2_NAME = "nets"

__all__ = ["STAGE2_NAME", "FrozenOptics", "frozen_optics_from_checkpoint", "load_anonymizer", "anonymize",
           "AnonymizeResult", "resolve_stage2_checkpoint", "image_grid"]


@dataclass
class FrozenOptics:
    """The frozen camera + heatmap regressor of Stage II.

    Attributes:
        camera: ``optics.camera.Camera`` with the capture PSF at the training resolution as a fixed buffer.
        regressor: ``anonymizer.stage1.heatmap.HeatmapRegressor`` (eval, requires_grad False).
        heatmap: Stage I heatmap metadata {"mode", "sigma", "num_channels", "img_size", ...}.
        source: where they came from (file path or preset name).
    """

    camera: nn.Module
    regressor: nn.Module
    heatmap: dict[str, Any]
    source: str


def frozen_optics_from_checkpoint(path: str | os.PathLike, img_size: int, psf: torch.Tensor | None = None,
                                  noise: bool = True) -> FrozenOptics:
    """Camera + regressor of a Stage I checkpoint, the PSF binned to the capture grid at ``img_size``.

    Args:
        path: ``*_optics.ckpt`` of ``--mode train_optics``.
        img_size: Stage II image side [px]; must equal the regressor's training size.
        psf: optional calibrated (C, h, w) PSF at the sensor pitch (``--psf``, loaded by the caller) replacing the
            checkpoint's lens (the regressor stays).
        noise: sensor noise on.

    Raises:
        ValueError: the regressor was trained at another img_size (names the file).
    """
    from anonymizer.stage1.trainer import load_optics_checkpoint
    from optics.binning import capture_psf
    from optics.camera import Camera

    optic, regressor, meta = load_optics_checkpoint(path)
    heat = dict(meta.get("heatmap") or {})
    if heat.get("img_size") not in (None, img_size):
        raise ValueError(f"{path}: the heatmap regressor was trained at img_size {heat['img_size']}, "
                         f"Stage II runs at --img_size {img_size}")
    source = str(path)
    if psf is not None:
        optic, source = psf, f"{path} (lens replaced by a measured PSF)"
    fixed = capture_psf(Camera(optic).psf().detach().float(), img_size)
    camera = Camera(fixed, noise=noise).requires_grad_(False).eval()
    return FrozenOptics(camera, regressor.requires_grad_(False).eval(), heat, source)


def resolve_stage2_checkpoint(checkpoint: str | os.PathLike, step: int | None = None) -> Path:
    """A Stage II checkpoint file from a file path, or from a folder + step (None or 0: the latest).

    Raises:
        CheckpointError: nothing found (names the folder / file).
    """
    p = Path(checkpoint)
    if p.is_file():
        return p
    if not p.is_dir():
        raise CheckpointError(f"{p}: no such checkpoint file or folder")
    if not step:
        step = latest_step(p, STAGE2_NAME)
        if step is None:
            raise CheckpointError(f"{p}: no Stage II checkpoint (*_{STAGE2_NAME}.ckpt) in this folder")
    return checkpoint_path(p, step, STAGE2_NAME)


def load_anonymizer(checkpoint: str | os.PathLike, step: int | None = None, device: str | torch.device = "cpu",
                    noise: bool = True, psf: torch.Tensor | None = None) -> tuple[Nets, nn.Module, nn.Module, dict]:
    """Load a trained anonymizer for inference.

    Args:
        checkpoint: a ``*_nets.ckpt`` file, or a checkpoint folder (with ``step``; None = latest).
        step: training step when ``checkpoint`` is a folder.
        device: where to put the networks.
        noise: sensor noise of the rebuilt camera.
        psf: optional calibrated (C, h, w) PSF at the sensor pitch (``--psf``, loaded by the caller) replacing
            the stored training PSF.

    Returns:
        (nets_ema, camera, regressor, meta): EMA generator / mapping network / style encoder in eval mode;
        fixed-PSF camera; frozen regressor; meta = {"step", "args", "model", "heatmap", "optics", "path"}.
    """
    from anonymizer.stage1.heatmap import HeatmapRegressor
    from optics.camera import Camera

    path = resolve_stage2_checkpoint(checkpoint, step)
    state = load_checkpoint(path, map_location="cpu")
    for key in ("model", "nets_ema", "psf", "regressor", "regressor_config"):
        if key not in state:
            raise ValueError(f"{path}: not a Stage II checkpoint (no '{key}' key)")
    _, nets_ema = build_model(**{k: state["model"][k] for k in MODEL_KEYS if k in state["model"]})
    nets_ema.load_state_dict(state["nets_ema"])
    nets_ema.to(device).eval()
    fixed = state["psf"].float()
    if psf is not None:
        from optics.binning import capture_psf

        fixed = capture_psf(psf.float(), int(state["model"]["img_size"]))
    camera = Camera(fixed, noise=noise).requires_grad_(False).eval().to(device)
    regressor = HeatmapRegressor(**state["regressor_config"])
    regressor.load_state_dict(state["regressor"])
    regressor.requires_grad_(False).eval().to(device)
    meta = {k: state.get(k) for k in ("step", "args", "model", "heatmap", "optics")}
    meta["path"] = str(path)
    return nets_ema, camera, regressor, meta


@dataclass
class AnonymizeResult:
    """Output of :func:`anonymize`.

    Attributes:
        capture: (B, 3, S, S) in [0, 1], the camera's image of each source.
        heatmap: (B, K, S, S) in [0, 1], the regressor's heatmaps of the captures.
        outputs: (B, N, 3, S, S) in [0, 1] (every source with every style), or (B, 3, S, S) when ``paired``.
    """

    capture: torch.Tensor
    heatmap: torch.Tensor
    outputs: torch.Tensor


@torch.no_grad()
def anonymize(nets_ema: Nets, camera: nn.Module, regressor: nn.Module, images: torch.Tensor,
              refs_or_latents: torch.Tensor, domains: torch.Tensor | int | None = None, paired: bool = False,
              batch_size: int = 16) -> AnonymizeResult:
    """De-identify faces: image them through the privacy camera, then synthesise new faces.

    Args:
        nets_ema: networks (EMA copies) from :func:`load_anonymizer` or ``build_model``.
        camera: (B, 3, S, S) in [0, 1] -> capture (B, 3, S, S) in [0, 1].
        regressor: capture -> heatmap (B, K, S, S) in [0, 1].
        images: (B, 3, S, S) in [0, 1], clean source faces (the only place they are used is the camera).
        refs_or_latents: reference faces (N, 3, S, S) in [0, 1] (reference-guided; style from the style
            encoder) or latents (N, latent_dim) (latent-guided; style from the mapping network).
        domains: (N,) int64 target domain per reference / latent, or one int for all (default 0).
        paired: if True, N must equal B and source i gets style i; otherwise every source gets every style.
        batch_size: sources per generator call.

    Returns:
        :class:`AnonymizeResult` (on the device of ``images``).
    """
    device = images.device
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected (B, 3, S, S), got {tuple(images.shape)}")
    n = refs_or_latents.shape[0]
    if paired and n != images.shape[0]:
        raise ValueError(f"paired anonymize needs as many styles as images, got {n} and {images.shape[0]}")
    if domains is None:
        domains = 0
    y = (torch.full((n,), int(domains), dtype=torch.long, device=device) if isinstance(domains, int)
         else torch.as_tensor(domains, dtype=torch.long, device=device).reshape(n))
    refs_or_latents = refs_or_latents.to(device)
    if refs_or_latents.ndim == 4:
        styles = nets_ema.style_encoder(refs_or_latents, y)
    elif refs_or_latents.ndim == 2:
        styles = nets_ema.mapping_network(refs_or_latents, y)
    else:
        raise ValueError(f"refs_or_latents: expected (N, 3, S, S) images or (N, latent_dim) latents, "
                         f"got {tuple(refs_or_latents.shape)}")
    captures, heatmaps, outputs = [], [], []
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size]
        capture = camera(x)
        heatmap = regressor(capture)
        captures.append(capture)
        heatmaps.append(heatmap)
        if paired:
            outputs.append(nets_ema.generator(capture, heatmap, styles[i:i + batch_size]).clamp(0, 1))
        else:
            b = x.shape[0]
            cap = capture.repeat_interleave(n, 0)
            hm = heatmap.repeat_interleave(n, 0)
            out = nets_ema.generator(cap, hm, styles.repeat(b, 1)).clamp(0, 1)
            outputs.append(out.reshape(b, n, *out.shape[1:]))
    return AnonymizeResult(torch.cat(captures), torch.cat(heatmaps), torch.cat(outputs))


def heatmap_rgb(heatmap: torch.Tensor) -> torch.Tensor:
    """(B, K, S, S) heatmap -> (B, 3, S, S) in [0, 1] for display (2 masks: red/green; else channel max)."""
    if heatmap.shape[1] == 2:
        z = torch.zeros_like(heatmap[:, :1])
        return torch.cat([heatmap[:, :1], heatmap[:, 1:2], z], 1).clamp(0, 1)
    return heatmap.amax(1, keepdim=True).clamp(0, 1).expand(-1, 3, -1, -1)


def image_grid(rows: list[list[torch.Tensor | None]], pad: int = 2) -> torch.Tensor:
    """Tile (3, S, S) images in [0, 1] into a (3, H, W) grid; None leaves a white cell."""
    cols = max(len(r) for r in rows)
    s = next(t for r in rows for t in r if t is not None).shape[-1]
    grid = torch.ones(3, len(rows) * (s + pad) - pad, cols * (s + pad) - pad)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            if img is not None:
                grid[:, i * (s + pad):i * (s + pad) + s, j * (s + pad):j * (s + pad) + s] = img.detach().float().cpu()
    return grid.clamp(0, 1)


def save_grid(path: str | os.PathLike, rows: list[list[torch.Tensor | None]]) -> Path:
    """Write :func:`image_grid` of ``rows`` as a PNG (atomic)."""
    from data.files import save_image

    return save_image(path, image_grid(rows).permute(1, 2, 0).numpy())


def sample_rows(result: AnonymizeResult, images: torch.Tensor) -> list[list[torch.Tensor]]:
    """Rows ``source | capture | heatmap | outputs...`` of an all-pairs :class:`AnonymizeResult`."""
    hm = heatmap_rgb(result.heatmap)
    return [[images[i], result.capture[i], hm[i], *result.outputs[i]] for i in range(images.shape[0])]
