"""Identity leakage: dlib ResNet face embeddings and re-identification against a gallery of clean originals.

Attacker model: the gallery holds one clean original per identity; every protected / generated / attacked image
is a probe. A probe is re-identified when its nearest gallery embedding (Euclidean, dlib's metric) belongs to
its own identity (rank-1), or when its identity is among the k nearest (rank-k). With one photo per person (the
embedded NBA set) the probe of person i is the protected / attacked version of the very photo whose clean
version is i's gallery entry: the attacker matches stolen captures against a database of clean photos.
:func:`gallery_reid` scores the probes against two galleries: the held-out identities only, and a large one in
which every other face of the set (e.g. the training split) is a distractor identity.

Probes in which no face is found are NOT dropped: a protection that hides the face must still count as a
re-identification attempt (dropping them would reward failure to find a face with a better score on the few
found). Such probes are embedded from a fixed centred chip: the central square of side
``fallback_fraction x min(H, W)`` resized to dlib's 150 x 150 input, which matches where an aligned face set
(FFHQ / CelebA-HQ style crops, the inputs of this project) puts the face. The number of fallbacks is reported.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from metrics.detectors import Detection, DlibDetector, check_image, dlib_model_path, to_uint8

log = logging.getLogger(__name__)

CHIP_SIZE = 150  # dlib ResNet input [px]
CHIP_PADDING = 0.25  # dlib default
SAME_PERSON_THRESHOLD = 0.6  # dlib's documented decision threshold on the embedding distance


class FaceEmbedder:
    """dlib's ResNet (``dlib_face_recognition_resnet_model_v1.dat``) 128-d face embeddings.

    Args:
        detector: used when :meth:`embed` gets no landmarks (default: a dlib HOG + 68-point detector, made on
            first use).
        fallback_fraction: side of the centred fallback chip as a fraction of min(H, W).
        num_jitters: dlib's test-time jittering (0 = off; deterministic).
    """

    def __init__(self, detector: DlibDetector | None = None, fallback_fraction: float = 0.6,
                 num_jitters: int = 0) -> None:
        import dlib

        if not 0.0 < fallback_fraction <= 1.0:
            raise ValueError(f"fallback_fraction must be in (0, 1], got {fallback_fraction}")
        self._dlib = dlib
        self._net = dlib.face_recognition_model_v1(str(dlib_model_path("dlib_face_recognition_resnet_model_v1.dat")))
        self._detector = detector
        self.fallback_fraction = float(fallback_fraction)
        self.num_jitters = int(num_jitters)

    @property
    def detector(self) -> DlibDetector:
        if self._detector is None:
            self._detector = DlibDetector("hog")
        return self._detector

    def chip(self, image: np.ndarray, landmarks: np.ndarray | Detection | None) -> np.ndarray:
        """Aligned (150, 150, 3) uint8 chip: dlib's alignment from 68 (or dlib-5) landmarks, or the centred chip.

        Args:
            image: (H, W, 3) float32 in [0, 1].
            landmarks: (68, 2) iBUG or (5, 2) dlib-5-point landmarks [px], a Detection, or None (centred chip).
        """
        arr = to_uint8(check_image(image))
        if isinstance(landmarks, Detection):
            landmarks = landmarks.landmarks
        if landmarks is None:
            return self._centre_chip(arr)
        lm = np.asarray(landmarks, dtype=np.float64)
        if lm.shape not in ((68, 2),):
            raise ValueError(f"landmarks must be (68, 2) iBUG points (dlib), got {lm.shape}")
        dlib = self._dlib
        x1, y1 = lm.min(axis=0)
        x2, y2 = lm.max(axis=0)
        rect = dlib.rectangle(int(x1), int(y1), int(np.ceil(x2)), int(np.ceil(y2)))
        shape = dlib.full_object_detection(rect, [dlib.point(int(round(x)), int(round(y))) for x, y in lm])
        return np.ascontiguousarray(dlib.get_face_chip(arr, shape, size=CHIP_SIZE, padding=CHIP_PADDING))

    def _centre_chip(self, arr: np.ndarray) -> np.ndarray:
        from PIL import Image

        h, w = arr.shape[:2]
        side = max(1, int(round(self.fallback_fraction * min(h, w))))
        top, left = (h - side) // 2, (w - side) // 2
        crop = Image.fromarray(arr[top:top + side, left:left + side])
        return np.ascontiguousarray(np.asarray(crop.resize((CHIP_SIZE, CHIP_SIZE), Image.BILINEAR)))

    def embed(self, images: Sequence[np.ndarray], landmarks: Sequence[np.ndarray | Detection | None] | None = None,
              return_found: bool = False):
        """128-d embeddings.

        Args:
            images: N images (H, W, 3) float32 in [0, 1].
            landmarks: per image (68, 2) landmarks [px], a Detection or None (-> centred chip); None for the
                whole argument runs the dlib detector on every image.
            return_found: also return the (N,) bool mask of images embedded from a face (not the fallback).

        Returns:
            (N, 128) float64 embeddings (unit-scale: same-person distances are typically < 0.6), and the mask
            when ``return_found``.
        """
        if landmarks is None:
            landmarks = self.detector.detect(images) if len(images) else []
        if len(landmarks) != len(images):
            raise ValueError(f"{len(images)} images but {len(landmarks)} landmark entries")
        chips = [self.chip(img, lm) for img, lm in zip(images, landmarks)]
        found = np.array([lm is not None for lm in landmarks], dtype=bool)
        if chips:
            vecs = self._net.compute_face_descriptor(chips, self.num_jitters)
            emb = np.array([np.asarray(v) for v in vecs], dtype=np.float64)
        else:
            emb = np.zeros((0, 128))
        return (emb, found) if return_found else emb


def distances(probes: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Euclidean distances (P, G) between (P, D) probe and (G, D) gallery embeddings."""
    p, g = np.asarray(probes, np.float64), np.asarray(gallery, np.float64)
    d2 = (p * p).sum(1)[:, None] + (g * g).sum(1)[None, :] - 2.0 * p @ g.T
    return np.sqrt(np.clip(d2, 0.0, None))


