"""``--mode video_eval``: DRSF metrics of a de-identified video against the original, frame by frame.

``python main.py --mode video_eval --gt GT.json --pred PRED.json --out DIR`` compares two attribute files
(:mod:`video.attributes` layout); ``--gt_video IN.mp4 --pred_video OUT.mp4`` extracts the attributes of both
videos first (written as ``gt.json`` / ``pred.json`` in DIR) and adds dlib re-identification of the output faces
against the original's and the temporal flicker (:mod:`video.evaluate`). Written to ``--out``:
``frames.csv`` (one row per original face per frame), ``summary.json``, ``metrics.png`` and
``plot_<metric>.png`` (each metric over time).
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from pipelines.common import resolve_device

log = logging.getLogger(__name__)

SUMMARY_KEYS = ("detection_rate", "iou", "landmarks_px", "pose_error_deg", "euler_cosine", "gaze_error_deg",
                "diffscore", "reid_same_person_rate", "reid_rank1", "reid_mean_distance", "flicker_ratio",
                "flicker_ratio_texture")


def run(args: argparse.Namespace) -> dict:
    from video.attributes import LandmarkExtractor, load_attributes, save_attributes
    from video.evaluate import evaluate_attributes, identity_and_flicker, merge_rows, write_report
    from video.extract import extract_file
    from video.io import probe, read_frames
    from video.tracking import FrameDetector

    start = time.perf_counter()
    out = Path(args.out or "results/video_eval")
    from_video = bool(args.gt_video and args.pred_video)
    if from_video:
        for p in (args.gt_video, args.pred_video):
            probe(p)  # clear error for a missing / corrupt file before the long passes
        detector = FrameDetector(device=str(resolve_device(args.device)), batch_size=args.batch_size)
        extractor = LandmarkExtractor()
        gt = extract_file(args.gt_video, detector, extractor)
        pred = extract_file(args.pred_video, detector, extractor)
        save_attributes(out / "gt.json", gt)
        save_attributes(out / "pred.json", pred)
    else:
        gt, pred = load_attributes(args.gt), load_attributes(args.pred)
    if len(gt) != len(pred):
        log.warning("frame counts differ: ground truth %d, prediction %d (missing frames count as misses)",
                    len(gt), len(pred))
    rows, summary = evaluate_attributes(gt, pred)
    summary["source"] = ({"gt_video": args.gt_video, "pred_video": args.pred_video} if from_video
                         else {"gt": args.gt, "pred": args.pred})
    if from_video:
        from metrics.identity import FaceEmbedder

        extra, ident = identity_and_flicker(read_frames(args.gt_video), read_frames(args.pred_video), gt,
                                            FaceEmbedder())
        rows = merge_rows(rows, extra)
        summary.update(ident)
    summary["seconds"] = time.perf_counter() - start
    write_report(out, rows, summary, title=Path(args.pred_video or args.pred).name)
    lines = [f"{k}: {summary[k]:.4g}" for k in SUMMARY_KEYS if isinstance(summary.get(k), float)]
    print("\n".join(lines))
    log.info("video_eval: %d faces in %d frames, %d misses; written to %s in %.1f s", summary["faces"],
             summary["frame_count_gt"], summary["misses"], out, summary["seconds"])
    return summary
