"""Face alignment geometry: 5 landmarks -> similarity transform onto a fixed template -> warped square crop.

Pure geometry (numpy / scikit-image); the landmark detector lives in ``metrics.detectors`` and the glue in
``pipelines.faces``.

Conventions:

* Points are ``(x, y)`` pixel coordinates with pixel centres at integers (as MTCNN, dlib and scikit-image).
* Landmark order is MTCNN's: eye on the image left, eye on the image right, nose tip, mouth corner on the image
  left, mouth corner on the image right.
* A transform is a (3, 3) homogeneous matrix mapping input-image pixels to output-crop pixels.

Template (:data:`TEMPLATE_5`), in units of the output side: eyes level at height 0.39, centred, 0.30 apart;
nose and mouth placed with the proportions of the widely used 5-point ArcFace template (nose 0.57 and mouth
1.16 inter-ocular distances below the eyes, mouth 0.83 inter-ocular distances wide). This frames the whole face
with some hair and chin margin, close to FFHQ / CelebA-HQ crops.
"""
from __future__ import annotations

import numpy as np

EYE_Y = 0.39
"""Height of the eye line in the template [fraction of the output side]."""
EYE_DISTANCE = 0.30
"""Inter-ocular distance in the template [fraction of the output side]."""

_NOSE_DROP, _MOUTH_DROP, _MOUTH_HALF_WIDTH = 0.571, 1.157, 0.414  # in inter-ocular distances (ArcFace template)

TEMPLATE_5 = np.array([
    [0.5 - EYE_DISTANCE / 2, EYE_Y],
    [0.5 + EYE_DISTANCE / 2, EYE_Y],
    [0.5, EYE_Y + _NOSE_DROP * EYE_DISTANCE],
    [0.5 - _MOUTH_HALF_WIDTH * EYE_DISTANCE, EYE_Y + _MOUTH_DROP * EYE_DISTANCE],
    [0.5 + _MOUTH_HALF_WIDTH * EYE_DISTANCE, EYE_Y + _MOUTH_DROP * EYE_DISTANCE],
], dtype=np.float64)
"""(5, 2) template landmarks (x, y) in [0, 1] units of the output side (0 = left/top edge, 1 = right/bottom)."""


def template_landmarks(size: int, template: np.ndarray | None = None) -> np.ndarray:
    """Template landmarks in pixels of a ``size`` x ``size`` crop.

    Args:
        size: output side [px].
        template: (K, 2) in [0, 1] units; default :data:`TEMPLATE_5`.

    Returns:
        (K, 2) float64 (x, y) [px], pixel centres at integers.
    """
    t = TEMPLATE_5 if template is None else np.asarray(template, dtype=np.float64)
    return t * size - 0.5


def similarity_matrix(scale: float, angle: float, tx: float, ty: float) -> np.ndarray:
    """(3, 3) matrix of ``p -> scale * R(angle) p + (tx, ty)``; ``angle`` [rad], counter-clockwise in (x, y)."""
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty], [0.0, 0.0, 1.0]])


def similarity_params(matrix: np.ndarray) -> tuple[float, float, float, float]:
    """Inverse of :func:`similarity_matrix`: ``(scale, angle [rad], tx [px], ty [px])``."""
    m = np.asarray(matrix, dtype=np.float64)
    return float(np.hypot(m[0, 0], m[1, 0])), float(np.arctan2(m[1, 0], m[0, 0])), float(m[0, 2]), float(m[1, 2])


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (N, 2) points by a (3, 3) transform. Returns (N, 2) float64."""
    p = np.asarray(points, dtype=np.float64)
    m = np.asarray(matrix, dtype=np.float64)
    return p @ m[:2, :2].T + m[:2, 2]


def estimate_similarity(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping src onto dst.

    Closed form of Umeyama (1991): minimises ``sum_i w_i |s R src_i + t - dst_i|^2``. Exact when the points are
    related by a similarity.

    Args:
        src: (N, 2) points, N >= 2, not all equal.
        dst: (N, 2) points.
        weights: (N,) non-negative weights (default all 1).

    Returns:
        (3, 3) float64 matrix.

    Raises:
        ValueError: mismatched shapes, fewer than 2 points, non-finite values or degenerate (coincident) points.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"need matching (N>=2, 2) point sets, got {src.shape} and {dst.shape}")
    if not (np.all(np.isfinite(src)) and np.all(np.isfinite(dst))):
        raise ValueError("landmarks contain NaN or inf")
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(src),) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be (N,) non-negative with positive sum, got {w}")
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    s0, d0 = src - mu_s, dst - mu_d
    var_s = float(w @ np.sum(s0 ** 2, axis=1))
    if var_s <= 1e-12 * max(1.0, float(np.abs(src).max())) ** 2:
        raise ValueError("source landmarks are degenerate (all points coincide)")
    cov = (d0 * w[:, None]).T @ s0  # (2, 2) = sum w d0 s0^T
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0  # forbid reflections
    rot = u @ np.diag(d) @ vt
    scale = float(np.sum(sig * d) / var_s)
    m = np.eye(3)
    m[:2, :2] = scale * rot
    m[:2, 2] = mu_d - scale * rot @ mu_s
    return m


def alignment_transform(landmarks: np.ndarray, size: int, template: np.ndarray | None = None) -> np.ndarray:
    """Similarity mapping detected landmarks onto the template of a ``size`` crop (least squares, 5 points).

    Args:
        landmarks: (5, 2) (x, y) [px] in the input image (MTCNN order).
        size: output side [px].
        template: (5, 2) in [0, 1] units; default :data:`TEMPLATE_5`.

    Returns:
        (3, 3) float64 matrix input px -> output px.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    tpl = template_landmarks(size, template)
    if lm.shape != tpl.shape:
        raise ValueError(f"expected landmarks of shape {tpl.shape}, got {lm.shape}")
    return estimate_similarity(lm, tpl)


