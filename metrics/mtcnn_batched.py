"""The MTCNN cascade (Zhang et al. 2016) run batched over facenet-pytorch's P/R/O networks.

facenet-pytorch's ``detect_face`` batches the P-net pyramid but then cuts and resizes every candidate box on
its own (one ``interpolate(mode="area")`` per box, thousands of tiny ops per batch), and its networks run in
NCHW layout, where CPU max-pooling is ~4x slower than channels-last. This module keeps the algorithm, the
weights and the thresholds, and changes only how the work is laid out:

* the networks run channels-last;
* the P-net pyramid levels and all candidate crops of a stage are resized by vectorised gathers from ONE
  integral image of the batch (``cv2.integral`` on the CPU). Area interpolation is adaptive average pooling:
  output pixel ``i`` of a crop of height ``h`` resized to ``S`` averages input rows
  ``floor(i h / S) .. ceil((i + 1) h / S) - 1``, a rectangle sum that four integral-image lookups give exactly (tested against ``torch.nn.functional.adaptive_avg_pool2d``).

Box bookkeeping (candidate generation, box regression, squaring, clipping, NMS) uses facenet-pytorch's own
helpers, so boxes agree with ``MTCNN.detect`` to float rounding (``benchmarks/bench_mtcnn.py`` checks this on
real faces, ``tests/metrics/test_mtcnn_batched.py`` too).
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from data.compat import import_torchvision

import_torchvision()
from facenet_pytorch.models.utils.detect_face import (  # noqa: E402
    batched_nms_numpy, bbreg, generateBoundingBox, pad, rerec)
from torchvision.ops.boxes import batched_nms  # noqa: E402

NET_CHUNK = 2048  # crops per R/O-net call (bounds GPU memory)


def integral_image(imgs: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H + 1, W + 1, C) summed-area table, zero first row and column.

    On the CPU, without autograd, each image goes through ``cv2.integral`` (25x faster than torch's cumsum along
    H and W there): exact int32 sums of uint8 images, which need no float copy at all (float64 where H W 255 could
    overflow int32), float64 sums otherwise. Elsewhere torch's float64 cumsum (differentiable)."""
    b, c, h, w = imgs.shape
    exact_int = imgs.dtype == torch.uint8 and h * w * 255 < 2 ** 31
    if imgs.device.type == "cpu" and c <= 4 and not imgs.requires_grad:
        nhwc = imgs.detach().permute(0, 2, 3, 1)
        if nhwc.dtype not in (torch.uint8, torch.float64):
            nhwc = nhwc.float()
        depth = cv2.CV_32S if exact_int else cv2.CV_64F
        out = torch.empty((b, h + 1, w + 1, c), dtype=torch.int32 if exact_int else torch.float64)
        arr = out.numpy()
        for i, f in enumerate(nhwc.numpy()):
            arr[i] = cv2.integral(np.ascontiguousarray(f), sdepth=depth).reshape(h + 1, w + 1, c)
        return out
    table = imgs.new_zeros((b, h + 1, w + 1, c), dtype=torch.float64)
    table[:, 1:, 1:] = imgs.permute(0, 2, 3, 1).double().cumsum(1).cumsum(2)
    return table


