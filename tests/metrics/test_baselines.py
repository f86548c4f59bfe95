"""Baselines: closed-form behaviour on synthetic images."""
from __future__ import annotations

import numpy as np
import pytest

from metrics.baselines import apply_baseline, blur, lowres, parse_baselines, pixelate


def test_pixelate_blocks_are_means():
    img = np.random.default_rng(0).random((20, 24, 3)).astype(np.float32)
    out = pixelate(img, 8)
    assert out.shape == img.shape
    np.testing.assert_allclose(out[:8, :8], np.broadcast_to(img[:8, :8].mean(axis=(0, 1)), (8, 8, 3)), atol=1e-6)
    np.testing.assert_allclose(out[16:, 16:], np.broadcast_to(img[16:, 16:].mean(axis=(0, 1)), (4, 8, 3)), atol=1e-6)


def test_blur_and_lowres_keep_constants_and_size():
    const = np.full((40, 30, 3), 0.3, np.float32)
    np.testing.assert_allclose(blur(const, 3.0), const, atol=1e-6)
    np.testing.assert_allclose(lowres(const, 16), const, atol=1e-5)
    img = np.random.default_rng(1).random((64, 64, 3)).astype(np.float32)
    assert blur(img, 4.0).std() < 0.3 * img.std()  # averaging ~ (2 sqrt(pi) sigma)^2 px kills white noise
    assert lowres(img, 16).shape == img.shape


def test_parse_and_errors():
    assert parse_baselines("lowres, blur:4,pixelate") == {"lowres": 16.0, "blur:4": 4.0, "pixelate": 16.0}
    with pytest.raises(ValueError, match="sepia"):
        parse_baselines("sepia")
    with pytest.raises(ValueError, match="not a number"):
        parse_baselines("blur:x")
    with pytest.raises(ValueError, match="sigma"):
        blur(np.zeros((8, 8, 3), np.float32), 0)
    assert apply_baseline("pixelate:4", np.zeros((8, 8, 3), np.float32), 4).shape == (8, 8, 3)
