"""Landmark teachers: a real face detector run on the CLEAN image, cached per image on disk.

Stage I regresses, from the capture y, the landmarks that a detector finds on the clean face x. The teacher
(dlib's 68-point predictor after the HOG detector, or MTCNN's 5 points) runs on the image exactly as the
training pipeline sees it (``data.datasets.load_image(path, img_size)``), upsampled by an integer factor to
at least ``detect_size`` pixels (dlib's HOG detector misses faces below ~80 px), and the landmarks are mapped
back to ``img_size`` pixel coordinates (pixel centres at integers, see :mod:`anonymizer.stage1.heatmap`).

Cache: one ``.npz`` per (file, teacher, img_size) under ``cache_dir/<teacher>/``, named by the SHA-1 of
``absolute path | mtime_ns | size in bytes | img_size | teacher | detect_size | CACHE_VERSION``; editing or
replacing the file changes the key, so a stale entry is never read. A corrupt cache file is recomputed.
Images where the teacher finds no face are cached too (``found = False``): the trainer excludes them from the
heatmap loss and reports their count and names.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from data.files import atomic_write

log = logging.getLogger(__name__)

TEACHERS = {"dlib": 68, "mtcnn": 5}
CACHE_VERSION = 1


CACHE_ENV = "FACE_DEID_CACHE"
"""The team's cache variable (also used by data.embedded): when set, the cache is ``$FACE_DEID_CACHE/teachers``."""


def default_cache_dir() -> Path:
    """``$FACE_DEID_CACHE/teachers`` if that variable is set, else ``~/.cache/ppoptics/teachers``."""
    root = os.environ.get(CACHE_ENV)
    return (Path(root) if root else Path.home() / ".cache" / "ppoptics") / "teachers"


@dataclass
class TeacherResult:
    """Teacher landmarks of a list of images.

    Attributes:
        landmarks: (N, K, 2) float32 ``(x, y)`` [px] at ``img_size``; NaN where no face was found.
        found: (N,) bool, the teacher found a face.
        missing: paths (as strings) of the images without a face.
    """

    landmarks: np.ndarray
    found: np.ndarray
    missing: list[str] = field(default_factory=list)

    @property
    def num_missing(self) -> int:
        return int((~self.found).sum())


