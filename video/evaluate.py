"""DRSF evaluation of a video's per-frame attributes against the original's, plus identity and flicker.

Per frame (the ground truth is the original video's attributes, the prediction the de-identified video's):

* ``iou``: box intersection over union (continuous corners; DRSF's script adds 1 px to each side, a
  difference below 1 % for faces over 100 px);
* ``landmarks_px``: mean Euclidean distance of the 68 landmarks [px] (DRSF's ``lm_edist``);
* ``pose_error_deg``: the angle of the relative rotation ``R_gt^T R_pred`` [deg] (geodesic head-pose error),
  and ``pitch_error_deg`` / ``yaw_error_deg`` / ``roll_error_deg``, the absolute per-angle differences;
* ``euler_cosine``: DRSF's cosine distance ``1 - cos(e_gt, e_pred)`` of the two euler-angle vectors;
* ``gaze_error_deg``: angle between the gaze vectors [deg], only when both sides have one (ours are null);
* ``diffscore``: DRSF's ``(1 - iou) + landmarks_px + gaze angle error`` (the gaze term is 0 when a side has
  no gaze; the field is reported then as ``diffscore_gaze_terms = 0``).

A frame where the original has a face and the prediction none is a ``miss`` (metrics None in its row, left
out of the means); faces of several tracks are paired by ``track_id`` when both sides have them, otherwise by
the best box IoU. Over videos (:func:`identity_and_flicker`):

* re-identification: dlib ResNet embeddings of the de-identified face and of the original face of each frame,
  both cut with dlib's alignment from the ORIGINAL's 68 landmarks (the attacker knows where the face is);
  ``reid_same_person_rate`` = fraction of frames with distance < 0.6 (dlib's threshold), ``reid_rank1`` =
  fraction of frames whose nearest gallery entry is the right person (gallery: the mean original embedding
  per track plus optional distractor identities);
* flicker: mean absolute frame-to-frame change [0, 1 units] inside the original's face box (frames t-1 and t,
  box of t), of the prediction and of the original; ``flicker_ratio`` = their ratio of means. A face with
  more texture changes more under the same motion, so ``flicker_ratio_texture`` also divides each side's
  flicker by its mean spatial change (mean absolute difference of horizontally and vertically adjacent pixels
  in the box): ~1 when the de-identified face moves as smoothly as the original, whatever its texture.
"""
from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from metrics.geometry import box_iou
from video.attributes import FaceAttributes, euler_to_rotation

log = logging.getLogger(__name__)

FRAME_METRICS = ("iou", "landmarks_px", "pose_error_deg", "pitch_error_deg", "yaw_error_deg", "roll_error_deg",
                 "euler_cosine", "gaze_error_deg", "diffscore")
PLOTTED = ("iou", "landmarks_px", "pose_error_deg", "euler_cosine", "diffscore", "reid_distance", "flicker_pred")


def pose_error(a: np.ndarray, b: np.ndarray) -> float:
    """Geodesic angle [deg] between the rotations of two ``(pitch, yaw, roll)`` [deg] triples."""
    from scipy.spatial.transform import Rotation

    rel = euler_to_rotation(a).T @ euler_to_rotation(b)
    return float(np.degrees(Rotation.from_matrix(rel).magnitude()))  # accurate near 0, unlike arccos


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    """``1 - a.b / (|a| |b|)`` (sklearn's paired cosine distance, as DRSF); 0 for a zero vector pair."""
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 0.0 if na == nb else 1.0
    return float(1.0 - np.dot(a, b) / (na * nb))


def vector_angle(a: np.ndarray, b: np.ndarray) -> float:
    """Angle [deg] between two gaze vectors (3-d; a 2-d ``(pitch, yaw)`` [rad] is turned into one first)."""
    def vec(g: np.ndarray) -> np.ndarray:
        g = np.asarray(g, np.float64)
        if g.shape == (2,):
            p, y = g
            g = np.array([-np.cos(p) * np.sin(y), -np.sin(p), -np.cos(p) * np.cos(y)])
        return g / max(np.linalg.norm(g), 1e-12)
    return float(np.degrees(np.arccos(np.clip(np.dot(vec(a), vec(b)), -1.0, 1.0))))


