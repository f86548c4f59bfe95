"""FID: closed forms of the Fréchet distance, the TF-style resize, real Inception features of real faces."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from metrics.fid import (FIDStatsError, InceptionFeatures, fid_from_features, frechet_distance,
                         frechet_distance_lowrank, load_statistics, reference_statistics, save_statistics, statistics,
                         tf_bilinear_resize)


def _sqrtm_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def test_frechet_closed_form_diagonal():
    # commuting (diagonal) covariances: d^2 = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    expected = 5.0 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0.0
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, abs=1e-9)


def test_frechet_closed_form_identity_vs_general():
    # S1 = I: Tr sqrt(S1 S2) = Tr sqrt(S2), for a non-diagonal S2
    rng = np.random.default_rng(0)
    q = rng.normal(size=(5, 5))
    s2 = q @ q.T + 0.1 * np.eye(5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    expected = np.sum((mu1 - mu2) ** 2) + 5 + np.trace(s2) - 2 * np.trace(_sqrtm_psd(s2))
    assert frechet_distance(mu1, np.eye(5), mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_lowrank_matches_pytorch_fid():
    rng = np.random.default_rng(1)
    f1 = rng.normal(size=(20, 64)) @ rng.normal(size=(64, 64)) * 0.1
    f2 = rng.normal(size=(300, 64)) + 0.3
    mu1, s1 = statistics(f1)
    mu2, s2 = statistics(f2)
    reference = frechet_distance(mu1, s1, mu2, s2)  # pytorch-fid (scipy sqrtm)
    assert frechet_distance_lowrank(f1, mu2, s2) == pytest.approx(reference, rel=1e-6)
    assert fid_from_features(f1, mu2, s2) == pytest.approx(reference, rel=1e-6)
    # a set with itself: exactly 0 up to round-off, also with a singular covariance (20 samples, 64 dims)
    assert abs(fid_from_features(f1, mu1, s1)) < 1e-6


def test_tf_bilinear_resize_closed_form():
    import torch

    # TF1 resize_bilinear samples source position i * in / out: a linear ramp maps to the ramp at those positions
    ramp = torch.arange(10, dtype=torch.float64).expand(1, 1, 10, 10).clone()
    out = tf_bilinear_resize(ramp, 4)
    np.testing.assert_allclose(out[0, 0, 0].numpy(), np.arange(4) * 10 / 4)
    up = tf_bilinear_resize(ramp, 25)[0, 0, 0].numpy()
    src = np.arange(25) * 10 / 25
    np.testing.assert_allclose(up, np.minimum(src, 9.0))  # clamped at the last pixel


@pytest.fixture(scope="module")
def inception():
    return InceptionFeatures("torchscript")


def test_fid_real_faces(inception, nba_faces, tmp_path):
    faces = nba_faces[:5]
    feats = inception.features(faces)
    assert feats.shape == (5, 2048) and np.all(np.isfinite(feats)) and feats.min() >= 0  # post-ReLU pool
    cache = tmp_path / "ref.npz"
    mu, sigma = reference_statistics(faces, inception, cache)
    assert cache.is_file()
    assert abs(fid_from_features(feats, mu, sigma)) < 1e-6  # a set with itself
    # the cache is reused: no images needed the second time, same numbers
    mu2, sigma2 = reference_statistics(None, inception, cache)
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(sigma, sigma2)
    fids = [fid_from_features(inception.features([gaussian_filter(f, (s, s, 0)) for f in faces]), mu, sigma)
            for s in (1.0, 4.0)]
    assert 0 < fids[0] < fids[1]  # rises with blur strength


def test_stats_file_errors(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, mu=np.zeros(3))
    with pytest.raises(FIDStatsError, match="sigma"):
        load_statistics(bad)
    other = tmp_path / "other.npz"
    save_statistics(other, np.zeros(2), np.eye(2), "pytorch-fid", 10)
    with pytest.raises(FIDStatsError, match="pytorch-fid"):
        load_statistics(other, "torchscript")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(FIDStatsError, match="junk.npz"):
        load_statistics(tmp_path / "junk.npz")
    with pytest.raises(ValueError, match="at least 2"):
        statistics(np.zeros((1, 4)))
    with pytest.raises(FileNotFoundError, match="pytorch-fid"):
        InceptionFeatures("pytorch-fid", tmp_path / "missing.pth")
