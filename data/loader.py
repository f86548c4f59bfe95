"""Stage II training data: a step-indexed dataset + torch DataLoader (workers, pinned memory, persistent workers).

Each item is the WHOLE batch of one training step, built from seeds derived from ``(seed, step, rank)`` only
(:func:`step_seed`), so a batch does not depend on the number of workers, on which worker builds it, or on what
was loaded before: a run resumed at step k sees exactly the batches of the uninterrupted run. The source order
comes from a ``DistributedSampler`` (shuffled per epoch; each rank gets its own share), so DDP ranks train on
disjoint images.

A batch holds, for the self-supervised reconstruction, the source ``x_src`` and a SELF-REFERENCE ``x_self``: the
same face under a random similarity (rotation, scale, shift), a smooth random displacement field (a 4 x 4
control grid, bicubic: the role of a TPS jitter, without its singularities) and a photometric change (per-channel
gain, gamma, brightness), with its landmarks moved by the same geometric map. For the cross-identity steps it
holds two other people's faces ``x_ref`` / ``x_ref2`` with their landmarks. All landmarks are the teacher's on the
clean image (``pts_*``: (68, 2) ``(x, y)`` [px], pixel centres at integers).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["FLIP_68", "flip_points", "step_seed", "jitter_reference", "Stage2Steps", "step_loader", "BATCH_KEYS"]

# iBUG 68-point mirror permutation (index of each point's mirror image under a horizontal flip)
FLIP_68 = (list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + [35, 34, 33, 32, 31]
           + [45, 44, 43, 42, 47, 46] + [39, 38, 37, 36, 41, 40] + [54, 53, 52, 51, 50, 49, 48]
           + [59, 58, 57, 56, 55] + [64, 63, 62, 61, 60] + [67, 66, 65])

BATCH_KEYS = ("x_src", "pts_src", "y_src", "x_self", "pts_self", "x_ref", "pts_ref", "x_ref2", "pts_ref2", "y_ref",
              "z_trg", "z_trg2")


def flip_points(points: torch.Tensor, width: int) -> torch.Tensor:
    """Landmarks of the horizontally flipped image: (..., 68, 2) [px] -> (..., 68, 2); ``x -> width - 1 - x`` and
    the iBUG left / right points exchanged."""
    out = points[..., FLIP_68, :].clone()
    out[..., 0] = (width - 1) - out[..., 0]
    return out


def step_seed(seed: int, step: int, rank: int = 0, stream: int = 0) -> int:
    """Seed of the random draws of ``step`` on ``rank`` (``stream`` separates independent uses)."""
    return (seed * 1_000_003 + step * 7919 + rank * 104_729 + stream * 15_485_863) % (2 ** 63 - 1)


def _smooth_field(size: int, amplitude: float, gen: torch.Generator) -> torch.Tensor:
    """(size, size, 2) displacement [px], bicubic from a 4 x 4 grid of uniform offsets in [-amplitude, amplitude]."""
    ctrl = (torch.rand(1, 2, 4, 4, generator=gen) * 2 - 1) * amplitude
    return F.interpolate(ctrl, size=(size, size), mode="bicubic", align_corners=True)[0].permute(1, 2, 0)


def jitter_reference(image: torch.Tensor, points: torch.Tensor, gen: torch.Generator, max_rotation: float = 10.0,
                     max_scale: float = 0.08, max_shift: float = 0.05, field_px: float = 2.5,
                     photometric: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random geometric + photometric change of a face and its landmarks (the self-reference).

    The backward map is ``M(q) = A (q - c) + c + t + d(q)`` (A: rotation by up to ``max_rotation`` degrees and
    scale ``1 +- max_scale``; t: shift up to ``max_shift`` of the side; d: smooth field of up to ``field_px``);
    output pixel q samples the input at M(q). The landmarks move by M^-1, solved by fixed-point iteration
    ``p' = A^-1 (p - c - t - d(p')) + c`` (d is small and smooth, so 4 iterations reach < 0.01 px).

    Args:
        image: (3, S, S) in [0, 1].
        points: (68, 2) [px].
        gen: the step's generator.
        photometric: scale of the photometric change (0: none): gain 1 +- 0.1, gamma 2^(+-0.25), offset +- 0.04.

    Returns:
        (image (3, S, S) in [0, 1], points (68, 2) [px]).
    """
    s = image.shape[-1]
    u = torch.rand(4, generator=gen)
    ang = math.radians((u[0].item() * 2 - 1) * max_rotation)
    sc = 1.0 + (u[1].item() * 2 - 1) * max_scale
    t = (u[2:4] * 2 - 1) * max_shift * s
    a = torch.tensor([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]]) * sc
    c = torch.full((2,), (s - 1) / 2.0)
    d = _smooth_field(s, field_px, gen)
    ys, xs = torch.meshgrid(torch.arange(s, dtype=torch.float32), torch.arange(s, dtype=torch.float32),
                            indexing="ij")
    q = torch.stack([xs, ys], -1)
    src = (q - c) @ a.T + c + t + d
    grid = (src + 0.5) / s * 2 - 1
    out = F.grid_sample(image[None], grid[None], mode="bilinear", padding_mode="border", align_corners=False)[0]
    a_inv = torch.linalg.inv(a)
    p = (points - c - t) @ a_inv.T + c
    for _ in range(4):
        dp = F.grid_sample(d.permute(2, 0, 1)[None], ((p + 0.5) / s * 2 - 1)[None, None], mode="bilinear",
                           padding_mode="border", align_corners=False)[0, :, 0].T
        p = (points - c - t - dp) @ a_inv.T + c
    if photometric > 0:
        v = torch.rand(7, generator=gen) * 2 - 1
        gain = 1 + 0.1 * photometric * v[:3, None, None]
        gamma = 2.0 ** (0.25 * photometric * v[3].item())
        offset = 0.04 * photometric * v[4:7, None, None]
        out = (out.clamp(0, 1) ** gamma * gain + offset)
    return out.clamp(0, 1), p


