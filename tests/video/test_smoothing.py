"""video/smoothing.py: the constant-velocity RTS smoother removes detector jitter but follows the motion."""
from __future__ import annotations

import numpy as np
import pytest

from video.smoothing import ACCEL_STD, MEAS_STD, rts_smooth, smooth_face_track
from video.tracking import Face, smooth_tracks, track_faces

T = np.arange(120.0)
LINEAR = np.stack([3.0 + 1.5 * T, 10.0 - 0.7 * T], axis=1)  # constant velocity [px / frame]


def test_linear_motion_is_followed_exactly_even_at_the_ends():
    s = rts_smooth(LINEAR, meas_std=1.0, accel_std=0.15)
    np.testing.assert_allclose(s, LINEAR, atol=1e-5)


def test_frames_without_measurement_are_predicted_not_read():
    z = LINEAR.copy()
    observed = np.ones(len(z), bool)
    z[40:45] += 50.0  # garbage rows of gap-filled frames
    observed[40:45] = False
    np.testing.assert_allclose(rts_smooth(z, 1.0, 0.15, observed), LINEAR, atol=1e-5)


def test_noisy_linear_track_loses_its_jitter():
    rng = np.random.default_rng(0)
    sigma = 1.0
    z = LINEAR + rng.normal(0.0, sigma, LINEAR.shape)
    s = rts_smooth(z, meas_std=sigma, accel_std=0.15)
    rms = np.sqrt(((s - LINEAR) ** 2).mean())
    raw_rms = np.sqrt(((z - LINEAR) ** 2).mean())
    # an average over >= 5 frames would already halve the error; the raw error is ~sigma
    assert rms <= 0.5 * sigma < 0.6 * raw_rms, (rms, raw_rms)
    # frame-to-frame jitter (second difference; white noise gives ~1.95 sigma) almost gone
    jitter, raw_jitter = np.abs(np.diff(s, 2, axis=0)).mean(), np.abs(np.diff(z, 2, axis=0)).mean()
    assert jitter <= 0.05 * raw_jitter, (jitter, raw_jitter)


def test_smooth_head_motion_is_followed_with_the_default_noise_levels():
    # the benchmark's path: +-38 px sideways over 60 frames (max acceleration 0.42 px / frame^2), 80 px face
    width = 80.0
    path = np.stack([38.0 * np.sin(2 * np.pi * T / 60), 10.0 * np.cos(2 * np.pi * T / 60)], axis=1)
    s = rts_smooth(path, MEAS_STD * width, ACCEL_STD * width)
    assert np.abs(s - path).max() <= 0.02 * width  # within 1.6 px of the true path, no lag build-up


def test_smooth_face_track_scales_with_the_face_and_keeps_shapes():
    boxes = np.concatenate([LINEAR, LINEAR + 60.0], axis=1)
    lms = np.repeat(LINEAR[:, None], 5, axis=1) + np.arange(5)[None, :, None]
    b, lm = smooth_face_track(boxes, lms)
    assert b.shape == boxes.shape and lm.shape == lms.shape
    np.testing.assert_allclose(b, boxes, atol=1e-5)
    np.testing.assert_allclose(lm, lms, atol=1e-5)


def test_smooth_tracks_kalman_has_no_end_bias_unlike_the_mean():
    faces = [[Face(np.array([t, 0.0, t + 10.0, 10.0]), 1.0, np.full((5, 2), float(t)))] for t in range(60)]
    tracks = track_faces(faces, iou_threshold=0.5)
    mean = smooth_tracks(tracks, method="mean", radius=2)
    np.testing.assert_allclose(mean[10][0].box, [10, 0, 20, 10])
    np.testing.assert_allclose(mean[0][0].landmarks, 1.0)  # one-sided window at the end
    kal = smooth_tracks(tracks)
    for t in (0, 10, 59):
        np.testing.assert_allclose(kal[t][0].box, [t, 0, t + 10, 10], atol=1e-5)
        np.testing.assert_allclose(kal[t][0].landmarks, float(t), atol=1e-5)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="must be"):
        rts_smooth(np.zeros(5), 1.0, 1.0)
    with pytest.raises(ValueError, match="> 0"):
        rts_smooth(np.zeros((5, 2)), 0.0, 1.0)
    with pytest.raises(ValueError, match="observed"):
        rts_smooth(np.zeros((5, 2)), 1.0, 1.0, np.zeros(5, bool))
    with pytest.raises(ValueError, match="unknown smoothing"):
        smooth_tracks([], method="median")
