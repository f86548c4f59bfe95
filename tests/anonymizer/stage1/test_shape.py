"""The linear shape regressor (anonymizer/stage1/shape.py): closed-form fit, geometry of the augmentation,
heatmap interface, checkpoint round trip, and the lens gradient through it."""
from __future__ import annotations

import math

import pytest
import torch

from anonymizer.stage1.heatmap import landmarks_to_heatmaps, soft_argmax
from anonymizer.stage1.shape import LinearShapeRegressor, build_regressor, fit_shape_regressor, similarity_augment


def _blob_images(points: torch.Tensor, size: int, sigma: float = 3.0) -> torch.Tensor:
    """(N, 3, S, S) images with one Gaussian blob per point (N, K, 2) [px]."""
    blobs = landmarks_to_heatmaps(points, size, sigma).sum(dim=1, keepdim=True)
    return blobs.clamp(0, 1).expand(-1, 3, -1, -1).contiguous()


def test_similarity_augment_moves_a_dot_with_its_landmark():
    size = 64
    pts = torch.tensor([[[20.0, 30.0], [44.0, 12.0]]]).repeat(6, 1, 1)
    img = _blob_images(pts, size, sigma=1.5)
    warped, moved = similarity_augment(img, pts, 1.0, torch.Generator().manual_seed(3))
    assert not torch.allclose(moved, pts, atol=0.5)  # the transform did something
    for k in range(2):  # find each dot in its own window around the transformed landmark
        for b in range(len(img)):
            x, y = (int(round(float(v))) for v in moved[b, k])
            win = warped[b:b + 1, :1, y - 6:y + 7, x - 6:x + 7]
            found = soft_argmax(win, threshold=0.3)[0, 0] + torch.tensor([x - 6.0, y - 6.0])
            assert torch.allclose(found, moved[b, k], atol=0.15), (b, k, found, moved[b, k])


def test_similarity_augment_zero_strength_is_identity():
    img = torch.rand(2, 3, 32, 32)
    pts = torch.rand(2, 5, 2) * 31
    warped, moved = similarity_augment(img, pts, 0.0, torch.Generator().manual_seed(0))
    assert torch.allclose(warped, img, atol=1e-5) and torch.allclose(moved, pts, atol=1e-5)


def test_closed_form_fit_recovers_a_planted_linear_map():
    """Landmarks that are an exact linear function of the features are reproduced exactly (up to the ridge)."""
    torch.manual_seed(0)
    size, k = 32, 5
    reg = LinearShapeRegressor(3, k, img_size=size, features=4)
    images = torch.rand(80, 3, size, size)
    feats = reg.features(images)
    w_true = torch.randn(feats.shape[1], 2 * k) * 4.0
    lms = (16.0 + (feats - feats.mean(0)) @ w_true).view(-1, k, 2)
    info = fit_shape_regressor(reg, lambda x: x, images, lms, copies=1, grid=(1e-7,))
    assert info["lambda"] == 1e-7 and info["samples"] == 80
    assert torch.allclose(reg.landmarks(images), lms, atol=1e-2)


def test_fit_learns_blob_positions_and_beats_the_mean_shape():
    """Faces = 5 blobs at random positions: the fitted regressor locates held-out blobs far better than the mean."""
    gen = torch.Generator().manual_seed(1)
    size = 32
    base = torch.tensor([[8.0, 8.0], [24.0, 8.0], [16.0, 16.0], [8.0, 24.0], [24.0, 24.0]])  # 5 points (MTCNN)
    pts = base + (torch.rand(200, 5, 2, generator=gen) - 0.5) * 6
    images = _blob_images(pts, size)
    reg = LinearShapeRegressor(3, 5, img_size=size, features=16)
    fit_shape_regressor(reg, lambda x: x, images[:150], pts[:150], copies=1)
    err = (reg.landmarks(images[150:]) - pts[150:]).norm(dim=-1).mean()
    mean_err = (pts[:150].mean(0) - pts[150:]).norm(dim=-1).mean()
    assert err < 0.25 * mean_err, (float(err), float(mean_err))


def test_heatmaps_give_the_points_back_and_checkpoint_round_trip():
    torch.manual_seed(0)
    reg = LinearShapeRegressor(3, 68, img_size=64, sigma=1.5, features=8)
    with torch.no_grad():
        reg.map.weight.normal_(0, 0.5)
        reg.mean_shape.copy_(16 + torch.rand(68, 2) * 32)
    cap = torch.rand(2, 3, 64, 64)
    pts = reg.landmarks(cap)
    assert torch.allclose(soft_argmax(reg(cap)), pts, atol=0.1)
    again = build_regressor(reg.config)
    again.load_state_dict(reg.state_dict())
    assert torch.equal(again.landmarks(cap), pts)
    heat = build_regressor({"in_channels": 3, "out_channels": 2, "base": 8, "depth": 2})
    assert heat(torch.rand(1, 3, 32, 32)).shape == (1, 2, 32, 32)


def test_wrong_capture_size_is_one_clear_error():
    reg = LinearShapeRegressor(3, 5, img_size=32, features=4)
    with pytest.raises(ValueError, match="32 x 32"):
        reg.landmarks(torch.rand(1, 3, 64, 64))


def test_gradient_reaches_the_capture_through_the_fitted_map():
    """A lens trained through the linear regressor gets a gradient: d NME / d capture is non-zero."""
    reg = LinearShapeRegressor(3, 5, img_size=32, features=4)
    with torch.no_grad():
        reg.map.weight.normal_()
    cap = torch.rand(1, 3, 32, 32, requires_grad=True)
    (reg.landmarks(cap) - 10.0).pow(2).sum().backward()
    assert cap.grad is not None and float(cap.grad.abs().sum()) > 0
    assert math.isfinite(float(cap.grad.sum()))
