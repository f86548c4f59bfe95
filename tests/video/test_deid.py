"""video/deid.py: the aligned crop matches data.align, paste-back geometry, DRSF baselines, frames without faces,
one reference per track, and the Stage II methods on the shipped checkpoint."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from data.align import align_face, alignment_transform
from video.deid import Deidentifier, blur_box, crop_faces, face_mask, harmonize, paste_faces, pixelate_box
from video.frames import frames_to_tensor


def _aligned(moving_face, t, size=128):
    f = moving_face.tracks[t][0]
    return [moving_face.frames[t]], [0], alignment_transform(f.landmarks, size)[None]


def test_crop_matches_data_align(moving_face):
    frames, idx, m = _aligned(moving_face, 7)
    crops, _ = crop_faces(frames, idx, m, 128)
    ours = crops[0].permute(1, 2, 0).numpy()
    ref, _ = align_face(moving_face.frames[7].astype(np.float32) / 255, moving_face.tracks[7][0].landmarks, 128)
    assert np.abs(ours - ref)[8:-8, 8:-8].mean() < 0.01  # same similarity and pixel convention (kornia vs skimage)


def test_region_crop_equals_whole_frame_warp(moving_face):
    """Reading only the face's region gives the whole-frame resampling, also for a face half outside the frame
    (the region's edge is then the frame's: the same reflection)."""
    from kornia.geometry.transform import warp_affine

    frame = moving_face.frames[5]
    m = alignment_transform(moving_face.tracks[5][0].landmarks, 128)
    shifted = m @ np.array([[1, 0, -float(moving_face.tracks[5][0].box[2]) + 20], [0, 1, 0], [0, 0, 1]])
    for mat in (m, shifted):  # the second puts most of the face left of the frame's edge
        crops, regions = crop_faces([frame], [0], mat[None], 128)
        whole = warp_affine(frames_to_tensor([frame]), torch.from_numpy(mat[:2]).float()[None], (128, 128),
                            mode="bilinear", padding_mode="reflection", align_corners=True).clamp(0, 1)
        x0, y0, x1, y1 = regions[0]
        assert (x1 - x0) * (y1 - y0) < frame.shape[0] * frame.shape[1]
        assert float((crops - whole).abs().max()) < 1e-4


def test_paste_back_of_the_crop_restores_the_frame(moving_face):
    frames, idx, m = _aligned(moving_face, 3)
    crops, regions = crop_faces(frames, idx, m, 128)
    mask = face_mask(128)
    assert mask[0, 0, 64, 64] == 1.0 and mask[0, 0, 0, 0] == 0.0 and mask[0, 0, 2, 64] == 0.0
    out = paste_faces(frames, idx, m, crops, mask, regions)[0]
    # resampling twice blurs a little; outside the mask the frame is untouched
    assert np.abs(out.astype(float) - frames[0]).mean() < 0.005 * 255
    blank = paste_faces(frames, idx, m, torch.zeros_like(crops), mask, regions)[0]
    changed = np.abs(blank.astype(int) - frames[0]).sum(-1) > 0
    ys, xs = np.nonzero(changed)
    box = moving_face.tracks[3][0].box
    w = 0.2 * (box[2] - box[0])  # the mask reaches a little past MTCNN's box (cheeks), never far
    assert xs.min() >= box[0] - w and xs.max() <= box[2] + w and ys.min() >= box[1] - w and ys.max() <= box[3] + w
    assert frames[0] is moving_face.frames[3] and out is not frames[0]  # the input frame is not modified


def test_drsf_baselines_stay_in_the_box():
    import cv2

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    box = np.array([10.2, 5.7, 50.0, 45.0])
    b = blur_box(frame, box, 5)
    np.testing.assert_array_equal(b[5:45, 10:50], cv2.blur(frame[5:45, 10:50], (5, 5)))
    mask = np.ones(frame.shape[:2], bool)
    mask[5:45, 10:50] = False
    np.testing.assert_array_equal(b[mask], frame[mask])
    p = pixelate_box(frame, box, 4)  # 4 x 4 blocks of 10 x 10 px
    np.testing.assert_array_equal(p[mask], frame[mask])
    block = p[5:15, 10:20].reshape(-1, 3)
    assert (block == block[0]).all() and np.abs(block[0] - frame[5:15, 10:20].reshape(-1, 3).mean(0)).max() <= 0.5


def test_frames_without_a_face_come_back_unchanged(moving_face):
    frames = moving_face.frames[:3]
    for method in ("blur", "pixelate"):
        out = Deidentifier(method, level=30)(frames, [[], moving_face.tracks[1], []])
        np.testing.assert_array_equal(out[0], frames[0])
        np.testing.assert_array_equal(out[2], frames[2])
        assert not np.array_equal(out[1], frames[1])


def test_bad_method_and_level():
    with pytest.raises(ValueError, match="unknown method"):
        Deidentifier("swap")
    with pytest.raises(ValueError, match="level"):
        Deidentifier("blur", level=0)
    with pytest.raises(ValueError, match="Stage II model"):
        Deidentifier("anonymizer")


@pytest.fixture(scope="module")
def shipped_model():
    from anonymizer.stage2.sampling import load_anonymizer
    from pipelines.common import SHIPPED_ANONYMIZER
    from pipelines.video import load_refs
    from video.deid import Anonymizer

    nets, camera, regressor, meta = load_anonymizer(SHIPPED_ANONYMIZER)
    size = int(meta["model"]["img_size"])
    refs, _, _ = load_refs(None, size, limit=8)
    return Anonymizer(nets, camera, regressor, refs, size)


def test_stage2_methods_replace_only_the_face(moving_face, shipped_model):
    frames, tracks = moving_face.frames[:2], moving_face.tracks[:2]
    box = tracks[0][0].box
    for method in ("capture", "anonymizer"):
        torch.manual_seed(0)
        out = Deidentifier(method, model=shipped_model)(frames, tracks)
        diff = np.abs(out[0].astype(int) - frames[0]).sum(2)
        ys, xs = np.nonzero(diff > 3)
        assert len(xs) > 500, method  # the face changed
        m = 0.2 * (box[2] - box[0])
        assert xs.min() >= box[0] - m and xs.max() <= box[2] + m, method  # and nothing far from it


def test_one_reference_per_track(shipped_model):
    d = Deidentifier("anonymizer", model=shipped_model, seed=3)
    picks = [d.reference_index(t) for t in range(20)]
    assert picks == [d.reference_index(t) for t in range(20)]  # fixed for a track
    assert len(set(picks)) > 1  # different tracks get different people
    assert all(0 <= p < len(shipped_model.refs) for p in picks)


def test_reference_warp_is_clear_when_missing(shipped_model, monkeypatch):
    import video.reference_warp as rw

    monkeypatch.setattr(rw, "_entry", lambda: None)
    with pytest.raises(RuntimeError, match="reference-warp is not available"):
        Deidentifier("reference-warp", model=shipped_model)


def test_reference_warp_needs_a_68_point_regressor(shipped_model):
    import video.reference_warp as rw

    if not rw.available():
        pytest.skip("the Stage II reference-warp baseline is not in this checkout")
    channels = shipped_model.regressor(torch.zeros(1, 3, 128, 128)).shape[1]
    if channels == 68:
        out = Deidentifier("reference-warp", model=shipped_model)
        assert out.method == "reference-warp"
    else:
        with pytest.raises(RuntimeError, match="68 landmark"):
            Deidentifier("reference-warp", model=shipped_model)


def test_input_is_capture_skips_the_simulated_camera(moving_face, shipped_model):
    """Prototype frames are already captures: 'capture' then only resamples the face (no second blur)."""
    frames, tracks = moving_face.frames[:2], moving_face.tracks[:2]
    same = Deidentifier("capture", model=shipped_model, input_is_capture=True)(frames, tracks)
    blurred = Deidentifier("capture", model=shipped_model)(frames, tracks)
    err_same = np.abs(same[0].astype(float) - frames[0]).mean()
    err_blur = np.abs(blurred[0].astype(float) - frames[0]).mean()
    assert err_same < 0.5 and err_blur > 4 * err_same


def _checker(size: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return 0.05 * ((xx + yy) % 2 * 2 - 1).float()


def test_harmonize_moves_only_the_low_frequencies_to_the_frame():
    mask, checker = face_mask(64), _checker(64)
    face = (0.8 + checker).expand(2, 3, 64, 64).clone()
    # a uniform frame: the offset is the same everywhere, so the face's fine detail comes through untouched
    out = harmonize(face, torch.full_like(face, 0.3), mask)
    torch.testing.assert_close(out, (0.3 + checker).expand_as(out), atol=1e-3, rtol=0)


def test_harmonize_removes_most_of_the_seam_in_the_feathered_band():
    mask, checker = face_mask(64), _checker(64)
    face = (0.8 + checker).expand(1, 3, 64, 64).clone()
    xx = torch.arange(64)[None, None, None, :].expand(1, 3, 64, 64)
    frame = torch.where(xx < 32, 0.2, 0.6).float()  # darker left of the face than right
    out = harmonize(face, frame, mask)
    band = ((mask > 0.05) & (mask < 0.95)).expand_as(out)
    before = (face - frame).abs()[band].mean()
    after = (out - frame).abs()[band].mean()
    assert after <= 0.25 * before, (float(before), float(after))
    assert out[..., 20:44, 8:24].mean() < out[..., 20:44, 40:56].mean()  # follows the two sides
    with pytest.raises(ValueError, match="differ"):
        harmonize(face, frame[..., :32], mask)


def test_parallel_batch_equals_the_serial_batch_and_frame_by_frame(moving_face, shipped_model, monkeypatch):
    """Frames split over two worker threads (one torch thread each: crops, camera, networks, colour match and
    paste) give the same bytes as the whole batch on this thread and as the frames one at a time (each face's
    sensor noise has its own seeded generator); the seed changes the noise; the style code cached per
    reference equals the style encoder's."""
    import video.deid as deid

    frames, tracks = moving_face.frames[:4], moving_face.tracks[:4]
    outs = {}
    for workers in (1, 2):
        monkeypatch.setattr(deid, "cpu_workers", lambda _device, w=workers: w)
        torch.manual_seed(workers)  # the global generator plays no part
        outs[workers] = Deidentifier("anonymizer", model=shipped_model, seed=1)(frames, tracks)
    single = Deidentifier("anonymizer", model=shipped_model, seed=1)
    outs["frame by frame"] = [single([f], [t])[0] for f, t in zip(frames, tracks)]
    for a, b, c in zip(outs[1], outs[2], outs["frame by frame"]):
        assert np.abs(a.astype(int) - b).max() <= 1  # the same up to float summation order
        assert np.abs(a.astype(int) - c).max() <= 1
    captures = [Deidentifier("capture", model=shipped_model, seed=s)(frames[:1], tracks[:1])[0] for s in (1, 1, 2)]
    assert np.array_equal(captures[0], captures[1]) and not np.array_equal(captures[0], captures[2])
    d = Deidentifier("anonymizer", model=shipped_model, seed=1)
    which = [2, 0, 2]
    with torch.no_grad():
        direct = shipped_model.nets.style_encoder(shipped_model.refs[which], torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(d._styles(which), direct, atol=1e-5, rtol=0)
    assert sorted(d._style_codes) == [0, 2]


def test_frame_parts_keep_the_faces_of_a_frame_together():
    from video.deid import _frame_parts

    idx = [0, 0, 1, 2, 2, 2, 5]
    for workers in (1, 2, 3, 8):
        parts = _frame_parts(idx, workers)
        assert parts[0].start == 0 and parts[-1].stop == len(idx) and len(parts) <= min(workers, 4)
        assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))  # contiguous, nothing left out
        assert all(idx[p.start - 1] != idx[p.start] for p in parts[1:])  # cuts only between frames
    assert _frame_parts([3, 3], 2) == [slice(0, 2)]


