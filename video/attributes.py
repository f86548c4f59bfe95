"""Per-frame face attributes in the DRSF layout: box, 68 dlib landmarks, head pose, gaze (null).

Pipeline per tracked face (boxes from :mod:`video.tracking`): dlib's frontal HOG detector searches a window
around the MTCNN box (upsampled once when the face is small), the 68-point shape predictor runs in the
dlib box that overlaps the MTCNN box most, or, when HOG finds nothing there, in a box derived from the
MTCNN box (``dlib_detected = False``). Head pose comes from ``cv2.solvePnP`` of six of the 68 points against
a generic 3D face model (:data:`MODEL_POINTS_3D`).

Head-pose axes (degrees): the camera frame is OpenCV's (x right, y down, z forward out of the lens), focal
length = frame width [px], principal point = frame centre, no distortion. The face model frame coincides with
the camera frame for a frontal, upright face (x towards the image right, y down, z away from the camera).
``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)`` maps model to camera coordinates;

* pitch > 0: the chin moves away from the camera (head tilted back / looking up);
* yaw > 0: the face's image-right side moves towards the camera (the face turns towards the image left);
* roll > 0: in-plane rotation from +x towards +y, i.e. clockwise as displayed (the y axis points down).

JSON (``--json``), one entry per frame when every frame has at most one face, exactly DRSF's layout::

    [{"frame_id": 0, "bboxes": [x1, y1, x2, y2], "landmarks": [[x, y], ... 68], "euler_angles": [pitch, yaw,
      roll], "gaze_vector": null}, ...]

A frame without a face keeps its entry with ``bboxes``, ``landmarks`` and ``euler_angles`` null (so that
``frame_id`` is always the list index). Extension for several faces (any frame with more than one): one entry
per face, each with an extra ``"track_id"``, frames in order and faces by track id; a frame without a face has
one entry with ``"track_id": null``. ``gaze_vector`` stays null: no gaze-estimation model installs offline.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from metrics.geometry import box_iou

log = logging.getLogger(__name__)

DLIB_POSE_POINTS = (30, 8, 36, 45, 48, 54)
"""iBUG indices used for the pose: nose tip, chin, outer eye corners (image left, right), mouth corners."""

MODEL_POINTS_3D = np.array([
    [0.0, 0.0, 0.0],          # nose tip
    [0.0, 330.0, 65.0],       # chin
    [-225.0, -170.0, 135.0],  # outer corner of the eye on the image left
    [225.0, -170.0, 135.0],   # outer corner of the eye on the image right
    [-150.0, 150.0, 125.0],   # mouth corner on the image left
    [150.0, 150.0, 125.0],    # mouth corner on the image right
], dtype=np.float64)
"""Generic 3D face (the widely used six-point model, arbitrary units ~0.1 mm) in the face frame described in
the module docstring (x right, y down, z away from the camera)."""

DRSF_KEYS = ("frame_id", "bboxes", "landmarks", "euler_angles", "gaze_vector")


@dataclass
class FaceAttributes:
    """Attributes of one face in one frame (None fields: not measured).

    Attributes:
        frame_id: frame index from 0.
        box: (4,) ``x1, y1, x2, y2`` [px] (MTCNN).
        landmarks: (68, 2) iBUG points [px] (dlib).
        euler: (3,) ``pitch, yaw, roll`` [deg] (see the module docstring for the axes).
        gaze: (3,) gaze vector, or None.
        track_id: face track (None when the file has no track ids).
        mtcnn_landmarks: (5, 2) MTCNN points [px] (not in the JSON).
        dlib_detected: dlib's HOG detector found this face itself (not in the JSON).
    """

    frame_id: int
    box: np.ndarray | None = None
    landmarks: np.ndarray | None = None
    euler: np.ndarray | None = None
    gaze: np.ndarray | None = None
    track_id: int | None = None
    mtcnn_landmarks: np.ndarray | None = None
    dlib_detected: bool | None = None


def rotation_to_euler(rot: np.ndarray) -> np.ndarray:
    """``(pitch, yaw, roll)`` [deg] of ``rot = Rz(roll) Ry(yaw) Rx(pitch)`` (yaw in [-90, 90])."""
    r = np.asarray(rot, dtype=np.float64)
    yaw = np.arcsin(np.clip(-r[2, 0], -1.0, 1.0))
    pitch = np.arctan2(r[2, 1], r[2, 2])
    roll = np.arctan2(r[1, 0], r[0, 0])
    return np.degrees([pitch, yaw, roll])


def euler_to_rotation(euler_deg: Sequence[float]) -> np.ndarray:
    """(3, 3) ``Rz(roll) Ry(yaw) Rx(pitch)`` of ``(pitch, yaw, roll)`` [deg] (inverse of :func:`rotation_to_euler`)."""
    p, y, r = np.radians(np.asarray(euler_deg, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ ry @ rx


def camera_matrix(width: int, height: int) -> np.ndarray:
    """(3, 3) pinhole intrinsics: focal length = width [px], principal point at the frame centre."""
    f = float(width)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def head_pose(landmarks: np.ndarray, width: int, height: int) -> np.ndarray:
    """Head pose of 68 iBUG landmarks by ``cv2.solvePnP`` against :data:`MODEL_POINTS_3D`.

    Args:
        landmarks: (68, 2) ``x, y`` [px].
        width, height: frame size [px] (intrinsics from :func:`camera_matrix`).

    Returns:
        (3,) ``pitch, yaw, roll`` [deg].
    """
    import cv2

    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"head pose needs (68, 2) landmarks, got {lm.shape}")
    image_points = np.ascontiguousarray(lm[list(DLIB_POSE_POINTS)])
    ok, rvec, tvec = cv2.solvePnP(MODEL_POINTS_3D, image_points, camera_matrix(width, height), np.zeros(4),
                                  flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        raise RuntimeError("cv2.solvePnP found no pose")
    rot, _ = cv2.Rodrigues(rvec)
    if tvec[2, 0] < 0:  # the mirror solution behind the camera: turn it around the optical axis
        rot = np.diag([-1.0, -1.0, 1.0]) @ rot
    return rotation_to_euler(rot)


class LandmarkExtractor:
    """dlib's 68 landmarks for tracked faces (HOG near the MTCNN box, predictor from face-recognition-models)."""

    def __init__(self) -> None:
        import dlib

        from metrics.detectors import dlib_model_path

        self._dlib = dlib
        self._hog = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(dlib_model_path("shape_predictor_68_face_landmarks.dat")))

    def _rect_from_mtcnn(self, box: np.ndarray):
        # dlib's HOG boxes are tighter than MTCNN's (no forehead): shrink the MTCNN box, move it down a bit
        x1, y1, x2, y2 = box
        w, h = x2 - x1, y2 - y1
        cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2 + 0.08 * h, 0.85 * max(w, h)
        return self._dlib.rectangle(int(round(cx - side / 2)), int(round(cy - side / 2)),
                                    int(round(cx + side / 2)), int(round(cy + side / 2)))

    def landmarks(self, frame: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, bool]:
        """68 points of the face in ``box``.

        Args:
            frame: (H, W, 3) uint8 RGB.
            box: (4,) MTCNN box [px].

        Returns:
            ((68, 2) float64 [px], dlib_detected).
        """
        dlib = self._dlib
        h, w = frame.shape[:2]
        x1, y1, x2, y2 = box
        side = max(x2 - x1, y2 - y1)
        pad = 0.4 * side
        wx1, wy1 = int(max(0, x1 - pad)), int(max(0, y1 - pad))
        wx2, wy2 = int(min(w, x2 + pad)), int(min(h, y2 + pad))
        window = np.ascontiguousarray(frame[wy1:wy2, wx1:wx2])
        rect, found = None, False
        if window.size:
            rects = self._hog(window, 1 if side < 100 else 0)
            best = 0.0
            for r in rects:
                cand = np.array([r.left() + wx1, r.top() + wy1, r.right() + 1 + wx1, r.bottom() + 1 + wy1], float)
                iou = box_iou(cand, np.asarray(box, float))
                if iou > best:
                    best, rect = iou, dlib.rectangle(int(cand[0]), int(cand[1]), int(cand[2]) - 1, int(cand[3]) - 1)
            found = rect is not None and best >= 0.2
        if not found:
            rect = self._rect_from_mtcnn(np.asarray(box, float))
        shape = self._predictor(np.ascontiguousarray(frame), rect)
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64), bool(found)


