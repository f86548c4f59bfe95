"""One interface over two face detectors: MTCNN (facenet-pytorch) and dlib (HOG or CNN + 68-point predictor).

Both return, per image, the most confident face as a :class:`Detection` (box, score, landmarks in pixels) or
``None`` when no face is found. Pixel convention: coordinates are continuous, the centre of the top-left pixel
is (0.5, 0.5) for dlib boxes (``x2 = right + 1``: dlib rectangles are inclusive) and whatever MTCNN's
regression returns for MTCNN (its boxes are already continuous corners). Only *differences* between images are
used by the metrics, so the convention cancels as long as the same detector is applied to both images.

Model files never download: MTCNN weights ship inside facenet-pytorch; dlib models come from the
face-recognition-models package (found with ``importlib.util.find_spec``, never imported: it imports the
removed ``pkg_resources``).
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

log = logging.getLogger(__name__)

DLIB_MODELS = (
    "shape_predictor_68_face_landmarks.dat",
    "shape_predictor_5_face_landmarks.dat",
    "mmod_human_face_detector.dat",
    "dlib_face_recognition_resnet_model_v1.dat",
)

# landmark indices whose distance is the normalising "inter-ocular" distance of the NME:
# MTCNN (5 points): the two eye centres (inter-pupil distance);
# dlib / iBUG 68: the outer eye corners 36 and 45 (the 300-W benchmark's inter-ocular definition).
MTCNN_EYES = (0, 1)
DLIB68_EYES = (36, 45)


@dataclass
class Detection:
    """The most confident face of one image.

    Attributes:
        box: (4,) float64 ``x1, y1, x2, y2`` [px].
        score: detector confidence (MTCNN probability in [0, 1]; dlib HOG/CNN margin, unbounded).
        landmarks: (K, 2) float64 ``x, y`` [px]; K = 5 for MTCNN (left eye, right eye, nose, mouth left,
            mouth right; left/right as seen in the image), K = 68 for dlib (iBUG order).
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))

    @property
    def center(self) -> np.ndarray:
        """(2,) box centre ``((x1 + x2) / 2, (y1 + y2) / 2)`` [px]."""
        return np.array([(self.box[0] + self.box[2]) / 2.0, (self.box[1] + self.box[3]) / 2.0])

    @property
    def inter_ocular(self) -> float:
        """Inter-ocular distance [px]: eye centres (5 points) or outer eye corners 36-45 (68 points)."""
        return inter_ocular_distance(self.landmarks)


def inter_ocular_distance(landmarks: np.ndarray) -> float:
    """Inter-ocular distance [px] of (5, 2) MTCNN or (68, 2) iBUG landmarks (see MTCNN_EYES / DLIB68_EYES).

    Raises:
        ValueError: another landmark count.
    """
    if len(landmarks) == 5:
        a, b = MTCNN_EYES
    elif len(landmarks) == 68:
        a, b = DLIB68_EYES
    else:
        raise ValueError(f"inter-ocular distance needs 5 or 68 landmarks, got {len(landmarks)}")
    return float(np.linalg.norm(np.asarray(landmarks[b]) - np.asarray(landmarks[a])))


def dlib_model_path(filename: str) -> Path:
    """Path of a dlib model file shipped by face-recognition-models.

    Args:
        filename: e.g. ``"shape_predictor_68_face_landmarks.dat"``.

    Raises:
        FileNotFoundError: the package is not installed or the file is not in it (message names it).
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{filename}: package face-recognition-models is not installed (pip install face-recognition-models)")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path}: dlib model file not found (known files: {', '.join(DLIB_MODELS)})")
    return path


def check_image(image: np.ndarray, index: int | str = 0) -> np.ndarray:
    """Validate one (H, W, 3) float image in [0, 1]; returns it as float32.

    Raises:
        ValueError: wrong rank / channel count, non-finite values, or an empty image (message gives the index).
    """
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image {index}: expected (H, W, 3), got shape {arr.shape}")
    if min(arr.shape[:2]) < 1:
        raise ValueError(f"image {index}: empty image of shape {arr.shape}")
    if arr.dtype == np.uint8:
        raise ValueError(f"image {index}: expected float in [0, 1], got uint8 (divide by 255)")
    arr = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"image {index}: contains NaN or inf")
    return arr


def to_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) float in [0, 1] -> contiguous uint8 (rounded, clipped)."""
    return np.ascontiguousarray((np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))


