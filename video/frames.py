"""Frame conversions shared by the de-identification methods: uint8 frames <-> tensors, integer face boxes."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def frames_to_tensor(frames: Sequence[np.ndarray], device: torch.device | str = "cpu") -> torch.Tensor:
    """(H, W, 3) uint8 frames -> (B, 3, H, W) float32 in [0, 1]."""
    arr = np.stack([np.asarray(f) for f in frames])
    return torch.from_numpy(arr).to(device).permute(0, 3, 1, 2).float().div(255.0)


def tensor_to_frames(batch: torch.Tensor) -> list[np.ndarray]:
    """(B, 3, H, W) in [0, 1] -> list of (H, W, 3) uint8 (rounded)."""
    arr = (batch.detach().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [np.ascontiguousarray(a) for a in arr]


def int_box(box: np.ndarray, width: int, height: int) -> tuple[int, int, int, int] | None:
    """Face box rounded to whole pixels and clipped to the frame; None when empty."""
    x1, y1 = int(max(0, np.floor(box[0]))), int(max(0, np.floor(box[1])))
    x2, y2 = int(min(width, np.ceil(box[2]))), int(min(height, np.ceil(box[3])))
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None
