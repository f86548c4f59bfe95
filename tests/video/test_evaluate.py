"""video/evaluate.py: DRSF metrics in closed form, misses, identity and flicker on known frame sequences."""
from __future__ import annotations

import numpy as np
import pytest

from video.attributes import FaceAttributes, euler_to_rotation
from video.evaluate import (compare_faces, evaluate_attributes, identity_and_flicker, merge_rows, pose_error,
                            write_report)


def _fa(t=0, box=(10.0, 20.0, 110.0, 140.0), shift=(0.0, 0.0), euler=(5.0, 10.0, -3.0), gaze=None):
    lm = np.stack([np.linspace(20, 100, 68), np.linspace(40, 130, 68)], 1) + np.asarray(shift)
    return FaceAttributes(t, np.asarray(box, float), lm, np.asarray(euler, float),
                          None if gaze is None else np.asarray(gaze, float))


def test_identical_attributes_score_zero():
    row = compare_faces(_fa(), _fa())
    assert row["iou"] == pytest.approx(1.0) and row["landmarks_px"] == 0 and row["diffscore"] == pytest.approx(0)
    assert row["pose_error_deg"] == pytest.approx(0, abs=1e-6) and row["euler_cosine"] == pytest.approx(0, abs=1e-12)


def test_closed_forms():
    # box shifted by half its width: intersection 50 x 120 of two 100 x 120 boxes -> IoU 1/3
    pred = _fa(box=(60.0, 20.0, 160.0, 140.0), shift=(3.0, 4.0), euler=(5.0, 20.0, -3.0), gaze=(0, 0, -1.0))
    gt = _fa(gaze=(1.0, 0, 0))
    row = compare_faces(gt, pred)
    assert row["iou"] == pytest.approx(1 / 3)
    assert row["landmarks_px"] == pytest.approx(5.0)  # every point moved by (3, 4)
    assert row["yaw_error_deg"] == pytest.approx(10.0) and row["pitch_error_deg"] == pytest.approx(0.0)
    assert row["pose_error_deg"] == pytest.approx(pose_error(gt.euler, pred.euler))
    a, b = gt.euler, pred.euler
    assert row["euler_cosine"] == pytest.approx(1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert row["gaze_error_deg"] == pytest.approx(90.0)
    assert row["diffscore"] == pytest.approx((1 - 1 / 3) + 5.0 + 90.0)


def test_pose_error_is_the_relative_rotation_angle():
    assert pose_error((0, 0, 0), (0, 0, 25)) == pytest.approx(25)
    r = euler_to_rotation((10, 20, 30))
    assert pose_error((10, 20, 30), (10, 20, 30)) == pytest.approx(0, abs=1e-5)
    assert np.allclose(r @ r.T, np.eye(3))


def test_misses_are_counted_not_dropped():
    gt = [[_fa(0)], [_fa(1)], [], [_fa(3)]]
    pred = [[_fa(0)], [], [_fa(2)], [_fa(3, shift=(1.0, 0))]]
    rows, summary = evaluate_attributes(gt, pred)
    assert summary["faces"] == 3 and summary["misses"] == 1 and summary["detection_rate"] == pytest.approx(2 / 3)
    assert summary["frames_without_face_gt"] == 1
    assert summary["landmarks_px"] == pytest.approx(0.5)  # mean over the two found faces
    assert [r["found"] for r in rows] == [True, False, True]


def test_identity_and_flicker_on_known_sequences(moving_face, embedder, landmark_extractor):
    from video.attributes import extract_attributes

    n = 4
    frames, tracks = moving_face.frames[:n], moving_face.tracks[:n]
    gt = extract_attributes(frames, tracks, landmark_extractor)
    _, same = identity_and_flicker(frames, frames, gt, embedder)
    assert same["flicker_ratio"] == pytest.approx(1.0) and same["reid_mean_distance"] == pytest.approx(0, abs=1e-9)
    assert same["reid_same_person_rate"] == 1.0 and same["reid_rank1"] == 1.0
    assert same["flicker_ratio_texture"] == pytest.approx(1.0)
    frozen = [frames[0]] * n  # a still image: no change at all inside the boxes
    rows, still = identity_and_flicker(frames, frozen, gt, embedder)
    assert still["flicker_pred"] == 0.0 and still["flicker_gt"] > 0
    grey = [np.full_like(f, 128) for f in frames]  # the face removed: not the same person
    _, gone = identity_and_flicker(frames, grey, gt, embedder)
    assert gone["reid_same_person_rate"] == 0.0
    merged = merge_rows(evaluate_attributes(gt, gt)[0], rows)
    assert len(merged) == n and merged[1]["flicker_pred"] == 0.0


def test_report_files(tmp_path):
    rows, summary = evaluate_attributes([[_fa(t)] for t in range(4)], [[_fa(t, shift=(t, 0))] for t in range(4)])
    written = write_report(tmp_path, rows, summary, "test")
    names = {p.name for p in written}
    assert {"frames.csv", "summary.json", "metrics.png", "plot_iou.png", "plot_landmarks_px.png"} <= names
    lines = (tmp_path / "frames.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert len(lines) == 5 and header[:3] == ["frame_id", "track_id", "found"]
    assert {"iou", "landmarks_px", "pose_error_deg", "euler_cosine", "diffscore"} <= set(header)