def test_parallel_map_covers_every_item_in_order():
    from video.parallel import parallel_map, split

    seen = torch.cat(parallel_map(lambda ix: torch.arange(10)[ix] * 2, 10, workers=3))
    torch.testing.assert_close(seen, torch.arange(10) * 2)
    assert torch.cat(parallel_map(lambda ix: torch.arange(1)[ix], 1, workers=4)).tolist() == [0]
    assert split(10, 3) == [slice(0, 4), slice(4, 8), slice(8, 10)] and split(0, 2) == []
    from video.parallel import cpu_workers

    assert cpu_workers("cpu") == torch.get_num_threads() and cpu_workers("meta") == 1  # a GPU batch stays whole


def test_prefetch_keeps_order_and_raises_the_source_error():
    from video.parallel import prefetch

    assert list(prefetch(iter(range(5)))) == [0, 1, 2, 3, 4] and list(prefetch(iter([]))) == []

    def broken():
        yield 1
        raise ValueError("corrupt frame 2")

    got = []
    with pytest.raises(ValueError, match="corrupt frame 2"):
        for x in prefetch(broken()):
            got.append(x)
    assert got == [1]


def test_reference_landmarks_from_the_teacher_cache_equal_dlib_on_the_tensor(shipped_model, tmp_path, monkeypatch):
    """With the references' files, their landmarks come from the teacher's disk cache (filled on first use) and
    equal dlib run on the loaded reference tensors."""
    from dataclasses import replace

    from pipelines.video import load_refs

    refs, _, files = load_refs(None, shipped_model.img_size, limit=3)  # before the cache moves: the embedded
    monkeypatch.setenv("FACE_DEID_CACHE", str(tmp_path))  # face set is not rebuilt there, only the teacher's cache
    direct = Deidentifier("reference-warp", model=replace(shipped_model, refs=refs))._reference_points([2, 0])
    for _ in range(2):  # the second reads the cache written by the first
        cached = Deidentifier("reference-warp", model=replace(shipped_model, refs=refs, ref_files=files))
        torch.testing.assert_close(cached._reference_points([2, 0]), direct, atol=1e-4, rtol=0)
    assert len(list(tmp_path.rglob("*.npz"))) == 2  # only the two references used were detected
