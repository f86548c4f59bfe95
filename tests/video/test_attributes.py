"""video/attributes.py: 68 landmarks and the roll angle vs the known motion, head-pose axes in closed form, the
DRSF JSON layout and its round trip."""
from __future__ import annotations

import json

import numpy as np
import pytest

from data.align import apply_transform
from video.attributes import (DLIB_POSE_POINTS, DRSF_KEYS, MODEL_POINTS_3D, FaceAttributes, camera_matrix,
                              euler_to_rotation, extract_attributes, head_pose, load_attributes,
                              rotation_to_euler, save_attributes)

LM68_FRAME_PX = 6.0
"""Per-frame tolerance of the mean 68-point error vs the still's points moved by the known transform [px]."""
LM68_MEAN_PX = 2.0
ROLL_TOLERANCE_DEG = 3.0


@pytest.fixture(scope="module")
def attributes(moving_face, landmark_extractor):
    return extract_attributes(moving_face.frames, moving_face.tracks, landmark_extractor)


def test_landmarks_and_roll_follow_the_known_motion(moving_face, attributes):
    errors, offsets = [], []
    for t, (fa,) in enumerate(attributes):
        truth = apply_transform(moving_face.matrix(t), moving_face.still_lm68)
        errors.append(np.linalg.norm(fa.landmarks - truth, axis=1).mean())
        offsets.append(fa.euler[2] - moving_face.motion.angle[t])  # roll minus the known in-plane rotation
    assert max(errors) <= LM68_FRAME_PX and np.mean(errors) <= LM68_MEAN_PX, (max(errors), np.mean(errors))
    # the known in-plane rotation (+-12 deg; the still face is upright) is recovered as roll in every frame
    offsets = np.array(offsets)
    assert np.ptp(moving_face.motion.angle) > 20
    assert np.abs(offsets).max() <= ROLL_TOLERANCE_DEG, offsets.round(1)


@pytest.mark.parametrize("euler", [(0.0, 0.0, 0.0), (10.0, -20.0, 5.0), (-15.0, 30.0, -12.0)])
def test_head_pose_recovers_a_projected_model(euler):
    """Project the 3D model with a known rotation; solvePnP must return the same (pitch, yaw, roll)."""
    w, h = 640, 480
    rot = euler_to_rotation(euler)
    cam = (MODEL_POINTS_3D @ rot.T) + np.array([30.0, -20.0, 3000.0])
    k = camera_matrix(w, h)
    pix = (cam @ k.T)[:, :2] / cam[:, 2:]
    lm = np.zeros((68, 2))
    lm[list(DLIB_POSE_POINTS)] = pix
    np.testing.assert_allclose(head_pose(lm, w, h), euler, atol=0.05)


def test_pose_axes_signs():
    """Documented signs: roll > 0 turns +x towards +y; pitch > 0 moves the chin away; yaw > 0 brings the image-right
    side of the face closer."""
    chin, right = MODEL_POINTS_3D[1], MODEL_POINTS_3D[3]
    assert (euler_to_rotation((0, 0, 10)) @ np.array([1.0, 0, 0]))[1] > 0
    assert (euler_to_rotation((10, 0, 0)) @ chin)[2] > chin[2]
    assert (euler_to_rotation((0, 10, 0)) @ right)[2] < right[2]
    for e in [(5.0, -40.0, 170.0), (-80.0, 10.0, -3.0)]:
        np.testing.assert_allclose(rotation_to_euler(euler_to_rotation(e)), e, atol=1e-9)


def test_json_is_exactly_the_drsf_layout_and_round_trips(attributes, tmp_path):
    frames = [list(f) for f in attributes]
    frames[5] = []  # a frame without a face keeps its entry
    path = save_attributes(tmp_path / "a.json", frames)
    data = json.loads(path.read_text())
    assert len(data) == len(frames) and [d["frame_id"] for d in data] == list(range(len(frames)))
    assert all(tuple(d) == DRSF_KEYS for d in data)
    assert all(d["gaze_vector"] is None for d in data)
    d0 = data[0]
    assert len(d0["bboxes"]) == 4 and len(d0["landmarks"]) == 68 and len(d0["euler_angles"]) == 3
    assert data[5]["bboxes"] is None
    back = load_attributes(path)
    assert back[5] == [] and len(back) == len(frames)
    for a, b in zip(frames, back):
        if a:
            np.testing.assert_allclose(b[0].box, a[0].box, atol=1e-4)
            np.testing.assert_allclose(b[0].landmarks, a[0].landmarks, atol=1e-4)
            np.testing.assert_allclose(b[0].euler, a[0].euler, atol=1e-4)


def test_several_faces_get_track_ids(tmp_path):
    def fa(t, tid, x):
        return FaceAttributes(t, np.array([x, 0, x + 50, 60.0]), np.full((68, 2), x), np.zeros(3), None, tid)

    frames = [[fa(0, 0, 0.0), fa(0, 1, 100.0)], [fa(1, 1, 101.0)], []]
    data = json.loads(save_attributes(tmp_path / "m.json", frames).read_text())
    assert [(d["frame_id"], d["track_id"]) for d in data] == [(0, 0), (0, 1), (1, 1), (2, None)]
    back = load_attributes(tmp_path / "m.json")
    assert [[f.track_id for f in fr] for fr in back] == [[0, 1], [1], []]


@pytest.mark.parametrize("text,problem", [("{not json", "not valid JSON"), ('{"a": 1}', "list"),
                                           ('[{"frame_id": 0, "bboxes": [1, 2]}]', "bboxes")])
def test_bad_json_names_the_file(tmp_path, text, problem):
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(ValueError, match=problem) as err:
        load_attributes(p)
    assert str(p) in str(err.value)
