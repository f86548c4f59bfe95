"""Using a trained Stage II model: the frozen optics, checkpoint loading, :func:`anonymize`, sample grids.

The checkpoint format is written and read in :mod:`anonymizer.stage2.checkpoint` only; :func:`load_anonymizer`
rebuilds the EMA networks, the fixed-PSF camera and the frozen regressor from it.

Reference-guided anonymisation with a ``reference_input`` generator needs the reference's 68 landmarks: the
dlib teacher runs on the CLEAN reference (a public face, so it may be seen) unless the caller passes them.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anonymizer.stage2.checkpoint import (STAGE2_NAME, build_camera_and_regressor, read_stage2,
                                          resolve_stage2_checkpoint)
from anonymizer.stage2.model import MODEL_KEYS, Nets, build_model

log = logging.getLogger(__name__)

__all__ = ["STAGE2_NAME", "FrozenOptics", "frozen_optics_from_checkpoint", "load_anonymizer", "anonymize",
           "AnonymizeResult", "resolve_stage2_checkpoint", "image_grid", "reference_landmarks"]


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
    from optics.sensor import SensorConfig

    optic, regressor, meta = load_optics_checkpoint(path)
    heat = dict(meta.get("heatmap") or {})
    if heat.get("img_size") not in (None, img_size):
        raise ValueError(f"{path}: the heatmap regressor was trained at img_size {heat['img_size']}, "
                         f"Stage II runs at --img_size {img_size}")
    source = str(path)
    if psf is not None:
        optic, source = psf, f"{path} (lens replaced by a measured PSF)"
    fixed = capture_psf(Camera(optic).psf().detach().float(), img_size)
    sensor = SensorConfig.from_state(meta, str(path))
    camera = Camera(fixed, sensor=sensor, noise=noise).requires_grad_(False).eval()
    return FrozenOptics(camera, regressor.requires_grad_(False).eval(), heat, source)


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
    state, path = read_stage2(checkpoint, step)
    _, nets_ema = build_model(**{k: state["model"][k] for k in MODEL_KEYS if k in state["model"]})
    nets_ema.load_state_dict(state["nets_ema"])
    nets_ema.to(device).eval()
    camera, regressor = build_camera_and_regressor(state, noise=noise, psf=psf, device=device)
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


def reference_landmarks(refs: torch.Tensor) -> torch.Tensor:
    """dlib 68-point teacher landmarks of clean reference faces (no disk cache: tensors have no file).

    Args:
        refs: (N, 3, S, S) in [0, 1].

    Returns:
        (N, 68, 2) [px]; NaN rows where dlib finds no face (that reference then gets no warp; logged).
    """
    from anonymizer.stage1.teacher import LandmarkTeacher

    lm, found = LandmarkTeacher("dlib", cache_dir="").detect(refs.detach().float().cpu())
    if not found.all():
        log.warning("dlib finds no face in %d of %d references: they are used without a warp (style only)",
                    int((~found).sum()), len(found))
    return torch.from_numpy(lm)


def _warp_inputs(refs: torch.Tensor, ref_points: torch.Tensor, points: torch.Tensor, face_only: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Warped references and masks (whole frame for the generator, as in training; ``face_only`` for the
    baseline); references without landmarks (NaN) give an all-zero mask."""
    from anonymizer.stage2.warp import piecewise_affine_warp

    ok = torch.isfinite(ref_points).all(-1).all(-1)
    safe = torch.where(ok[:, None, None], ref_points, points)
    w = piecewise_affine_warp(refs, safe, points, face_only=face_only)
    keep = ok.to(w.valid.dtype)[:, None, None, None]
    return w.warped * keep, w.valid * keep


