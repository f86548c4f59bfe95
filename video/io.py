"""Video files with PyAV (FFmpeg with libx264 inside the ``av`` wheel): probe, read frames, write frames.

Reading gives (H, W, 3) uint8 RGB frames in decode (display) order. Writing encodes H.264 (yuv420p; yuv444p
when the frame has an odd side, which 4:2:0 cannot hold) at the input's frame rate with one frame per input
frame (``pts = index`` in a ``1 / fps`` time base), and copies the input's first audio stream packet for packet
(no re-encoding), interleaved by time. The output goes to a temp file in the target folder and is moved over
the target only when complete (``os.replace``), so a crash never leaves half a video.

Errors: a missing file -> FileNotFoundError; an empty, truncated or non-video file, or one without frames ->
ValueError, both naming the file.
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

log = logging.getLogger(__name__)

CRF = 17
"""x264 constant-rate factor of the written videos (17 ~ visually lossless)."""


@dataclass
class VideoInfo:
    """What :func:`probe` finds in a video file.

    Attributes:
        path: the file.
        num_frames: frames the container declares (0 when it does not say; :func:`count_frames` decodes).
        fps: average frame rate [1/s] as an exact fraction.
        width, height: frame size [px].
        has_audio: the file has an audio stream.
        audio_codec: its codec name (None without audio).
        audio_rate: its sample rate [Hz] (None without audio).
    """

    path: Path
    num_frames: int
    fps: Fraction
    width: int
    height: int
    has_audio: bool
    audio_codec: str | None = None
    audio_rate: int | None = None


def _open(path: str | os.PathLike):
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such video file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file (0 bytes), not a video")
    try:
        container = av.open(str(path))
    except av.FFmpegError as err:
        raise ValueError(f"{path}: not a readable video ({err})") from err
    if not container.streams.video:
        container.close()
        raise ValueError(f"{path}: no video stream in this file")
    return container


def probe(path: str | os.PathLike) -> VideoInfo:
    """Frame count, frame rate, size and audio of a video file (reads the header only).

    Raises:
        FileNotFoundError: no such file.
        ValueError: empty / unreadable file or no video stream (names the file).
    """
    container = _open(path)
    try:
        vs = container.streams.video[0]
        rate = vs.average_rate or vs.guessed_rate or vs.base_rate
        if not rate:
            raise ValueError(f"{path}: the video stream has no frame rate")
        audio = container.streams.audio[0] if container.streams.audio else None
        return VideoInfo(Path(path), int(vs.frames or 0), Fraction(rate), int(vs.codec_context.width),
                         int(vs.codec_context.height), audio is not None,
                         audio.codec_context.name if audio is not None else None,
                         int(audio.codec_context.sample_rate) if audio is not None else None)
    finally:
        container.close()


def read_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """Decode every frame.

    Yields:
        (H, W, 3) uint8 RGB frames in display order.

    Raises:
        ValueError: unreadable / corrupt file, or a file whose video stream decodes to no frame (names it).
    """
    import av

    container = _open(path)
    count = 0
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                count += 1
                yield frame.to_ndarray(format="rgb24")
        except av.FFmpegError as err:
            raise ValueError(f"{path}: corrupt video, decoding failed after {count} frame(s) ({err})") from err
    finally:
        container.close()
    if count == 0:
        raise ValueError(f"{path}: the video stream holds no decodable frame")


def read_video(path: str | os.PathLike) -> list[np.ndarray]:
    """All frames of a video as a list of (H, W, 3) uint8 RGB arrays (see :func:`read_frames`)."""
    return list(read_frames(path))


def count_frames(path: str | os.PathLike) -> int:
    """Frames in a video, counted by demuxing the video packets (no decoding)."""
    container = _open(path)
    try:
        return sum(1 for p in container.demux(container.streams.video[0]) if p.size)
    finally:
        container.close()


class VideoWriter:
    """Write frames to an H.264 video atomically, copying the audio of a source video.

    Use as a context manager: frames go to a hidden temp file next to ``path``; on a clean exit it replaces
    ``path``, on an exception it is deleted.

    Args:
        path: output file (its suffix picks the container: .mp4, .mkv, .mov).
        fps: frame rate [1/s].
        width, height: frame size [px].
        audio_from: a video whose first audio stream is copied (None: no audio).
        crf: x264 quality (lower = better, 0 = lossless).
    """

    def __init__(self, path: str | os.PathLike, fps: Fraction | float, width: int, height: int,
                 audio_from: str | os.PathLike | None = None, crf: int = CRF) -> None:
        self.path = Path(path)
        self.fps = Fraction(fps).limit_denominator(100000)
        self.width, self.height = int(width), int(height)
        self.audio_from = audio_from
        self.crf = int(crf)
        self.frames_written = 0

    def __enter__(self) -> "VideoWriter":
        import av

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.stem}.", suffix=self.path.suffix)
        os.close(fd)
        self._tmp = Path(tmp)
        try:
            self._out = av.open(str(self._tmp), mode="w")
        except av.FFmpegError as err:
            self._tmp.unlink(missing_ok=True)
            raise ValueError(f"{self.path}: cannot write a video with this suffix ({err})") from err
        vs = self._out.add_stream("libx264", rate=self.fps)
        vs.width, vs.height = self.width, self.height
        vs.pix_fmt = "yuv420p" if self.width % 2 == 0 and self.height % 2 == 0 else "yuv444p"
        vs.time_base = 1 / self.fps
        vs.options = {"crf": str(self.crf), "preset": "veryfast"}
        self._vs = vs
        self._src, self._audio_out, self._audio_packets, self._pending = None, None, None, None
        if self.audio_from is not None:
            src = _open(self.audio_from)
            if src.streams.audio:
                self._src = src
                ain = src.streams.audio[0]
                self._audio_out = self._out.add_stream_from_template(ain)
                self._audio_tb = ain.time_base
                self._audio_packets = src.demux(ain)
            else:
                src.close()
        return self

    def _mux_audio_until(self, seconds: float | None) -> None:
        """Copy source audio packets that start before ``seconds`` (None: all the rest)."""
        if self._audio_packets is None:
            return
        while True:
            if self._pending is None:
                self._pending = next(self._audio_packets, False)
            pkt = self._pending
            if pkt is False:
                self._audio_packets = None
                return
            if pkt.dts is None:  # the demuxer's flush packet
                self._pending = None
                continue
            if seconds is not None and pkt.pts is not None and float(pkt.pts * self._audio_tb) > seconds:
                return
            pkt.stream = self._audio_out
            self._out.mux(pkt)
            self._pending = None

    def write(self, frame: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 RGB frame (float frames in [0, 1] are converted)."""
        import av

        arr = np.asarray(frame)
        if arr.dtype != np.uint8:
            arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        if arr.shape != (self.height, self.width, 3):
            raise ValueError(f"{self.path}: frame {self.frames_written} has shape {arr.shape}, "
                             f"expected {(self.height, self.width, 3)}")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
        vf.pts = self.frames_written
        self._mux_audio_until(self.frames_written / self.fps)
        self._out.mux(self._vs.encode(vf))
        self.frames_written += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        ok = exc_type is None
        try:
            if ok:
                self._out.mux(self._vs.encode(None))
                self._mux_audio_until(None)
        except BaseException:
            ok = False
            raise
        finally:
            self._out.close()
            if self._src is not None:
                self._src.close()
            if ok:
                os.replace(self._tmp, self.path)
            else:
                self._tmp.unlink(missing_ok=True)
