"""Faces in video frames: MTCNN batched over frames, and an IoU tracker whose tracks survive short misses.

Detection runs facenet-pytorch's MTCNN networks through the batched cascade of :mod:`metrics.mtcnn_batched`
on ``batch_size`` frames at a time (frames of a video share one size, so every batch stacks) and keeps every
face, not only the most confident.

Tracking (offline, over the whole video): a detection joins the active track whose last box overlaps it most
(IoU >= ``iou_threshold``, greedy by IoU); unmatched detections start new tracks; a track that has not been
matched for more than ``max_misses`` frames ends. When a track is found again after a gap of at most
``max_misses`` frames, the missed frames get box and landmarks linearly interpolated between the two
detections (``interpolated = True``), so a detector's short miss does not leave the real face in the output.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from metrics.geometry import box_iou

log = logging.getLogger(__name__)


@dataclass
class Face:
    """One detected face.

    Attributes:
        box: (4,) float64 ``x1, y1, x2, y2`` [px].
        score: MTCNN O-net probability in [0, 1].
        landmarks: (5, 2) float64 ``x, y`` [px], MTCNN order (eye left, eye right, nose, mouth left, mouth
            right, as seen in the image).
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray


@dataclass
class TrackedFace(Face):
    """A face with its track (``track_id`` from 0 in order of appearance); ``interpolated`` marks a gap fill."""

    track_id: int = 0
    interpolated: bool = False


class FrameDetector:
    """All faces of video frames, MTCNN batched over frames (a batch split over worker threads,
    :mod:`video.parallel`).

    Args:
        device: torch device of the networks.
        min_face_size: smallest face searched [px].
        batch_size: frames per cascade call (1 = frame by frame).
        min_score: faces below this O-net probability are dropped.
    """

    def __init__(self, device: str = "cpu", min_face_size: int = 40, batch_size: int = 16,
                 min_score: float = 0.9) -> None:
        from metrics.detectors import MTCNNDetector

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.detector = MTCNNDetector(device=device, min_face_size=min_face_size, batch_size=batch_size)
        self.batch_size = int(batch_size)
        self.min_score = float(min_score)
        self.device = device

    def detect(self, frames: Sequence[np.ndarray]) -> list[list[Face]]:
        """Faces per frame.

        Args:
            frames: (H, W, 3) uint8 RGB frames of one size (or float in [0, 1]).

        Returns:
            per frame, the faces sorted by descending score.
        """
        import torch

        from metrics.mtcnn_batched import detect_faces
        from video.parallel import cpu_workers, parallel_map

        m = self.detector.mtcnn
        out: list[list[Face]] = []
        for start in range(0, len(frames), self.batch_size):
            chunk = np.stack([np.asarray(f) for f in frames[start:start + self.batch_size]])

            def detect_part(ix: slice):  # uint8 frames go in as they are; float ones ([0, 1]) as 0..255
                part = chunk[ix] if chunk.dtype == np.uint8 else chunk[ix].astype(np.float32) * 255.0
                part = torch.as_tensor(part, device=self.device)
                return detect_faces(part, m.pnet, m.rnet, m.onet, min_face_size=m.min_face_size,
                                    thresholds=m.thresholds, factor=m.factor)

            found = [f for part in parallel_map(detect_part, len(chunk), cpu_workers(self.device)) for f in part]
            for boxes, points in found:
                faces = [Face(np.asarray(b[:4], np.float64), float(b[4]), np.asarray(p, np.float64))
                         for b, p in zip(boxes, points) if b[4] >= self.min_score]
                out.append(sorted(faces, key=lambda f: -f.score))
        return out


@dataclass
class _Track:
    track_id: int
    last_frame: int
    last: Face
    faces: dict[int, TrackedFace] = field(default_factory=dict)


def _lerp(a: np.ndarray, b: np.ndarray, w: float) -> np.ndarray:
    return (1.0 - w) * a + w * b


