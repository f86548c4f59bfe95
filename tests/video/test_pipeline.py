"""main.py --mode video / video_eval end to end on the moving-face video (real files on disk)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import main
from tests.video.conftest import FPS, HEIGHT, WIDTH
from video.io import count_frames, probe

CLIP_FRAMES = 16
"""Frames of the clip the fast end-to-end test runs on (the first of the session video, audio copied)."""


def test_video_pixelate_then_video_eval(moving_face, landmark_extractor, tmp_path):
    from video.attributes import extract_attributes, save_attributes
    from video.io import VideoWriter

    n = CLIP_FRAMES
    clip, out, js, gt = tmp_path / "clip.mp4", tmp_path / "out.mp4", tmp_path / "out.json", tmp_path / "gt.json"
    with VideoWriter(clip, FPS, WIDTH, HEIGHT, audio_from=moving_face.path) as w:
        for f in moving_face.frames[:n]:
            w.write(f)
    save_attributes(gt, extract_attributes(moving_face.frames[:n], moving_face.tracks[:n], landmark_extractor))
    assert main.main(["--mode", "video", "--input", str(clip), "--output", str(out), "--json", str(js),
                      "--method", "pixelate", "--level", "30", "--device", "cpu", "--batch_size", "16"]) == 0
    info = probe(out)
    assert (info.fps, info.width, info.height, info.has_audio) == (FPS, WIDTH, HEIGHT, True)
    assert count_frames(out) == n
    records = json.loads(js.read_text())
    assert len(records) == n and [r["frame_id"] for r in records] == list(range(n))
    report = tmp_path / "eval"
    assert main.main(["--mode", "video_eval", "--gt", str(gt), "--pred", str(js), "--out", str(report)]) == 0
    summary = json.loads((report / "summary.json").read_text())
    assert summary["faces"] == n and summary["frame_count_pred"] == n
    # 30 x 30 blocks keep the geometry readable: MTCNN still finds the face where it was
    assert summary["detection_rate"] > 0.9 and summary["iou"] > 0.8
    rows = (report / "frames.csv").read_text().splitlines()
    assert len(rows) == n + 1
    assert (report / "plot_iou.png").stat().st_size > 1000


def test_same_output_as_input_is_refused(moving_face, tmp_path):
    assert main.main(["--mode", "video", "--input", str(moving_face.path), "--output", str(moving_face.path),
                      "--method", "blur"]) == 2


def test_existing_output_is_kept_unless_overwrite(moving_face, tmp_path, caplog):
    out, js = tmp_path / "out.mp4", tmp_path / "out.json"
    out.write_bytes(b"keep me")
    base = ["--mode", "video", "--input", str(moving_face.path), "--method", "blur", "--level", "9"]
    assert main.main(base + ["--output", str(out), "--json", str(js)]) == 2
    assert out.read_bytes() == b"keep me" and not js.exists()  # nothing written
    assert "out.mp4 already exists; give --overwrite to replace it" in caplog.text
    js.write_text("[]")
    assert main.main(base + ["--json", str(js)]) == 2
    assert js.read_text() == "[]" and "out.json already exists" in caplog.text
    assert main.main(base + ["--output", str(out), "--overwrite"]) == 0
    assert count_frames(out) == len(moving_face.frames)


@pytest.mark.slow
def test_video_eval_from_videos_anonymizer(moving_face, tmp_path):
    """The shipped anonymizer on the test video, evaluated from the two videos (identity and flicker included)."""
    out = tmp_path / "anon.mp4"
    assert main.main(["--mode", "video", "--input", str(moving_face.path), "--output", str(out), "--device", "cpu",
                      "--batch_size", "16"]) == 0
    report = tmp_path / "eval"
    assert main.main(["--mode", "video_eval", "--gt_video", str(moving_face.path), "--pred_video", str(out),
                      "--out", str(report), "--device", "cpu"]) == 0
    s = json.loads((report / "summary.json").read_text())
    assert s["detection_rate"] > 0.9 and s["iou"] > 0.75
    assert s["reid_same_person_rate"] < 0.5  # the new face is not the original person for dlib
    assert np.isfinite(s["flicker_ratio"]) and s["flicker_ratio_texture"] < 1.5
    assert (report / "gt.json").is_file() and (report / "pred.json").is_file()


def test_distinctive_reference_pool_drops_faces_that_match_others(tmp_path):
    """Three copies of one face (dlib distance 0 to each other) are the least distinctive references: a pool of
    the most distinctive ones keeps the single faces and at most one copy."""
    import shutil

    from pipelines.video import reference_pool
    from tests.helpers import write_headshots

    folder = write_headshots(tmp_path / "refs", 128, count=5)
    first = sorted(folder.iterdir())[0]
    for k in range(2):
        shutil.copy(first, folder / f"00_copy{k}.png")  # sorted first: a "first N" pick keeps all 3
    refs, where, files = reference_pool(str(folder), 128, "first", 7)
    assert len(refs) == 7 and where == folder
    face = refs[0].numpy()  # a copy (sorted first)
    assert sum(bool(np.allclose(r.numpy(), face)) for r in refs[:5]) == 3
    pool, _, pool_files = reference_pool(str(folder), 128, "distinctive", 5)
    assert len(pool) == 5
    copies = sum(bool(np.allclose(r.numpy(), face)) for r in pool)
    assert copies <= 1  # 4 single faces + at most one of the 3 identical ones
    from data.datasets import load_image

    assert files[0].parent == folder and all(np.allclose(load_image(f, 128).numpy(), r.numpy())
                                             for f, r in zip(pool_files, pool))  # files follow the pick
    with pytest.raises(ValueError, match="num_refs"):
        reference_pool(str(folder), 128, "first", 0)