def extract_attributes(frames: Sequence[np.ndarray], tracks: Sequence[Sequence], extractor: LandmarkExtractor,
                       start_frame: int = 0) -> list[list[FaceAttributes]]:
    """Attributes of the tracked faces of a run of frames.

    Args:
        frames: (H, W, 3) uint8 RGB frames.
        tracks: per frame, its :class:`video.tracking.TrackedFace` list.
        extractor: dlib landmark extractor.
        start_frame: frame id of ``frames[0]``.

    Returns:
        per frame, one :class:`FaceAttributes` per tracked face (empty list: no face).
    """
    out = []
    for k, (frame, faces) in enumerate(zip(frames, tracks)):
        h, w = frame.shape[:2]
        row = []
        for f in faces:
            lm, found = extractor.landmarks(frame, f.box)
            row.append(FaceAttributes(start_frame + k, np.asarray(f.box, float), lm, head_pose(lm, w, h), None,
                                      f.track_id, np.asarray(f.landmarks, float), found))
        out.append(row)
    return out


def _num(v) -> list | None:
    return None if v is None else np.round(np.asarray(v, dtype=np.float64), 4).tolist()


def to_records(frames: Sequence[Sequence[FaceAttributes]]) -> list[dict]:
    """JSON records (see the module docstring): the DRSF layout, or the track-id extension for several faces."""
    multi = any(len(faces) > 1 for faces in frames)
    records = []
    for i, faces in enumerate(frames):
        if not faces:
            rec = {"frame_id": i, "bboxes": None, "landmarks": None, "euler_angles": None, "gaze_vector": None}
            if multi:
                rec["track_id"] = None
            records.append(rec)
            continue
        for fa in (faces if multi else faces[:1]):
            rec = {"frame_id": i, "bboxes": _num(fa.box), "landmarks": _num(fa.landmarks),
                   "euler_angles": _num(fa.euler), "gaze_vector": _num(fa.gaze)}
            if multi:
                rec["track_id"] = fa.track_id
            records.append(rec)
    return records


