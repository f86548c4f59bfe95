"""Landmark heatmaps: Gaussian targets, a differentiable soft-argmax and the HeatmapRegressor.

Pixel convention (used everywhere in this module): coordinates are ``(x, y)`` in pixels with the *centre*
of pixel ``(row i, column j)`` at ``(x, y) = (j, i)``; this is dlib's ``part.x / part.y`` convention.

Channel layouts (``mode``):

- ``"landmarks"``: one channel per landmark (68 for dlib's iBUG layout, 5 for MTCNN).
- ``"grouped"``: the reference's two masks, the per-landmark Gaussians of each group combined with a
  pixelwise max (so each mask stays in [0, 1] and peaks at 1 on every landmark of its group):

  * 68 points (iBUG): group 0 = jaw + eyebrows (points 0-26), group 1 = nose + eyes + mouth (points 27-67).
  * 5 points (MTCNN: left eye, right eye, nose, mouth left, mouth right): there is no jaw outline, so the
    mapping keeps the reference's "outer frame / inner features" split as well as 5 points allow:
    group 0 = the two eyes (points 0, 1; the upper frame of the face, where the brows would be),
    group 1 = nose + mouth corners (points 2, 3, 4).
"""
from __future__ import annotations

import math
import torch
import torch.nn as nn
import torch.nn.functional as F

HEATMAP_MODES = ("landmarks", "grouped")

# landmark index groups of the "grouped" mode, by number of landmarks
LANDMARK_GROUPS: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    68: (tuple(range(0, 27)), tuple(range(27, 68))),
    5: ((0, 1), (2, 3, 4)),
}


def landmark_groups(num_landmarks: int) -> tuple[tuple[int, ...], ...]:
    """Index groups of the ``"grouped"`` mode for a landmark layout.

    Raises:
        ValueError: no grouping is defined for ``num_landmarks`` (only 68 and 5 are).
    """
    if num_landmarks not in LANDMARK_GROUPS:
        raise ValueError(f"grouped heatmaps are defined for 68 (dlib) or 5 (MTCNN) landmarks, "
                         f"not {num_landmarks}")
    return LANDMARK_GROUPS[num_landmarks]


def num_heatmap_channels(num_landmarks: int, mode: str) -> int:
    """Channels of the heatmaps of ``num_landmarks`` landmarks in ``mode`` (K, or 2 when grouped)."""
    if mode not in HEATMAP_MODES:
        raise ValueError(f"heatmap mode must be one of {HEATMAP_MODES}, not {mode!r}")
    return num_landmarks if mode == "landmarks" else len(landmark_groups(num_landmarks))


def landmarks_to_heatmaps(landmarks: torch.Tensor, size: int, sigma: float,
                          mode: str = "landmarks") -> torch.Tensor:
    """Gaussian heatmaps ``exp(-|p - l|^2 / (2 sigma^2))`` centred on each landmark.

    Args:
        landmarks: (B, K, 2) ``(x, y)`` [px] in a ``size`` x ``size`` image (pixel centres at integers).
            Non-finite landmarks give all-zero channels (their loss should be masked by the caller).
        size: heatmap side [px].
        sigma: Gaussian standard deviation [px], > 0.
        mode: ``"landmarks"`` (one channel per point) or ``"grouped"`` (2 masks, see the module docstring).

    Returns:
        (B, K, size, size) or (B, 2, size, size) in [0, 1]; each landmark's own channel peaks at exactly 1
        when the landmark sits on a pixel centre. dtype/device follow ``landmarks``.
    """
    if landmarks.ndim != 3 or landmarks.shape[-1] != 2:
        raise ValueError(f"landmarks must be (B, K, 2), got {tuple(landmarks.shape)}")
    if not sigma > 0:
        raise ValueError(f"heatmap sigma must be > 0 px, got {sigma}")
    if mode not in HEATMAP_MODES:
        raise ValueError(f"heatmap mode must be one of {HEATMAP_MODES}, not {mode!r}")
    if not landmarks.is_floating_point():
        landmarks = landmarks.float()
    finite = torch.isfinite(landmarks).all(dim=-1)  # (B, K)
    pts = torch.where(finite[..., None], landmarks, torch.zeros_like(landmarks))
    grid = torch.arange(size, device=landmarks.device, dtype=landmarks.dtype)
    # separable Gaussian: (B, K, 1, W) * (B, K, H, 1)
    gx = torch.exp(-(grid.view(1, 1, -1) - pts[..., 0:1]) ** 2 / (2.0 * sigma ** 2))
    gy = torch.exp(-(grid.view(1, 1, -1) - pts[..., 1:2]) ** 2 / (2.0 * sigma ** 2))
    # far from its landmark a Gaussian underflows to subnormal floats (~1e-40). They change nothing a float can
    # show, but every convolution that reads them runs on the CPU's slow subnormal path (the Stage II generator's
    # first conv took 2.4x as long on such heatmaps as on the same values flushed). Zeroing each 1-D factor below
    # sqrt(tiny) leaves no subnormal product (two factors >= sqrt(tiny) multiply to >= tiny) and moves no value by
    # more than sqrt(tiny) (1.1e-19 in float32); done on the (B, K, size) factors, the image-sized product is the
    # only pass over (B, K, size, size)
    floor = torch.finfo(gx.dtype).tiny ** 0.5
    keep = finite[..., None]
    gx = torch.where((gx >= floor) & keep, gx, 0.0)
    gy = torch.where((gy >= floor) & keep, gy, 0.0)
    heat = gy[..., :, None] * gx[..., None, :]
    if mode == "grouped":
        heat = torch.stack([heat[:, list(g)].amax(dim=1) for g in landmark_groups(landmarks.shape[1])], dim=1)
    return heat