class Stage2Steps(Dataset):
    """Item ``step`` = the batch of that training step on this rank (a dict of stacked tensors, :data:`BATCH_KEYS`).

    Args:
        images: source dataset with ``load(i) -> (3, S, S)`` in [0, 1] (``data.datasets.SourceDataset``, cached)
            and ``targets`` (domain labels).
        landmarks: (N, 68, 2) teacher landmarks of those images [px] (all finite: filter missing faces first).
        batch_size: per-rank batch.
        latent_dim: length of the latents.
        seed: run seed.
        rank, world_size: process placement.
        flip: random horizontal flips (with the iBUG point permutation).
    """

    def __init__(self, images: Any, landmarks: np.ndarray | torch.Tensor, batch_size: int, latent_dim: int,
                 seed: int, rank: int = 0, world_size: int = 1, flip: bool = True):
        self.images = images
        self.landmarks = torch.as_tensor(np.asarray(landmarks), dtype=torch.float32)
        n = len(images)
        if self.landmarks.shape != (n, 68, 2):
            raise ValueError(f"landmarks: expected ({n}, 68, 2) for {n} images, got {tuple(self.landmarks.shape)}")
        if not torch.isfinite(self.landmarks).all():
            raise ValueError("landmarks: non-finite entries (drop the images without a teacher face first)")
        if n < 2 or n < batch_size * world_size:
            raise ValueError(f"Stage II data: {n} images, fewer than one batch ({batch_size} x {world_size} "
                             "processes) or fewer than 2 people")
        self.labels = torch.tensor([int(t) for t in images.targets])
        self.batch_size, self.latent_dim, self.seed = batch_size, latent_dim, seed
        self.rank, self.flip = rank, flip
        kw = dict(num_replicas=world_size, rank=rank, shuffle=True, drop_last=True)
        self.samplers = (DistributedSampler(images, seed=seed, **kw), DistributedSampler(images, seed=seed + 1, **kw))
        self.per_epoch = len(self.samplers[0]) // batch_size

    def __len__(self) -> int:  # steps are unbounded; the DataLoader's sampler picks which
        return 2 ** 31 - 1

    def _indices(self, which: int, step: int) -> list[int]:
        epoch, pos = divmod(step, self.per_epoch)
        sampler = self.samplers[which]
        sampler.set_epoch(epoch)  # a fresh permutation from (seed, epoch): no state carried between steps
        order = list(iter(sampler))
        return order[pos * self.batch_size:(pos + 1) * self.batch_size]

    def _face(self, i: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        img, pts = self.images.load(i), self.landmarks[i].clone()
        if self.flip and torch.rand(1, generator=gen).item() < 0.5:
            img, pts = img.flip(-1), flip_points(pts, img.shape[-1])
        return img, pts

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(step_seed(self.seed, int(step), self.rank, stream=1))
        src_idx, ref_idx = self._indices(0, step), self._indices(1, step)
        n = len(self.images)
        out: dict[str, list[torch.Tensor]] = {k: [] for k in BATCH_KEYS}
        for i, j in zip(src_idx, ref_idx):
            if j == i:  # another person
                j = (j + 1) % n
            k = (j + 1 + int(torch.randint(n - 2, (1,), generator=gen))) % n if n > 2 else j
            if k == i:
                k = (k + 1) % n
            x, p = self._face(i, gen)
            xs, ps = jitter_reference(x, p, gen)
            xr, pr = self._face(j, gen)
            xr2, pr2 = self._face(k, gen)
            for key, val in (("x_src", x), ("pts_src", p), ("y_src", self.labels[i]), ("x_self", xs),
                             ("pts_self", ps), ("x_ref", xr), ("pts_ref", pr), ("x_ref2", xr2), ("pts_ref2", pr2),
                             ("y_ref", self.labels[j])):
                out[key].append(val)
        b = len(src_idx)
        batch = {k: torch.stack(v) for k, v in out.items() if v}
        batch["z_trg"] = torch.randn(b, self.latent_dim, generator=gen)
        batch["z_trg2"] = torch.randn(b, self.latent_dim, generator=gen)
        return batch


def step_loader(steps: Stage2Steps, start: int, stop: int, num_workers: int = 0,
                pin_memory: bool | None = None) -> DataLoader:
    """DataLoader yielding the batches of steps ``start .. stop - 1`` in order.

    Args:
        steps: the step-indexed dataset.
        num_workers: worker processes (0: in the main process); workers are persistent and prefetch 2 steps.
        pin_memory: page-locked batches (default: when CUDA is available).
    """
    if num_workers < 0:
        raise ValueError(f"--num_workers must be >= 0, got {num_workers}")
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    kw: dict[str, Any] = {}
    if num_workers > 0:
        kw = dict(persistent_workers=True, prefetch_factor=2)
    return DataLoader(steps, batch_size=None, sampler=range(start, stop), num_workers=num_workers,
                      pin_memory=pin_memory, **kw)
