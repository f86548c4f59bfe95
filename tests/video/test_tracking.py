"""video/tracking.py on the moving-face video: boxes and 5 landmarks vs the known motion; tracks survive misses."""
from __future__ import annotations

import copy

import numpy as np

from data.align import apply_transform
from metrics.geometry import box_iou
from tests.video.conftest import NUM_FRAMES
from video.tracking import Face, track_faces

LM5_FRAME_PX = 4.0
"""Tolerance of the per-frame mean 5-point error [px] (the face's inter-ocular distance is ~36 px here)."""
LM5_MEAN_PX = 2.0
"""Tolerance of the mean over all frames [px]."""


def test_boxes_and_landmarks_follow_the_known_motion(moving_face):
    assert all(len(t) == 1 and t[0].track_id == 0 for t in moving_face.tracks)
    ious, errors = [], []
    for t, (face,) in enumerate(moving_face.tracks):
        ious.append(box_iou(face.box, moving_face.true_box(t)))
        truth = apply_transform(moving_face.matrix(t), moving_face.still_lm5)
        errors.append(np.linalg.norm(face.landmarks - truth, axis=1).mean())
    assert min(ious) >= 0.8, f"worst IoU {min(ious):.3f}"
    assert max(errors) <= LM5_FRAME_PX and np.mean(errors) <= LM5_MEAN_PX, (max(errors), np.mean(errors))


def test_batched_equals_frame_by_frame(moving_face, frame_detector):
    from video.tracking import FrameDetector

    single = FrameDetector(batch_size=1).detect(moving_face.frames[:6])
    for a, b in zip(single, moving_face.detections[:6]):
        assert len(a) == len(b)
        np.testing.assert_allclose(a[0].box, b[0].box, atol=1e-3)
        np.testing.assert_allclose(a[0].landmarks, b[0].landmarks, atol=1e-3)


def test_track_survives_a_short_miss_and_fills_the_gap(moving_face):
    dets = copy.deepcopy(moving_face.detections)
    for t in range(20, 24):  # the detector misses 4 frames
        dets[t] = []
    tracks = track_faces(dets, max_misses=5)
    assert {f.track_id for t in tracks for f in t} == {0}
    assert all(len(t) == 1 for t in tracks)
    filled = [tracks[t][0] for t in range(20, 24)]
    assert all(f.interpolated for f in filled)
    assert min(box_iou(f.box, moving_face.true_box(t)) for t, f in zip(range(20, 24), filled)) >= 0.8


def test_long_miss_starts_a_new_track_and_faces_far_apart_are_two_tracks(moving_face):
    dets = copy.deepcopy(moving_face.detections)
    for t in range(20, 30):
        dets[t] = []
    tracks = track_faces(dets, max_misses=5)
    assert [t[0].track_id for t in tracks if t][:20] == [0] * 20 and tracks[30][0].track_id == 1
    assert all(not t for t in tracks[20:30])
    # a second face, far away, in every frame: two tracks, ids stable
    two = [d + [Face(d[0].box + 1000.0, 0.99, d[0].landmarks + 1000.0)] for d in moving_face.detections]
    tracks = track_faces(two)
    assert all([f.track_id for f in t] == [0, 1] for t in tracks)
