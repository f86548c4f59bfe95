"""The batched MTCNN cascade: exact area resizing from the integral image, and the same faces as facenet-pytorch."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data.images import read_image
from metrics.mtcnn_batched import area_resize, crop_resize_area, integral_image, pyramid_scales
from tests.helpers import astronaut_window, nba_dir


def test_integral_image_rectangle_sums():
    rng = np.random.default_rng(0)
    img = torch.as_tensor(rng.random((2, 3, 9, 11)) * 255)
    table = integral_image(img)
    assert table.shape == (2, 10, 12, 3) and table.dtype == torch.float64
    b, y0, y1, x0, x1 = 1, 2, 7, 3, 10
    rect = table[b, y1, x1] - table[b, y0, x1] - table[b, y1, x0] + table[b, y0, x0]
    torch.testing.assert_close(rect, img[b, :, y0:y1, x0:x1].sum((1, 2)), rtol=0, atol=1e-9)


@pytest.mark.parametrize("size", [24, 48])
def test_crop_resize_equals_area_interpolation(size):
    """Crops smaller and larger than the output (area = adaptive average pooling both ways), one gather."""
    rng = np.random.default_rng(1)
    img = torch.as_tensor(rng.random((3, 3, 120, 90), dtype=np.float32) * 255)
    table = integral_image(img)
    boxes = [(0, 0, 120, 0, 90), (1, 5, 17, 40, 52), (2, 30, 101, 7, 89), (1, 60, 61, 3, 4), (2, 10, 40, 0, 55)]
    inds, y0, y1, x0, x1 = (torch.tensor(v) for v in zip(*boxes))
    out = crop_resize_area(table, inds, y0, y1, x0, x1, size)
    assert out.shape == (len(boxes), 3, size, size)
    for k, (b, a0, a1, c0, c1) in enumerate(boxes):
        want = F.interpolate(img[b:b + 1, :, a0:a1, c0:c1], size=(size, size), mode="area")[0]
        torch.testing.assert_close(out[k], want, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("out_hw", [(145, 193), (37, 50), (12, 16), (120, 90)])
def test_pyramid_level_equals_area_interpolation(out_hw):
    """A P-net pyramid level from the integral image = torch's area interpolation of the whole images (non-integer
    ratios, both axes); the cv2 table (<= 4 channels) and torch's cumsum table (5 channels) agree."""
    rng = np.random.default_rng(2)
    img = torch.as_tensor(rng.random((2, 3, 120, 90), dtype=np.float32) * 255)
    want = F.interpolate(img, size=out_hw, mode="area")
    out = area_resize(integral_image(img), *out_hw)
    assert out.shape == want.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-3)
    five = torch.cat([img, img[:, :2]], 1)
    torch.testing.assert_close(integral_image(five)[..., :3], integral_image(img), rtol=1e-12, atol=1e-6)


def test_pyramid_scales_closed_form():
    # 12 / 20 = 0.6, then x0.709 while the short side (190 px) times the scale stays >= 12 px
    scales = pyramid_scales(190, 260, 20, 0.709)
    assert scales[0] == pytest.approx(0.6)
    assert all(b / a == pytest.approx(0.709) for a, b in zip(scales, scales[1:]))
    assert 190 * scales[-1] >= 12 > 190 * scales[-1] * 0.709


def test_same_faces_as_facenet_pytorch(mtcnn):
    """Batched cascade vs facenet-pytorch's MTCNN.detect on the same batch: real faces and a non-face."""
    from facenet_pytorch import MTCNN

    photos = sorted(nba_dir().iterdir())
    imgs = [read_image(p) for p in photos[:40]]
    imgs = [im for im in imgs if im.shape == (190, 260, 3)][:5]
    rng = np.random.default_rng(2)
    imgs.append(rng.random((190, 260, 3), dtype=np.float32))  # noise: no face
    imgs.append(np.ascontiguousarray(astronaut_window(size=300)[55:245, 20:280]))
    batch = np.stack(imgs) * 255.0
    stock = MTCNN(keep_all=True, select_largest=False).eval()  # its own NCHW networks
    boxes, probs, points = stock.detect(batch, landmarks=True)
    ours = mtcnn.detect(imgs)
    assert sum(d is not None for d in ours) >= 4
    assert ours[5] is None
    for b in range(len(imgs)):
        assert (boxes[b] is None) == (ours[b] is None), b
        if ours[b] is None:
            continue
        k = int(np.argmax(probs[b]))
        np.testing.assert_allclose(ours[b].box, boxes[b][k], atol=1e-2)
        np.testing.assert_allclose(ours[b].landmarks, points[b][k], atol=1e-2)
        assert ours[b].score == pytest.approx(float(probs[b][k]), abs=1e-5)


def test_uint8_frames_give_the_float_frames_faces(mtcnn):
    """uint8 frames (the video path: exact int32 integral image, no float copy) find the same faces as the same
    frames as float32; the integral image of uint8 is exact."""
    from metrics.mtcnn_batched import detect_faces

    photos = sorted(nba_dir().iterdir())
    frames = np.stack([im for im in (read_image(p) for p in photos[:20]) if im.shape == (190, 260, 3)][:3])
    frames = (frames * 255).round().astype(np.uint8)
    table = integral_image(torch.from_numpy(frames).permute(0, 3, 1, 2))
    assert table.dtype == torch.int32
    want = torch.from_numpy(frames).double().cumsum(1).cumsum(2)
    assert torch.equal(table[:, 1:, 1:].double(), want) and table[:, 0].abs().sum() == 0
    nets = mtcnn._nets
    kw = dict(min_face_size=mtcnn.mtcnn.min_face_size, thresholds=mtcnn.mtcnn.thresholds, factor=mtcnn.mtcnn.factor)
    a = detect_faces(torch.from_numpy(frames), *nets, **kw)
    b = detect_faces(torch.from_numpy(frames.astype(np.float32)), *nets, **kw)
    assert sum(len(boxes) for boxes, _ in a) >= 2
    for (ba, pa), (bb, pb) in zip(a, b):
        assert ba.shape == bb.shape
        np.testing.assert_allclose(ba, bb, atol=1e-3)
        np.testing.assert_allclose(pa, pb, atol=1e-3)