class LandmarkTeacher:
    """dlib (68 points) or MTCNN (5 points) landmarks of clean images, cached on disk.

    Args:
        name: ``"dlib"`` or ``"mtcnn"``.
        cache_dir: cache folder (None: :func:`default_cache_dir`); ``False``-like empty string disables caching.
        detect_size: the image is upsampled by ``ceil(detect_size / img_size)`` before detection [px].
        device: torch device of MTCNN.
    """

    def __init__(self, name: str = "dlib", cache_dir: str | os.PathLike | None = None, detect_size: int = 256,
                 device: str = "cpu") -> None:
        if name not in TEACHERS:
            raise ValueError(f"unknown landmark teacher {name!r} (choose {', '.join(TEACHERS)})")
        self.name = name
        self.num_landmarks = TEACHERS[name]
        self.detect_size = int(detect_size)
        self.device = device
        if cache_dir == "":
            self.cache_dir = None
        else:
            self.cache_dir = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / name
        self._detector = None

    # ------------------------------------------------------------------------------------------------ detection
    def _get_detector(self):
        if self._detector is None:
            from metrics.detectors import DlibDetector, MTCNNDetector

            # aligned face crops upsampled to >= detect_size px: faces are large, no pyramid upsampling needed
            self._detector = DlibDetector("hog", upsample=0) if self.name == "dlib" else MTCNNDetector(self.device)
        return self._detector

    def detect(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Run the teacher on a batch of clean images (no cache).

        Args:
            images: (N, 3, S, S) in [0, 1].

        Returns:
            landmarks (N, K, 2) float32 [px] in the S x S frame (NaN rows where no face), found (N,) bool.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"teacher images must be (N, 3, S, S), got {tuple(images.shape)}")
        size = images.shape[-1]
        scale = max(1, math.ceil(self.detect_size / size))
        big = images.detach().float().cpu()
        if scale > 1:
            big = F.interpolate(big, scale_factor=scale, mode="bilinear", align_corners=False).clamp(0, 1)
        arrays = [im.permute(1, 2, 0).numpy() for im in big]
        dets = self._get_detector().detect(arrays)
        out = np.full((len(arrays), self.num_landmarks, 2), np.nan, dtype=np.float32)
        found = np.zeros(len(arrays), dtype=bool)
        for i, det in enumerate(dets):
            if det is None or len(det.landmarks) != self.num_landmarks:
                continue
            # bilinear (align_corners=False) upsampling by s maps pixel centre u to s * u + (s - 1) / 2
            out[i] = ((det.landmarks - (scale - 1) / 2.0) / scale).astype(np.float32)
            found[i] = True
        return out, found

    # ---------------------------------------------------------------------------------------------------- cache
    def cache_key(self, path: str | os.PathLike, img_size: int) -> str:
        """SHA-1 key of (absolute path, mtime, byte size, img_size, teacher, detect_size, version)."""
        p = Path(path).resolve()
        st = p.stat()
        text = f"{p}|{st.st_mtime_ns}|{st.st_size}|{int(img_size)}|{self.name}|{self.detect_size}|{CACHE_VERSION}"
        return hashlib.sha1(text.encode("utf-8")).hexdigest()

    def _cache_file(self, path: str | os.PathLike, img_size: int) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{self.cache_key(path, img_size)}.npz"

    def _read_cache(self, file: Path | None) -> tuple[np.ndarray, bool] | None:
        if file is None or not file.is_file():
            return None
        try:
            with np.load(file, allow_pickle=False) as z:
                lm = np.asarray(z["landmarks"], dtype=np.float32)
                found = bool(z["found"])
            if lm.shape != (self.num_landmarks, 2):
                raise ValueError(f"landmarks of shape {lm.shape}")
            return lm, found
        except Exception as err:  # corrupt / foreign cache file: recompute
            log.warning("%s: unreadable teacher cache entry (%s); recomputing", file, err)
            return None

    def _write_cache(self, file: Path | None, path: str | os.PathLike, landmarks: np.ndarray, found: bool) -> None:
        if file is None:
            return

        def writer(fh) -> None:
            np.savez(fh, landmarks=landmarks.astype(np.float32), found=np.array(found),
                     source=np.array(str(Path(path).resolve())), teacher=np.array(self.name))

        atomic_write(file, writer)

    def landmarks_for_files(self, paths: Sequence[str | os.PathLike], img_size: int,
                            batch_size: int = 32) -> TeacherResult:
        """Teacher landmarks of image files as the pipeline loads them (``load_image(path, img_size)``).

        Cached entries are read; the others are computed in batches and written to the cache.

        Args:
            paths: image files (readable: scan them with ``data.datasets.scan`` first).
            img_size: side S of the square images [px].
            batch_size: images per detector call.

        Returns:
            :class:`TeacherResult` in the order of ``paths``.
        """
        from tqdm import tqdm

        from data.datasets import load_image

        n = len(paths)
        landmarks = np.full((n, self.num_landmarks, 2), np.nan, dtype=np.float32)
        found = np.zeros(n, dtype=bool)
        todo: list[int] = []
        for i, p in enumerate(paths):
            hit = self._read_cache(self._cache_file(p, img_size))
            if hit is None:
                todo.append(i)
            else:
                landmarks[i], found[i] = hit
        if todo:
            log.info("teacher %s: detecting landmarks on %d of %d images (%d cached)", self.name, len(todo), n,
                     n - len(todo))
        for start in tqdm(range(0, len(todo), batch_size), desc=f"teacher {self.name}", leave=False,
                          disable=len(todo) <= batch_size):
            chunk = todo[start:start + batch_size]
            images = torch.stack([load_image(paths[i], img_size) for i in chunk])
            lm, ok = self.detect(images)
            for j, i in enumerate(chunk):
                landmarks[i], found[i] = lm[j], ok[j]
                self._write_cache(self._cache_file(paths[i], img_size), paths[i], lm[j], bool(ok[j]))
        missing = [str(paths[i]) for i in np.flatnonzero(~found)]
        if missing:
            log.warning("teacher %s found no face in %d of %d images (excluded from the heatmap loss): %s%s",
                        self.name, len(missing), n, ", ".join(Path(m).name for m in missing[:10]),
                        " ..." if len(missing) > 10 else "")
        return TeacherResult(landmarks=landmarks, found=found, missing=missing)
