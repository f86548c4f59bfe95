"""Reference-transfer metrics and the distinctive-reference pick, on constructed grids and embeddings with
known answers."""
from __future__ import annotations

import numpy as np
import pytest

from metrics.reference_transfer import distinctive_references, embedding_metrics, pixel_dependence


def test_pixel_dependence_of_an_output_that_only_follows_the_reference():
    n, r = 3, 4
    ref_val = np.linspace(0.1, 0.7, r)  # out[i, j] = ref value j, whatever the source
    grid = np.broadcast_to(ref_val[None, :, None, None, None], (n, r, 2, 2, 3)).copy()
    res = pixel_dependence(grid)
    # mean |ref_a - ref_b| over ordered pairs a != b of 4 equally spaced values 0.2 apart
    diffs = np.abs(ref_val[:, None] - ref_val[None])[~np.eye(r, dtype=bool)]
    assert res["ref_change"] == pytest.approx(diffs.mean(), abs=1e-6)
    assert res["src_change"] == 0.0 and np.isnan(res["ref_dependence_ratio"])
    grid[1] += 0.1  # one source brighter: src_change = 0.1 on 4 of the 6 ordered source pairs
    assert pixel_dependence(grid)["src_change"] == pytest.approx(0.1 * 4 / 6, abs=1e-6)


def test_embedding_metrics_when_outputs_become_their_references():
    rng = np.random.default_rng(0)
    n, r, d = 4, 3, 8
    src = rng.normal(size=(n, d))
    ref = rng.normal(size=(r, d)) * 3  # far from every source
    out = np.broadcast_to(ref[None], (n, r, d)) + 1e-3 * rng.normal(size=(n, r, d))
    m = embedding_metrics(out, ref, src)
    assert m["ref_transfer_acc"] == 1.0 and m["ref_transfer_chance"] == pytest.approx(1 / 3)
    assert m["dist_to_source_gt_0.6"] == 1.0 and m["reid_chance"] == 0.25
    # outputs equal to their sources instead: re-identified, never farther than 0.6
    same = np.broadcast_to(src[:, None], (n, r, d))
    m2 = embedding_metrics(same, ref, src)
    assert m2["reid_rank1"] == 1.0 and m2["dist_to_source_gt_0.6"] == 0.0 and m2["diversity"] == pytest.approx(0.0, abs=1e-6)


def test_distinctive_references_prefers_faces_far_from_the_population():
    pop = np.zeros((10, 4))
    pop[:, 0] = np.linspace(0.0, 0.45, 10)  # a population near the origin
    cand = np.array([[0.1, 0, 0, 0],         # like everyone: within 0.6 of all
                     [0.0, 2.0, 0, 0],       # far from everyone
                     [0.9, 0, 0, 0],         # within 0.6 of the upper half of the population only
                     [0.0, 0, 1.5, 0]])      # far from everyone, but nearer than candidate 1
    assert distinctive_references(cand, pop, 4).tolist() == [1, 3, 2, 0]
    assert distinctive_references(cand, pop, 1).tolist() == [1]
    with pytest.raises(ValueError, match="k must be"):
        distinctive_references(cand, pop, 5)
