"""DRSF's ``blur-attack``: blur the face, then an MI-FGSM perturbation so that MTCNN still reads the original.

Victim (differentiable, white box): facenet-pytorch's P/R/O networks of our batched MTCNN
(:mod:`metrics.mtcnn_batched`) evaluated on the crops the cascade would cut around the ORIGINAL face: the
square of the original's final MTCNN box, area-resized to 12 / 24 / 48 px (the same integral-image gather the
cascade uses, differentiable), at ``num_jitter`` random shifts and scales of that square per step (so the
result holds for the slightly different candidate boxes the real cascade produces). Loss, minimised over the
perturbation ``delta``::

    sum over nets of  CE(face probability, "face")
    + lambda_box * |O-net box regression - its value on the original|^2
    + lambda_landmarks * |O-net landmarks - their value on the original|^2   (+ the same box term for R-net)

MI-FGSM (Dong et al. 2018): ``g <- mu g + grad / mean|grad|``, ``delta <- clip(delta - alpha sign(g), -eps,
eps)``, image clipped to [0, 1]; ``delta`` is non-zero only inside the blurred face box. ``epsilon`` is in
units of the [0, 1] intensity range (8 / 255 by default: +-8 grey levels of an 8-bit frame).

The check of what it preserves (:func:`preservation`) runs the REAL cascade (full pyramid, NMS) on the
blurred and on the attacked frames, and dlib (HOG + 68 points; never targeted) on both, against the original.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from metrics.geometry import box_iou

log = logging.getLogger(__name__)


@dataclass
class AttackConfig:
    """Attack parameters.

    Attributes:
        epsilon: L-inf bound of the perturbation (intensity units, [0, 1] range).
        steps: MI-FGSM iterations.
        step_size: alpha per step (None: 2.5 epsilon / steps, Kurakin et al.'s choice).
        momentum: mu.
        num_jitter: jittered crops per face per step.
        jitter: largest crop shift and size change as a fraction of the box side.
        lambda_box, lambda_landmarks: weights of the regression terms (box-side-normalised units).
        seed: jitter random seed.
    """

    epsilon: float = 8.0 / 255.0
    steps: int = 20
    step_size: float | None = None
    momentum: float = 1.0
    num_jitter: int = 4
    jitter: float = 0.05
    lambda_box: float = 10.0
    lambda_landmarks: float = 10.0
    seed: int = 0


def _nets(device: torch.device):
    from metrics.detectors import MTCNNDetector

    key = str(device)
    if key not in _NET_CACHE:
        m = MTCNNDetector(device=key).mtcnn
        for net in (m.pnet, m.rnet, m.onet):
            net.requires_grad_(False)
        _NET_CACHE[key] = m
    return _NET_CACHE[key]


_NET_CACHE: dict[str, object] = {}


def _square(box: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])


def _jittered(boxes: np.ndarray, num: int, jitter: float, rng: np.random.Generator, w: int, h: int):
    """Integer half-open crops (K * num, 4) ``x0, y0, x1, y1`` of jittered squares, clipped to the frame."""
    out = []
    for b in boxes:
        side = b[2] - b[0]
        for j in range(num):
            d = np.zeros(3) if j == 0 else rng.uniform(-jitter, jitter, 3)
            s = side * (1 + d[2])
            cx, cy = (b[0] + b[2]) / 2 + d[0] * side, (b[1] + b[3]) / 2 + d[1] * side
            x0, y0 = int(np.clip(np.floor(cx - s / 2), 0, w - 2)), int(np.clip(np.floor(cy - s / 2), 0, h - 2))
            x1, y1 = int(np.clip(np.ceil(cx + s / 2), x0 + 2, w)), int(np.clip(np.ceil(cy + s / 2), y0 + 2, h))
            out.append((x0, y0, x1, y1))
    return torch.tensor(out, dtype=torch.int64)


def _victim(patches: torch.Tensor, idx: torch.Tensor, crops: torch.Tensor, m) -> dict[str, torch.Tensor]:
    """P/R/O-net outputs on crops of face patches.

    Args:
        patches: (K, 3, P, P) in [0, 1], the region around each face.
        idx: (N,) patch of each crop; crops: (N, 4) int64 ``x0, y0, x1, y1`` in patch pixels (half-open).
    """
    from metrics.mtcnn_batched import crop_resize_area, integral_image

    table = integral_image(patches * 255.0)
    x0, y0, x1, y1 = crops.unbind(1)

    def cut(size: int) -> torch.Tensor:
        c = crop_resize_area(table, idx, y0, y1, x0, x1, size)
        return ((c - 127.5) * 0.0078125).contiguous(memory_format=torch.channels_last)

    p_reg, p_prob = m.pnet(cut(12))
    r_reg, r_prob = m.rnet(cut(24))
    o_reg, o_lm, o_prob = m.onet(cut(48))
    return {"p_prob": p_prob.flatten(1), "r_prob": r_prob, "r_reg": r_reg, "o_prob": o_prob, "o_reg": o_reg,
            "o_lm": o_lm}


def _patch_regions(squares: np.ndarray, margin: float, w: int, h: int) -> tuple[np.ndarray, int]:
    """Per face the top-left ``(x, y)`` of a P x P patch holding its square plus ``margin`` (one P for all)."""
    sides = squares[:, 2] - squares[:, 0]
    p = int(min(min(w, h), np.ceil(sides.max() * (1 + 2 * margin)) + 2))
    cx, cy = (squares[:, 0] + squares[:, 2]) / 2, (squares[:, 1] + squares[:, 3]) / 2
    x0 = np.clip(np.round(cx - p / 2), 0, w - p).astype(int)
    y0 = np.clip(np.round(cy - p / 2), 0, h - p).astype(int)
    return np.stack([x0, y0], 1), p


def _cut_patches(frames: torch.Tensor, frame_of: torch.Tensor, corners: np.ndarray, p: int) -> torch.Tensor:
    return torch.stack([frames[int(i), :, y:y + p, x:x + p] for i, (x, y) in zip(frame_of, corners)])


def _loss(out: dict[str, torch.Tensor], target: dict[str, torch.Tensor], cfg: AttackConfig) -> torch.Tensor:
    # facenet's networks end in softmax: log of the face probability is the cross-entropy term
    ce = sum(-torch.log(out[k][:, 1].clamp_min(1e-6)).mean() for k in ("p_prob", "r_prob", "o_prob"))
    reg = F.mse_loss(out["o_reg"], target["o_reg"]) + F.mse_loss(out["r_reg"], target["r_reg"])
    return ce + cfg.lambda_box * reg + cfg.lambda_landmarks * F.mse_loss(out["o_lm"], target["o_lm"])


def attack_frames(originals: Sequence[np.ndarray], blurred: Sequence[np.ndarray], tracks: Sequence[Sequence],
                  cfg: AttackConfig, device: torch.device | str = "cpu") -> tuple[list[np.ndarray], list[dict]]:
    """MI-FGSM on blurred frames so that the victim reads the originals' faces.

    Args:
        originals: (H, W, 3) uint8 original frames.
        blurred: the same frames with the faces blurred / pixelated (uint8).
        tracks: per frame, its tracked faces (boxes of the original).
        cfg: attack parameters.

    Returns:
        (attacked uint8 frames, per-step stats [{"step", "loss"}]).
    """
    from video.frames import frames_to_tensor, int_box, tensor_to_frames

    device = torch.device(device)
    m = _nets(device)
    rng = np.random.default_rng(cfg.seed)
    orig = frames_to_tensor(originals, device)
    base = frames_to_tensor(blurred, device)
    b, _, h, w = base.shape
    items = [(i, f) for i, faces in enumerate(tracks) for f in faces]
    if not items:
        return list(blurred), []
    support = torch.zeros(b, 1, h, w, device=device)
    for i, f in items:
        bx = int_box(f.box, w, h)
        if bx is not None:
            support[i, :, bx[1]:bx[3], bx[0]:bx[2]] = 1.0
    squares = np.stack([_square(f.box) for _, f in items])
    frame_of = torch.tensor([i for i, _ in items], dtype=torch.int64, device=device)
    corners, p = _patch_regions(squares, 2 * cfg.jitter, w, h)
    local = squares - np.concatenate([corners, corners], 1)  # squares in patch pixels
    orig_p = _cut_patches(orig, frame_of, corners, p)
    alpha = cfg.step_size if cfg.step_size is not None else 2.5 * cfg.epsilon / max(1, cfg.steps)
    delta = torch.zeros_like(base)
    g = torch.zeros_like(base)
    stats = []
    for step in range(cfg.steps):
        crops = _jittered(local, cfg.num_jitter, cfg.jitter, rng, p, p).to(device)
        idx = torch.arange(len(items), device=device).repeat_interleave(cfg.num_jitter)
        with torch.no_grad():
            target = _victim(orig_p, idx, crops, m)
        delta.requires_grad_(True)
        x = (base + delta * support).clamp(0, 1)
        loss = _loss(_victim(_cut_patches(x, frame_of, corners, p), idx, crops, m), target, cfg)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            g = cfg.momentum * g + grad / grad.abs().mean().clamp_min(1e-12)
            delta = (delta - alpha * g.sign()).clamp(-cfg.epsilon, cfg.epsilon) * support
        stats.append({"step": step, "loss": float(loss.detach())})
    attacked = tensor_to_frames((base + delta * support).clamp(0, 1))
    log.debug("blur-attack: loss %.3f -> %.3f", stats[0]["loss"], stats[-1]["loss"])
    return attacked, stats


def preservation(originals: Sequence[np.ndarray], tests: dict[str, Sequence[np.ndarray]], detector,
                 extractor) -> dict[str, dict]:
    """What the victim (full MTCNN cascade) and dlib (not targeted) still read, per variant of the frames.

    Args:
        originals: (H, W, 3) uint8 original frames (one face each is assumed: the most confident one).
        tests: name -> frames of the same length (e.g. {"blur": ..., "blur-attack": ...}).
        detector: :class:`video.tracking.FrameDetector`.
        extractor: :class:`video.attributes.LandmarkExtractor`.

    Returns:
        name -> {"mtcnn_detection_rate", "mtcnn_iou", "mtcnn_landmarks_px", "dlib_detection_rate",
        "dlib_landmarks_px"} (IoU and landmark distances [px] against the original's, mean over frames where
        both found a face; None when none).
    """
    ref = detector.detect(originals)
    ref_lm = [extractor.landmarks(f, d[0].box) if d else None for f, d in zip(originals, ref)]
    result = {}
    for name, frames in tests.items():
        found = detector.detect(frames)
        ious, lm5, hits, dl_hits, dl_err, n = [], [], 0, 0, [], 0
        for k, (r, d) in enumerate(zip(ref, found)):
            if not r:
                continue
            n += 1
            if d:
                hits += 1
                ious.append(box_iou(d[0].box, r[0].box))
                lm5.append(float(np.linalg.norm(d[0].landmarks - r[0].landmarks, axis=1).mean()))
            lm, ok = extractor.landmarks(frames[k], r[0].box)
            dl_hits += int(ok)
            if ok and ref_lm[k] is not None:
                dl_err.append(float(np.linalg.norm(lm - ref_lm[k][0], axis=1).mean()))
        result[name] = {
            "frames": n,
            "mtcnn_detection_rate": hits / n if n else None,
            "mtcnn_iou": float(np.mean(ious)) if ious else None,
            "mtcnn_landmarks_px": float(np.mean(lm5)) if lm5 else None,
            "dlib_detection_rate": dl_hits / n if n else None,
            "dlib_landmarks_px": float(np.mean(dl_err)) if dl_err else None,
        }
    return result