def eye_angle(landmarks: np.ndarray) -> float:
    """Angle of the line from the first to the second eye landmark against the x axis [degrees]."""
    lm = np.asarray(landmarks, dtype=np.float64)
    dx, dy = lm[1] - lm[0]
    return float(np.degrees(np.arctan2(dy, dx)))


def _downscale(image: np.ndarray, factor: float) -> np.ndarray:
    """Antialiased bilinear reduction of (H, W, 3) by ``factor`` < 1 (torch, fast)."""
    import torch
    import torch.nn.functional as F

    h, w = image.shape[:2]
    size = (max(1, round(h * factor)), max(1, round(w * factor)))
    t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].float()
    t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)
    return t[0].permute(1, 2, 0).numpy()


def warp_image(image: np.ndarray, matrix: np.ndarray, size: int, pad_mode: str = "reflect") -> np.ndarray:
    """Resample ``image`` into a ``size`` x ``size`` crop through the transform (bilinear, antialiased).

    When the transform shrinks the image by more than 2x, the image is first reduced with an antialiasing
    filter (and the transform adjusted), so that large photos do not alias.

    Args:
        image: (H, W, 3) float in [0, 1].
        matrix: (3, 3) input px -> output px.
        size: output side [px].
        pad_mode: how pixels outside the input are filled: "reflect" (as FFHQ), "edge", "constant" (black).

    Returns:
        (size, size, 3) float32 in [0, 1].
    """
    from skimage.transform import AffineTransform, warp

    img = np.asarray(image, dtype=np.float32)
    m = np.asarray(matrix, dtype=np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(m[:2, :2]))))  # output px per input px
    if scale < 0.5:
        small = _downscale(img, 2.0 * scale)
        fy, fx = small.shape[0] / img.shape[0], small.shape[1] / img.shape[1]
        # small-image pixel centre j corresponds to input coordinate (j + 0.5) / f - 0.5
        to_input = np.array([[1.0 / fx, 0.0, 0.5 / fx - 0.5], [0.0, 1.0 / fy, 0.5 / fy - 0.5], [0.0, 0.0, 1.0]])
        img, m = small.astype(np.float32), m @ to_input
    mode = {"reflect": "symmetric", "edge": "edge", "constant": "constant"}.get(pad_mode)
    if mode is None:
        raise ValueError(f"pad_mode must be reflect, edge or constant, got {pad_mode!r}")
    out = warp(img, AffineTransform(matrix=np.linalg.inv(m)), output_shape=(size, size), order=1, mode=mode,
               cval=0.0, preserve_range=True)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int, template: np.ndarray | None = None,
               pad_mode: str = "reflect") -> tuple[np.ndarray, np.ndarray]:
    """Align a face: similarity of its 5 landmarks onto the template, then warp.

    Args:
        image: (H, W, 3) float in [0, 1].
        landmarks: (5, 2) (x, y) [px] (MTCNN order).
        size: output side [px].
        template: (5, 2) in [0, 1] units; default :data:`TEMPLATE_5`.
        pad_mode: see :func:`warp_image`.

    Returns:
        ``(crop (size, size, 3) float32 in [0, 1], matrix (3, 3) input px -> crop px)``.
    """
    m = alignment_transform(landmarks, size, template)
    return warp_image(image, m, size, pad_mode), m