def _ids(ids: Sequence | None, n: int) -> np.ndarray:
    return np.arange(n) if ids is None else np.asarray(list(ids))


def rank1(probes: np.ndarray, gallery: np.ndarray, probe_ids: Sequence | None = None,
          gallery_ids: Sequence | None = None) -> float:
    """Fraction of probes whose nearest gallery embedding has the probe's identity.

    Args:
        probes: (P, D) embeddings; gallery: (G, D). Default ids: probe i belongs to gallery entry i (P == G).
    """
    return rank_k(probes, gallery, probe_ids, gallery_ids, 1)


def rank_k(probes: np.ndarray, gallery: np.ndarray, probe_ids: Sequence | None = None,
           gallery_ids: Sequence | None = None, k: int = 5) -> float:
    """Fraction of probes whose identity is among the ``k`` nearest gallery IDENTITIES (closed-set CMC at k).

    The distance of an identity is that of its nearest gallery embedding, so an identity with several gallery
    images counts once. Ties are broken by gallery order.

    Args:
        probes: (P, D); gallery: (G, D); ids as :func:`rank1`; k >= 1.
    """
    if len(probes) == 0:
        raise ValueError("re-identification needs at least one probe")
    if k < 1:
        raise ValueError(f"rank-k needs k >= 1, got {k}")
    pid = list(range(len(probes))) if probe_ids is None else list(probe_ids)
    gid = list(range(len(gallery))) if gallery_ids is None else list(gallery_ids)
    if len(gid) != len(gallery) or len(pid) != len(probes):
        raise ValueError(f"{len(pid)} probe ids for {len(probes)} probes, {len(gid)} gallery ids for {len(gallery)}")
    column = {name: j for j, name in enumerate(dict.fromkeys(gid))}  # identity -> column, gallery order
    d = distances(probes, gallery)
    per_id = np.full((len(probes), len(column)), np.inf)
    for j, name in enumerate(gid):
        c = column[name]
        per_id[:, c] = np.minimum(per_id[:, c], d[:, j])
    order = np.argsort(per_id, axis=1, kind="stable")[:, :k]
    own = np.array([column.get(p, -1) for p in pid])
    return float(np.mean((order == own[:, None]).any(axis=1)))


