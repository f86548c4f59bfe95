"""video/io.py: frame count, fps, size and audio survive a read / write round trip; bad files fail clearly."""
from __future__ import annotations

import logging
from fractions import Fraction

import numpy as np
import pytest

from tests.video.conftest import FPS, HEIGHT, NUM_FRAMES, WIDTH
from video.io import VideoWriter, count_frames, probe, read_video


def _audio_seconds(path) -> float:
    import av

    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        return float(sum(p.duration or 0 for p in c.demux(s) if p.dts is not None) * s.time_base)


def test_round_trip_keeps_frames_fps_size_and_audio(moving_face, tmp_path):
    src = probe(moving_face.path)
    assert (src.num_frames, src.fps, src.width, src.height, src.has_audio) == (NUM_FRAMES, FPS, WIDTH, HEIGHT, True)
    out = tmp_path / "copy.mp4"
    with VideoWriter(out, src.fps, src.width, src.height, audio_from=moving_face.path) as w:
        for f in moving_face.frames:
            w.write(f)
    info = probe(out)
    assert info.fps == Fraction(FPS) and (info.width, info.height) == (WIDTH, HEIGHT)
    assert info.num_frames == count_frames(out) == NUM_FRAMES
    back = read_video(out)
    assert len(back) == NUM_FRAMES
    # H.264 at crf 17: the content is the same to a few grey levels
    assert np.mean([np.abs(a.astype(float) - b).mean() for a, b in zip(back, moving_face.frames)]) < 2.0
    assert info.has_audio and info.audio_codec == src.audio_codec and info.audio_rate == src.audio_rate
    # every audio packet copied: same audio duration (~2.4 s of 440 Hz), to within one AAC frame (64 ms)
    assert abs(_audio_seconds(out) - _audio_seconds(moving_face.path)) < 0.07
    assert abs(_audio_seconds(out) - NUM_FRAMES / FPS) < 0.2
    assert not list(tmp_path.glob(".copy*"))  # temp file gone


def test_odd_frame_size_is_kept(tmp_path):
    frames = [np.full((33, 47, 3), 10 * i, np.uint8) for i in range(5)]
    with VideoWriter(tmp_path / "odd.mp4", 10, 47, 33) as w:
        for f in frames:
            w.write(f)
    info = probe(tmp_path / "odd.mp4")
    assert (info.width, info.height, count_frames(tmp_path / "odd.mp4")) == (47, 33, 5)
    assert not info.has_audio


def test_failed_write_leaves_nothing(tmp_path):
    out = tmp_path / "never.mp4"
    with pytest.raises(ValueError, match="shape"):
        with VideoWriter(out, 25, 64, 48) as w:
            w.write(np.zeros((48, 64, 3), np.uint8))
            w.write(np.zeros((10, 10, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["empty", "truncated", "garbage"])
def test_bad_file_is_one_clear_error(moving_face, tmp_path, kind):
    bad = tmp_path / f"{kind}.mp4"
    data = moving_face.path.read_bytes()
    bad.write_bytes({"empty": b"", "truncated": data[:1500], "garbage": bytes(range(256)) * 40}[kind])
    with pytest.raises(ValueError, match=str(bad)):
        probe(bad)
        read_video(bad)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        probe(tmp_path / "nope.mp4")


def test_main_reports_a_corrupt_input_as_one_line(tmp_path, caplog):
    import main

    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 100)
    with caplog.at_level(logging.ERROR):
        rc = main.main(["--mode", "video", "--input", str(bad), "--output", str(tmp_path / "o.mp4"),
                        "--method", "blur"])
    assert rc == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and str(bad) in errors[0].getMessage()
    assert not (tmp_path / "o.mp4").exists()
