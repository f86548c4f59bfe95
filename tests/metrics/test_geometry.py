"""Closed forms of the geometry metrics (no models)."""
from __future__ import annotations

import numpy as np
import pytest

from metrics.detectors import Detection
from metrics.geometry import box_center_distance, box_iou, geometry_metrics, landmark_abs_error, landmark_nme


def test_box_iou_closed_form():
    a = np.array([0.0, 0.0, 10.0, 10.0])
    assert box_iou(a, a) == pytest.approx(1.0)
    assert box_iou(a, a + [5, 0, 5, 0]) == pytest.approx(50 / 150)
    assert box_iou(a, a + [20, 20, 20, 20]) == 0.0
    # centre of [x1, y1, x2, y2] (not the reference's (x + w) / 2)
    assert box_center_distance(a, np.array([3.0, 4.0, 13.0, 14.0])) == pytest.approx(5.0)
    assert box_center_distance(np.array([10.0, 0, 30, 20]), np.array([0.0, 0, 20, 20])) == pytest.approx(10.0)


def test_landmarks_closed_form():
    rng = np.random.default_rng(1)
    ref = rng.uniform(0, 100, (68, 2))
    ref[36], ref[45] = [30.0, 40.0], [70.0, 40.0]  # inter-ocular distance 40 px
    moved = ref + [3.0, -4.0]
    assert landmark_abs_error(moved, ref) == pytest.approx(3.5)
    assert landmark_nme(moved, ref) == pytest.approx(5.0 / 40.0)
    five = np.array([[30.0, 40], [50, 40], [40, 50], [32, 60], [48, 60]])
    assert landmark_nme(five + [0, 2], five) == pytest.approx(2.0 / 20.0)
    with pytest.raises(ValueError, match="shapes differ"):
        landmark_abs_error(five, ref)


def test_misses_excluded_and_counted():
    five = np.array([[30.0, 40], [50, 40], [40, 50], [32, 60], [48, 60]])
    d = Detection(np.array([0.0, 0, 10, 10]), 0.9, five)
    shifted = Detection(np.array([3.0, 4, 13, 14]), 0.9, five + [3, 4])
    m = geometry_metrics([shifted, None, d, None], [d, d, None, None])
    assert m["pairs"] == 1 and m["misses"] == 3
    assert m["misses_generated"] == 2 and m["misses_original"] == 2
    assert m["detection_rate"] == 0.5 and m["detection_rate_original"] == 0.5
    assert m["bbox_center_px"] == pytest.approx(5.0) and m["landmarks_px"] == pytest.approx(3.5)
    empty = geometry_metrics([None], [None])
    assert empty["bbox_center_px"] is None and empty["landmarks_nme"] is None and empty["pairs"] == 0
    with pytest.raises(ValueError, match="not paired"):
        geometry_metrics([d], [d, d])
