"""The torchvision-nms fallback: real MTCNN-style batched_nms on CPU, checked against a brute-force greedy NMS."""
from __future__ import annotations

import numpy as np
import torch

from data.compat import box_iou_matrix, import_torchvision, nms_reference


def _greedy_numpy(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    """Textbook greedy NMS (the classic Fast R-CNN loop), written independently of the code under test."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= thr]
    return keep


def _random_boxes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    wh = torch.rand(n, 2, generator=g) * 30 + 1
    return torch.cat([xy, xy + wh], 1), torch.rand(n, generator=g)


def test_iou_of_known_boxes():
    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    iou = box_iou_matrix(boxes)
    assert torch.allclose(iou[0, 1], torch.tensor(50.0 / 150.0))
    assert iou[0, 2] == 0 and torch.allclose(iou.diagonal(), torch.ones(3))


def test_reference_nms_matches_bruteforce():
    for seed in range(5):
        boxes, scores = _random_boxes(300, seed)
        got = nms_reference(boxes, scores, 0.5).tolist()
        assert got == _greedy_numpy(boxes.numpy(), scores.numpy(), 0.5)


def test_torchvision_imports_and_batched_nms_works():
    tv = import_torchvision()
    from torchvision.ops.boxes import batched_nms  # what facenet-pytorch's MTCNN calls

    boxes, scores = _random_boxes(5000, 7)  # > 4000 boxes: torchvision takes its per-class loop path
    idxs = torch.randint(0, 3, (5000,), generator=torch.Generator().manual_seed(1))
    keep = batched_nms(boxes, scores, idxs, 0.7)
    expected = []
    for c in range(3):
        sel = torch.nonzero(idxs == c).flatten()
        expected += sel[torch.tensor(_greedy_numpy(boxes[sel].numpy(), scores[sel].numpy(), 0.7))].tolist()
    assert sorted(keep.tolist()) == sorted(expected)
    assert tv.ops.nms(boxes[:10], scores[:10], 0.5).dtype == torch.int64


def test_import_is_idempotent():
    assert import_torchvision() is import_torchvision()