def track_faces(detections: Sequence[Sequence[Face]], iou_threshold: float = 0.3,
                max_misses: int = 5) -> list[list[TrackedFace]]:
    """Link per-frame detections into tracks (see the module docstring).

    Args:
        detections: per frame, its faces.
        iou_threshold: minimum box IoU of a detection with a track's last box to continue it.
        max_misses: frames a track may go undetected and still continue (gap filled by interpolation).

    Returns:
        per frame, the tracked faces sorted by ``track_id`` (interpolated ones included).
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if max_misses < 0:
        raise ValueError(f"max_misses must be >= 0, got {max_misses}")
    active: list[_Track] = []
    finished: list[_Track] = []
    next_id = 0
    for t, faces in enumerate(detections):
        still = []
        for tr in active:
            (still if t - tr.last_frame <= max_misses + 1 else finished).append(tr)
        active = still
        pairs = sorted(((box_iou(tr.last.box, f.box), i, j) for i, tr in enumerate(active)
                        for j, f in enumerate(faces)), reverse=True)
        used_t, used_f = set(), set()
        for iou, i, j in pairs:
            if iou < iou_threshold or i in used_t or j in used_f:
                continue
            used_t.add(i)
            used_f.add(j)
            tr, f = active[i], faces[j]
            gap = t - tr.last_frame
            for k in range(1, gap):  # frames missed in between
                w = k / gap
                tr.faces[tr.last_frame + k] = TrackedFace(
                    _lerp(tr.last.box, f.box, w), 0.0, _lerp(tr.last.landmarks, f.landmarks, w),
                    track_id=tr.track_id, interpolated=True)
            tr.faces[t] = TrackedFace(f.box, f.score, f.landmarks, track_id=tr.track_id)
            tr.last_frame, tr.last = t, f
        for j, f in enumerate(faces):
            if j not in used_f:
                tr = _Track(next_id, t, f)
                tr.faces[t] = TrackedFace(f.box, f.score, f.landmarks, track_id=next_id)
                active.append(tr)
                next_id += 1
    result: list[list[TrackedFace]] = [[] for _ in detections]
    for tr in finished + active:
        for t, f in tr.faces.items():
            result[t].append(f)
    for frame in result:
        frame.sort(key=lambda f: f.track_id)
    return result


def smooth_tracks(tracks: Sequence[Sequence[TrackedFace]], method: str = "kalman", radius: int = 2,
                  meas_std: float | None = None, accel_std: float | None = None) -> list[list[TrackedFace]]:
    """Temporally smoothed box and landmarks of each track, for the de-identification pass.

    The alignment then follows the head, not the detector's frame-to-frame jitter; attributes are always
    measured on unsmoothed detections.

    Args:
        tracks: per frame, its tracked faces (:func:`track_faces`).
        method: ``"kalman"`` = constant-velocity Kalman + RTS smoother per track (:mod:`video.smoothing`;
            gap-filled faces are predictions, not measurements); ``"mean"`` = centred moving average over
            +-``radius`` frames within the track (one-sided at the track's ends).
        radius: window half-width of ``"mean"`` [frames].
        meas_std, accel_std: noise levels of ``"kalman"`` as fractions of the face width (None: the defaults
            :data:`video.smoothing.MEAS_STD` / :data:`video.smoothing.ACCEL_STD`).

    Returns:
        per frame, the smoothed faces sorted by ``track_id`` (same faces, same order of frames).
    """
    from video import smoothing

    if method not in ("kalman", "mean"):
        raise ValueError(f"unknown smoothing method {method!r} (choose kalman or mean)")
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    ms = smoothing.MEAS_STD if meas_std is None else meas_std
    acc = smoothing.ACCEL_STD if accel_std is None else accel_std
    by_track: dict[int, list[tuple[int, TrackedFace]]] = {}
    for t, faces in enumerate(tracks):
        for f in faces:
            by_track.setdefault(f.track_id, []).append((t, f))
    result: list[list[TrackedFace]] = [[] for _ in tracks]
    for seq in by_track.values():
        frames_of = np.array([t for t, _ in seq])
        # contiguous runs (a track is contiguous unless a caller built it otherwise): smooth each run alone
        for run in np.split(np.arange(len(seq)), np.flatnonzero(np.diff(frames_of) != 1) + 1):
            part = [seq[k] for k in run]
            boxes = np.stack([f.box for _, f in part])
            lms = np.stack([f.landmarks for _, f in part])
            if method == "kalman":
                observed = np.array([not f.interpolated for _, f in part])
                if not observed.any():
                    observed[:] = True
                boxes, lms = smoothing.smooth_face_track(boxes, lms, observed, ms, acc)
            else:
                idx = np.arange(len(part))
                near = np.abs(idx[:, None] - idx[None]) <= radius
                w = near / near.sum(1, keepdims=True)
                boxes, lms = w @ boxes, np.einsum("ij,jkl->ikl", w, lms)
            for k, (t, f) in enumerate(part):
                result[t].append(TrackedFace(boxes[k], f.score, lms[k], track_id=f.track_id,
                                             interpolated=f.interpolated))
    for frame in result:
        frame.sort(key=lambda f: f.track_id)
    return result
