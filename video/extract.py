"""Whole-file passes: detect and track every frame of a video, and measure its per-frame attributes."""
from __future__ import annotations

import logging
import os
from typing import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from video.attributes import FaceAttributes, LandmarkExtractor, extract_attributes
from video.io import probe, read_frames
from video.parallel import prefetch
from video.tracking import FrameDetector, TrackedFace, track_faces

log = logging.getLogger(__name__)


def chunks(frames: Iterator[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    """Consecutive lists of ``size`` frames (the last may be shorter)."""
    batch: list[np.ndarray] = []
    for f in frames:
        batch.append(f)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def detect_tracks(path: str | os.PathLike, detector: FrameDetector, iou_threshold: float = 0.3,
                  max_misses: int = 5, desc: str = "detect") -> list[list[TrackedFace]]:
    """Detect (batched over frames) and track the faces of every frame of a video file.

    Returns:
        per frame, its tracked faces (see :func:`video.tracking.track_faces`).
    """
    info = probe(path)
    dets = []
    with tqdm(total=info.num_frames or None, desc=desc, unit="frame") as bar:
        for batch in prefetch(chunks(read_frames(path), detector.batch_size)):
            dets.extend(detector.detect(batch))
            bar.update(len(batch))
    return track_faces(dets, iou_threshold=iou_threshold, max_misses=max_misses)


def extract_file(path: str | os.PathLike, detector: FrameDetector, extractor: LandmarkExtractor,
                 tracks: Sequence[Sequence[TrackedFace]] | None = None) -> list[list[FaceAttributes]]:
    """Per-frame attributes of a video file (boxes from MTCNN tracks, 68 dlib points, head pose).

    Args:
        tracks: precomputed tracks of this file (None: detect them first).
    """
    if tracks is None:
        tracks = detect_tracks(path, detector, desc=f"detect {os.path.basename(path)}")
    out: list[list[FaceAttributes]] = []
    for batch in chunks(read_frames(path), 64):
        out.extend(extract_attributes(batch, tracks[len(out):len(out) + len(batch)], extractor, len(out)))
    if len(out) != len(tracks):
        raise RuntimeError(f"{path}: {len(out)} frames decoded but {len(tracks)} tracked (file changed?)")
    return out
