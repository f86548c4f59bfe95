"""Test and benchmark videos with known geometry: a real face photo moved by a known similarity per frame.

The face (an aligned crop of a real photo) is pasted on a background through a similarity transform
``T_t`` (rotation about the patch centre, uniform scale, translation) with a feathered square alpha, so the
true position of anything found on the still face is ``T_t`` applied to it. Optionally a sine-tone AAC audio
track is muxed in. Used by tests/video and benchmarks/bench_video.py; nothing here measures anything.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from data.align import similarity_matrix


@dataclass
class Motion:
    """Per-frame similarity parameters: ``angle`` [deg] (counter-clockwise in (x, y), i.e. clockwise as
    displayed), ``scale``, centre ``cx, cy`` [px] of the pasted patch in the frame; arrays of length N."""

    angle: np.ndarray
    scale: np.ndarray
    cx: np.ndarray
    cy: np.ndarray

    def matrix(self, t: int, patch_size: int) -> np.ndarray:
        """(3, 3) patch px -> frame px of frame ``t`` (pixel centres at integers)."""
        c = (patch_size - 1) / 2.0
        to_origin = np.array([[1.0, 0.0, -c], [0.0, 1.0, -c], [0.0, 0.0, 1.0]])
        place = similarity_matrix(float(self.scale[t]), np.radians(float(self.angle[t])), float(self.cx[t]),
                                  float(self.cy[t]))
        return place @ to_origin


def default_motion(num_frames: int, width: int, height: int, max_angle: float = 12.0) -> Motion:
    """A smooth path: rotation +-max_angle, scale 0.9..1.1, the centre swinging +-12 % of the width."""
    t = np.arange(num_frames) / max(1, num_frames)
    return Motion(angle=max_angle * np.sin(2 * np.pi * t), scale=1.0 + 0.1 * np.sin(4 * np.pi * t),
                  cx=width / 2 + 0.12 * width * np.sin(2 * np.pi * t),
                  cy=height / 2 + 0.04 * height * np.cos(2 * np.pi * t))


def background(width: int, height: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) float32 smooth colour gradient with mild texture (no face-like structure)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([0.35 + 0.3 * x, 0.4 + 0.2 * y, 0.55 - 0.25 * x * y], axis=-1)
    return np.clip(base + rng.normal(0.0, 0.015, base.shape), 0, 1).astype(np.float32)


def render_frame(face: np.ndarray, bg: np.ndarray, matrix: np.ndarray, feather: float = 0.06) -> np.ndarray:
    """Paste ``face`` (S, S, 3) float in [0, 1] onto ``bg`` (H, W, 3) through ``matrix``; returns uint8."""
    import cv2

    s = face.shape[0]
    h, w = bg.shape[:2]
    r = np.minimum(np.arange(s) + 0.5, s - 0.5 - np.arange(s)) / (feather * s)
    edge = np.clip(r, 0, 1)
    alpha = np.outer(edge, edge).astype(np.float32)
    m = np.asarray(matrix, np.float64)[:2]
    warped = cv2.warpAffine(face.astype(np.float32), m, (w, h), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT)
    a = cv2.warpAffine(alpha, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)[..., None]
    out = bg * (1 - a) + warped * a
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


def write_moving_face_video(path: str | os.PathLike, face: np.ndarray, motion: Motion, width: int, height: int,
                            fps: int = 25, audio: bool = True, audio_rate: int = 16000, tone: float = 440.0,
                            crf: int = 12, seed: int = 0) -> Path:
    """Write the video (H.264, yuv420p) with an optional mono AAC sine track of the video's duration.

    Args:
        path: output .mp4.
        face: (S, S, 3) float32 in [0, 1], a real face crop.
        motion: per-frame similarity (see :class:`Motion`).
        width, height: frame size [px]; fps: frame rate [1/s]; tone: audio frequency [Hz].
    """
    import av

    path = Path(path)
    n = len(motion.angle)
    bg = background(width, height, seed)
    out = av.open(str(path), "w")
    vs = out.add_stream("libx264", rate=fps)
    vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
    vs.options = {"crf": str(crf), "preset": "veryfast"}
    astream = None
    if audio:
        astream = out.add_stream("aac", rate=audio_rate)
        astream.layout = "mono"
    for t in range(n):
        vf = av.VideoFrame.from_ndarray(render_frame(face, bg, motion.matrix(t, face.shape[0])), format="rgb24")
        vf.pts = t
        out.mux(vs.encode(vf))
    out.mux(vs.encode(None))
    if astream is not None:
        samples = int(round(audio_rate * n / fps))
        wave = (0.3 * np.sin(2 * np.pi * tone * np.arange(samples) / audio_rate)).astype(np.float32)
        size = astream.codec_context.frame_size or 1024
        for pos in range(0, samples, size):
            af = av.AudioFrame.from_ndarray(wave[None, pos:pos + size], format="flt", layout="mono")
            af.sample_rate, af.pts, af.time_base = audio_rate, pos, Fraction(1, audio_rate)
            out.mux(astream.encode(af))
        out.mux(astream.encode(None))
    out.close()
    return path
