"""Face detection + alignment glue: MTCNN (metrics.detectors) -> 5 landmarks -> data.align crop.

Used by ``--mode align`` (:func:`align_folder`) and by every training / evaluation mode that gets no image
folder (:func:`default_face_dirs`, the cached aligned crops of the embedded NBA headshots).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from data import embedded
from data.align import (EYE_DISTANCE, EYE_Y, TEMPLATE_5, align_face, alignment_transform, apply_transform,
                        eye_angle, warp_image)
from data.files import save_image, save_json
from data.images import IMAGE_SUFFIXES, ImageReadError, read_image

log = logging.getLogger(__name__)

DETECT_MAX_SIDE = 1024
"""Photos larger than this [px] are reduced for detection (landmarks are scaled back): MTCNN's image pyramid
on a 3000 px photo costs seconds and gains nothing for a face that fills the frame."""

PORTRAIT_MIN_FACE = 0.2
"""Smallest face searched in the embedded headshots [fraction of the shorter image side]."""


def make_detector(device: str = "cpu"):
    """The MTCNN detector used for alignment (5 landmarks, min face 20 px)."""
    from metrics.detectors import MTCNNDetector

    return MTCNNDetector(device=device, min_face_size=20)


def _reduce(image: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """(image reduced so its longer side <= max_side, (fx, fy) factors reduced / original)."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image, np.ones(2)
    factor = max_side / max(h, w)
    import torch
    import torch.nn.functional as F

    size = (max(1, round(h * factor)), max(1, round(w * factor)))
    t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].float()
    small = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return small.permute(1, 2, 0).numpy(), np.array([size[1] / w, size[0] / h])


def detect_landmarks(detector, images: Sequence[np.ndarray], max_side: int = DETECT_MAX_SIDE,
                     min_face_fraction: float | None = None) -> list[np.ndarray | None]:
    """5 MTCNN landmarks of the most confident face of each image.

    Args:
        detector: a ``metrics.detectors.MTCNNDetector``.
        images: list of (H, W, 3) float32 in [0, 1].
        max_side: images with a longer side are reduced for detection [px].
        min_face_fraction: for portraits: search only faces at least this fraction of the image's shorter side
            (never below the detector's own minimum). MTCNN's cost is dominated by the finest pyramid levels,
            so 0.2 makes a 260 x 190 headshot ~3x faster. None: the detector's setting.

    Returns:
        per image, (5, 2) float64 (x, y) [px] in the ORIGINAL image, or None when no face was found.
    """
    reduced = [_reduce(im, max_side) for im in images]
    mtcnn = getattr(detector, "mtcnn", None)
    if min_face_fraction is None or mtcnn is None:
        dets = detector.detect([r[0] for r in reduced])
    else:
        base = mtcnn.min_face_size
        groups: dict[int, list[int]] = {}
        for i, (im, _) in enumerate(reduced):
            groups.setdefault(max(base, int(min_face_fraction * min(im.shape[:2]))), []).append(i)
        dets = [None] * len(reduced)
        try:
            for size, idx in groups.items():
                mtcnn.min_face_size = size
                for i, det in zip(idx, detector.detect([reduced[i][0] for i in idx])):
                    dets[i] = det
        finally:
            mtcnn.min_face_size = base
    out: list[np.ndarray | None] = []
    for det, (_, factor) in zip(dets, reduced):
        if det is None:
            out.append(None)
        else:
            # pixel centres at integers: original = (reduced + 0.5) / factor - 0.5
            out.append((np.asarray(det.landmarks, dtype=np.float64) + 0.5) / factor - 0.5)
    return out


def refine_landmarks(detector, images: Sequence[np.ndarray], landmarks: Sequence[np.ndarray | None],
                     min_angle: float = 10.0, work_size: int = 160) -> list[np.ndarray | None]:
    """Re-detect tilted faces upright: MTCNN's landmarks degrade with in-plane rotation (about 5 degrees of
    residual tilt after aligning a face rotated by 40 degrees), so faces whose eye line is tilted by more than
    ``min_angle`` are aligned once, detected again in the upright crop (with a margin of context) and the
    landmarks mapped back to the photo.

    Args:
        images: list of (H, W, 3) float32 in [0, 1].
        landmarks: per image (5, 2) [px] or None (kept as is).
        min_angle: tilt of the eye line above which a face is refined [degrees].
        work_size: side of the aligned face in the refinement canvas [px].

    Returns:
        per image, (5, 2) float64 [px] in the photo, or None.
    """
    out = list(landmarks)
    todo = [i for i, lm in enumerate(landmarks) if lm is not None and abs(eye_angle(lm)) > min_angle]
    if not todo:
        return out
    margin = work_size // 4
    shift = np.array([[1.0, 0.0, margin], [0.0, 1.0, margin], [0.0, 0.0, 1.0]])
    mats = [shift @ alignment_transform(landmarks[i], work_size) for i in todo]
    canvases = [warp_image(images[i], m, work_size + 2 * margin, pad_mode="edge") for i, m in zip(todo, mats)]
    for i, m, lm in zip(todo, mats, detect_landmarks(detector, canvases)):
        if lm is not None:
            out[i] = apply_transform(np.linalg.inv(m), lm)
    return out