def compare_faces(gt: FaceAttributes, pred: FaceAttributes) -> dict:
    """All per-frame metrics of one face pair (see the module docstring)."""
    row: dict = {k: None for k in FRAME_METRICS}
    row["iou"] = box_iou(gt.box, pred.box)
    if gt.landmarks is not None and pred.landmarks is not None and gt.landmarks.shape == pred.landmarks.shape:
        row["landmarks_px"] = float(np.linalg.norm(gt.landmarks - pred.landmarks, axis=1).mean())
    if gt.euler is not None and pred.euler is not None:
        row["pose_error_deg"] = pose_error(gt.euler, pred.euler)
        diff = np.abs((pred.euler - gt.euler + 180.0) % 360.0 - 180.0)
        row["pitch_error_deg"], row["yaw_error_deg"], row["roll_error_deg"] = (float(v) for v in diff)
        row["euler_cosine"] = cosine_distance(gt.euler, pred.euler)
    if gt.gaze is not None and pred.gaze is not None:
        row["gaze_error_deg"] = vector_angle(gt.gaze, pred.gaze)
    if row["landmarks_px"] is not None:
        row["diffscore"] = (1.0 - row["iou"]) + row["landmarks_px"] + (row["gaze_error_deg"] or 0.0)
    return row


def pair_faces(gt: Sequence[FaceAttributes], pred: Sequence[FaceAttributes]) -> list[tuple[FaceAttributes,
                                                                                          FaceAttributes | None]]:
    """Pair each ground-truth face with a predicted one: by track id when both carry them, else best IoU."""
    out, used = [], set()
    for g in gt:
        cands = [(j, p) for j, p in enumerate(pred) if j not in used]
        match = None
        if g.track_id is not None and any(p.track_id is not None for _, p in cands):
            match = next(((j, p) for j, p in cands if p.track_id == g.track_id), None)
        elif cands:
            j, p = max(cands, key=lambda jp: box_iou(g.box, jp[1].box))
            match = (j, p) if box_iou(g.box, p.box) > 0 or len(gt) == 1 else None
        if match is not None:
            used.add(match[0])
        out.append((g, match[1] if match else None))
    return out


def evaluate_attributes(gt: Sequence[Sequence[FaceAttributes]], pred: Sequence[Sequence[FaceAttributes]]
                        ) -> tuple[list[dict], dict]:
    """Per-frame rows and the summary of prediction vs ground truth.

    Returns:
        (rows: one dict per ground-truth face per frame with ``frame_id``, ``track_id``, ``found`` and
        :data:`FRAME_METRICS`; summary: means over found faces, ``frames``, ``faces``, ``misses``,
        ``detection_rate``, ``frames_without_face_gt``, ``frame_count_gt`` / ``frame_count_pred``).
    """
    rows = []
    n = max(len(gt), len(pred))
    for t in range(n):
        g_faces = gt[t] if t < len(gt) else []
        p_faces = pred[t] if t < len(pred) else []
        for g, p in pair_faces(g_faces, p_faces):
            row = {"frame_id": t, "track_id": g.track_id, "found": p is not None,
                   "dlib_detected": None if p is None else p.dlib_detected}
            row.update(compare_faces(g, p) if p is not None else {k: None for k in FRAME_METRICS})
            rows.append(row)
    faces = len(rows)
    found = sum(r["found"] for r in rows)
    summary = {"frame_count_gt": len(gt), "frame_count_pred": len(pred), "faces": faces, "misses": faces - found,
               "detection_rate": found / faces if faces else None,
               "frames_without_face_gt": sum(1 for f in gt if not f)}
    dl = [r["dlib_detected"] for r in rows if r["dlib_detected"] is not None]
    # dlib's own HOG detector found the face (attributes extracted from videos only; None from JSON files)
    summary["dlib_detection_rate"] = float(np.mean(dl)) if dl else None
    for k in FRAME_METRICS:
        vals = [r[k] for r in rows if r[k] is not None]
        summary[k] = float(np.mean(vals)) if vals else None
    return rows, summary


