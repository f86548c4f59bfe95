"""Temporal smoothing of face tracks: a constant-velocity Kalman filter with a Rauch-Tung-Striebel smoother.

The de-identification pass aligns every face to the model's template from its track's box and 5 landmarks.
MTCNN's per-frame estimates jitter by about a pixel, and a jittering alignment makes the pasted face shake
against the head. Video is processed offline (pass 1 tracks the whole file first), so each track is smoothed
with the optimal linear smoother of a simple motion model rather than a causal filter:

* state per coordinate ``[p, v]`` (position [px], velocity [px / frame]); every box corner and landmark
  coordinate is an independent signal with the SAME model, so the gains are computed once per track and
  applied to all coordinates together;
* motion: ``p' = p + v``, ``v' = v + a`` with a random acceleration ``a`` of standard deviation
  ``accel_std`` [px / frame^2] (discrete white-noise acceleration, ``Q = accel_std^2 [[1/4, 1/2], [1/2, 1]]``);
* measurement: ``z = p + n``, ``n`` of standard deviation ``meas_std`` [px]; frames whose face was
  gap-filled by the tracker (``interpolated``) are not measurements (prediction only);
* a diffuse prior on the first state, so a track that moves on a straight line at constant speed is followed
  exactly (no lag, not even at the track's ends, unlike a moving average whose windows become one-sided).

The two noise levels scale with the face (median box width of the track): :data:`MEAS_STD` and
:data:`ACCEL_STD` are fractions of it. The ratio sets the smoothing strength; the effective window of these
defaults is about +-4 frames, while a smooth head motion (accelerations well under ``ACCEL_STD``) is followed
within a fraction of a pixel.
"""
from __future__ import annotations

import numpy as np

MEAS_STD = 0.015
"""Measurement noise of a box / landmark coordinate as a fraction of the face width (1.5 % ~ 1 px at 64 px)."""
ACCEL_STD = 0.002
"""Random acceleration per frame as a fraction of the face width [1 / frame^2]."""
_DIFFUSE = 1e8
"""Prior variance of the first position and velocity (diffuse: the first measurements decide)."""


def rts_smooth(z: np.ndarray, meas_std: float, accel_std: float, observed: np.ndarray | None = None) -> np.ndarray:
    """Constant-velocity Kalman filter + Rauch-Tung-Striebel smoother of signals sharing one model.

    Args:
        z: (T, D) measurements [px] (T frames, D independent coordinates).
        meas_std: measurement noise standard deviation [px], > 0.
        accel_std: random-acceleration standard deviation [px / frame^2], > 0.
        observed: (T,) bool, False where a frame has no measurement (its row of ``z`` is ignored);
            default all True. At least one frame must be observed.

    Returns:
        (T, D) smoothed positions [px].

    Raises:
        ValueError: bad shapes, non-positive noise levels, or no observed frame.
    """
    z = np.asarray(z, np.float64)
    if z.ndim != 2 or len(z) == 0:
        raise ValueError(f"rts_smooth: z must be (T, D) with T >= 1, got shape {z.shape}")
    if not (meas_std > 0 and accel_std > 0):
        raise ValueError(f"rts_smooth: meas_std and accel_std must be > 0, got {meas_std}, {accel_std}")
    n = len(z)
    obs = np.ones(n, bool) if observed is None else np.asarray(observed, bool)
    if obs.shape != (n,) or not obs.any():
        raise ValueError(f"rts_smooth: observed must be ({n},) with at least one True, got {obs.shape}")
    F = np.array([[1.0, 1.0], [0.0, 1.0]])
    Q = accel_std ** 2 * np.array([[0.25, 0.5], [0.5, 1.0]])
    R = meas_std ** 2
    x_f = np.zeros((n, 2, z.shape[1]))  # filtered state, per coordinate
    P_f = np.zeros((n, 2, 2))           # filtered covariance (shared by all coordinates)
    x_p = np.zeros_like(x_f)
    P_p = np.zeros_like(P_f)
    x, P = np.zeros((2, z.shape[1])), np.eye(2) * _DIFFUSE
    for t in range(n):
        if t > 0:
            x, P = F @ x, F @ P @ F.T + Q
        x_p[t], P_p[t] = x, P
        if obs[t]:
            gain = P[:, 0] / (P[0, 0] + R)  # (2,) Kalman gain for H = [1, 0]
            x = x + gain[:, None] * (z[t] - x[0])[None]
            P = P - np.outer(gain, P[0])
        x_f[t], P_f[t] = x, P
    xs = x_f.copy()
    for t in range(n - 2, -1, -1):
        C = P_f[t] @ F.T @ np.linalg.inv(P_p[t + 1])
        xs[t] = x_f[t] + C @ (xs[t + 1] - x_p[t + 1])
    return xs[:, 0]


def smooth_face_track(boxes: np.ndarray, landmarks: np.ndarray, observed: np.ndarray | None = None,
                      meas_std: float = MEAS_STD, accel_std: float = ACCEL_STD) -> tuple[np.ndarray, np.ndarray]:
    """Smooth one track's boxes and landmarks with :func:`rts_smooth`, noise levels relative to the face size.

    Args:
        boxes: (T, 4) ``x1, y1, x2, y2`` [px] of consecutive frames.
        landmarks: (T, L, 2) [px].
        observed: (T,) bool, False for gap-filled frames (default all observed).
        meas_std, accel_std: noise levels as fractions of the track's median box width.

    Returns:
        (boxes (T, 4), landmarks (T, L, 2)) smoothed [px].
    """
    boxes = np.asarray(boxes, np.float64)
    landmarks = np.asarray(landmarks, np.float64)
    width = float(np.median(boxes[:, 2] - boxes[:, 0]))
    if not width > 0:
        raise ValueError(f"smooth_face_track: the track's median box width must be > 0, got {width}")
    z = np.concatenate([boxes, landmarks.reshape(len(landmarks), -1)], axis=1)
    s = rts_smooth(z, meas_std * width, accel_std * width, observed)
    return s[:, :4], s[:, 4:].reshape(landmarks.shape)
