"""``--mode video``: de-identify the faces of a video through the privacy camera (or a DRSF baseline).

``python main.py --mode video --input IN.mp4 --output OUT.mp4 [--json OUT.json] [--method M] [--level N]
[--ref_dir DIR] [--checkpoint_dir CKPT] [--input_is_capture] [--batch_size 16]``

1. Pass 1: MTCNN on every frame (batched over ``--batch_size`` frames), IoU tracking (tracks survive 5 missed
   frames; the gap is interpolated); each track's boxes and landmarks smoothed by a constant-velocity Kalman +
   RTS smoother (:mod:`video.smoothing`) for the alignment.
2. Pass 2: frames de-identified batch by batch (:class:`video.deid.Deidentifier`) and encoded with the input's
   frame rate, size and audio (:class:`video.io.VideoWriter`, atomic). Frames without a face are written
   unchanged and counted.
3. ``--json``: per-frame attributes (DRSF layout, :mod:`video.attributes`) measured on the WRITTEN output
   (after H.264 encoding, what a recipient gets); without ``--output`` they describe the input.

References (``anonymizer``, ``reference-warp``): aligned face images in ``--ref_dir`` (searched recursively,
resized to the model size), by default the training split of the embedded face set (people other than the
held-out ones); one reference per track, picked from ``--seed`` and the track id.
"""
from __future__ import annotations

import argparse
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipelines.common import SHIPPED_ANONYMIZER, measured_psf, resolve_device, seed_everything

log = logging.getLogger(__name__)

MAX_REFS = 64
"""References loaded from --ref_dir (the first, by file name)."""

DISTINCTIVE_REFS = 16
"""Default pool size of ``--ref_pick distinctive`` (chosen among the first :data:`MAX_REFS`)."""

SMOOTHING = "kalman"
"""How a track's box and landmarks are smoothed for the de-identification pass (:func:`video.tracking.smooth_tracks`;
the alignment follows the head, not MTCNN's jitter). On the benchmark videos the RTS smoother's 5-landmark error
against the known motion is 0.78 / 1.04 px rms (raw MTCNN 1.26 / 1.71, a +-2 frame mean 1.10 / 1.31) with a
tenth of the mean's frame-to-frame jitter."""

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi")


def load_refs(ref_dir: str | None, img_size: int, limit: int = MAX_REFS) -> tuple[torch.Tensor, Path, list[Path]]:
    """(R, 3, S, S) reference faces in [0, 1] from a folder (default: the embedded training faces), loaded as the
    training pipeline loads images (``data.datasets.load_image``: resize + centre crop), with their files.

    Raises:
        FileNotFoundError / ValueError: no folder, or no readable image in it (names the folder).
    """
    from data.datasets import load_image
    from data.images import list_images

    if ref_dir is None:
        from pipelines.faces import default_face_dirs

        folder = default_face_dirs(img_size)[0]
    else:
        folder = Path(ref_dir)
    files = list_images(folder, recursive=True)[:limit]
    if not files:
        raise ValueError(f"{folder}: no reference images (png / jpg) in this folder")
    return torch.stack([load_image(f, img_size) for f in files]).clamp(0, 1), folder, [Path(f) for f in files]


def reference_pool(ref_dir: str | None, img_size: int, pick: str = "first", num: int | None = None
                   ) -> tuple[torch.Tensor, Path, list[Path]]:
    """The references one per track is drawn from: the first ``num`` of :func:`load_refs` by file name, or
    (``pick="distinctive"``) the ``num`` of up to :data:`MAX_REFS` loaded ones least like the others in dlib's
    embedding (:func:`metrics.reference_transfer.distinctive_references`, each scored against the whole loaded
    set), so that the new faces rarely match a real person (benchmarks/stage2_reference.py measures both)."""
    num = (MAX_REFS if pick == "first" else DISTINCTIVE_REFS) if num is None else int(num)
    if num < 1:
        raise ValueError(f"--num_refs must be >= 1, got {num}")
    if pick not in ("first", "distinctive"):
        raise ValueError(f"--ref_pick must be first or distinctive, got {pick!r}")
    refs, folder, files = load_refs(ref_dir, img_size, MAX_REFS if pick == "distinctive" else num)
    if pick == "distinctive" and len(refs) > num:
        from metrics.identity import FaceEmbedder
        from metrics.reference_transfer import distinctive_references

        emb, found = FaceEmbedder().embed([r.permute(1, 2, 0).numpy() for r in refs], return_found=True)
        if not found.any():
            raise ValueError(f"{folder}: dlib finds no face in any reference image")
        keep = np.flatnonzero(found)
        chosen = keep[distinctive_references(emb[keep], emb[keep], min(num, len(keep)))]
        log.info("reference pool: the %d most distinctive of %d references (%d without a dlib face)", len(chosen),
                 len(refs), int((~found).sum()))
        refs, files = refs[torch.from_numpy(chosen)], [files[i] for i in chosen]
    return refs, folder, files


