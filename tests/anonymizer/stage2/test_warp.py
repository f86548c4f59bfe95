"""Piecewise-affine reference warp: known points land within 1 px, identity, folds masked, no smearing."""
from __future__ import annotations

import math

import pytest
import torch

from anonymizer.stage2.warp import face_vertices, feather, piecewise_affine_warp, triangulation
from tests.helpers import template_points

S = 128


def dots(points: torch.Tensor, size: int, sigma: float = 1.2) -> torch.Tensor:
    """(1, 1, size, size) image of Gaussian dots at ``points`` (K, 2)."""
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                            indexing="ij")
    img = torch.zeros(size, size, dtype=torch.float64)
    for x, y in points.tolist():
        img += torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma ** 2))
    return img[None, None]


def centroid(img: torch.Tensor, near: torch.Tensor, r: int = 3) -> torch.Tensor:
    x0, y0 = int(round(near[0].item())), int(round(near[1].item()))
    win = img[0, 0, y0 - r:y0 + r + 1, x0 - r:x0 + r + 1]
    ys, xs = torch.meshgrid(torch.arange(y0 - r, y0 + r + 1, dtype=win.dtype),
                            torch.arange(x0 - r, x0 + r + 1, dtype=win.dtype), indexing="ij")
    return torch.stack([(win * xs).sum() / win.sum(), (win * ys).sum() / win.sum()])


def similarity(points: torch.Tensor, angle_deg: float, scale: float, shift: tuple[float, float]) -> torch.Tensor:
    a = math.radians(angle_deg)
    rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=points.dtype) * scale
    c = (S - 1) / 2
    return (points - c) @ rot.T + c + torch.tensor(shift, dtype=points.dtype)


def test_reference_landmarks_land_on_the_target_landmarks_within_one_pixel() -> None:
    ref = template_points(S).double()
    g = torch.Generator().manual_seed(0)
    dst = similarity(ref[0], 6.0, 1.05, (2.0, -3.0))[None] + torch.randn(1, 68, 2, generator=g,
                                                                           dtype=torch.float64) * 0.8
    # well-separated points with a clean neighbourhood: eye corners, nose tip, mouth corners, chin, brow ends
    keep = [36, 39, 42, 45, 30, 48, 54, 8, 17, 26, 2, 14]
    image = dots(ref[0, keep], S)
    # face_only=False: the jaw dots straddle the face outline, which the face mask would cut in half
    out = piecewise_affine_warp(image, ref, dst, face_only=False)
    assert out.folds.item() == 0
    for k, p in zip(keep, dst[0, keep]):
        c = centroid(out.warped, p)
        assert (c - p).norm() < 1.0, f"point {k}: dot at {c.tolist()}, target {p.tolist()}"


def test_identical_geometry_is_the_identity_warp() -> None:
    pts = template_points(S)
    img = torch.rand(2, 3, S, S, generator=torch.Generator().manual_seed(1))
    out = piecewise_affine_warp(img, pts.repeat(2, 1, 1), pts.repeat(2, 1, 1))
    m = out.valid.bool().expand_as(img)
    assert out.valid.mean() > 0.4  # the face + forehead region
    assert (out.warped - img)[m].abs().max() < 1e-4
    ys, xs = torch.meshgrid(torch.arange(S, dtype=torch.float32), torch.arange(S, dtype=torch.float32), indexing="ij")
    assert (out.grid[0] - torch.stack([xs, ys], -1)).abs().max() < 1e-3


def test_outside_the_face_nothing_is_smeared() -> None:
    pts = template_points(S)
    img = torch.ones(1, 3, S, S)
    out = piecewise_affine_warp(img, pts, pts + torch.tensor([10.0, 0.0]))
    verts = face_vertices(pts + torch.tensor([10.0, 0.0]))[0]
    assert out.valid[0, 0, :, : int(verts[:, 0].min()) - 1].sum() == 0  # left of the shifted face: empty
    assert out.warped[out.valid.expand_as(img) == 0].abs().max() == 0


def test_folds_are_counted_and_masked() -> None:
    pts = template_points(S)
    dst = pts.clone()
    dst[0, 30], dst[0, 33] = pts[0, 33].clone(), pts[0, 30].clone()  # nose tip below the nostril base: a fold
    img = torch.rand(1, 3, S, S)
    out = piecewise_affine_warp(img, pts, dst)
    assert out.folds.item() > 0
    # the folded triangles' area is not valid
    tri, orient, face = triangulation()
    verts = face_vertices(dst)[0]
    t = tri[face][0]
    assert out.valid.mean() < piecewise_affine_warp(img, pts, pts).valid.mean()
    assert torch.isfinite(out.warped).all() and verts.shape == (78, 2) and len(t) == 3


def test_closed_mouth_coincident_inner_lips_are_not_singular() -> None:
    pts = template_points(S)
    closed = pts.clone()
    closed[0, 65:68] = closed[0, [63, 62, 61]]  # inner lower lip on the inner upper lip
    img = torch.rand(1, 3, S, S, requires_grad=True)
    dst = pts.clone().requires_grad_()
    out = piecewise_affine_warp(img, closed, dst)
    assert torch.isfinite(out.warped).all() and out.valid.sum() > 0
    out.warped.sum().backward()
    assert torch.isfinite(img.grad).all() and img.grad.abs().sum() > 0
    assert torch.isfinite(dst.grad).all() and dst.grad.abs().sum() > 0  # differentiable w.r.t. the geometry