def _target_geometry(regressor: nn.Module, heatmap: torch.Tensor, ref_points: torch.Tensor, shape_mix: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Landmarks the new face is drawn on and the heatmaps that go with them.

    The capture's landmarks (soft-argmax of the regressor's heatmaps) with a fraction ``shape_mix`` of the face
    shape taken from the reference (:func:`anonymizer.stage2.warp.blend_shape`: position, size and in-plane
    rotation stay the source's). Face geometry alone re-identifies a source, so a partial shape transfer
    protects more while the landmarks stay within the utility bound (measured in
    benchmarks/stage2_reference.py). With a mix, the heatmaps are re-rendered at the mixed points (the
    regressor's own sigma), so that the generator's heatmap input and skip masks agree with the warp.

    Returns:
        (points (B, 68, 2) [px], heatmaps (B, K, S, S)).
    """
    from anonymizer.stage1.heatmap import landmarks_to_heatmaps, soft_argmax
    from anonymizer.stage2.warp import blend_shape

    pts = soft_argmax(heatmap.float())
    if shape_mix == 0.0:
        return pts, heatmap
    sigma = getattr(regressor, "config", {}).get("sigma")
    if sigma is None or heatmap.shape[1] != pts.shape[1]:
        raise ValueError("shape_mix needs a per-landmark regressor with a heatmap sigma (the linear shape "
                         "regressor); this one has none")
    pts = blend_shape(pts, ref_points.to(pts), shape_mix)
    return pts, landmarks_to_heatmaps(pts, heatmap.shape[-1], float(sigma)).to(heatmap.dtype)


@torch.no_grad()
def anonymize(nets_ema: Nets, camera: nn.Module, regressor: nn.Module, images: torch.Tensor,
              refs_or_latents: torch.Tensor, domains: torch.Tensor | int | None = None, paired: bool = False,
              batch_size: int = 16, ref_points: torch.Tensor | None = None, shape_mix: float = 0.0,
              styles: torch.Tensor | None = None) -> AnonymizeResult:
    """De-identify faces: image them through the privacy camera, then synthesise new faces.

    With a ``reference_input`` generator each reference is warped onto the landmarks that the regressor finds in
    the capture (soft-argmax of its 68 heatmaps) and enters the generator with its validity mask; latent-guided
    styles get no warp (all-zero mask).

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
        ref_points: (N, 68, 2) landmarks of the references [px] (default: :func:`reference_landmarks`).
        shape_mix: fraction of the face shape taken from the reference (:func:`_target_geometry`); 0 keeps the
            capture's landmarks exactly.
        styles: optional (N, style_dim) style codes of ``refs_or_latents`` computed before (e.g. cached per
            reference); default: the style encoder / mapping network on them.

    Returns:
        :class:`AnonymizeResult` (on the device of ``images``; ``heatmaps`` are the regressor's, before any
        shape mix).
    """
    device = images.device
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected (B, 3, S, S), got {tuple(images.shape)}")
    n = refs_or_latents.shape[0]
    if paired and n != images.shape[0]:
        raise ValueError(f"paired anonymize needs as many styles as images, got {n} and {images.shape[0]}")
    if styles is not None and (styles.ndim != 2 or styles.shape[0] != n):
        raise ValueError(f"styles: expected ({n}, style_dim), got {tuple(styles.shape)}")
    if domains is None:
        domains = 0
    y = (torch.full((n,), int(domains), dtype=torch.long, device=device) if isinstance(domains, int)
         else torch.as_tensor(domains, dtype=torch.long, device=device).reshape(n))
    refs_or_latents = refs_or_latents.to(device)
    warp = bool(getattr(nets_ema.generator, "reference_input", False)) and refs_or_latents.ndim == 4
    if refs_or_latents.ndim == 4:
        styles = nets_ema.style_encoder(refs_or_latents, y) if styles is None else styles.to(device)
        if warp:
            ref_points = (reference_landmarks(refs_or_latents) if ref_points is None else ref_points)
            ref_points = ref_points.to(device, torch.float32)
            if ref_points.shape != (n, 68, 2):
                raise ValueError(f"ref_points: expected ({n}, 68, 2), got {tuple(ref_points.shape)}")
    elif refs_or_latents.ndim == 2:
        styles = nets_ema.mapping_network(refs_or_latents, y) if styles is None else styles.to(device)
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
        b = x.shape[0]
        if paired:
            cap, hm, st, sel = capture, heatmap, styles[i:i + batch_size], slice(i, i + b)
            ridx = torch.arange(i, i + b, device=device)
        else:
            cap, hm = capture.repeat_interleave(n, 0), heatmap.repeat_interleave(n, 0)
            st = styles.repeat(b, 1)
            ridx = torch.arange(n, device=device).repeat(b)
        extra: tuple = ()
        if warp:
            pts, hm = _target_geometry(regressor, hm, ref_points[ridx], shape_mix)
            extra = _warp_inputs(refs_or_latents[ridx], ref_points[ridx], pts)
        out = nets_ema.generator(cap, hm, st, *extra).clamp(0, 1)
        outputs.append(out if paired else out.reshape(b, n, *out.shape[1:]))
    return AnonymizeResult(torch.cat(captures), torch.cat(heatmaps), torch.cat(outputs))


@torch.no_grad()
def reference_warp(capture: torch.Tensor, regressor: nn.Module, refs: torch.Tensor,
                   ref_points: torch.Tensor | None = None, feather_px: int = 3, shape_mix: float = 0.0
                   ) -> torch.Tensor:
    """The non-learned ``reference-warp`` baseline: each reference warped onto the landmarks the regressor finds
    in the capture, colour-matched (per-channel mean inside the warp mask) to the capture, and blended into
    the face region with a feathered mask; outside it the capture stays. Same inputs as the anonymizer (the
    capture, the clean public reference), no network.

    Args:
        capture: (B, 3, S, S) in [0, 1].
        regressor: capture -> (B, 68, S, S) heatmaps.
        refs: (B, 3, S, S) in [0, 1], paired with the captures.
        ref_points: (B, 68, 2) [px] (default: :func:`reference_landmarks`).
        feather_px: blending border [px].
        shape_mix: fraction of the face shape taken from the reference (as :func:`anonymize`).

    Returns:
        (B, 3, S, S) in [0, 1].
    """
    from anonymizer.stage2.warp import feather

    if refs.shape != capture.shape:
        raise ValueError(f"reference_warp: refs {tuple(refs.shape)} must match the captures {tuple(capture.shape)}")
    ref_points = (reference_landmarks(refs) if ref_points is None else ref_points).to(capture.device, torch.float32)
    pts, _ = _target_geometry(regressor, regressor(capture), ref_points, shape_mix)
    warped, mask = _warp_inputs(refs, ref_points, pts, face_only=True)
    area = mask.sum((2, 3), keepdim=True).clamp_min(1)
    mu_w = (warped * mask).sum((2, 3), keepdim=True) / area
    mu_c = (capture * mask).sum((2, 3), keepdim=True) / area
    matched = (warped - mu_w + mu_c).clamp(0, 1)  # means only: the blurred capture's spread is no target
    alpha = feather(mask, feather_px)
    return (alpha * matched + (1 - alpha) * capture).clamp(0, 1)


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