def build_deidentifier(args: argparse.Namespace, device: torch.device):
    """The :class:`video.deid.Deidentifier` of ``--method`` (loads the Stage II model when it needs one)."""
    from video.attack import AttackConfig
    from video.deid import Anonymizer, Deidentifier

    model = None
    if args.method in ("anonymizer", "capture", "reference-warp"):
        from anonymizer.stage2.sampling import load_anonymizer

        ckpt = Path(args.checkpoint_dir) if args.checkpoint_dir else SHIPPED_ANONYMIZER
        nets, camera, regressor, meta = load_anonymizer(ckpt, device=device, noise=not args.no_noise,
                                                        psf=measured_psf(args.psf))
        size = int(meta["model"]["img_size"])
        refs, folder, files = (reference_pool(args.ref_dir, size, args.ref_pick, args.num_refs)
                               if args.method != "capture" else (torch.zeros(1, 3, size, size), None, None))
        log.info("Stage II model %s (%d px); %d reference(s)%s", meta["path"], size, len(refs),
                 f" from {folder}" if folder else "")
        model = Anonymizer(nets, camera, regressor, refs.to(device), size, files)
    if args.attack_epsilon <= 0 or args.attack_steps < 1:
        raise ValueError(f"--attack_epsilon must be > 0 and --attack_steps >= 1, got {args.attack_epsilon}, "
                         f"{args.attack_steps}")
    attack = AttackConfig(epsilon=args.attack_epsilon / 255.0, steps=args.attack_steps, seed=args.seed)
    return Deidentifier(args.method, level=args.level, model=model, input_is_capture=args.input_is_capture,
                        seed=args.seed, device=device, attack=attack,
                        harmonize=not args.no_harmonize)


def _check_paths(args: argparse.Namespace) -> None:
    inp = Path(args.input)
    for name in ("output", "json"):
        value = getattr(args, name)
        if value and Path(value).resolve() == inp.resolve():
            raise ValueError(f"--{name} {value}: would overwrite the input video")
        if value and Path(value).exists() and not getattr(args, "overwrite", False):
            raise ValueError(f"--{name} {value} already exists; give --overwrite to replace it")
    if args.output and Path(args.output).suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"--output {args.output}: use a video suffix ({', '.join(VIDEO_SUFFIXES)})")
    if args.json and Path(args.json).suffix.lower() != ".json":
        raise ValueError(f"--json {args.json}: expected a .json file name")
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}")


def run(args: argparse.Namespace) -> dict:
    from video.attributes import LandmarkExtractor, save_attributes
    from video.extract import chunks, detect_tracks, extract_file
    from video.io import VideoWriter, probe, read_frames
    from video.parallel import prefetch
    from video.tracking import FrameDetector, smooth_tracks

    start = time.perf_counter()
    _check_paths(args)
    info = probe(args.input)  # a missing / empty / corrupt input fails here, before any model is loaded
    device = resolve_device(args.device)
    seed_everything(args.seed)
    detector = FrameDetector(device=str(device), batch_size=args.batch_size)
    deid = build_deidentifier(args, device) if args.output else None
    t_detect = time.perf_counter()
    tracks = detect_tracks(args.input, detector, desc="detect + track")
    t_detect = time.perf_counter() - t_detect
    with_face = sum(1 for t in tracks if t)
    stats = {"input": str(args.input), "frames": len(tracks), "fps": float(info.fps), "width": info.width,
             "height": info.height, "audio": info.has_audio, "frames_with_face": with_face,
             "frames_without_face": len(tracks) - with_face,
             "interpolated_faces": sum(f.interpolated for t in tracks for f in t),
             "tracks": len({f.track_id for t in tracks for f in t}),
             "detect_frames_per_s": len(tracks) / max(t_detect, 1e-9)}
    if args.output:
        stats["method"] = args.method
        done = 0
        aligned = smooth_tracks(tracks, SMOOTHING)
        t0 = time.perf_counter()
        with VideoWriter(args.output, info.fps, info.width, info.height, audio_from=args.input) as writer, \
                tqdm(total=len(tracks), desc=f"de-identify ({args.method})", unit="frame") as bar, \
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode") as encoder:
            # decoding the next batch and encoding the last one overlap with this batch's de-identification
            encoded = None
            for batch in prefetch(chunks(read_frames(args.input), args.batch_size)):
                out = deid(batch, aligned[done:done + len(batch)])
                if encoded is not None:
                    encoded.result()  # in order, one batch at a time; re-raises an encoder error here
                encoded = encoder.submit(lambda frames: [writer.write(f) for f in frames], out)
                done += len(batch)
                bar.update(len(batch))
            if encoded is not None:
                encoded.result()
        if done != len(tracks):
            raise RuntimeError(f"{args.input}: {done} frames in pass 2 but {len(tracks)} in pass 1")
        stats["deid_frames_per_s"] = done / max(time.perf_counter() - t0, 1e-9)
        stats["output"] = str(args.output)
    if args.json:
        target = args.output or args.input
        attrs = extract_file(target, detector, LandmarkExtractor(),
                             tracks=None if args.output else tracks)
        save_attributes(args.json, attrs)
        stats["json"] = str(args.json)
        stats["json_describes"] = str(target)
    stats["seconds"] = time.perf_counter() - start
    log.info("video: %d frames (%d with a face, %d without: written unchanged; %d gap-filled faces, %d track(s))"
             "%s in %.1f s", stats["frames"], with_face, stats["frames_without_face"], stats["interpolated_faces"],
             stats["tracks"], f" -> {args.output} ({args.method}, {stats['deid_frames_per_s']:.2f} frames/s)"
             if args.output else "", stats["seconds"])
    return stats
