"""Adapter to the Stage II issue's non-learned ``reference-warp`` baseline.

The baseline (``anonymizer.stage2.sampling.reference_warp``, built on ``anonymizer.stage2.warp``) warps the
reference face onto the 68 landmarks the regressor reads from the capture. It is used here when one of
:data:`ENTRY_POINTS` exists; otherwise :func:`available` is False and ``--method reference-warp`` stops with a
clear error. It needs a Stage I regressor with 68 landmark heatmaps (``--heatmap_mode landmarks``); the
2-mask regressor of older checkpoints cannot give landmarks (:func:`check_regressor`).
"""
from __future__ import annotations

import importlib

import torch
from torch import nn

ENTRY_POINTS = (("anonymizer.stage2.sampling", "reference_warp"), ("anonymizer.stage2.warp", "reference_warp"))
"""(module, function) looked up in order; signature ``(capture, regressor, refs, ref_points=None) -> faces``."""


def _entry():
    for module_name, name in ENTRY_POINTS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if callable(getattr(module, name, None)):
            return getattr(module, name)
    return None


@torch.no_grad()
def check_regressor(regressor: nn.Module, img_size: int, device: torch.device | str = "cpu") -> None:
    """Raise RuntimeError unless ``regressor`` gives 68 landmark heatmaps (what the warp needs)."""
    channels = regressor(torch.zeros(1, 3, img_size, img_size, device=device)).shape[1]
    if channels != 68:
        raise RuntimeError(f"reference-warp needs a Stage II checkpoint whose regressor predicts 68 landmark "
                           f"heatmaps; this one predicts {channels} (grouped masks)")


def available() -> bool:
    """The Stage II module provides the baseline."""
    return _entry() is not None


def reference_warp(capture: torch.Tensor, regressor: nn.Module, refs: torch.Tensor,
                   ref_points: torch.Tensor | None = None) -> torch.Tensor:
    """(K, 3, S, S) captures + (K, 3, S, S) references -> (K, 3, S, S) faces in [0, 1] (the baseline).

    ``ref_points``: optional (K, 68, 2) landmarks of the references [px] (found by the baseline when None)."""
    fn = _entry()
    if fn is None:
        raise RuntimeError("reference-warp is not available yet: no baseline entry point in this checkout "
                           f"({', '.join(f'{m}.{n}' for m, n in ENTRY_POINTS)})")
    if ref_points is None:
        return fn(capture, regressor, refs).clamp(0, 1)
    return fn(capture, regressor, refs, ref_points=ref_points).clamp(0, 1)
