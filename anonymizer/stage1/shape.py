"""A linear shape regressor: landmarks = mean shape + W (low-resolution capture), fitted in closed form.

Why a linear regressor. The privacy camera's capture is, by design, a heavily low-passed face; what it keeps is the
few lowest spatial frequencies, and the embedded training set is a few hundred aligned faces. A CNN heatmap
regressor trained from scratch on that stays worse than predicting the mean shape for hundreds of steps on a CPU
(measured: NME 0.065-0.09 after 300 steps against 0.050 for the mean shape), so its NME says nothing about what a
camera keeps. Ridge regression from the area-downsampled capture (``features`` x ``features`` x 3 values) to the
68 points, on augmented captures of the training faces (random similarity transforms), is the classical
shape-regression baseline (as the first stage of cascaded shape regression): its optimum is found exactly in
seconds, it beats the mean shape on every camera that keeps geometry (NME ~0.037 on 16x16 captures at 128 px), and
it is differentiable in the capture, so a lens trained through it gets a useful gradient.

The module keeps the HeatmapRegressor interface: ``forward`` returns the 68 per-landmark heatmaps (Gaussians of
``sigma`` px rendered at the points, the Stage II input; their soft-argmax gives the points back) and
:meth:`landmarks` the points. Its config carries ``"head": "linear"``; :func:`build_regressor` rebuilds either
kind from a checkpoint's ``regressor_config``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from kornia.geometry.transform import get_rotation_matrix2d, warp_affine
from torch import nn

from anonymizer.stage1.heatmap import HeatmapRegressor, landmark_nme, landmarks_to_heatmaps

RIDGE_GRID = (1e-3, 1e-2, 1e-1)
"""Ridge strengths tried by :func:`fit_shape_regressor` (relative to the mean feature variance)."""


class LinearShapeRegressor(nn.Module):
    """Landmarks from a capture by a linear map of its area-downsampled pixels.

    Args:
        in_channels: channels of the capture (3).
        out_channels: number of landmarks K (68 or 5).
        img_size: capture side S [px] (the points are in this frame).
        sigma: Gaussian sigma [px] of the rendered heatmaps.
        features: side of the area-downsampled capture the map reads (features^2 * in_channels inputs).
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 68, img_size: int = 128, sigma: float = 2.0,
                 features: int = 16, head: str = "linear") -> None:
        super().__init__()
        if head != "linear":
            raise ValueError(f"LinearShapeRegressor is the 'linear' head, not {head!r}")
        if not (img_size >= features >= 1 and sigma > 0 and out_channels >= 1 and in_channels >= 1):
            raise ValueError(f"bad linear shape regressor: img_size {img_size}, features {features}, "
                             f"sigma {sigma}, {out_channels} landmarks")
        self.config = {"head": "linear", "in_channels": in_channels, "out_channels": out_channels,
                       "img_size": int(img_size), "sigma": float(sigma), "features": int(features)}
        n_in = in_channels * features * features
        self.map = nn.Linear(n_in, 2 * out_channels)
        nn.init.zeros_(self.map.weight)
        nn.init.zeros_(self.map.bias)
        self.register_buffer("feature_mean", torch.zeros(n_in))
        self.register_buffer("mean_shape", torch.full((out_channels, 2), (img_size - 1) / 2.0))

    def features(self, capture: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) capture -> (B, C * F * F) area-downsampled pixels."""
        side = self.config["img_size"]
        if capture.ndim != 4 or tuple(capture.shape[-2:]) != (side, side):
            raise ValueError(f"this shape regressor reads {side} x {side} captures, got {tuple(capture.shape)}")
        f = self.config["features"]
        return F.interpolate(capture, size=(f, f), mode="area").flatten(1)

    def landmarks(self, capture: torch.Tensor) -> torch.Tensor:
        """(B, K, 2) ``(x, y)`` [px] of a (B, C, S, S) capture in [0, 1]."""
        off = self.map(self.features(capture) - self.feature_mean)
        return self.mean_shape + off.view(capture.shape[0], -1, 2)

    def forward(self, capture: torch.Tensor) -> torch.Tensor:
        """(B, K, S, S) heatmaps rendered at :meth:`landmarks`."""
        return landmarks_to_heatmaps(self.landmarks(capture), capture.shape[-1], self.config["sigma"])

    @torch.no_grad()
    def set_solution(self, feature_mean: torch.Tensor, mean_shape: torch.Tensor, weight: torch.Tensor) -> None:
        """Install a fitted map: feature mean (D,), mean shape (K, 2) [px], weight (D, 2K)."""
        self.feature_mean.copy_(feature_mean.to(self.feature_mean))
        self.mean_shape.copy_(mean_shape.to(self.mean_shape))
        self.map.weight.copy_(weight.T.to(self.map.weight))
        self.map.bias.zero_()


def similarity_augment(images: torch.Tensor, landmarks: torch.Tensor, strength: float,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random similarity transform of each face and its landmarks (see ``Stage1Config.augment``).

    The image is resampled bilinearly (kornia.geometry.warp_affine, border replicated); the landmarks go through
    the same 2x3 matrix, so they stay on the features they marked (pixel centres at integers).

    Args:
        images: (B, C, S, S). landmarks: (B, K, 2) [px] (NaN rows stay NaN). strength: >= 0.
        generator: the draws (deterministic per step).

    Returns:
        (warped images, transformed landmarks), dtype / device of the inputs.
    """
    b, _, h, w = images.shape
    u = torch.rand(b, 4, generator=generator, device=generator.device).to(images) * 2 - 1
    angle = u[:, 0] * 10.0 * strength
    scale = 1.0 + u[:, 1] * 0.08 * strength
    centre = torch.tensor([(w - 1) / 2.0, (h - 1) / 2.0], dtype=images.dtype, device=images.device).expand(b, 2)
    mat = get_rotation_matrix2d(centre, angle, torch.stack([scale, scale], dim=-1))  # (B, 2, 3)
    mat = mat.clone()
    mat[:, 0, 2] += u[:, 2] * 0.05 * strength * w
    mat[:, 1, 2] += u[:, 3] * 0.05 * strength * h
    warped = warp_affine(images, mat, (h, w), mode="bilinear", padding_mode="border", align_corners=True)
    pts = landmarks @ mat[:, :, :2].transpose(1, 2) + mat[:, None, :, 2]
    return warped, pts