def group_heatmaps(heatmaps: torch.Tensor) -> torch.Tensor:
    """Per-landmark heatmaps -> the 2 grouped masks (pixelwise max within each group).

    Args:
        heatmaps: (B, K, H, W), K = 68 or 5.

    Returns:
        (B, 2, H, W).
    """
    return torch.stack([heatmaps[:, list(g)].amax(dim=1) for g in landmark_groups(heatmaps.shape[1])], dim=1)


def soft_argmax(heatmaps: torch.Tensor, threshold: float = 0.5, beta: float | None = None) -> torch.Tensor:
    """Differentiable landmark coordinates: the centre of mass of each heatmap channel.

    The weights are ``relu(h - threshold * max(h))`` per channel (or ``softmax(beta * h)`` when ``beta``
    is given). Thresholding at a fraction of the channel's peak removes the background that biases a plain
    centre of mass towards the image centre, and keeps any symmetric peak's centre exact, so a Gaussian
    heatmap gives its centre with sub-pixel accuracy.

    Args:
        heatmaps: (B, K, H, W), non-negative peaks (e.g. a regressor's output in [0, 1]).
        threshold: fraction of each channel's maximum subtracted before weighting, in [0, 1).
        beta: if given, use a spatial softmax with this inverse temperature instead.

    Returns:
        (B, K, 2) ``(x, y)`` [px] (pixel centres at integers). A channel with no positive weight gives the
        image centre.
    """
    if heatmaps.ndim != 4:
        raise ValueError(f"heatmaps must be (B, K, H, W), got {tuple(heatmaps.shape)}")
    b, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(b, k, h * w)
    if beta is not None:
        weights = torch.softmax(beta * flat, dim=-1)
    elif not 0.0 <= threshold < 1.0:
        raise ValueError(f"soft_argmax threshold must be in [0, 1), got {threshold}")
    else:
        weights = F.relu(torch.sub(flat, flat.amax(dim=-1, keepdim=True), alpha=threshold))
    # the image-sized passes are the weights and their two marginal sums; the thresholded weights are
    # normalised by their total on the (B, K, H) / (B, K, W) marginals (softmax weights already sum to 1)
    weights = weights.reshape(b, k, h, w)
    cols, rows = weights.sum(dim=2), weights.sum(dim=3)  # (B, K, W), (B, K, H)
    xs = torch.arange(w, device=heatmaps.device, dtype=heatmaps.dtype)
    ys = torch.arange(h, device=heatmaps.device, dtype=heatmaps.dtype)
    pts = torch.stack([(cols * xs).sum(dim=-1), (rows * ys).sum(dim=-1)], dim=-1)
    if beta is not None:
        return pts
    total = rows.sum(dim=-1)
    centre = torch.tensor([(w - 1) / 2, (h - 1) / 2], device=heatmaps.device, dtype=heatmaps.dtype)
    pts = pts / total.clamp_min(torch.finfo(weights.dtype).tiny)[..., None]
    return torch.where((total > 0)[..., None], pts, centre)