def _box_change(a: np.ndarray, b: np.ndarray, box: np.ndarray) -> float | None:
    h, w = a.shape[:2]
    x1, y1 = int(max(0, np.floor(box[0]))), int(max(0, np.floor(box[1])))
    x2, y2 = int(min(w, np.ceil(box[2]))), int(min(h, np.ceil(box[3])))
    if x2 <= x1 or y2 <= y1:
        return None
    return float(np.abs(a[y1:y2, x1:x2].astype(np.float32) - b[y1:y2, x1:x2].astype(np.float32)).mean() / 255.0)


def _texture(a: np.ndarray, box: np.ndarray) -> float | None:
    h, w = a.shape[:2]
    x1, y1 = int(max(0, np.floor(box[0]))), int(max(0, np.floor(box[1])))
    x2, y2 = int(min(w, np.ceil(box[2]))), int(min(h, np.ceil(box[3])))
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    c = a[y1:y2, x1:x2].astype(np.float32)
    return float((np.abs(np.diff(c, axis=1)).mean() + np.abs(np.diff(c, axis=0)).mean()) / 2.0 / 255.0)


def identity_and_flicker(gt_frames, pred_frames, gt: Sequence[Sequence[FaceAttributes]], embedder,
                         distractors: np.ndarray | None = None) -> tuple[list[dict], dict]:
    """dlib re-identification of the de-identified faces and temporal flicker (see the module docstring).

    Args:
        gt_frames, pred_frames: iterables of (H, W, 3) uint8 frames of the original and de-identified videos.
        gt: the original's per-frame attributes (68 landmarks needed).
        embedder: :class:`metrics.identity.FaceEmbedder`.
        distractors: (D, 128) embeddings of other people added to the gallery (None: only the video's tracks).

    Returns:
        (rows per original face: frame_id, track_id, reid_distance, flicker_gt, flicker_pred; summary).
    """
    from metrics.identity import SAME_PERSON_THRESHOLD

    rows, orig_emb, pred_emb, tids = [], [], [], []
    prev_g = prev_p = None
    for t, (fg, fp) in enumerate(zip(gt_frames, pred_frames)):
        if fg.shape != fp.shape:
            raise ValueError(f"frame {t}: original {fg.shape} and de-identified {fp.shape} frames differ in size")
        faces = gt[t] if t < len(gt) else []
        lms = [f.landmarks for f in faces if f.landmarks is not None]
        if lms:
            img_g, img_p = fg.astype(np.float32) / 255.0, fp.astype(np.float32) / 255.0
            eg = embedder.embed([img_g] * len(lms), lms)
            ep = embedder.embed([img_p] * len(lms), lms)
        k = 0
        for f in faces:
            row = {"frame_id": t, "track_id": f.track_id if f.track_id is not None else 0, "reid_distance": None,
                   "flicker_gt": None, "flicker_pred": None, "texture_gt": _texture(fg, f.box),
                   "texture_pred": _texture(fp, f.box)}
            if f.landmarks is not None:
                row["reid_distance"] = float(np.linalg.norm(eg[k] - ep[k]))
                orig_emb.append(eg[k])
                pred_emb.append(ep[k])
                tids.append(row["track_id"])
                k += 1
            if prev_g is not None:
                row["flicker_gt"] = _box_change(fg, prev_g, f.box)
                row["flicker_pred"] = _box_change(fp, prev_p, f.box)
            rows.append(row)
        prev_g, prev_p = fg, fp
    summary: dict = {"reid_probes": len(pred_emb), "reid_same_person_rate": None, "reid_mean_distance": None,
                     "reid_rank1": None, "reid_gallery": 0, "flicker_gt": None, "flicker_pred": None,
                     "flicker_ratio": None, "flicker_ratio_texture": None}
    if pred_emb:
        d = np.array([r["reid_distance"] for r in rows if r["reid_distance"] is not None])
        summary["reid_same_person_rate"] = float(np.mean(d < SAME_PERSON_THRESHOLD))
        summary["reid_mean_distance"] = float(d.mean())
        ids = sorted(set(tids))
        gallery = [np.mean([e for e, i in zip(orig_emb, tids) if i == tid], axis=0) for tid in ids]
        gal_ids = list(ids)
        if distractors is not None and len(distractors):
            gallery += list(np.asarray(distractors))
            gal_ids += [None] * len(distractors)
        gallery = np.stack(gallery)
        dist = np.linalg.norm(np.stack(pred_emb)[:, None] - gallery[None], axis=2)
        nearest = [gal_ids[j] for j in dist.argmin(1)]
        summary["reid_rank1"] = float(np.mean([a == b for a, b in zip(nearest, tids)]))
        summary["reid_gallery"] = len(gallery)
    fg_vals = [r["flicker_gt"] for r in rows if r["flicker_gt"] is not None and r["flicker_pred"] is not None]
    fp_vals = [r["flicker_pred"] for r in rows if r["flicker_gt"] is not None and r["flicker_pred"] is not None]
    if fg_vals:
        summary["flicker_gt"], summary["flicker_pred"] = float(np.mean(fg_vals)), float(np.mean(fp_vals))
        summary["flicker_ratio"] = summary["flicker_pred"] / summary["flicker_gt"] if summary["flicker_gt"] else None
        tg = np.mean([r["texture_gt"] for r in rows if r["texture_gt"] is not None])
        tp = np.mean([r["texture_pred"] for r in rows if r["texture_pred"] is not None])
        if summary["flicker_ratio"] is not None and tp > 0:
            summary["flicker_ratio_texture"] = float(summary["flicker_ratio"] * tg / tp)
    return rows, summary


