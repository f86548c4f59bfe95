"""Session fixtures of the video tests: ONE synthetic video of a real face with known motion, decoded and
detected once.

The face is the first held-out (validation split) aligned 128 px crop of the embedded NBA headshots; it is
pasted on a 320 x 240 background through a known similarity per frame (rotation +-12 deg, scale 0.9..1.1,
translation), 60 frames at 25 fps, with a 440 Hz AAC audio track. Ground truth = what MTCNN and dlib find on
the still face crop, mapped through each frame's known transform.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

WIDTH, HEIGHT, NUM_FRAMES, FPS = 320, 240, 60, 25


@dataclass
class MovingFace:
    path: Path
    face: np.ndarray          # (128, 128, 3) float32 still face
    motion: object            # video.synthetic.Motion
    frames: list              # decoded uint8 frames
    detections: list          # FrameDetector output per frame
    tracks: list              # track_faces output
    still_box: np.ndarray     # MTCNN box on the still face
    still_lm5: np.ndarray     # MTCNN landmarks on the still face
    still_lm68: np.ndarray    # dlib landmarks on the still face

    def matrix(self, t: int) -> np.ndarray:
        return self.motion.matrix(t, self.face.shape[0])

    def true_box(self, t: int) -> np.ndarray:
        """The still box moved by frame t's transform (centre mapped, sides scaled)."""
        from data.align import apply_transform

        b = self.still_box
        c = apply_transform(self.matrix(t), np.array([[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2]]))[0]
        w, h = (b[2] - b[0]) * self.motion.scale[t], (b[3] - b[1]) * self.motion.scale[t]
        return np.array([c[0] - w / 2, c[1] - h / 2, c[0] + w / 2, c[1] + h / 2])


@pytest.fixture(scope="session")
def frame_detector():
    from video.tracking import FrameDetector

    return FrameDetector(batch_size=16)


@pytest.fixture(scope="session")
def landmark_extractor():
    from video.attributes import LandmarkExtractor

    return LandmarkExtractor()


@pytest.fixture(scope="session")
def moving_face(tmp_path_factory, frame_detector, landmark_extractor) -> MovingFace:
    from data.images import list_images, read_image
    from pipelines.faces import default_face_dirs
    from video.io import read_video
    from video.synthetic import default_motion, write_moving_face_video
    from video.tracking import track_faces

    face = read_image(list_images(default_face_dirs(128)[1], recursive=True)[0])
    motion = default_motion(NUM_FRAMES, WIDTH, HEIGHT)
    path = write_moving_face_video(tmp_path_factory.mktemp("video") / "moving_face.mp4", face, motion, WIDTH,
                                   HEIGHT, fps=FPS)
    frames = read_video(path)
    detections = frame_detector.detect(frames)
    still = (face * 255 + 0.5).astype(np.uint8)
    s = frame_detector.detect([still])[0]
    assert s, "no face on the still test face"
    lm68, found = landmark_extractor.landmarks(still, s[0].box)
    assert found
    return MovingFace(path, face, motion, frames, detections, track_faces(detections), s[0].box, s[0].landmarks,
                      lm68)