def build_regressor(config: dict) -> nn.Module:
    """The Stage I regressor of a checkpoint's ``regressor_config`` (a heatmap U-Net or the linear head)."""
    config = dict(config)
    if config.get("head", "heatmap") == "linear":
        return LinearShapeRegressor(**config)
    config.pop("head", None)
    return HeatmapRegressor(**config)


def _ridge(a: torch.Tensor, b: torch.Tensor, lam: float) -> torch.Tensor:
    """argmin_W |A W - B|^2 + lam * n * mean(var(A)) |W|^2 for centred A (n, D), B (n, M) (float64)."""
    scale = lam * a.shape[0] * float(a.var(dim=0).mean().clamp_min(1e-12))
    gram = a.T @ a + scale * torch.eye(a.shape[1], dtype=a.dtype, device=a.device)
    return torch.linalg.solve(gram, a.T @ b)


@torch.no_grad()
def fit_shape_regressor(regressor: LinearShapeRegressor, capture_fn: Callable[[torch.Tensor], torch.Tensor],
                        images: torch.Tensor, landmarks: torch.Tensor, copies: int = 8, augment: float = 1.0,
                        folds: int = 4, seed: int = 0, batch_size: int = 64,
                        grid: Sequence[float] = RIDGE_GRID) -> dict:
    """Fit the linear map by ridge regression on ``copies`` captures of every training face.

    Copy 0 is the face as it is, the others random similarity transforms of it and its landmarks
    (:func:`similarity_augment`, strength ``augment``); each copy is captured with fresh
    sensor noise. The ridge strength is chosen from ``grid`` by ``folds``-fold cross-validation over the
    *people* (all copies of a face are in one fold), then the map is refitted on everything.

    Args:
        regressor: the model to fit (modified in place).
        capture_fn: images (B, 3, S, S) -> captures (B, 3, S, S) (e.g. the camera with a seeded noise generator).
        images: (N, 3, S, S) training faces in [0, 1]. landmarks: (N, K, 2) [px], rows with a NaN are dropped.

    Returns:
        {"lambda", "cv_nme" (per grid value), "train_nme", "samples"}.
    """
    keep = torch.isfinite(landmarks).all(dim=-1).all(dim=-1)
    images, landmarks = images[keep], landmarks[keep]
    n = images.shape[0]
    if n < 4:
        raise ValueError(f"fitting the shape regressor needs at least 4 faces with landmarks, got {n}")
    folds = max(2, min(folds, n // 2))
    gen = torch.Generator(device=images.device).manual_seed(seed)
    feats, targets, owner = [], [], []
    for c in range(copies):
        for s in range(0, n, batch_size):
            x, lm = images[s:s + batch_size], landmarks[s:s + batch_size]
            if c > 0 and augment > 0:
                x, lm = similarity_augment(x, lm, augment, gen)
            feats.append(regressor.features(capture_fn(x)).double())
            targets.append(lm.flatten(1).double())
            owner.append(torch.arange(s, s + x.shape[0]))
    a_all, b_all, who = torch.cat(feats), torch.cat(targets), torch.cat(owner)
    fold_of = torch.from_numpy(np.random.default_rng(seed).permutation(n) % folds)[who]
    k = landmarks.shape[1]

    def solve(rows: torch.Tensor, lam: float):
        mx, my = a_all[rows].mean(0), b_all[rows].mean(0)
        return mx, my, _ridge(a_all[rows] - mx, b_all[rows] - my, lam)

    cv = {}
    original = torch.zeros(len(who), dtype=torch.bool)
    original[:n] = True  # copy 0 comes first: the un-augmented faces
    for lam in grid:
        errs = []
        for f in range(folds):
            mx, my, w = solve(fold_of != f, lam)
            test = (fold_of == f) & original
            pred = ((a_all[test] - mx) @ w + my).view(-1, k, 2)
            errs.append(landmark_nme(pred.float(), b_all[test].view(-1, k, 2).float()))
        cv[lam] = float(torch.cat(errs).mean())
    best = min(cv, key=cv.get)
    mx, my, w = solve(torch.ones(len(who), dtype=torch.bool), best)
    regressor.set_solution(mx.float(), my.view(k, 2).float(), w.float())
    pred = ((a_all[original] - mx) @ w + my).view(-1, k, 2)
    train_nme = float(landmark_nme(pred.float(), b_all[original].view(-1, k, 2).float()).mean())
    return {"lambda": best, "cv_nme": cv, "train_nme": train_nme, "samples": int(len(who))}
