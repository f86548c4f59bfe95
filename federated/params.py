"""The federated model of Stage I as an ordered list of arrays, and the update each client sends.

What is federated: every trainable network of a :class:`anonymizer.stage1.trainer.Stage1Trainer` -- the lens
(when it is trained), the heatmap regressor and any further ``nn.Module`` the trainer trains (e.g. the
adversary of the privacy objective) -- as the floating-point tensors of their ``state_dict`` in a fixed order
(module name, then tensor name). Optimiser states stay on the clients (they restart every round).

What goes on the wire is the client's *update* in scaled units, ``(theta_local - theta_global) / scale``, with
``scale`` = one design wave of surface height (``LensConfig.wave_height`` [m], ~1.2e-6) for lens tensors and 1
for network weights. Lens heights in metres would all quantise to zero in SecAgg+'s fixed-point range
(``clipping_range / quantization_range`` ~ 4e-6); in waves, one Adam step (``optics_lr`` ~ 1e-3 waves) is
~2000 quantisation steps. The server adds the (weighted) mean update times ``scale`` to the global model.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn


def federated_modules(trainer) -> dict[str, nn.Module]:
    """Name -> module of everything the trainer trains, in a fixed order.

    ``lens`` (only when the trainer trains it), ``regressor``, then every other ``nn.Module`` attribute with
    parameters (sorted by name), except the camera (its lens is covered by ``lens``).
    """
    out: dict[str, nn.Module] = {}
    if getattr(trainer, "train_lens", False) and trainer.lens is not None:
        out["lens"] = trainer.lens
    out["regressor"] = trainer.regressor
    for name in sorted(vars(trainer)):
        value = getattr(trainer, name)
        if name in ("camera", "lens", "regressor") or name in out or not isinstance(value, nn.Module):
            continue
        if any(True for _ in value.parameters()):
            out[name] = value
    return out


def _entries(trainer):
    for mod_name, module in federated_modules(trainer).items():
        for key, tensor in module.state_dict().items():
            if torch.is_floating_point(tensor):
                yield mod_name, key, module, tensor


def array_names(trainer) -> list[str]:
    """``"<module>.<tensor>"`` names of :func:`get_arrays`' entries."""
    return [f"{m}.{k}" for m, k, _, _ in _entries(trainer)]


def get_arrays(trainer) -> list[np.ndarray]:
    """Copies of the federated tensors as float64 numpy arrays (order of :func:`array_names`)."""
    return [t.detach().cpu().double().numpy().copy() for _, _, _, t in _entries(trainer)]


def set_arrays(trainer, arrays: Sequence[np.ndarray]) -> None:
    """Load arrays (order and shapes of :func:`get_arrays`) into the trainer's networks.

    Raises:
        ValueError: wrong number of arrays or a shape mismatch (names the tensor).
    """
    entries = list(_entries(trainer))
    if len(arrays) != len(entries):
        raise ValueError(f"got {len(arrays)} arrays for {len(entries)} federated tensors "
                         f"({', '.join(f'{m}.{k}' for m, k, _, _ in entries[:4])}, ...): different model settings?")
    with torch.no_grad():
        for (m, k, _, tensor), arr in zip(entries, arrays):
            arr = np.asarray(arr)
            if tuple(arr.shape) != tuple(tensor.shape):
                raise ValueError(f"{m}.{k}: array of shape {arr.shape}, the model has {tuple(tensor.shape)}")
            tensor.copy_(torch.from_numpy(arr).to(dtype=tensor.dtype, device=tensor.device))
    if getattr(trainer, "_fixed_psf", None) is not None:
        trainer._fixed_psf = None  # the cached PSF of a frozen lens is stale after loading new heights


def wire_scales(trainer) -> list[float]:
    """Per-array scale of the update on the wire: the lens' design wave [m] for lens tensors, 1 otherwise."""
    out = []
    for m, _, module, _ in _entries(trainer):
        out.append(float(module.config.wave_height) if m == "lens" else 1.0)
    return out


def encode_update(local: Sequence[np.ndarray], global_: Sequence[np.ndarray], scales: Sequence[float]
                  ) -> list[np.ndarray]:
    """``(local - global) / scale`` per array (float64)."""
    return [(np.asarray(a, np.float64) - np.asarray(g, np.float64)) / s for a, g, s in zip(local, global_, scales)]


def apply_update(global_: Sequence[np.ndarray], update: Sequence[np.ndarray], scales: Sequence[float]
                 ) -> list[np.ndarray]:
    """``global + update * scale`` per array (float64)."""
    return [np.asarray(g, np.float64) + np.asarray(u, np.float64) * s for g, u, s in zip(global_, update, scales)]


def max_abs(arrays: Sequence[np.ndarray]) -> float:
    """Largest absolute entry over a list of arrays (0 for an empty list)."""
    return max((float(np.abs(a).max()) for a in arrays if np.size(a)), default=0.0)
