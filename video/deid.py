"""De-identify the tracked faces of video frames and paste the result back.

Methods (``METHODS``):

* ``anonymizer``: each face is aligned to the model's 5-point template (:mod:`data.align`, the template the
  Stage II model was trained on) at the model size, imaged through the privacy camera, the Stage I regressor
  predicts its heatmap and the Stage II generator synthesises a new face with the style of ONE reference per
  track (the same new person for the whole track); the new face's low-frequency colour is matched to the frame
  along the mask's soft edge (:func:`harmonize`, unless ``harmonize=False``), then it is warped back with the
  inverse similarity and blended with a feathered elliptical face mask (:func:`face_mask`).
* ``capture``: the aligned face replaced by the privacy camera's capture of it (what the hardware stores),
  pasted back the same way.
* ``reference-warp``: the Stage II issue's non-learned baseline (the reference warped onto the 68 landmarks the
  regressor reads from the capture, :mod:`video.reference_warp`), pasted back the same way; needs a checkpoint
  whose regressor predicts 68 landmark heatmaps.
* ``blur`` / ``pixelate``: the MediaEval 2021 DRSF baselines on the (integer, clipped) face box: ``blur`` =
  box filter of ``level`` x ``level`` px (``cv2.blur``); ``pixelate`` = the box cut into ``level`` x ``level``
  blocks, each replaced by its mean colour.
* ``blur-attack``: ``blur`` followed by the bounded MI-FGSM perturbation of :mod:`video.attack`.

With ``input_is_capture`` the frames already come from the prototype camera: the camera step is skipped (the
aligned crop of the frame IS the capture; ``capture`` then leaves the face as it is).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from data.align import alignment_transform
from video.frames import frames_to_tensor, int_box, tensor_to_frames
from video.parallel import cpu_workers, parallel_map, split

log = logging.getLogger(__name__)

METHODS = ("anonymizer", "capture", "reference-warp", "blur", "pixelate", "blur-attack")
DEFAULT_LEVEL = {"blur": 30, "pixelate": 30, "blur-attack": 30}
"""Default ``--level``: box-filter side [px] (blur), blocks per box side (pixelate), as DRSF's 'blur 30'."""

MASK_CENTRE = (0.5, 0.53)
"""Face-mask ellipse centre in template units (x, y) of the aligned crop."""
MASK_AXES = (0.36, 0.43)
"""Face-mask ellipse semi-axes (x, y) in template units: cheeks to cheeks, forehead to chin."""
MASK_FEATHER = 0.18
"""Width of the mask's soft edge as a fraction of the ellipse radius (smoothstep from 1 to 0)."""
HARMONIZE_SIGMA = 0.125
"""Gaussian width of :func:`harmonize`'s colour-offset field as a fraction of the crop side (16 px at 128 px)."""
HARMONIZE_DOWN = 4
"""The offset field is computed on a grid this many times coarser and upsampled (bilinear): 16x fewer pixels."""
FACES_PER_CALL = 2
"""Faces per Stage II network call inside a worker: two worker threads running 2 faces at a time measured 44 ms
per face against 48-52 ms for 8 (the activations of a small call stay in cache while both cores work)."""
_HARMONIZE_EPS = 1e-2
"""Regulariser of the normalised convolution: far from the edge the offset tends to the edge's mean offset."""


