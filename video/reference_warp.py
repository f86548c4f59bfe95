"""Adapter to the Stage II issue's non-learned ``reference-warp`` baseline (``anonymizer.stage2.warp``).

The baseline warps the reference face onto the face geometry read from the capture. It is used here only
when that module provides a baseline entry point (:data:`ENTRY_POINTS`); otherwise :func:`available` is False
and ``--method reference-warp`` stops with a clear error.
"""
from __future__ import annotations

import importlib

import torch
from torch import nn

ENTRY_POINTS = ("reference_warp", "reference_warp_baseline", "warp_baseline")
"""Function names looked up in ``anonymizer.stage2.warp``; signature ``(capture, regressor, refs) -> faces``."""


def _entry():
    try:
        module = importlib.import_module("anonymizer.stage2.warp")
    except ImportError:
        return None
    return next((getattr(module, n) for n in ENTRY_POINTS if callable(getattr(module, n, None))), None)


def available() -> bool:
    """The Stage II module provides the baseline."""
    return _entry() is not None


def reference_warp(capture: torch.Tensor, regressor: nn.Module, refs: torch.Tensor) -> torch.Tensor:
    """(K, 3, S, S) captures + (K, 3, S, S) references -> (K, 3, S, S) faces in [0, 1] (the baseline)."""
    fn = _entry()
    if fn is None:
        raise RuntimeError("reference-warp is not available yet: anonymizer/stage2/warp.py has no baseline "
                           f"entry point ({', '.join(ENTRY_POINTS)})")
    return fn(capture, regressor, refs).clamp(0, 1)
