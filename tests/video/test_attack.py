"""video/attack.py: after the blur, the real MTCNN cascade loses the face; after the bounded attack it finds it again
at the original's box. The perturbation respects epsilon and stays in the face box."""
from __future__ import annotations

import numpy as np

from metrics.geometry import box_iou
from video.attack import AttackConfig, attack_frames
from video.deid import blur_box


def test_blur_attack_restores_the_victim_within_epsilon(moving_face, frame_detector):
    idx = [0, 20, 40]
    frames = [moving_face.frames[i] for i in idx]
    tracks = [moving_face.tracks[i] for i in idx]
    blurred = [blur_box(f, t[0].box, 30) for f, t in zip(frames, tracks)]
    assert not any(frame_detector.detect(blurred)), "the blur alone should already hide the face from MTCNN"
    cfg = AttackConfig(epsilon=8 / 255, steps=20)
    attacked, stats = attack_frames(frames, blurred, tracks, cfg)
    assert stats[-1]["loss"] < 0.2 * stats[0]["loss"]
    found = frame_detector.detect(attacked)
    for f, t in zip(found, tracks):
        assert f, "the attacked frame must be detected again"
        assert box_iou(f[0].box, t[0].box) >= 0.8
    for a, b, t in zip(attacked, blurred, tracks):
        d = np.abs(a.astype(int) - b)
        assert d.max() <= 8 + 1  # epsilon in grey levels (+1 for rounding)
        x1, y1, x2, y2 = (int(np.floor(t[0].box[0])), int(np.floor(t[0].box[1])), int(np.ceil(t[0].box[2])),
                          int(np.ceil(t[0].box[3])))
        outside = d.copy()
        outside[max(0, y1):y2, max(0, x1):x2] = 0
        assert outside.max() == 0
