"""Pure alignment geometry (data/align.py): closed-form similarity estimate, template, warp."""
from __future__ import annotations

import numpy as np
import pytest

from data.align import (EYE_DISTANCE, EYE_Y, TEMPLATE_5, align_face, alignment_transform, apply_transform,
                        estimate_similarity, eye_angle, similarity_matrix, similarity_params, template_landmarks,
                        warp_image)


@pytest.mark.parametrize("scale,angle,tx,ty", [(1.0, 0.0, 0.0, 0.0), (2.5, 0.7, -30.0, 12.5),
                                               (0.31, -2.9, 400.0, -7.0), (1.7, np.pi / 2, 3.0, 4.0)])
def test_similarity_estimate_recovers_known_transform_exactly(scale, angle, tx, ty):
    rng = np.random.default_rng(3)
    src = rng.uniform(-50, 300, size=(5, 2))
    truth = similarity_matrix(scale, angle, tx, ty)
    est = estimate_similarity(src, apply_transform(truth, src))
    np.testing.assert_allclose(est, truth, atol=1e-9 * max(1.0, abs(tx), abs(ty)))
    s, a, x, y = similarity_params(est)
    assert s == pytest.approx(scale, rel=1e-12)
    assert np.cos(a - angle) == pytest.approx(1.0, abs=1e-12)
    assert (x, y) == pytest.approx((tx, ty), abs=1e-9)


def test_similarity_estimate_is_least_squares_and_never_reflects():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, size=(5, 2))
    # a mirrored copy: the best proper similarity cannot reproduce it, and must not be a reflection
    dst = src * np.array([-1.0, 1.0])
    est = estimate_similarity(src, dst)
    assert np.linalg.det(est[:2, :2]) > 0
    # least squares: any perturbation of the parameters increases the residual
    def cost(m):
        return np.sum((apply_transform(m, src) - dst) ** 2)
    s, a, x, y = similarity_params(est)
    base = cost(est)
    for d in np.eye(4) * 1e-3:
        assert cost(similarity_matrix(s + d[0], a + d[1], x + d[2], y + d[3])) >= base - 1e-9
        assert cost(similarity_matrix(s - d[0], a - d[1], x - d[2], y - d[3])) >= base - 1e-9


def test_similarity_estimate_rejects_degenerate_points():
    with pytest.raises(ValueError, match="degenerate"):
        estimate_similarity(np.ones((5, 2)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="NaN"):
        estimate_similarity(np.array([[0.0, 0.0], [np.nan, 1.0]]), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="point sets"):
        estimate_similarity(np.zeros((5, 2)), np.zeros((4, 2)))


def test_template_frames_the_face_like_ffhq():
    # eyes level at EYE_Y, symmetric, EYE_DISTANCE apart; nose and mouth below the eyes, mouth centred
    t = TEMPLATE_5
    assert t[0, 1] == t[1, 1] == EYE_Y and 0.38 <= EYE_Y <= 0.40
    assert t[1, 0] - t[0, 0] == pytest.approx(EYE_DISTANCE) and 0.28 <= EYE_DISTANCE <= 0.32
    assert (t[0, 0] + t[1, 0]) / 2 == pytest.approx(0.5) and t[2, 0] == pytest.approx(0.5)
    assert EYE_Y < t[2, 1] < t[3, 1] == t[4, 1] < 0.8
    assert eye_angle(template_landmarks(256)) == 0.0
    # pixel centres at integers: unit 0.5 is the middle of the crop, (size - 1) / 2
    assert template_landmarks(256)[2, 0] == pytest.approx(127.5)


def test_alignment_maps_template_image_of_landmarks_onto_template():
    # landmarks that are an exact similarity image of the template are aligned exactly onto it
    size = 128
    truth = similarity_matrix(0.6, 0.4, 37.0, 11.0)
    lm = apply_transform(truth, template_landmarks(size))
    m = alignment_transform(lm, size)
    np.testing.assert_allclose(apply_transform(m, lm), template_landmarks(size), atol=1e-9)
    np.testing.assert_allclose(m, np.linalg.inv(truth), atol=1e-9)


def _dots(h: int, w: int, centres: np.ndarray, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w), dtype=np.float64)
    for x, y in centres:
        img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))
    return np.repeat(np.clip(img, 0, 1)[..., None], 3, axis=2).astype(np.float32)


def _centroids(img: np.ndarray, points: np.ndarray, radius: int) -> np.ndarray:
    g = img[..., 0].astype(np.float64)
    out = []
    for x, y in points:
        x0, y0 = int(round(x)), int(round(y))
        patch = g[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1]
        yy, xx = np.mgrid[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1]
        out.append([np.sum(patch * xx) / patch.sum(), np.sum(patch * yy) / patch.sum()])
    return np.array(out)


@pytest.mark.parametrize("scale", [1.6, 0.2])  # enlarging, and shrinking > 2x (antialiased pre-reduction path)
def test_warp_puts_image_points_where_the_transform_says(scale):
    # Gaussian dots at known landmark positions; after the warp their centroids sit at transform(positions).
    size = 96
    lm_out = template_landmarks(size)
    rot = similarity_matrix(scale, -0.5, 0.0, 0.0)
    lm_in = apply_transform(np.linalg.inv(rot), lm_out)
    offset = 30.0 / scale - lm_in.min(axis=0)  # keep every dot well inside the input image
    lm_in = lm_in + offset
    truth = rot @ similarity_matrix(1.0, 0.0, *(-offset))  # input -> output
    h = w = int(np.ceil(lm_in.max() + 30 / scale))
    img = _dots(h, w, lm_in, sigma=3.0 / scale)
    crop, m = align_face(img, lm_in, size, pad_mode="constant")
    np.testing.assert_allclose(m, truth, atol=1e-9)
    assert crop.shape == (size, size, 3) and crop.dtype == np.float32
    found = _centroids(crop, lm_out, radius=7)
    np.testing.assert_allclose(found, lm_out, atol=0.15)


def test_warp_rejects_unknown_pad_mode():
    with pytest.raises(ValueError, match="pad_mode"):
        warp_image(np.zeros((8, 8, 3), np.float32), np.eye(3), 8, pad_mode="wrap")