def same_size_batches(arrays: Sequence[np.ndarray], batch_size: int) -> Iterator[list[int]]:
    """Indices of ``arrays`` in chunks of at most ``batch_size`` images that share one (H, W) (stackable)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, arr in enumerate(arrays):
        groups.setdefault(arr.shape[:2], []).append(i)
    for indices in groups.values():
        for start in range(0, len(indices), batch_size):
            yield indices[start:start + batch_size]


class MTCNNDetector:
    """MTCNN with facenet-pytorch's weights, batched over images of equal size.

    The cascade runs through :func:`metrics.mtcnn_batched.detect_faces` (channels-last networks, every
    candidate crop of a stage resized in one gather); ``fast=False`` runs facenet-pytorch's own
    ``MTCNN.detect`` instead. Both give the same boxes to float rounding.

    Args:
        device: torch device of the three networks ("cpu", "cuda", ...).
        min_face_size: smallest face searched for [px].
        thresholds: P/R/O-net score thresholds (facenet-pytorch defaults).
        batch_size: images per MTCNN call (bounds memory; the image pyramid is built per batch).
        cpu_threads: torch intra-op threads while detecting on CPU (restored afterwards; None = leave as is).
        fast: use the batched cascade of :mod:`metrics.mtcnn_batched` (default) or facenet-pytorch's.
    """

    def __init__(self, device: str = "cpu", min_face_size: int = 20,
                 thresholds: Sequence[float] = (0.6, 0.7, 0.7), batch_size: int = 32,
                 cpu_threads: int | None = None, fast: bool = True) -> None:
        from data.compat import import_torchvision

        import_torchvision()
        from facenet_pytorch import MTCNN

        self.device = device
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.mtcnn = MTCNN(min_face_size=int(min_face_size), thresholds=list(thresholds), select_largest=False,
                           keep_all=True, device=device)
        self.mtcnn.eval()
        self.num_landmarks = 5
        self.cpu_threads = cpu_threads
        self.fast = bool(fast)
        if self.fast:
            import torch

            self._nets = [net.to(memory_format=torch.channels_last)
                          for net in (self.mtcnn.pnet, self.mtcnn.rnet, self.mtcnn.onet)]

    def detect(self, images: Sequence[np.ndarray]) -> list[Detection | None]:
        """Most confident face per image.

        Args:
            images: list of (H, W, 3) float32 in [0, 1]; images of equal size are run as one batch.

        Returns:
            one :class:`Detection` (5 landmarks) or ``None`` per image, in input order.
        """
        arrays = [check_image(im, i) for i, im in enumerate(images)]
        out: list[Detection | None] = [None] * len(arrays)
        for chunk in same_size_batches(arrays, self.batch_size):
            batch = np.stack([arrays[i] for i in chunk]).astype(np.float32) * 255.0
            for i, det in zip(chunk, self._detect_threads(batch)):
                out[i] = det
        return out

    def _detect_threads(self, batch: np.ndarray) -> list[Detection | None]:
        import torch

        if self.cpu_threads is None or str(self.device).startswith("cuda"):
            return self._detect_batch(batch)
        before = torch.get_num_threads()
        torch.set_num_threads(self.cpu_threads)
        try:
            return self._detect_batch(batch)
        finally:
            torch.set_num_threads(before)

    def _detect_batch(self, batch: np.ndarray) -> list[Detection | None]:
        """batch: (B, H, W, 3) float32 in [0, 255] (MTCNN's own input range, no uint8 rounding)."""
        if self.fast:
            import torch

            from metrics.mtcnn_batched import detect_faces

            found = detect_faces(torch.as_tensor(batch, device=self.device), *self._nets,
                                 min_face_size=self.mtcnn.min_face_size, thresholds=self.mtcnn.thresholds,
                                 factor=self.mtcnn.factor)
            boxes = [f[0][:, :4] if len(f[0]) else None for f in found]
            probs = [f[0][:, 4] for f in found]
            points = [f[1] for f in found]
        else:
            boxes, probs, points = self.mtcnn.detect(batch, landmarks=True)
        result: list[Detection | None] = []
        for b in range(batch.shape[0]):
            if boxes[b] is None:
                result.append(None)
                continue
            bx = np.asarray(boxes[b], dtype=np.float64).reshape(-1, 4)
            pr = np.asarray(probs[b], dtype=np.float64).reshape(-1)
            pts = np.asarray(points[b], dtype=np.float64).reshape(-1, 5, 2)
            k = int(np.argmax(pr))
            result.append(Detection(box=bx[k].copy(), score=float(pr[k]), landmarks=pts[k].copy()))
        return result


class DlibDetector:
    """dlib face detector (HOG, or the MMOD CNN) followed by the 68-point shape predictor.

    The HOG detector runs image by image (dlib has no batch API for it); the CNN detector runs batched over
    images of equal size.

    Args:
        detector: "hog" (frontal HOG + linear SVM) or "cnn" (MMOD CNN, slower, more robust).
        upsample: times the image is upsampled before detection (finds faces smaller than ~80 px).
        predictor: shape-predictor file name in face-recognition-models (68 points by default).
        batch_size: images per CNN call.
    """

    def __init__(self, detector: str = "hog", upsample: int = 1,
                 predictor: str = "shape_predictor_68_face_landmarks.dat", batch_size: int = 16) -> None:
        import dlib

        if detector not in ("hog", "cnn"):
            raise ValueError(f"detector must be 'hog' or 'cnn', got {detector!r}")
        if upsample < 0:
            raise ValueError(f"upsample must be >= 0, got {upsample}")
        self.kind = detector
        self.upsample = int(upsample)
        self.batch_size = int(batch_size)
        if detector == "hog":
            self._detector = dlib.get_frontal_face_detector()
        else:
            self._detector = dlib.cnn_face_detection_model_v1(str(dlib_model_path("mmod_human_face_detector.dat")))
        self._predictor = dlib.shape_predictor(str(dlib_model_path(predictor)))
        self.num_landmarks = 5 if "_5_" in predictor else 68

    def detect(self, images: Sequence[np.ndarray]) -> list[Detection | None]:
        """Most confident face per image.

        Args:
            images: list of (H, W, 3) float32 in [0, 1] (converted to uint8 RGB for dlib).

        Returns:
            one :class:`Detection` (68 landmarks) or ``None`` per image, in input order.
        """
        arrays = [to_uint8(check_image(im, i)) for i, im in enumerate(images)]
        if self.kind == "hog":
            found = [self._hog(a) for a in arrays]
        else:
            found = [None] * len(arrays)
            for chunk in same_size_batches(arrays, self.batch_size):
                dets = self._detector([arrays[i] for i in chunk], self.upsample, batch_size=len(chunk))
                for i, d in zip(chunk, dets):
                    if len(d):
                        best = max(d, key=lambda m: m.confidence)
                        found[i] = (best.rect, float(best.confidence))
        out: list[Detection | None] = []
        for arr, hit in zip(arrays, found):
            if hit is None:
                out.append(None)
                continue
            rect, score = hit
            shape = self._predictor(arr, rect)
            lm = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
            box = np.array([rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1], dtype=np.float64)
            out.append(Detection(box=box, score=score, landmarks=lm))
        return out

    def _hog(self, arr: np.ndarray):
        rects, scores, _ = self._detector.run(arr, self.upsample, 0.0)
        if len(rects) == 0:
            return None
        k = int(np.argmax(scores))
        return rects[k], float(scores[k])


def build_detector(name: str, device: str = "cpu") -> MTCNNDetector | DlibDetector:
    """Detector by name: "mtcnn", "dlib" (HOG) or "dlib_cnn".

    Raises:
        ValueError: unknown name.
    """
    if name == "mtcnn":
        return MTCNNDetector(device=device)
    if name in ("dlib", "dlib_hog"):
        return DlibDetector("hog")
    if name == "dlib_cnn":
        return DlibDetector("cnn")
    raise ValueError(f"unknown detector {name!r} (choose mtcnn, dlib, dlib_cnn)")