def area_resize(table: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The whole images of an integral-image batch area-resized to ``height x width``: (B, C, height, width)
    float32 channels-last, equal to ``F.interpolate(images, (height, width), mode="area")`` (adaptive average
    pooling) to float rounding, at the cost of the output's pixels instead of the input's."""
    b, rows, cols, _ = table.shape
    zero = torch.zeros(1, dtype=torch.long, device=table.device)
    r0, r1 = _bin_edges(zero, torch.full_like(zero, rows - 1), height)
    c0, c1 = _bin_edges(zero, torch.full_like(zero, cols - 1), width)
    r0, r1, c0, c1 = r0[0], r1[0], c0[0], c1[0]

    band = table.index_select(1, r1) - table.index_select(1, r0)                # (B, height, W + 1, C) row sums
    total = band.index_select(2, c1) - band.index_select(2, c0)                # (B, height, width, C)
    count = ((r1 - r0)[:, None] * (c1 - c0)[None, :])[None, :, :, None]
    return (total / count).float().permute(0, 3, 1, 2)


def _bin_edges(start: torch.Tensor, length: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-pooling bin edges of K crops: (K, size) first and one-past-last input index (absolute)."""
    i = torch.arange(size, device=length.device)
    lo = torch.div(i[None] * length[:, None], size, rounding_mode="floor")
    hi = -torch.div(-(i[None] + 1) * length[:, None], size, rounding_mode="floor")
    return start[:, None] + lo, start[:, None] + hi


def crop_resize_area(table: torch.Tensor, image_inds: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor,
                     x0: torch.Tensor, x1: torch.Tensor, size: int) -> torch.Tensor:
    """Area-resize K crops ``[y0:y1, x0:x1]`` of batch images to ``size x size`` in one gather.

    Args:
        table: (B, H + 1, W + 1, C) from :func:`integral_image`.
        image_inds: (K,) batch index of each crop.
        y0, y1, x0, x1: (K,) int64 crop rows / columns (half-open, inside the image, non-empty).
        size: output side.

    Returns:
        (K, C, size, size) float32, equal to ``F.interpolate(crop, (size, size), mode="area")`` per crop.
    """
    _, rows, cols, chans = table.shape
    flat = table.reshape(-1, chans)
    r0, r1 = _bin_edges(y0, y1 - y0, size)
    c0, c1 = _bin_edges(x0, x1 - x0, size)
    base = image_inds[:, None] * rows
    r0, r1 = ((base + r0) * cols)[:, :, None], ((base + r1) * cols)[:, :, None]
    c0, c1 = c0[:, None, :], c1[:, None, :]

    def corner(r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return flat.index_select(0, (r + c).reshape(-1))

    total = corner(r1, c1) - corner(r0, c1) - corner(r1, c0) + corner(r0, c0)
    count = ((r1 - r0) // cols * (c1 - c0)).reshape(-1, 1)
    out = (total / count).float().reshape(len(image_inds), size, size, chans)
    return out.permute(0, 3, 1, 2)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 127.5) * 0.0078125


def _run_net(net: torch.nn.Module, data: torch.Tensor) -> tuple[torch.Tensor, ...]:
    outs = [net(data[i:i + NET_CHUNK]) for i in range(0, len(data), NET_CHUNK)]
    return tuple(torch.cat(parts, dim=0) for parts in zip(*outs))


def _crops(table: torch.Tensor, boxes: torch.Tensor, image_inds: torch.Tensor, w: int, h: int, size: int):
    """Clip squared boxes to the image (facenet's 1-based ``pad``) and area-resize them; drops empty crops.

    Returns (crops (K', C, size, size), keep mask (K,) bool).
    """
    y, ey, x, ex = (torch.as_tensor(v.astype(np.int64), device=boxes.device) for v in pad(boxes, w, h))
    keep = (ey > y - 1) & (ex > x - 1)
    crops = crop_resize_area(table, image_inds[keep], y[keep] - 1, ey[keep], x[keep] - 1, ex[keep], size)
    return crops, keep


def pyramid_scales(h: int, w: int, min_face_size: float, factor: float) -> list[float]:
    """P-net scales: 12 / min_face_size, times ``factor`` while the shorter side stays >= 12 px."""
    m = 12.0 / min_face_size
    minl = min(h, w) * m
    scales = []
    while minl >= 12:
        scales.append(m)
        m *= factor
        minl *= factor
    return scales


@torch.no_grad()
def detect_faces(imgs: torch.Tensor, pnet: torch.nn.Module, rnet: torch.nn.Module, onet: torch.nn.Module,
                 min_face_size: float = 20.0, thresholds=(0.6, 0.7, 0.7), factor: float = 0.709
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """All faces in a batch of equal-size images.

    Args:
        imgs: (B, H, W, 3) RGB, uint8 or float in [0, 255], on the networks' device.
        pnet, rnet, onet: facenet-pytorch networks (best moved to channels-last by the caller).
        min_face_size, thresholds, factor: MTCNN's parameters (facenet-pytorch defaults).

    Returns:
        per image: boxes (N, 5) ``x1, y1, x2, y2, score`` and landmarks (N, 5, 2), float32 numpy.
    """
    batch = imgs.permute(0, 3, 1, 2)  # uint8 stays uint8: only the integral image reads the full frames
    batch = batch if batch.dtype == torch.uint8 else batch.float()
    n, _, h, w = batch.shape
    device = batch.device

    # one integral image serves the pyramid and the crops of stages 2 and 3
    table = integral_image(batch)
    # stage 1: P-net over the pyramid, NMS 0.5 within each scale and image, then 0.7 across scales
    cand, cand_inds = [], []
    for scale in pyramid_scales(h, w, min_face_size, factor):
        im = area_resize(table, int(h * scale + 1), int(w * scale + 1))
        reg, probs = pnet(_normalise(im))
        boxes_s, inds_s = generateBoundingBox(reg, probs[:, 1], scale, thresholds[0])
        pick = batched_nms(boxes_s[:, :4], boxes_s[:, 4], inds_s, 0.5)
        cand.append(boxes_s[pick])
        cand_inds.append(inds_s[pick])
    boxes, inds = torch.cat(cand), torch.cat(cand_inds)
    pick = batched_nms(boxes[:, :4], boxes[:, 4], inds, 0.7)
    boxes, inds = boxes[pick], inds[pick]
    # P-net's box regression is scaled by the box side without MTCNN's "+ 1" (as in facenet-pytorch)
    side = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, dim=1)
    boxes = rerec(torch.cat([boxes[:, :4] + boxes[:, 5:9] * side, boxes[:, 4:5]], dim=1))
    points = torch.zeros(0, 5, 2, device=device)

    # stage 2: R-net on 24 x 24 crops
    if len(boxes):
        crops, keep = _crops(table, boxes, inds, w, h, 24)
        boxes, inds = boxes[keep], inds[keep]
        reg, prob = _run_net(rnet, _normalise(crops))
        ok = prob[:, 1] > thresholds[1]
        boxes = torch.cat([boxes[ok, :4], prob[ok, 1:2]], dim=1)
        inds, reg = inds[ok], reg[ok]
        pick = batched_nms(boxes[:, :4], boxes[:, 4], inds, 0.7)
        boxes = rerec(bbreg(boxes[pick], reg[pick]))
        inds = inds[pick]

    # stage 3: O-net on 48 x 48 crops gives the final boxes and the five landmarks
    if len(boxes):
        crops, keep = _crops(table, boxes, inds, w, h, 48)
        boxes, inds = boxes[keep], inds[keep]
        reg, lm, prob = _run_net(onet, _normalise(crops))
        ok = prob[:, 1] > thresholds[2]
        boxes = torch.cat([boxes[ok, :4], prob[ok, 1:2]], dim=1)
        inds, reg, lm = inds[ok], reg[ok], lm[ok]
        bw = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        bh = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        points = torch.stack([bw * lm[:, :5] + boxes[:, 0:1] - 1, bh * lm[:, 5:] + boxes[:, 1:2] - 1], dim=2)
        boxes = bbreg(boxes, reg)
        pick = batched_nms_numpy(boxes[:, :4], boxes[:, 4], inds, 0.7, "Min")
        boxes, inds, points = boxes[pick], inds[pick], points[pick]

    boxes_np, points_np, inds_np = boxes.cpu().numpy(), points.cpu().numpy(), inds.cpu().numpy()
    return [(boxes_np[inds_np == b], points_np[inds_np == b]) for b in range(n)]
