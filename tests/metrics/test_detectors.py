"""Detectors on a real face: known shifts give known box / landmark displacements; non-faces are misses."""
from __future__ import annotations

import math

import numpy as np
import pytest

from metrics.detectors import Detection, DlibDetector, dlib_model_path, inter_ocular_distance
from metrics.geometry import geometry_metrics
from tests.helpers import astronaut_window


def _check_shift(detector, shift: tuple[int, int]) -> None:
    dx, dy = shift
    ref, moved = detector.detect([astronaut_window(), astronaut_window(dx, dy)])
    assert ref is not None and moved is not None
    m = geometry_metrics([moved], [ref])
    assert m["pairs"] == 1 and m["misses"] == 0
    # a pure translation moves the box centre by exactly sqrt(dx^2 + dy^2) ...
    assert abs(m["bbox_center_px"] - math.hypot(dx, dy)) <= 1.0
    # ... and every landmark coordinate by |dx| or |dy|: mean absolute difference (|dx| + |dy|) / 2
    assert abs(m["landmarks_px"] - (abs(dx) + abs(dy)) / 2) <= 1.0
    # after undoing the shift, each landmark lies within 1 px of where it was
    residual = np.abs(moved.landmarks - np.array([dx, dy]) - ref.landmarks).mean()
    assert residual <= 1.0


def test_mtcnn_shift(mtcnn):
    # MTCNN's image pyramid has non-integer scales, so it is shift-equivariant only up to ~1 px of jitter
    _check_shift(mtcnn, (12, 16))
    _check_shift(mtcnn, (-5, 12))


def test_dlib_shift(dlib_hog):
    # dlib's HOG box is snapped to its scanning grid (10 px for this face's pyramid level): shift by that grid
    _check_shift(dlib_hog, (10, -20))
    _check_shift(dlib_hog, (20, 10))


def test_landmark_layout(mtcnn, dlib_hog, astronaut):
    (m,), (d,) = mtcnn.detect([astronaut]), dlib_hog.detect([astronaut])
    assert isinstance(m, Detection) and m.landmarks.shape == (5, 2) and m.box.shape == (4,)
    assert d.landmarks.shape == (68, 2)
    assert 0.9 < m.score <= 1.0
    # image-left eye first; the nose lies between the eyes horizontally and below them
    assert m.landmarks[0, 0] < m.landmarks[1, 0]
    assert m.landmarks[0, 0] < m.landmarks[2, 0] < m.landmarks[1, 0] and m.landmarks[2, 1] > m.landmarks[0, 1]
    # both detectors find the same face: the MTCNN eyes lie inside the dlib box and vice versa
    for x, y in m.landmarks[:2]:
        assert d.box[0] < x < d.box[2] and d.box[1] < y < d.box[3]
    # dlib inter-ocular (outer corners) is wider than MTCNN's (eye centres), both plausible for a ~90 px face
    assert 25 < inter_ocular_distance(m.landmarks) < inter_ocular_distance(d.landmarks) < 90


def test_non_face_is_a_miss(mtcnn, dlib_hog):
    rng = np.random.default_rng(0)
    flat = np.full((128, 128, 3), 0.5, np.float32)
    noise = rng.random((128, 128, 3), dtype=np.float32)
    face = astronaut_window()
    for det in (mtcnn, dlib_hog):
        out = det.detect([flat, noise])
        assert out == [None, None]
        m = geometry_metrics([out[0], det.detect([face])[0]], [det.detect([face])[0]] * 2)
        assert m["misses"] == 1 and m["pairs"] == 1 and m["detection_rate"] == 0.5


def test_mtcnn_batched_equals_single(mtcnn):
    images = [astronaut_window(), astronaut_window(4, 6), astronaut_window(size=200)]
    batched = mtcnn.detect(images)
    for img, b in zip(images, batched):
        (single,) = mtcnn.detect([img])
        np.testing.assert_allclose(b.box, single.box, atol=1e-3)
        np.testing.assert_allclose(b.landmarks, single.landmarks, atol=1e-3)
    assert mtcnn.detect([]) == []


def test_bad_input(mtcnn, dlib_hog):
    for det in (mtcnn, dlib_hog):
        with pytest.raises(ValueError, match="image 1"):
            det.detect([astronaut_window(), np.zeros((64, 64), np.float32)])
        with pytest.raises(ValueError, match="uint8"):
            det.detect([np.zeros((64, 64, 3), np.uint8)])
        with pytest.raises(ValueError, match="NaN"):
            det.detect([np.full((64, 64, 3), np.nan, np.float32)])
    with pytest.raises(ValueError, match="detector"):
        DlibDetector("yolo")


def test_dlib_model_path():
    assert dlib_model_path("shape_predictor_68_face_landmarks.dat").stat().st_size > 1_000_000
    with pytest.raises(FileNotFoundError, match="no_such_model.dat"):
        dlib_model_path("no_such_model.dat")