def heatmap_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None,
                 foreground_weight: float = 10.0) -> torch.Tensor:
    """Relative foreground-weighted squared error between heatmaps.

    With ``w = 1 + foreground_weight * target`` the loss per image is
    ``sum(w * (pred - target)^2) / sum(w * target^2)``: predicting all zeros scores exactly 1 whatever the
    number of channels, sigma or image size, so the loss is O(1) and comparable with the privacy term.
    Landmark heatmaps are mostly background; the weight puts the error near the landmarks first (a plain MSE
    is minimised early by predicting zeros).

    Args:
        pred: (B, C, H, W) predicted heatmaps in [0, 1].
        target: (B, C, H, W) target heatmaps in [0, 1].
        valid: (B,) bool, images whose teacher found a face; the others are excluded. None = all.
        foreground_weight: extra weight at the peaks (>= 0).

    Returns:
        scalar loss >= 0 (0 when no image is valid, still connected to ``pred``'s graph).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} heatmaps differ in shape")
    weight = 1.0 + foreground_weight * target
    err = (weight * (pred - target) ** 2).sum(dim=(1, 2, 3))
    norm = (weight * target ** 2).sum(dim=(1, 2, 3)).clamp_min(1e-6)
    per_image = err / norm
    if valid is None:
        return per_image.mean()
    valid = valid.to(per_image.device, torch.bool)
    return torch.where(valid, per_image, torch.zeros_like(per_image)).sum() / valid.sum().clamp_min(1)


def landmark_nme(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Normalised mean error: mean point-to-point distance divided by the inter-ocular distance.

    The inter-ocular distance is between the outer eye corners (iBUG points 36 and 45) for 68 points, or
    between the eye centres (points 0 and 1) for MTCNN's 5 points.

    Args:
        pred: (B, K, 2) [px].
        target: (B, K, 2) [px], K = 68 or 5.

    Returns:
        (B,) NME per image (dimensionless).
    """
    if pred.shape != target.shape or target.shape[-1] != 2:
        raise ValueError(f"landmark shapes differ or are not (B, K, 2): {tuple(pred.shape)} {tuple(target.shape)}")
    k = target.shape[1]
    if k == 68:
        left, right = 36, 45
    elif k == 5:
        left, right = 0, 1
    else:
        raise ValueError(f"NME needs 68 or 5 landmarks, got {k}")
    iod = (target[:, left] - target[:, right]).norm(dim=-1)
    return (pred - target).norm(dim=-1).mean(dim=-1) / iod.clamp_min(1e-6)


class _ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        groups = math.gcd(cout, 8)
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(groups, cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.GroupNorm(groups, cout), nn.ReLU(inplace=True),
        )


class HeatmapRegressor(nn.Module):
    """A small U-Net (an hourglass with skip connections) from a sensor capture to landmark heatmaps.

    A stride-``stem_stride`` stem, then ``depth`` stride-2 levels with ``base * 2**level`` channels (capped at
    ``max_channels``), bilinear upsampling with skip concatenation, and a 1x1 head whose output is upsampled
    back to the input size (bilinear) and squashed by a sigmoid: heatmaps in [0, 1] at the input resolution.
    The default ``stem_stride = 2`` computes the features at half resolution (4x cheaper; the blurred capture
    has little content above half Nyquist anyway) while the soft-argmax keeps sub-pixel coordinates.
    Landmark coordinates: :meth:`landmarks` (the differentiable :func:`soft_argmax` of the heatmaps).

    Args:
        in_channels: channels of the capture (3).
        out_channels: heatmap channels (68 / 5 per-landmark, or 2 grouped).
        base: channels of the first level.
        depth: number of downsampling levels after the stem (the input side must be divisible by
            ``stem_stride * 2**depth``).
        max_channels: channel cap of the deepest levels.
        stem_stride: 1 (features at full resolution) or 2.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 2, base: int = 16, depth: int = 3,
                 max_channels: int = 128, stem_stride: int = 2) -> None:
        super().__init__()
        if out_channels < 1 or in_channels < 1 or base < 1 or depth < 1:
            raise ValueError("HeatmapRegressor needs positive in_channels, out_channels, base and depth")
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
        self.config = {"in_channels": in_channels, "out_channels": out_channels, "base": base, "depth": depth,
                       "max_channels": max_channels, "stem_stride": stem_stride}
        widths = [min(base * 2 ** i, max_channels) for i in range(depth + 1)]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, stride=stem_stride, padding=1),
                                  nn.ReLU(inplace=True), _ConvBlock(widths[0], widths[0]))
        self.down = nn.ModuleList(_ConvBlock(widths[i], widths[i + 1]) for i in range(depth))
        self.up = nn.ModuleList(_ConvBlock(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], out_channels, 1)
        nn.init.constant_(self.head.bias, -4.0)  # start near the (mostly zero) target, sigmoid(-4) = 0.018

    @property
    def multiple(self) -> int:
        """The input side must be a multiple of this."""
        return self.config["stem_stride"] * 2 ** self.config["depth"]

    def forward(self, capture: torch.Tensor) -> torch.Tensor:
        """Heatmaps of a capture.

        Args:
            capture: (B, in_channels, H, W) in [0, 1]; H and W divisible by :attr:`multiple`.

        Returns:
            (B, out_channels, H, W) in [0, 1].
        """
        m = self.multiple
        if capture.shape[-1] % m or capture.shape[-2] % m:
            raise ValueError(f"HeatmapRegressor needs H and W divisible by {m}, got {tuple(capture.shape[-2:])}")
        x = self.stem(capture * 2.0 - 1.0)
        skips = [x]
        for block in self.down:
            x = block(F.avg_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        logits = self.head(x)
        if logits.shape[-2:] != capture.shape[-2:]:
            logits = F.interpolate(logits, size=capture.shape[-2:], mode="bilinear", align_corners=False)
        return torch.sigmoid(logits)

    def landmarks(self, capture: torch.Tensor) -> torch.Tensor:
        """Landmark coordinates (per-landmark heatmap layouts only).

        Args:
            capture: (B, in_channels, H, W) in [0, 1].

        Returns:
            (B, out_channels, 2) ``(x, y)`` [px].
        """
        return soft_argmax(self(capture))