def exhaustive_assignment(td: torch.Tensor, good: torch.Tensor, flipped: torch.Tensor, h: int, w: int, eps: float):
    """Every triangle against every pixel (barycentric coordinates from signed areas, float64): the pixel's
    triangle is the good one it is deepest inside; covered unless a flipped triangle contains it."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    p = torch.stack([xs.flatten(), ys.flatten()], -1)                         # (P, 2)
    a, b, c = (td[:, :, i, None, :] for i in range(3))                       # (B, T, 1, 2)

    def cross(o, u, v):
        return (u[..., 0] - o[..., 0]) * (v[..., 1] - o[..., 1]) - (u[..., 1] - o[..., 1]) * (v[..., 0] - o[..., 0])
    area = cross(a, b, c)                                                     # (B, T, 1)
    lam = torch.stack([cross(p, b, c), cross(a, p, c), cross(a, b, p)], -1) / area[..., None]  # (B, T, P, 3)
    low = lam.amin(-1)
    inside = low >= -eps
    score = torch.where(inside & good[..., None], low, torch.full_like(low, -torch.inf))
    best, index = score.max(1)
    covered = torch.isfinite(best) & ~(inside & flipped[..., None]).any(1)
    return torch.where(covered, index, torch.zeros_like(index)), covered


@pytest.mark.parametrize("size", [128, 45])
def test_tiled_rasteriser_matches_the_exhaustive_point_in_triangle_test(size: int) -> None:
    from anonymizer.stage2.warp import ASSIGN_EPS, _assign_pixels, _border

    g = torch.Generator().manual_seed(7)
    pts = template_points(size).double().repeat(4, 1, 1)
    # mild to wild jitter (the last images fold), one face partly outside the frame
    pts = pts + torch.randn(4, 68, 2, generator=g, dtype=torch.float64) * torch.tensor([0.3, 1.5, 4.0, 9.0],
                                                                                    dtype=torch.float64)[:, None, None]
    pts[1] += torch.tensor([size * 0.3, -size * 0.2], dtype=torch.float64)
    tri, orient, _ = triangulation()
    border = _border(size, torch.float64, torch.device("cpu"))[None].expand(4, -1, -1)
    verts = torch.cat([face_vertices(pts), border], 1)
    td = verts[:, torch.from_numpy(tri)]
    u, v = td[:, :, 1] - td[:, :, 0], td[:, :, 2] - td[:, :, 0]
    area = torch.from_numpy(orient).double() * (u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]) / 2
    good, flipped = area > 0.05, area < -0.05
    assert flipped[3].any() and good.all(1).sum() < 4  # the test covers folds
    index, covered = _assign_pixels(td, good, flipped, size, size)
    ref_index, ref_covered = exhaustive_assignment(td, good, flipped, size, size, ASSIGN_EPS)
    assert torch.equal(covered, ref_covered)
    assert torch.equal(index, ref_index)
    assert covered.float().mean() > 0.5


def test_feather_is_zero_outside_and_one_deep_inside() -> None:
    m = torch.zeros(1, 1, 32, 32)
    m[..., 8:24, 8:24] = 1
    f = feather(m, 2)
    assert f[m == 0].abs().max() == 0 and f[0, 0, 16, 16] == 1 and 0 < f[0, 0, 8, 16] < 1


def test_shape_blend_keeps_the_source_pose_and_takes_the_reference_shape() -> None:
    from anonymizer.stage2.warp import blend_shape

    src = template_points(S).double()[None]
    # another face shape: a wider jaw and a longer nose (known per-point offsets), then seen rotated, scaled and
    # shifted: the similarity must be removed and only the shape difference mixed in
    other = src.clone()
    other[0, :17, 0] = (other[0, :17, 0] - 63.5) * 1.15 + 63.5
    other[0, 27:36, 1] += 3.0
    ref = similarity(other[0], 25.0, 0.7, (9.0, -4.0))[None]
    assert torch.allclose(blend_shape(src, ref, 0.0), src)
    full = blend_shape(src, ref, 1.0)
    # alpha 1 = the other shape in the source's frame: equal to ``other`` up to the least-squares similarity
    # between other and src (small, both share most points); check the shape difference itself
    d_full, d_true = full - src, other - src
    assert torch.allclose(d_full - d_full.mean(1, keepdim=True), d_true - d_true.mean(1, keepdim=True), atol=0.6)
    half = blend_shape(src, ref, 0.5)
    assert torch.allclose(half, (src + full) / 2, atol=1e-9)
    # a pure similarity of the source is the same shape: nothing moves
    assert torch.allclose(blend_shape(src, similarity(src[0], -40.0, 1.3, (3.0, 2.0))[None], 0.8), src, atol=1e-9)
    # a reference without landmarks keeps the source points
    nan = torch.full_like(ref, float("nan"))
    assert torch.equal(blend_shape(src, nan, 0.7), src)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        blend_shape(src, ref, 1.5)