def save_attributes(path: str | os.PathLike, frames: Sequence[Sequence[FaceAttributes]]) -> Path:
    """Write :func:`to_records` as JSON atomically, one entry per line (key order as in DRSF's files)."""
    from data.files import save_bytes

    lines = [json.dumps(rec, allow_nan=False) for rec in to_records(frames)]
    return save_bytes(path, ("[\n" + ",\n".join(lines) + "\n]\n").encode())


def _array(rec: dict, key: str, shape: tuple, path: Path, index: int) -> np.ndarray | None:
    value = rec.get(key)
    if value is None:
        return None
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: entry {index} ({key}) is not numeric: {err}") from err
    if arr.shape != shape or not np.all(np.isfinite(arr)):
        raise ValueError(f"{path}: entry {index} {key} must be {shape} finite numbers, got shape {arr.shape}")
    return arr


def load_attributes(path: str | os.PathLike) -> list[list[FaceAttributes]]:
    """Read a DRSF-layout (or track-id extension) JSON file back into per-frame face lists.

    Frame ids may have gaps (missing frames become empty lists); entries with a null box are frames without a
    face.

    Raises:
        FileNotFoundError / ValueError: missing file, invalid JSON or an entry not in the layout (names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such attribute file")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of per-frame entries (DRSF layout), got {type(data).__name__}")
    by_frame: dict[int, list[FaceAttributes]] = {}
    for i, rec in enumerate(data):
        if not isinstance(rec, dict) or "frame_id" not in rec:
            raise ValueError(f"{path}: entry {i} is not an object with a frame_id")
        try:
            fid = int(rec["frame_id"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: entry {i} has a non-integer frame_id {rec['frame_id']!r}") from err
        if fid < 0:
            raise ValueError(f"{path}: entry {i} has a negative frame_id {fid}")
        box = _array(rec, "bboxes", (4,), path, i)
        faces = by_frame.setdefault(fid, [])
        if box is None:
            continue
        lm = rec.get("landmarks")
        lm_shape = (len(lm), 2) if isinstance(lm, list) else (68, 2)
        faces.append(FaceAttributes(
            fid, box, _array(rec, "landmarks", lm_shape, path, i), _array(rec, "euler_angles", (3,), path, i),
            _array(rec, "gaze_vector", (3,), path, i) if rec.get("gaze_vector") is not None and
            len(rec["gaze_vector"]) == 3 else _array(rec, "gaze_vector", (2,), path, i),
            None if rec.get("track_id") is None else int(rec["track_id"])))
    n = max(by_frame) + 1 if by_frame else 0
    return [by_frame.get(i, []) for i in range(n)]
