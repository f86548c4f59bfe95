"""Face-geometry agreement between protected / generated images and their originals: FD, BB, LM.

Definitions (all in pixels of the images as given; both images of a pair must have the same size):

- FD (``detection_rate``): fraction of the evaluated images in which the detector finds a face.
- BB (``bbox_center_px``): mean Euclidean distance between box centres ``((x1 + x2) / 2, (y1 + y2) / 2)``.
  (The reference code computed dlib centres as ``(x + w) / 2`` on ``[x, y, w, h]`` boxes, which is not the
  centre; ours is.) ``bbox_iou``: mean intersection-over-union of the two boxes.
- LM (``landmarks_px``): mean absolute landmark *coordinate* difference, averaged over landmarks and over x
  and y (the reference's definition, kept for comparison). ``landmarks_nme``: the field's normalised mean
  error, the mean Euclidean landmark distance divided by the original's inter-ocular distance (eye centres for
  MTCNN's 5 points, outer eye corners 36/45 for dlib's 68 points, as in 300-W).

A pair where the detector misses on either image is counted in ``misses`` and left out of BB/LM; ``pairs``
is the number of pairs that entered BB/LM. Metrics over zero pairs are ``None`` (JSON null), never NaN.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from metrics.detectors import Detection, inter_ocular_distance


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boxes ``(4,) x1, y1, x2, y2`` [px]; 0 for disjoint or degenerate boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def box_center_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance [px] between the centres of boxes ``(4,) x1, y1, x2, y2``."""
    ca = np.array([(a[0] + a[2]) / 2.0, (a[1] + a[3]) / 2.0])
    cb = np.array([(b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0])
    return float(np.linalg.norm(ca - cb))


def landmark_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute coordinate difference [px] of landmarks ``(K, 2)`` (the reference's LM)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"landmark shapes differ: {a.shape} vs {b.shape}")
    return float(np.abs(a - b).mean())


def landmark_nme(pred: np.ndarray, ref: np.ndarray) -> float:
    """Mean Euclidean landmark distance divided by the inter-ocular distance of ``ref`` (dimensionless).

    Args:
        pred: (K, 2) landmarks [px] of the protected / generated image.
        ref: (K, 2) landmarks [px] of the original, K in {5, 68}.
    """
    pred, ref = np.asarray(pred, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if pred.shape != ref.shape:
        raise ValueError(f"landmark shapes differ: {pred.shape} vs {ref.shape}")
    iod = inter_ocular_distance(ref)
    if iod <= 0:
        return float("nan")
    return float(np.linalg.norm(pred - ref, axis=1).mean() / iod)


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if np.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def geometry_metrics(generated: Sequence[Detection | None], originals: Sequence[Detection | None]) -> dict:
    """FD / BB / LM of paired detections.

    Args:
        generated: detections on the protected / generated images (None = miss).
        originals: detections on the originals, same order and length.

    Returns:
        dict with ``detection_rate`` (of ``generated``), ``detection_rate_original``, ``bbox_center_px``,
        ``bbox_iou``, ``landmarks_px``, ``landmarks_nme``, ``pairs``, ``misses`` (pairs with a miss on either
        side), ``misses_generated``, ``misses_original``, ``num_images``.

    Raises:
        ValueError: the two lists differ in length.
    """
    if len(generated) != len(originals):
        raise ValueError(f"{len(generated)} generated detections vs {len(originals)} originals: not paired")
    n = len(generated)
    centre, iou, lm, nme = [], [], [], []
    misses = 0
    for g, o in zip(generated, originals):
        if g is None or o is None:
            misses += 1
            continue
        centre.append(box_center_distance(g.box, o.box))
        iou.append(box_iou(g.box, o.box))
        lm.append(landmark_abs_error(g.landmarks, o.landmarks))
        nme.append(landmark_nme(g.landmarks, o.landmarks))
    found_gen = sum(d is not None for d in generated)
    found_orig = sum(d is not None for d in originals)
    return {
        "num_images": n,
        "detection_rate": found_gen / n if n else None,
        "detection_rate_original": found_orig / n if n else None,
        "bbox_center_px": _mean(centre),
        "bbox_iou": _mean(iou),
        "landmarks_px": _mean(lm),
        "landmarks_nme": _mean(nme),
        "pairs": len(centre),
        "misses": misses,
        "misses_generated": n - found_gen,
        "misses_original": n - found_orig,
    }
