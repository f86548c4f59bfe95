"""Checkpoints: one dict per step, written atomically, loaded with ``weights_only=True``."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from data.files import atomic_write

CHECKPOINT_VERSION = 1


class CheckpointError(RuntimeError):
    """Missing or unreadable checkpoint; the message names the file."""


def checkpoint_path(checkpoint_dir: str | os.PathLike, step: int, name: str = "ckpt") -> Path:
    """``<dir>/<step:06d>_<name>.ckpt`` (StarGAN-v2 naming)."""
    return Path(checkpoint_dir) / f"{step:06d}_{name}.ckpt"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Save ``state`` (plain tensors, numbers, strings, lists, dicts only) atomically.

    ``version`` is added. Values must be loadable with ``weights_only=True``: convert argparse
    namespaces with ``vars()`` and paths with ``str()`` before saving.
    """
    state = {"version": CHECKPOINT_VERSION, **state}
    buf = io.BytesIO()
    torch.save(state, buf)
    return atomic_write(path, lambda fh: fh.write(buf.getvalue()))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``.

    Raises:
        CheckpointError: the file is missing, or not a checkpoint of this project.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for corrupt / pickled-object files
        raise CheckpointError(f"{path}: not a loadable checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or "version" not in state:
        raise CheckpointError(f"{path}: not a checkpoint of this project (no 'version' key)")
    return state


def latest_step(checkpoint_dir: str | os.PathLike, name: str = "ckpt") -> int | None:
    """Largest step with a checkpoint named ``name`` in ``checkpoint_dir``, or None."""
    steps = []
    for p in Path(checkpoint_dir).glob(f"*_{name}.ckpt"):
        head = p.name.split("_", 1)[0]
        if head.isdigit():
            steps.append(int(head))
    return max(steps) if steps else None
