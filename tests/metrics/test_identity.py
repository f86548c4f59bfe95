"""Re-identification with dlib's ResNet embeddings on real faces (8 NBA players, one photo each)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from metrics.identity import distances, mean_match_distance, rank1, reid_metrics, tar_at_far


@pytest.fixture(scope="module")
def gallery(embedder, nba_faces):
    emb, found = embedder.embed(nba_faces, return_found=True)
    assert found.all()
    return emb


def test_identical_images_reidentified(embedder, nba_faces, gallery):
    assert gallery.shape == (len(nba_faces), 128)
    probes = embedder.embed(nba_faces)
    m = reid_metrics(probes, gallery)
    assert m["reid_rank1"] == 1.0
    assert m["reid_mean_distance"] == pytest.approx(0.0, abs=1e-6)
    # different people are apart: every off-diagonal distance is well above the identical-image distance
    d = distances(gallery, gallery)
    assert d[~np.eye(len(d), dtype=bool)].min() > 0.3


def test_heavy_blur_defeats_reid(embedder, nba_faces, gallery):
    blurred = [gaussian_filter(f, (10, 10, 0)) for f in nba_faces]
    probes, found = embedder.embed(blurred, return_found=True)
    m = reid_metrics(probes, gallery, found=found)
    # no face found -> centred chip, still a probe (not dropped)
    assert m["reid_probes"] == len(nba_faces)
    assert m["reid_fallback_chips"] == int((~found).sum()) > 0
    assert m["reid_rank1"] <= 0.5
    assert m["reid_mean_distance"] > 0.6
    mild = embedder.embed([gaussian_filter(f, (1, 1, 0)) for f in nba_faces])
    assert mean_match_distance(mild, gallery) < m["reid_mean_distance"]


def test_centred_chip_fallback(embedder, nba_faces):
    chip = embedder.chip(nba_faces[0], None)
    assert chip.shape == (150, 150, 3) and chip.dtype == np.uint8
    # the centred chip is the central 0.6 min(H, W) square of the image
    h, w = nba_faces[0].shape[:2]
    side = round(0.6 * min(h, w))
    centre = nba_faces[0][(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
    assert abs(chip.mean() / 255 - centre.mean()) < 0.01
    with pytest.raises(ValueError, match="68"):
        embedder.chip(nba_faces[0], np.zeros((5, 2)))
    with pytest.raises(ValueError, match="landmark entries"):
        embedder.embed(nba_faces[:2], [None])


def test_rank1_and_tar_closed_form():
    g = np.eye(4)
    p = np.eye(4)[[0, 1, 3, 2]]  # probes 2 and 3 swapped
    assert rank1(p, g) == 0.5
    assert rank1(p, g, [0, 1, 3, 2], [0, 1, 2, 3]) == 1.0
    assert tar_at_far(p, g) is None  # 12 impostor pairs cannot resolve FAR 1e-3
    # 40 identities: genuine pairs at distance 0.1, impostors at >= 1 -> TAR 1 at FAR 1e-3
    rng = np.random.default_rng(0)
    centres = np.eye(40) * 10
    probes = centres + rng.normal(0, 0.01, centres.shape)
    assert tar_at_far(probes, centres, far=1e-3) == 1.0
    with pytest.raises(ValueError, match="probe"):
        rank1(np.zeros((0, 4)), g)
