"""The one place that works around torchvision 0.28.0 (a CUDA build) running on CPU-only torch 2.13.0.

torchvision's compiled extension fails to load on CPU torch, and its import then crashes because its meta
registrations refer to the missing ``torchvision::nms`` operator. facenet-pytorch (MTCNN) and pytorch-fid both
import torchvision. :func:`import_torchvision` imports it normally; only when that fails for exactly this reason
does it define the ``nms`` / ``qnms`` operator schemas with a pure-torch kernel and import again.

Every module of the project that needs torchvision (directly or through facenet-pytorch / pytorch-fid) calls
``import_torchvision()`` first.
"""
from __future__ import annotations

import logging
import sys
from types import ModuleType

import torch

log = logging.getLogger(__name__)

_LIB: torch.library.Library | None = None  # kept alive: dropping it would unregister the operators
FALLBACK_ACTIVE = False


def box_iou_matrix(boxes: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU. boxes: (N, 4) as (x1, y1, x2, y2). Returns (N, N)."""
    return box_iou_matrix_rows(boxes, boxes)


def nms_reference(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression, same contract as ``torchvision.ops.nms``.

    Args:
        boxes: (N, 4) boxes as (x1, y1, x2, y2).
        scores: (N,) scores.
        iou_threshold: boxes overlapping a kept box with IoU > threshold are discarded.

    Returns:
        int64 indices of the kept boxes, sorted by decreasing score.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    b = boxes[order].float()
    n = b.shape[0]
    suppressed = torch.zeros(n, dtype=torch.bool)
    keep: list[int] = []
    chunk = 2048  # bounds memory at chunk * N for large N
    for start in range(0, n, chunk):
        iou = box_iou_matrix_rows(b[start:start + chunk], b).cpu()
        for r in range(iou.shape[0]):
            i = start + r
            if suppressed[i]:
                continue
            keep.append(i)
            suppressed |= iou[r] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.int64, device=boxes.device)]


def box_iou_matrix_rows(rows: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """IoU of each box in ``rows`` (M, 4) with each in ``boxes`` (N, 4). Returns (M, N)."""
    area_r = (rows[:, 2] - rows[:, 0]).clamp(min=0) * (rows[:, 3] - rows[:, 1]).clamp(min=0)
    area_b = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    lt = torch.maximum(rows[:, None, :2], boxes[None, :, :2])
    rb = torch.minimum(rows[:, None, 2:], boxes[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_r[:, None] + area_b[None, :] - inter
    return inter / union.clamp(min=torch.finfo(rows.dtype).tiny)


def _nms_missing(err: BaseException) -> bool:
    return "torchvision::nms" in str(err)


def _register_fallback_ops() -> None:
    global _LIB, FALLBACK_ACTIVE
    if _LIB is not None:
        return
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms", nms_reference, "CompositeExplicitAutograd")
    _LIB = lib
    FALLBACK_ACTIVE = True


def import_torchvision() -> ModuleType:
    """Import torchvision, registering a pure-torch ``nms`` only if the compiled operator is missing.

    Returns:
        the torchvision module, with ``torchvision.ops.nms`` (and ``batched_nms``) usable on CPU.
    """
    if "torchvision" in sys.modules and getattr(sys.modules["torchvision"], "__version__", None):
        return sys.modules["torchvision"]
    try:
        import torchvision  # noqa: F401
        return torchvision
    except RuntimeError as err:
        if not _nms_missing(err):
            raise
    # The failed import left half-initialised modules behind; drop them before retrying.
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    _register_fallback_ops()
    import torchvision
    import torchvision.ops
    import torchvision.ops.boxes as boxes

    def nms(boxes_: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
        return torch.ops.torchvision.nms(boxes_, scores, iou_threshold)

    # torchvision's own nms() first asserts that its compiled extension loaded; route around that check.
    boxes.nms = nms
    torchvision.ops.nms = nms
    log.info("torchvision compiled ops unavailable: using the pure-torch nms fallback")
    return torchvision