def face_landmarks(detector, images: Sequence[np.ndarray], min_face_fraction: float | None = None,
                   refine_angle: float = 10.0) -> list[np.ndarray | None]:
    """:func:`detect_landmarks` followed by :func:`refine_landmarks` for tilted faces (the alignment's input)."""
    found = detect_landmarks(detector, images, min_face_fraction=min_face_fraction)
    return refine_landmarks(detector, images, found, min_angle=refine_angle)


def _template_info(img_size: int) -> dict:
    return {"eye_y": EYE_Y, "eye_distance": EYE_DISTANCE, "template_5_unit": TEMPLATE_5.tolist(),
            "img_size": int(img_size)}


# ------------------------------------------------------------------------------------------------ align mode
MIN_ALIGN_SIDE = 20
"""Images with a shorter side [px] are skipped (reported as too small): MTCNN's smallest window is 12 px."""


def align_folder(inp_dir: str | os.PathLike, out_dir: str | os.PathLike, img_size: int = 256,
                 detector=None, device: str = "cpu", batch_size: int = 16) -> dict:
    """Detect, align and crop every image under ``inp_dir`` into ``out_dir`` (PNG, same relative names).

    Sub-folders (e.g. domain folders) are kept. Files that cannot be read and images without a face are
    reported in ``out_dir/align_report.json``; files with other suffixes and hidden files are listed as ignored.

    Args:
        inp_dir: input folder (flat or folder per domain, any depth).
        out_dir: output folder (created).
        img_size: side of the aligned crops [px].
        detector: an MTCNN detector (built on ``device`` when None).
        batch_size: images read and detected at once.

    Returns:
        the report dict: ``aligned`` (count), ``failures`` ([{file, reason}]), ``num_failures``, ``ignored``.

    Raises:
        FileNotFoundError: ``inp_dir`` does not exist.
    """
    from tqdm import tqdm

    inp, out = Path(inp_dir), Path(out_dir)
    if not inp.is_dir():
        raise FileNotFoundError(f"{inp}: input folder does not exist")
    if out.resolve() == inp.resolve():
        raise ValueError(f"{out}: the output folder must differ from the input folder")
    if inp.resolve().is_relative_to(out.resolve()):
        raise ValueError(f"{out}: the output folder contains the input folder {inp}; choose one outside it")
    files = sorted((p for p in inp.rglob("*") if p.is_file()), key=lambda p: p.relative_to(inp).as_posix())
    files = [p for p in files if not any(part.startswith(".") for part in p.relative_to(inp).parts)]
    try:  # never re-align our own output when out_dir lies inside inp_dir
        files = [p for p in files if not p.resolve().is_relative_to(out.resolve())]
    except OSError:
        pass
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    ignored = [p.relative_to(inp).as_posix() for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    detector = detector if detector is not None else make_detector(device)
    failures: list[dict] = []
    written: dict[str, str] = {}
    aligned = 0
    start = time.time()
    for b in tqdm(range(0, len(images), batch_size), desc="align", unit="batch", disable=len(images) <= batch_size):
        batch, arrays = [], []
        for p in images[b:b + batch_size]:
            rel = p.relative_to(inp).as_posix()
            try:
                arr = read_image(p)
            except ImageReadError as err:
                failures.append({"file": rel, "reason": f"unreadable: {err}"})
                continue
            if min(arr.shape[:2]) < MIN_ALIGN_SIDE:
                failures.append({"file": rel, "reason": f"too small: {arr.shape[1]}x{arr.shape[0]} px (a face "
                                                        f"needs at least {MIN_ALIGN_SIDE} px)"})
                continue
            arrays.append(arr)
            batch.append(p)
        for p, arr, lm in zip(batch, arrays, face_landmarks(detector, arrays) if arrays else []):
            rel = p.relative_to(inp).as_posix()
            if lm is None:
                failures.append({"file": rel, "reason": "no face"})
                continue
            target = Path(rel).with_suffix(".png").as_posix()
            if target in written:
                failures.append({"file": rel, "reason": f"output name {target} already used by {written[target]}"})
                continue
            crop, _ = align_face(arr, lm, img_size)
            save_image(out / target, crop)
            written[target] = rel
            aligned += 1
    failures.sort(key=lambda f: f["file"])
    report = {
        "inp_dir": str(inp), "out_dir": str(out), "num_inputs": len(images), "aligned": aligned,
        "num_failures": len(failures), "failures": failures, "ignored": ignored,
        "seconds": round(time.time() - start, 2), "template": _template_info(img_size),
    }
    save_json(out / "align_report.json", report)
    log.info("aligned %d of %d images into %s; %d failures%s", aligned, len(images), out, len(failures),
             (": " + ", ".join(f"{f['file']} ({f['reason'].split(':')[0]})" for f in failures[:10])) if failures else "")
    return report


# -------------------------------------------------------------------------------------------- embedded set
def embedded_detections(detector=None, device: str = "cpu", source_dir: Path | None = None) -> dict:
    """Landmarks of every embedded photo, computed once and cached in ``nba_faces/detections.json``.

    Returns:
        ``{"landmarks": {name: (5, 2) list}, "no_face": [names], "unreadable": {name: reason},
        "num_photos": int}`` (names are file names in the package's photo folder).
    """
    import json

    from tqdm import tqdm

    src = Path(source_dir) if source_dir is not None else embedded.image_dir()
    cache = embedded.cache_root() / "detections.json"
    names = sorted(p.name for p in src.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if source_dir is None and cache.is_file():
        data = json.loads(cache.read_text())
        if data.get("version") == embedded.CACHE_VERSION and data.get("names") == names:
            return data
    detector = detector if detector is not None else make_detector(device)
    landmarks, no_face, unreadable = {}, [], {}
    batch_size = 32
    for b in tqdm(range(0, len(names), batch_size), desc="detect faces (embedded set)", unit="batch"):
        chunk, arrays = [], []
        for n in names[b:b + batch_size]:
            try:
                arrays.append(read_image(src / n))
                chunk.append(n)
            except ImageReadError as err:
                unreadable[n] = str(err)
        for n, lm in zip(chunk, face_landmarks(detector, arrays, min_face_fraction=PORTRAIT_MIN_FACE)):
            if lm is None:
                no_face.append(n)
            else:
                landmarks[n] = np.round(lm, 3).tolist()
    data = {"version": embedded.CACHE_VERSION, "source": str(src), "names": names, "num_photos": len(names),
            "landmarks": landmarks, "no_face": no_face, "unreadable": unreadable}
    if source_dir is None:
        save_json(cache, data)
    return data


def build_embedded_faces(img_size: int, detector=None, device: str = "cpu", source_dir: Path | None = None,
                         target_dir: Path | None = None) -> Path:
    """Build the aligned ``img_size`` crops of the embedded photos (train / val split, one domain).

    Crops are warped from the original photos with the cached landmarks (:func:`embedded_detections`), so
    building another size costs only the warps. Written into a temporary folder then renamed, so concurrent
    builders never see a half-built cache.

    Returns:
        the cache folder (``embedded.embedded_face_dir(img_size)`` unless ``target_dir`` is given).
    """
    from tqdm import tqdm

    start = time.time()
    src = Path(source_dir) if source_dir is not None else embedded.image_dir()
    target = Path(target_dir) if target_dir is not None else embedded.embedded_face_dir(img_size)
    dets = embedded_detections(detector, device, source_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        counts = {"train": 0, "val": 0}
        for name, lm in tqdm(sorted(dets["landmarks"].items()), desc=f"align embedded faces ({img_size} px)"):
            crop, _ = align_face(read_image(src / name), np.asarray(lm), img_size)
            split = embedded.embedded_split(name)
            save_image(tmp / split / embedded.EMBEDDED_DOMAIN / (Path(name).stem + ".png"), crop)
            counts[split] += 1
        report = {
            "version": embedded.CACHE_VERSION, "source": str(src), "num_photos": dets["num_photos"],
            "num_faces": len(dets["landmarks"]), "no_face": dets["no_face"], "unreadable": dets["unreadable"],
            "split": counts, "val_fraction": embedded.VAL_FRACTION, "domains": [embedded.EMBEDDED_DOMAIN],
            "template": _template_info(img_size), "build_seconds": round(time.time() - start, 2),
        }
        save_json(tmp / "report.json", report)
        if target.exists():
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _cache_ok(target):  # another process won the race with a complete cache: keep theirs
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    missed = dets["no_face"] + sorted(dets["unreadable"])
    log.info("embedded face set %d px: %d faces (%d train / %d val) from %d photos in %.1f s; no face: %s",
             img_size, report["num_faces"], counts["train"], counts["val"], dets["num_photos"],
             time.time() - start, ", ".join(missed) if missed else "none")
    return target


def _cache_ok(root: Path) -> bool:
    import json

    report = root / "report.json"
    if not report.is_file():
        return False
    try:
        data = json.loads(report.read_text())
    except ValueError:
        return False
    return data.get("version") == embedded.CACHE_VERSION and (root / "train").is_dir() and (root / "val").is_dir()


def default_face_dirs(img_size: int = 256, device: str = "cpu") -> tuple[Path, Path]:
    """``(train_dir, val_dir)`` of the embedded face set at ``img_size``, building the cache if missing.

    Each folder has the folder-per-domain layout with one domain (``face``), so it loads with
    ``data.datasets.SourceDataset`` / ``ReferenceDataset``. The build report (photos without a face) is
    ``embedded.embedded_face_dir(img_size) / "report.json"``.
    """
    root = embedded.embedded_face_dir(img_size)
    if not _cache_ok(root):
        log.info("building the embedded face set at %d px in %s (first use)", img_size, root)
        build_embedded_faces(img_size, device=device)
    return embedded.split_dirs(img_size)