def merge_rows(rows: list[dict], extra: list[dict]) -> list[dict]:
    """Join :func:`identity_and_flicker` rows into :func:`evaluate_attributes` rows by (frame_id, track_id)."""
    index = {(e["frame_id"], e["track_id"]): e for e in extra}
    out = []
    for r in rows:
        e = index.get((r["frame_id"], r["track_id"] if r["track_id"] is not None else 0), {})
        out.append({**r, **{k: v for k, v in e.items() if k not in ("frame_id", "track_id")}})
    return out


def rows_csv(rows: list[dict]) -> str:
    """CSV text of the per-frame rows (empty cells for None)."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]))
                         for k in keys})
    return buf.getvalue()


def metric_figure(rows: list[dict], metrics: Sequence[str], title: str = ""):
    """Matplotlib figure: each metric over the frame index, one panel per metric (None values are gaps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in metrics if any(r.get(m) is not None for r in rows)] or list(metrics[:1])
    fig, axes = plt.subplots(len(metrics), 1, figsize=(7, 1.7 * len(metrics)), sharex=True, squeeze=False)
    for ax, m in zip(axes[:, 0], metrics):
        for tid in sorted({r["track_id"] for r in rows}, key=lambda v: (v is None, v)):
            pts = [(r["frame_id"], r.get(m)) for r in rows if r["track_id"] == tid]
            x = np.array([p[0] for p in pts], float)
            y = np.array([np.nan if p[1] is None else p[1] for p in pts], float)
            ax.plot(x, y, lw=1.2, label=f"track {tid}" if tid is not None else None)
        ax.set_ylabel(m, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("frame")
    if title:
        axes[0, 0].set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def write_report(out_dir: str | os.PathLike, rows: list[dict], summary: dict, title: str = "") -> list[Path]:
    """``frames.csv``, ``summary.json``, ``metrics.png`` (all panels) and ``plot_<metric>.png`` (atomic each)."""
    from data.files import save_figure, save_json, save_text

    out = Path(out_dir)
    written = [save_text(out / "frames.csv", rows_csv(rows)), save_json(out / "summary.json", summary)]
    written.append(save_figure(out / "metrics.png", metric_figure(rows, PLOTTED, title)))
    for m in PLOTTED:
        if any(r.get(m) is not None for r in rows):
            written.append(save_figure(out / f"plot_{m}.png", metric_figure(rows, [m], title)))
    return written
