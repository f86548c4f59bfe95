"""Heatmap targets, soft-argmax, grouped masks, NME and the regressor's shapes (closed-form checks)."""
from __future__ import annotations

import math

import pytest
import torch

from anonymizer.stage1.heatmap import (HeatmapRegressor, group_heatmaps, heatmap_loss, landmark_groups,
                                landmark_nme, landmarks_to_heatmaps, num_heatmap_channels, soft_argmax)


def test_heatmap_is_the_gaussian_and_peaks_at_the_landmark():
    lm = torch.tensor([[[20.0, 11.0], [3.0, 40.0]]])
    sigma = 2.5
    h = landmarks_to_heatmaps(lm, 48, sigma, mode="landmarks")
    assert h.shape == (1, 2, 48, 48)
    for k, (x, y) in enumerate(lm[0].tolist()):
        flat = int(h[0, k].argmax())
        assert (flat % 48, flat // 48) == (int(x), int(y))
        assert h[0, k, int(y), int(x)] == pytest.approx(1.0)
    # closed form at an offset pixel: exp(-(dx^2 + dy^2) / (2 sigma^2))
    assert h[0, 0, 14, 18].item() == pytest.approx(math.exp(-(2 ** 2 + 3 ** 2) / (2 * sigma ** 2)), rel=1e-5)



@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_heatmap_has_no_subnormal_values_and_stays_within_sqrt_tiny_of_the_gaussian(dtype):
    """Far tails are zeroed (subnormal floats put the convolutions that read them on the CPU's slow path), and
    no value moves by more than sqrt(tiny) from the exact Gaussian; a non-finite landmark gives a zero channel."""
    lm = torch.tensor([[[2.0, 3.0], [120.0, 125.0], [64.3, 10.7], [float("nan"), 5.0]]], dtype=dtype)
    sigma = 1.5
    h = landmarks_to_heatmaps(lm, 128, sigma)
    tiny = torch.finfo(dtype).tiny
    assert not bool(((h > 0) & (h < tiny)).any())
    grid = torch.arange(128, dtype=torch.float64)
    exact = torch.exp(-((grid[None, :] - lm[0, :3, 0:1].double()) ** 2)[:, None, :] / (2 * sigma ** 2)
                      - ((grid[None, :] - lm[0, :3, 1:2].double()) ** 2)[:, :, None] / (2 * sigma ** 2))
    assert float((h[0, :3].double() - exact).abs().max()) <= tiny ** 0.5 + 1e-7
    assert bool((h[0, 0, 120:, 120:] == 0).all())  # the far corner of a corner landmark: exactly zero
    assert float(h[0, 3].abs().max()) == 0.0

@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_soft_argmax_recovers_sub_pixel_landmarks(threshold):
    gen = torch.Generator().manual_seed(0)
    lm = 12.0 + 40.0 * torch.rand(3, 7, 2, generator=gen)  # away from the border of a 64 px image
    h = landmarks_to_heatmaps(lm, 64, 2.0, mode="landmarks")
    err = (soft_argmax(h, threshold=threshold) - lm).abs().max().item()
    assert err < 0.05  # sub-pixel: a twentieth of a pixel


def test_soft_argmax_is_differentiable_towards_the_peak():
    lm = torch.tensor([[[30.0, 30.0]]])
    h = landmarks_to_heatmaps(lm, 64, 2.0).requires_grad_(True)
    x = soft_argmax(h)[0, 0, 0]
    x.backward()
    g = h.grad[0, 0]
    # raising a pixel right of the peak moves the estimate right; left of the peak moves it left
    assert g[30, 31] > 0 > g[30, 29]


def test_grouped_masks_cover_the_reference_groups():
    gen = torch.Generator().manual_seed(1)
    lm = 8.0 + 48.0 * torch.rand(2, 68, 2, generator=gen)
    h = landmarks_to_heatmaps(lm, 64, 1.5, mode="grouped")
    assert h.shape == (2, 2, 64, 64)
    assert num_heatmap_channels(68, "grouped") == 2 and num_heatmap_channels(68, "landmarks") == 68
    jaw_brows, inner = landmark_groups(68)
    assert jaw_brows == tuple(range(27)) and inner == tuple(range(27, 68))
    # each group's mask equals the max of its own points' Gaussians, and contains none of the other group's
    per_point = landmarks_to_heatmaps(lm, 64, 1.5, mode="landmarks")
    torch.testing.assert_close(h[:, 0], per_point[:, :27].amax(1))
    torch.testing.assert_close(h[:, 1], per_point[:, 27:].amax(1))
    torch.testing.assert_close(group_heatmaps(per_point), h)
    for b in range(2):
        for k in (0, 16, 26):  # jaw ends and a brow point: peak 1 in mask 0
            x, y = lm[b, k].round().long().tolist()
            assert h[b, 0, y, x] > 0.75
    assert h.max() <= 1.0 and h.min() >= 0.0


def test_mtcnn_grouping_is_eyes_then_nose_and_mouth():
    assert landmark_groups(5) == ((0, 1), (2, 3, 4))
    lm = torch.tensor([[[20.0, 20.0], [40.0, 20.0], [30.0, 30.0], [22.0, 42.0], [38.0, 42.0]]])
    h = landmarks_to_heatmaps(lm, 64, 1.0, mode="grouped")
    assert h[0, 0, 20, 20] == pytest.approx(1.0) and h[0, 0, 20, 40] == pytest.approx(1.0)
    assert h[0, 1, 30, 30] == pytest.approx(1.0) and h[0, 1, 42, 38] == pytest.approx(1.0)
    assert h[0, 0, 30, 30] < 1e-6 and h[0, 1, 20, 20] < 1e-6


def test_missing_landmarks_give_empty_channels_and_are_masked_in_the_loss():
    lm = torch.tensor([[[10.0, 10.0]], [[float("nan"), float("nan")]]])
    h = landmarks_to_heatmaps(lm, 32, 2.0)
    assert h[1].abs().max() == 0 and h[0].max() == pytest.approx(1.0)
    pred = torch.zeros_like(h)
    pred[1] = 1.0  # a huge error on the excluded image must not count
    valid = torch.tensor([True, False])
    full = heatmap_loss(pred[:1], h[:1])
    assert full.item() == pytest.approx(1.0)  # predicting zeros scores exactly 1 (relative error)
    assert heatmap_loss(pred, h, valid).item() == pytest.approx(full.item())
    assert heatmap_loss(h, h).item() == 0.0


def test_nme_is_normalised_by_the_outer_eye_corners():
    target = torch.zeros(1, 68, 2)
    target[0, 36] = torch.tensor([10.0, 20.0])
    target[0, 45] = torch.tensor([30.0, 20.0])  # inter-ocular distance 20 px
    pred = target + torch.tensor([3.0, 4.0])  # every point off by 5 px
    assert landmark_nme(pred, target).item() == pytest.approx(5.0 / 20.0)
    with pytest.raises(ValueError, match="68 or 5"):
        landmark_nme(torch.zeros(1, 7, 2), torch.zeros(1, 7, 2))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="sigma"):
        landmarks_to_heatmaps(torch.zeros(1, 5, 2), 16, 0.0)
    with pytest.raises(ValueError, match="mode"):
        landmarks_to_heatmaps(torch.zeros(1, 5, 2), 16, 1.0, mode="blobs")
    with pytest.raises(ValueError, match="68 .*or 5"):
        landmarks_to_heatmaps(torch.zeros(1, 7, 2), 16, 1.0, mode="grouped")
    with pytest.raises(ValueError, match="divisible by 16"):
        HeatmapRegressor(out_channels=2, depth=3)(torch.zeros(1, 3, 20, 20))


def test_regressor_shapes_and_range():
    net = HeatmapRegressor(out_channels=5, base=8, depth=2)
    out = net(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 5, 32, 32)
    assert out.min() >= 0 and out.max() <= 1
    assert net.landmarks(torch.rand(1, 3, 32, 32)).shape == (1, 5, 2)
