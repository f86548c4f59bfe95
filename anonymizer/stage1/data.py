"""Stage I training data: images with their teacher landmarks, the deterministic batch order, RNG state I/O.

The images of step t are a function of (seed, t) only (:func:`batch_indices`), and :func:`rng_state` /
:func:`set_rng_state` put the global RNGs into a checkpoint, so a resumed run reproduces an uninterrupted one.
"""
from __future__ import annotations

import random
from typing import Any, Sequence

import numpy as np
import torch


class FaceLandmarkSet:
    """Images with their teacher landmarks, indexable by position.

    Args:
        dataset: items ``(image (3, S, S) in [0, 1], label, path)`` (e.g. data.datasets.SourceDataset).
        landmarks: (N, K, 2) float32 [px] in the S x S frame, NaN where the teacher found no face.
        found: (N,) bool.
    """

    def __init__(self, dataset: Any, landmarks: np.ndarray, found: np.ndarray):
        if len(dataset) != len(landmarks) or len(found) != len(landmarks):
            raise ValueError(f"{len(dataset)} images but {len(landmarks)} landmark rows / {len(found)} flags")
        self.dataset = dataset
        self.landmarks = torch.as_tensor(np.asarray(landmarks, dtype=np.float32))
        self.found = torch.as_tensor(np.asarray(found, dtype=bool))

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images (B, 3, S, S) in [0, 1], landmarks (B, K, 2) [px], found (B,) bool)."""
        idx = [int(i) for i in indices]
        images = torch.stack([self.dataset[i][0] for i in idx])
        return images, self.landmarks[idx], self.found[idx]


def batch_indices(step: int, batch_size: int, num_items: int, seed: int) -> list[int]:
    """Indices of the images of (0-based) ``step``: a function of (seed, step) only.

    Epoch e visits a permutation drawn from ``default_rng([seed, e])``; batches run across epoch boundaries.
    """
    if num_items < 1:
        raise ValueError("no training images")
    out = []
    for pos in range(step * batch_size, (step + 1) * batch_size):
        epoch, k = divmod(pos, num_items)
        out.append(int(np.random.default_rng([seed, epoch]).permutation(num_items)[k]))
    return out


def rng_state() -> dict[str, Any]:
    """Global RNG states as checkpoint-safe values (tensors, lists, ints)."""
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)),
                                                       "pos": int(np_state[2]), "gauss": [int(np_state[3]),
                                                                                          float(np_state[4])]},
            "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()]}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["gauss"][0], n["gauss"][1]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
