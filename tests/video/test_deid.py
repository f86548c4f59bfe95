"""video/deid.py: the aligned crop matches data.align, paste-back geometry, DRSF baselines, frames without faces,
one reference per track, and the Stage II methods on the shipped checkpoint."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from data.align import align_face, alignment_transform
from video.deid import (Deidentifier, blur_box, crop_aligned, face_mask, harmonize, paste_aligned,
                        pixelate_box)
from video.frames import frames_to_tensor


def _aligned(moving_face, t, size=128):
    f = moving_face.tracks[t][0]
    m = torch.from_numpy(alignment_transform(f.landmarks, size)).float()[None]
    return frames_to_tensor([moving_face.frames[t]]), torch.tensor([0]), m


def test_crop_matches_data_align(moving_face):
    frames, idx, m = _aligned(moving_face, 7)
    ours = crop_aligned(frames, idx, m, 128)[0].permute(1, 2, 0).numpy()
    ref, _ = align_face(moving_face.frames[7].astype(np.float32) / 255, moving_face.tracks[7][0].landmarks, 128)
    assert np.abs(ours - ref)[8:-8, 8:-8].mean() < 0.01  # same similarity and pixel convention (kornia vs skimage)


def test_paste_back_of_the_crop_restores_the_frame(moving_face):
    frames, idx, m = _aligned(moving_face, 3)
    crop = crop_aligned(frames, idx, m, 128)
    mask = face_mask(128)
    assert mask[0, 0, 64, 64] == 1.0 and mask[0, 0, 0, 0] == 0.0 and mask[0, 0, 2, 64] == 0.0
    out = paste_aligned(frames, idx, m, crop, mask)
    # resampling twice blurs a little; outside the mask the frame is untouched
    assert (out - frames).abs().mean() < 0.005
    blank = paste_aligned(frames, idx, m, torch.zeros_like(crop), mask)
    changed = (blank - frames).abs().sum(1)[0] > 0
    ys, xs = np.nonzero(changed.numpy())
    box = moving_face.tracks[3][0].box
    m = 0.2 * (box[2] - box[0])  # the mask reaches a little past MTCNN's box (cheeks), never far
    assert xs.min() >= box[0] - m and xs.max() <= box[2] + m and ys.min() >= box[1] - m and ys.max() <= box[3] + m


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
    refs, _ = load_refs(None, size, limit=8)
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