def face_mask(size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(1, 1, S, S) feathered elliptical face mask in [0, 1] in aligned-crop coordinates."""
    r = (torch.arange(size, dtype=torch.float32, device=device) + 0.5) / size
    dx = (r[None, :] - MASK_CENTRE[0]) / MASK_AXES[0]
    dy = (r[:, None] - MASK_CENTRE[1]) / MASK_AXES[1]
    rho = torch.sqrt(dx ** 2 + dy ** 2)
    t = ((1.0 - rho) / MASK_FEATHER).clamp(0, 1)
    return (t * t * (3 - 2 * t))[None, None]


def harmonize(faces: torch.Tensor, crops: torch.Tensor, mask: torch.Tensor,
              sigma: float = HARMONIZE_SIGMA) -> torch.Tensor:
    """Match the low-frequency colour of new faces to the frame along the mask's soft edge.

    Why: a new face of another skin tone and lighting than the frame around it leaves a contrasted seam in the
    mask's feathered band, and that seam moves with the head: on the 60-frame test video it was 29 % of the
    anonymizer's frame-to-frame change from 17 % of the face box (3.7x the original's change per pixel there).
    The colour offset ``crop - face`` is measured in the feathered band (weights ``4 a (1 - a)`` of the mask
    ``a``) and spread over the crop by normalised Gaussian convolution (a smooth membrane-like fill; far from
    the band it tends to the band's mean offset), then added to the face. Detail finer than ``sigma`` stays the
    generator's; only pixels the output shows anyway (the band, where the frame is blended in) are read.

    Args:
        faces: (K, 3, S, S) in [0, 1], new faces in aligned-crop coordinates.
        crops: (K, 3, S, S) in [0, 1], the frame's aligned crops (what surrounds each face in the output).
        mask: (1, 1, S, S) in [0, 1], the blend mask (:func:`face_mask`).
        sigma: offset-field width as a fraction of S.

    Returns:
        (K, 3, S, S) in [0, 1].
    """
    import torch.nn.functional as F
    from kornia.filters import gaussian_blur2d

    if faces.shape != crops.shape:
        raise ValueError(f"harmonize: faces {tuple(faces.shape)} and crops {tuple(crops.shape)} differ")
    if len(faces) == 0:
        return faces
    size = faces.shape[-1]
    # the offset field is smooth (sigma >> 1 px): compute it on a grid HARMONIZE_DOWN times coarser
    down = HARMONIZE_DOWN if size % HARMONIZE_DOWN == 0 and sigma * size / HARMONIZE_DOWN >= 1 else 1
    s = sigma * size / down
    k = 2 * int(round(3 * s)) + 1
    w = (4 * mask * (1 - mask)).to(faces).expand(len(faces), 1, -1, -1)
    diff = (crops - faces) * w
    mean = diff.sum((2, 3), keepdim=True) / w.sum((2, 3), keepdim=True).clamp_min(1e-6)
    if down > 1:
        diff, w = F.avg_pool2d(diff, down), F.avg_pool2d(w, down)
    num = gaussian_blur2d(diff, (k, k), (s, s), border_type="replicate")
    den = gaussian_blur2d(w, (k, k), (s, s), border_type="replicate")
    offset = (num + _HARMONIZE_EPS * mean) / (den + _HARMONIZE_EPS)
    if down > 1:
        offset = F.interpolate(offset, size=(size, size), mode="bilinear", align_corners=False)
    return (faces + offset).clamp(0, 1)


def face_region(matrix: np.ndarray, size: int, width: int, height: int, margin: int = 2
                ) -> tuple[int, int, int, int] | None:
    """The frame rectangle (x0, y0, x1, y1), clipped to the frame, that holds the aligned crop's square mapped
    back into the frame plus ``margin`` px (bilinear sampling reads one pixel beyond a sample), and, where the
    square leaves the frame, the pixels its reflection reads; None when it misses the frame.

    Args:
        matrix: (3, 3) frame px -> crop px (pixel centres at integers).
    """
    inv = np.linalg.inv(np.asarray(matrix, dtype=np.float64))
    c = np.array([[0, 0, 1], [size - 1, 0, 1], [0, size - 1, 1], [size - 1, size - 1, 1]], dtype=np.float64)
    pts = c @ inv[:2].T
    (x0, x1), (y0, y1) = (_reflected_span(int(np.floor(pts[:, a].min())) - margin,
                                          int(np.ceil(pts[:, a].max())) + margin, n)
                          for a, n in ((0, width), (1, height)))
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _reflected_span(lo: int, hi: int, n: int) -> tuple[int, int]:
    """Pixels [lo, hi] of an axis of length n as the half-open in-frame span that also holds their reflections
    (grid_sample's reflection about the edge pixel centres: -x and 2 (n - 1) - x)."""
    if lo < 0:
        hi = max(hi, -lo)
    if hi > n - 1:
        lo = min(lo, 2 * (n - 1) - hi)
    return max(lo, 0), min(hi, n - 1) + 1


def _shift(matrix: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """frame px -> crop px matrix as a region px -> crop px matrix (region origin at frame (x0, y0))."""
    t = np.eye(3)
    t[0, 2], t[1, 2] = x0, y0
    return np.asarray(matrix, dtype=np.float64) @ t


def _region_tensor(frame: np.ndarray, region: tuple[int, int, int, int], device: torch.device) -> torch.Tensor:
    x0, y0, x1, y1 = region
    return frames_to_tensor([frame[y0:y1, x0:x1]], device)


def crop_faces(frames: Sequence[np.ndarray], frame_idx: Sequence[int], matrices: np.ndarray, size: int,
               device: torch.device | str = "cpu") -> tuple[torch.Tensor, list]:
    """Aligned face crops, read from each face's region of its uint8 frame only (no whole-frame float copy).

    Equal to resampling the whole frame: the region holds every pixel bilinear sampling reads, and where the
    crop leaves the frame the region's edge is the frame's edge (reflection padding as for the whole frame).

    Args:
        frames: (H, W, 3) uint8 RGB frames.
        frame_idx: (K,) frame of each face.
        matrices: (K, 3, 3) frame px -> crop px (pixel centres at integers).
        size: crop side S [px].

    Returns:
        ((K, 3, S, S) crops in [0, 1], the K regions of :func:`face_region` (None: the face misses its frame and
        its crop is zeros)).
    """
    from kornia.geometry.transform import warp_affine

    device = torch.device(device)
    crops = torch.zeros(len(frame_idx), 3, size, size, device=device)
    regions = []
    for k, (i, m) in enumerate(zip(frame_idx, matrices)):
        h, w = frames[i].shape[:2]
        region = face_region(m, size, w, h)
        regions.append(region)
        if region is None:
            continue
        shifted = torch.from_numpy(_shift(m, *region[:2])[:2]).float().to(device)[None]
        crops[k] = warp_affine(_region_tensor(frames[i], region, device), shifted, (size, size), mode="bilinear",
                               padding_mode="reflection", align_corners=True)[0].clamp(0, 1)
    return crops, regions


def paste_faces(frames: Sequence[np.ndarray], frame_idx: Sequence[int], matrices: np.ndarray,
                faces: torch.Tensor, mask: torch.Tensor, regions: list) -> list[np.ndarray]:
    """Warp aligned faces back into their frames and blend them with the feathered mask, inside each face's
    region only (outside it the mask is zero: the frame's bytes are kept exactly).

    Args:
        frames: (H, W, 3) uint8 frames (not modified); frame_idx: (K,) frame of each face (faces of one frame
            are blended in order); matrices: (K, 3, 3) frame px -> crop px; faces: (K, 3, S, S) in [0, 1];
            mask: (1, 1, S, S) in [0, 1]; regions: from :func:`crop_faces`.

    Returns:
        the new (H, W, 3) uint8 frames (unchanged frames are the input arrays).
    """
    from kornia.geometry.transform import warp_affine

    out = list(frames)
    size = faces.shape[-1]
    for k, (i, m, region) in enumerate(zip(frame_idx, matrices, regions)):
        if region is None:
            continue
        if out[i] is frames[i]:  # the first face of this frame: write into a copy
            out[i] = np.array(frames[i], copy=True)
        x0, y0, x1, y1 = region
        inv = torch.from_numpy(np.linalg.inv(_shift(m, x0, y0))[:2]).float().to(faces.device)[None]
        dsize = (y1 - y0, x1 - x0)
        both = torch.cat([faces[k:k + 1], mask.to(faces).reshape(1, 1, size, size)], 1)  # one warp: face + mask
        warped = warp_affine(both, inv, dsize, mode="bilinear", padding_mode="zeros", align_corners=True)
        back, alpha = warped[:, :3], warped[:, 3:]
        roi = _region_tensor(out[i], region, faces.device)
        blended = roi * (1 - alpha) + back * alpha
        out[i][y0:y1, x0:x1] = tensor_to_frames(blended)[0]
    return out


def blur_box(frame: np.ndarray, box: np.ndarray, level: int) -> np.ndarray:
    """DRSF blur: ``cv2.blur`` with a ``level`` x ``level`` box kernel inside the face box (uint8 frame copy)."""
    import cv2

    out = frame.copy()
    b = int_box(box, frame.shape[1], frame.shape[0])
    if b is not None:
        x1, y1, x2, y2 = b
        out[y1:y2, x1:x2] = cv2.blur(np.ascontiguousarray(frame[y1:y2, x1:x2]), (int(level), int(level)))
    return out


def pixelate_box(frame: np.ndarray, box: np.ndarray, level: int) -> np.ndarray:
    """DRSF pixelate: the face box cut into ``level`` x ``level`` blocks, each set to its mean colour."""
    out = frame.copy()
    b = int_box(box, frame.shape[1], frame.shape[0])
    if b is None:
        return out
    x1, y1, x2, y2 = b
    xs = np.linspace(x1, x2, int(level) + 1).astype(int)
    ys = np.linspace(y1, y2, int(level) + 1).astype(int)
    for ya, yb in zip(ys[:-1], ys[1:]):
        for xa, xb in zip(xs[:-1], xs[1:]):
            if yb > ya and xb > xa:
                out[ya:yb, xa:xb] = frame[ya:yb, xa:xb].reshape(-1, 3).mean(0).round().astype(np.uint8)
    return out


@dataclass
class Anonymizer:
    """The Stage II model pieces (from ``anonymizer.stage2.sampling.load_anonymizer``) and the references.

    Attributes:
        nets: EMA networks; camera: the privacy camera; regressor: the frozen heatmap regressor.
        refs: (R, 3, S, S) in [0, 1] aligned reference faces (public people, one picked per track).
        img_size: S [px], the model's side.
        ref_files: optional image file of each reference: its dlib landmarks are then read from (or written to)
            the teacher's disk cache when the reference is first used; None: dlib runs on the tensor.
    """

    nets: nn.Module
    camera: nn.Module
    regressor: nn.Module
    refs: torch.Tensor
    img_size: int
    ref_files: Sequence[Path] | None = None


def face_noise_generator(seed: int, ordinal: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The sensor-noise generator of the ``ordinal``-th face (in frame order, then detection order) of a run:
    seeded from ``SeedSequence([seed, ordinal])``, so every face's capture depends on the seed and its own
    position only (the same frame by frame, batched, and on any number of workers)."""
    state = np.random.SeedSequence([int(seed), int(ordinal)]).generate_state(1, np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) >> 1)


def _frame_parts(frame_idx: Sequence[int], workers: int) -> list[slice]:
    """The faces (ordered by frame) cut into at most ``workers`` contiguous parts of whole frames: the faces of
    one frame are pasted into one copy of it, in order, by one worker."""
    starts = [k for k in range(len(frame_idx)) if k == 0 or frame_idx[k] != frame_idx[k - 1]]
    groups = split(len(starts), workers)
    ends = starts[1:] + [len(frame_idx)]
    return [slice(starts[g.start], ends[g.stop - 1]) for g in groups]


class Deidentifier:
    """Apply one method to frames with their tracked faces.

    Args:
        method: one of :data:`METHODS`.
        level: blur kernel side [px] / pixelate blocks per side (blur, pixelate, blur-attack).
        model: :class:`Anonymizer` (anonymizer, capture, reference-warp).
        input_is_capture: frames come from the prototype camera (skip the simulated camera).
        seed: picks the reference of each track (``default_rng([seed, track_id])``) and seeds the sensor noise
            of the run's n-th face (:func:`face_noise_generator`): the output does not depend on the batch size.
        device: where the networks run.
        attack: :class:`video.attack.AttackConfig` for blur-attack (default config when None).
        harmonize: anonymizer only: match the new face's low-frequency colour to the frame at the mask's edge
            (:func:`harmonize`).
    """

    def __init__(self, method: str, level: int | None = None, model: Anonymizer | None = None,
                 input_is_capture: bool = False, seed: int = 0, device: str | torch.device = "cpu",
                 attack=None, harmonize: bool = True) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r} (choose {', '.join(METHODS)})")
        if method in ("anonymizer", "capture", "reference-warp") and model is None:
            raise ValueError(f"method {method} needs the Stage II model (an Anonymizer)")
        self.level = int(level if level is not None else DEFAULT_LEVEL.get(method, 0))
        if method in DEFAULT_LEVEL and self.level < 1:
            raise ValueError(f"--level must be >= 1 for {method}, got {self.level}")
        if method == "reference-warp":
            from video.reference_warp import available, check_regressor

            if not available():
                raise RuntimeError("method reference-warp is not available yet: the Stage II reference-warp "
                                   "baseline (anonymizer.stage2.sampling.reference_warp) is not in this checkout")
            check_regressor(model.regressor, model.img_size, device)
        self.method, self.model, self.input_is_capture = method, model, bool(input_is_capture)
        self.seed, self.device = int(seed), torch.device(device)
        self._mask = face_mask(model.img_size, self.device) if model is not None else None
        self._camera = None if input_is_capture or model is None else model.camera
        self._faces_done = 0
        self.attack = attack
        self.harmonize = bool(harmonize)
        self._ref_points: dict[int, torch.Tensor] = {}
        self._style_codes: dict[int, torch.Tensor] = {}
        self.last_attack_stats: list[dict] = []

    def reference_index(self, track_id: int) -> int:
        """Index into ``model.refs`` of the reference used for a track (fixed for the whole track)."""
        return int(np.random.default_rng([self.seed, int(track_id)]).integers(len(self.model.refs)))

    def __call__(self, frames: Sequence[np.ndarray], tracks: Sequence[Sequence]) -> list[np.ndarray]:
        """De-identify a run of frames.

        Args:
            frames: (H, W, 3) uint8 RGB.
            tracks: per frame, its :class:`video.tracking.TrackedFace` list.

        Returns:
            the new (H, W, 3) uint8 frames (frames without a face come back unchanged).
        """
        if self.method in ("blur", "pixelate", "blur-attack"):
            fn = pixelate_box if self.method == "pixelate" else blur_box
            out = []
            for frame, faces in zip(frames, tracks):
                f = frame
                for face in faces:
                    f = fn(f, face.box, self.level)
                out.append(f)
            if self.method == "blur-attack" and any(tracks):
                from video.attack import AttackConfig, attack_frames

                out, self.last_attack_stats = attack_frames(frames, out, tracks, self.attack or AttackConfig(),
                                                            device=self.device)
            return out
        items = [(i, f) for i, faces in enumerate(tracks) for f in faces]
        if not items:
            return [np.asarray(f) for f in frames]
        s = self.model.img_size
        idx = [i for i, _ in items]
        mats = np.stack([alignment_transform(f.landmarks, s) for _, f in items])
        first = self._faces_done  # the run's ordinal of this batch's first face: seeds its sensor noise
        self._faces_done += len(items)
        make = self._face_maker([f.track_id for _, f in items])
        base = [np.asarray(f) for f in frames]
        parts = _frame_parts(idx, cpu_workers(self.device))

        def run(faces: slice) -> list[np.ndarray]:  # whole frames: crop, capture, new faces, paste into copies
            crops, regions = crop_faces(base, idx[faces], mats[faces], s, self.device)
            new = make(faces, self._capture(crops, range(first + faces.start, first + faces.stop)))
            if self.method == "anonymizer" and self.harmonize:
                new = harmonize(new, crops, self._mask)
            return paste_faces(base, idx[faces], mats[faces], new, self._mask, regions)

        out = list(base)
        with torch.no_grad():  # (the workers run under no_grad anyway; one part runs on this thread)
            done = parallel_map(lambda k: run(parts[k.start]), len(parts), len(parts))
        for faces, pasted in zip(parts, done):
            for i in set(idx[faces]):
                out[i] = pasted[i]
        return out

    def _capture(self, crops: torch.Tensor, ordinals: range) -> torch.Tensor:
        """The privacy camera's captures of aligned crops (the crops themselves for ``input_is_capture``); the
        sensor noise of the run's n-th face comes from its own generator (:func:`face_noise_generator`), so
        the captures do not depend on the batch size or on how a batch is split over the workers."""
        if self._camera is None:
            return crops
        return self._camera(crops, generator=[face_noise_generator(self.seed, n, crops.device) for n in ordinals])

    @torch.no_grad()
    def _face_maker(self, track_ids: list[int]) -> Callable[[slice, torch.Tensor], torch.Tensor]:
        """``make(faces, captures)``: the new faces of the batch's faces ``faces`` from their captures (on
        :func:`video.parallel.parallel_map`'s workers). The per-reference work (style codes, reference
        landmarks, both cached) runs here, once per batch."""
        m = self.model
        if self.method == "capture":
            return lambda ix, captures: captures.clamp(0, 1)
        which = [self.reference_index(t) for t in track_ids]
        refs = m.refs[which].to(self.device)
        points = self._reference_points(which)
        if self.method == "reference-warp":
            from video.reference_warp import reference_warp

            return lambda ix, captures: reference_warp(captures, m.regressor, refs[ix], ref_points=points[ix])
        from anonymizer.stage2.sampling import anonymize

        styles = self._styles(which)
        return lambda ix, captures: anonymize(
            m.nets, nn.Identity(), m.regressor, captures, refs[ix], paired=True, batch_size=FACES_PER_CALL,
            ref_points=None if points is None else points[ix], styles=styles[ix]).outputs

    def _styles(self, which: list[int]) -> torch.Tensor:
        """(K, style_dim) style codes of the references ``which`` (the style encoder runs once per reference and
        is cached: a track keeps its reference)."""
        missing = sorted(set(which) - set(self._style_codes))
        if missing:
            refs = self.model.refs[missing].to(self.device)
            codes = self.model.nets.style_encoder(refs, torch.zeros(len(missing), dtype=torch.long,
                                                                     device=self.device))
            self._style_codes.update(zip(missing, codes))
        return torch.stack([self._style_codes[i] for i in which])

    def _reference_points(self, which: list[int]) -> torch.Tensor | None:
        """(K, 68, 2) dlib landmarks [px] of the references ``which``, found once per reference and cached
        (dlib's predictor would otherwise be loaded and run on every batch)."""
        if self.method == "anonymizer" and not getattr(self.model.nets.generator, "reference_input", False):
            return None
        missing = sorted(set(which) - set(self._ref_points))
        if missing and self.model.ref_files is not None:  # the teacher's disk cache: dlib only for unseen files
            from anonymizer.stage1.teacher import LandmarkTeacher

            found = LandmarkTeacher("dlib").landmarks_for_files([self.model.ref_files[i] for i in missing],
                                                                 self.model.img_size).landmarks
            self._ref_points.update(zip(missing, torch.from_numpy(found)))
        elif missing:
            from anonymizer.stage2.sampling import reference_landmarks

            self._ref_points.update(zip(missing, reference_landmarks(self.model.refs[missing])))
        return torch.stack([self._ref_points[i] for i in which]).to(self.device, torch.float32)
