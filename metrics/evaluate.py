"""All metrics of protected / generated images against their originals, reusable by every pipeline.

:class:`Evaluator` loads the models once and caches everything about the originals (detections, gallery
embeddings, FID reference statistics), then :meth:`Evaluator.evaluate` scores any number of methods (the
generated images, baselines, attacks) against them. :func:`evaluate_pairs` is the one-call form.

Result of one method (JSON-ready; None where a number is undefined)::

    {"num_images", "fid",
     "mtcnn": {"detection_rate", "bbox_center_px", "bbox_iou", "landmarks_px", "landmarks_nme", "pairs",
               "misses", ...},
     "dlib": {...},
     "reid_rank1", "reid_mean_distance", "reid_same_person_rate", "reid_tar_at_far", "reid_fallback_chips", ...}
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np

from metrics.detectors import Detection, build_detector, check_image

log = logging.getLogger(__name__)

DETECTORS = ("mtcnn", "dlib", "dlib_cnn")


def parse_list(spec: str | Sequence[str] | None, allowed: Sequence[str], what: str) -> list[str]:
    """``"a,b"`` -> ["a", "b"], each checked against ``allowed``.

    Raises:
        ValueError: an unknown entry (names it and the allowed ones).
    """
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec or [])
    items = [s for s in items if s]
    for s in items:
        if s not in allowed:
            raise ValueError(f"unknown {what} {s!r} (choose from {', '.join(allowed)})")
    return items


class Evaluator:
    """Metrics against a fixed set of originals.

    Args:
        originals: N clean images (H, W, 3) float32 in [0, 1].
        names: N identifiers (file names); also the identity labels of re-identification unless ``identities``.
        detectors: subset of ("mtcnn", "dlib", "dlib_cnn").
        fid: compute FID (needs >= 2 images).
        fid_stats: ``.npz`` cache of the reference statistics (read if present, else written).
        fid_reference: images the FID reference statistics come from (default: ``originals``).
        fid_backend / fid_weights: see :class:`metrics.fid.InceptionFeatures`.
        identity: compute re-identification numbers.
        identities: N identity labels (several images per identity enable a meaningful TAR@FAR).
        device: torch device of MTCNN and the Inception network.
    """

    def __init__(self, originals: Sequence[np.ndarray], names: Sequence[str],
                 detectors: Sequence[str] = ("mtcnn", "dlib"), fid: bool = True,
                 fid_stats: str | os.PathLike | None = None, fid_reference: Sequence[np.ndarray] | None = None,
                 fid_backend: str = "torchscript", fid_weights: str | os.PathLike | None = None,
                 identity: bool = True, identities: Sequence | None = None, device: str = "cpu") -> None:
        if len(originals) == 0:
            raise ValueError("no original images to evaluate against")
        if len(names) != len(originals):
            raise ValueError(f"{len(originals)} originals but {len(names)} names")
        self.originals = [check_image(im, n) for im, n in zip(originals, names)]
        self.names = list(names)
        self.ids = list(identities) if identities is not None else list(names)
        self.detector_names = parse_list(detectors, DETECTORS, "detector")
        self.detectors = {d: build_detector(d, device=device) for d in self.detector_names}
        self.original_detections = {d: det.detect(self.originals) for d, det in self.detectors.items()}
        for d, dets in self.original_detections.items():
            missed = sum(x is None for x in dets)
            if missed:
                log.warning("%s finds no face in %d of %d originals (those pairs count as misses)",
                            d, missed, len(dets))
        self.extractor = None
        self.fid_ref = None
        if fid:
            from metrics.fid import InceptionFeatures, reference_statistics

            self.extractor = InceptionFeatures(fid_backend, fid_weights)
            if device != "cpu":
                self.extractor.to(device)
            ref = list(fid_reference) if fid_reference is not None else self.originals
            if len(ref) < 2 and not (fid_stats and os.path.isfile(fid_stats)):
                log.warning("FID needs at least 2 reference images: skipped")
                self.extractor = None
            else:
                self.fid_ref = reference_statistics(ref, self.extractor, fid_stats)
        self.embedder = None
        if identity:
            from metrics.identity import FaceEmbedder

            self.embedder = FaceEmbedder()
            self.gallery, self.gallery_found = self.embedder.embed(
                self.originals, self._landmarks_for_embedding(self.originals, self.original_detections),
                return_found=True)

    def _landmarks_for_embedding(self, images: Sequence[np.ndarray],
                                 detections: dict[str, list[Detection | None]]) -> list[Detection | None]:
        """dlib 68-point detections for the embedder: reused from the evaluation's dlib detector if it ran."""
        for key in ("dlib", "dlib_cnn"):
            if key in detections:
                return detections[key]
        return self.embedder.detector.detect(images)

    def evaluate(self, images: Sequence[np.ndarray], indices: Sequence[int] | None = None) -> dict:
        """Metrics of ``images`` paired with the originals ``indices`` (default: all, in order).

        Args:
            images: (H, W, 3) float32 in [0, 1], each the size of its original.
            indices: which originals the images correspond to (for evaluating a subset, e.g. a held-out split).

        Raises:
            ValueError: count or size mismatch (names the file).
        """
        idx = list(range(len(self.originals))) if indices is None else list(indices)
        if len(images) != len(idx):
            raise ValueError(f"{len(images)} images for {len(idx)} originals: not paired")
        if not idx:
            raise ValueError("no images to evaluate")
        images = [check_image(im, self.names[i]) for im, i in zip(images, idx)]
        for im, i in zip(images, idx):
            if im.shape != self.originals[i].shape:
                raise ValueError(f"{self.names[i]}: size {im.shape[:2]} differs from its original "
                                 f"{self.originals[i].shape[:2]}")
        from metrics.geometry import geometry_metrics

        result: dict = {"num_images": len(images)}
        detections = {}
        for d, det in self.detectors.items():
            detections[d] = det.detect(images)
            result[d] = geometry_metrics(detections[d], [self.original_detections[d][i] for i in idx])
        result["fid"] = None
        if self.extractor is not None and len(images) >= 2:
            from metrics.fid import fid_from_features

            result["fid"] = fid_from_features(self.extractor.features(images), *self.fid_ref)
        elif self.extractor is not None:
            log.warning("FID needs at least 2 images: not computed")
        if self.embedder is not None:
            from metrics.identity import reid_metrics

            probes, found = self.embedder.embed(images, self._landmarks_for_embedding(images, detections),
                                                return_found=True)
            # gallery = all originals: a probe must beat every other identity, not only those of the subset
            result.update(reid_metrics(probes, self.gallery, [self.ids[i] for i in idx], self.ids, found=found))
            if indices is not None and len(idx) != len(self.originals):
                sub = reid_metrics(probes, self.gallery[idx], [self.ids[i] for i in idx], [self.ids[i] for i in idx])
                result["reid_mean_distance"] = sub["reid_mean_distance"]
        return result


def evaluate_pairs(generated: Sequence[np.ndarray], originals: Sequence[np.ndarray], names: Sequence[str],
                   **kwargs) -> dict:
    """One-call form: ``Evaluator(originals, names, **kwargs).evaluate(generated)``.

    Args:
        generated: N images (H, W, 3) float32 in [0, 1], generated[i] paired with originals[i].
        originals: N images, same sizes.
        names: N file names / identities.
        **kwargs: options of :class:`Evaluator` (detectors, fid, fid_stats, ...).
    """
    if len(generated) != len(originals):
        raise ValueError(f"{len(generated)} generated vs {len(originals)} original images: not paired")
    return Evaluator(originals, names, **kwargs).evaluate(generated)