def gallery_reid(probes: np.ndarray, probe_ids: Sequence, gallery: np.ndarray, gallery_ids: Sequence,
                 distractors: np.ndarray | None = None, distractor_ids: Sequence | None = None,
                 ks: Sequence[int] = (1, 5)) -> dict:
    """Rank-k re-identification against the held-out gallery and against held-out + distractor identities.

    Args:
        probes: (P, 128) attacked / protected embeddings, ``probe_ids`` their identities.
        gallery: (G, 128) clean embeddings of the held-out identities (must contain every probe identity).
        distractors: (M, 128) clean embeddings of other identities (e.g. the training split), or None;
            ``distractor_ids`` default to ``"distractor:<j>"``.
        ks: ranks reported.

    Returns:
        {"heldout": {"rank1", "rank5", "chance_rank1", "chance_rank5", "num_identities"}, "large": {...} or
        None}; chance_rank_k = k / number of gallery identities.
    """
    def score(g: np.ndarray, gids: list) -> dict:
        n = len(set(gids))
        out = {f"rank{k}": rank_k(probes, g, probe_ids, gids, k) for k in ks}
        out.update({f"chance_rank{k}": min(1.0, k / n) for k in ks})
        out["num_identities"] = n
        return out

    gids = list(gallery_ids)
    missing = set(list(probe_ids)) - set(gids)
    if missing:
        raise ValueError(f"{len(missing)} probe identities are not in the gallery (e.g. {sorted(map(str, missing))[:3]})")
    result = {"heldout": score(np.asarray(gallery), gids), "large": None}
    if distractors is not None and len(distractors):
        dids = list(distractor_ids) if distractor_ids is not None else [f"distractor:{j}" for j in range(len(distractors))]
        if set(dids) & set(gids):
            raise ValueError("distractor identities overlap the held-out gallery")
        result["large"] = score(np.concatenate([np.asarray(gallery), np.asarray(distractors)]), gids + dids)
    return result


def mean_match_distance(probes: np.ndarray, originals: np.ndarray) -> float:
    """Mean Euclidean distance between each probe and its own original (the reference's identity measure)."""
    if len(probes) != len(originals) or len(probes) == 0:
        raise ValueError(f"{len(probes)} probes vs {len(originals)} originals: need equal, non-zero counts")
    return float(np.linalg.norm(np.asarray(probes) - np.asarray(originals), axis=1).mean())


def tar_at_far(probes: np.ndarray, gallery: np.ndarray, probe_ids: Sequence | None = None,
               gallery_ids: Sequence | None = None, far: float = 1e-3) -> float | None:
    """True-accept rate at a false-accept rate over all probe x gallery pairs (verification).

    The threshold is the ``far`` quantile of impostor distances (pairs of different identities); TAR is the
    fraction of genuine pairs at or below it. Returns None when there are fewer than ``1 / far`` impostor
    pairs (the FAR cannot be resolved) or no genuine pair.
    """
    pid, gid = _ids(probe_ids, len(probes)), _ids(gallery_ids, len(gallery))
    d = distances(probes, gallery)
    same = pid[:, None] == gid[None, :]
    genuine, impostor = d[same], d[~same]
    if genuine.size == 0 or impostor.size < int(np.ceil(1.0 / far)):
        return None
    # accept d < t with t the (k+1)-th smallest impostor distance, k = floor(far x #impostors): at most k
    # impostor pairs (a fraction <= far) are accepted
    k = int(np.floor(far * impostor.size))
    threshold = np.sort(impostor)[k]
    return float(np.mean(genuine < threshold))


def reid_metrics(probes: np.ndarray, gallery: np.ndarray, probe_ids: Sequence | None = None,
                 gallery_ids: Sequence | None = None, found: np.ndarray | None = None, far: float = 1e-3) -> dict:
    """All identity numbers of one probe set against the gallery of clean originals.

    Args:
        probes: (P, 128) probe embeddings; gallery: (G, 128) original embeddings. Default ids pair probe i with
            gallery i (then ``reid_mean_distance`` is the mean distance to the own original).
        found: (P,) bool, probes embedded from a detected face (others used the centred chip).

    Returns:
        dict: ``reid_rank1``, ``reid_rank5``, ``reid_mean_distance`` (None unless paired one-to-one), ``reid_same_person_rate``
        (fraction of genuine pairs under dlib's 0.6 threshold), ``reid_tar_at_far`` (+ ``reid_far``),
        ``reid_probes``, ``reid_fallback_chips``.
    """
    pid, gid = _ids(probe_ids, len(probes)), _ids(gallery_ids, len(gallery))
    d = distances(probes, gallery)
    genuine = d[pid[:, None] == gid[None, :]]
    paired = len(probes) == len(gallery) and np.array_equal(pid, gid)
    return {
        "reid_rank1": rank1(probes, gallery, pid, gid),
        "reid_rank5": rank_k(probes, gallery, pid, gid, 5),
        "reid_mean_distance": mean_match_distance(probes, gallery) if paired else None,
        "reid_same_person_rate": float(np.mean(genuine < SAME_PERSON_THRESHOLD)) if genuine.size else None,
        "reid_tar_at_far": tar_at_far(probes, gallery, pid, gid, far),
        "reid_far": far,
        "reid_probes": int(len(probes)),
        "reid_fallback_chips": int((~np.asarray(found)).sum()) if found is not None else 0,
    }
