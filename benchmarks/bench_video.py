"""Video de-identification: speed (batched vs frame by frame) and the DRSF table of every method side by side.

1. Speed: a 640 x 480 video with one real face (``--speed_frames``, default 120), the whole ``--mode video``
   chain (detect + track, de-identify with the shipped anonymizer, encode) with ``--batch_size 16`` against
   ``--batch_size 1`` (``--speed_rounds`` round-robin pairs, medians), on ``--threads`` torch threads (2 = the
   project's CPU budget). The load average is printed with it: the machine is shared, and absolute frames/s
   depend on it.
2. Quality: on the 60-frame 320 x 240 test video (the one tests/video builds) and a longer 640 x 480 one
   (``--long_frames``, another held-out person), every method's output video is evaluated against the
   original with ``video_eval``'s metrics (attributes extracted from both videos after H.264 encoding):
   detection rate, box IoU, 68-landmark distance [px], head-pose error [deg], DRSF diffscore, dlib's own
   detection rate, dlib re-identification (same-person rate under 0.6; rank-1 against a gallery of the
   original plus the other held-out people as distractors) and the flicker ratio (raw and texture-normalised).
   For blur-attack the frames are also checked before encoding (:func:`video.attack.preservation`): what the
   victim (MTCNN) and dlib (not targeted) read from blur alone vs blur + attack.

    python benchmarks/bench_video.py [--threads 2] [--long_frames 150] [--out results/bench_video] [--figures docs]
        [--skip_speed | --skip_quality]

On a shared machine, torch with 2 threads can be far slower than with 1 (OpenMP spin-waits for a descheduled
partner thread; tests/conftest.py measured 45x): compare --threads 1 and 2 and read the printed load.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data.files import save_figure, save_json, save_text  # noqa: E402
from data.images import list_images, read_image  # noqa: E402

METHODS = [("anonymizer", None), ("capture", None), ("reference-warp", None), ("blur", 30), ("pixelate", 30),
           ("blur-attack", 30)]
COLUMNS = ["detection_rate", "iou", "landmarks_px", "pose_error_deg", "diffscore", "dlib_detection_rate",
           "reid_same_person_rate", "reid_rank1", "flicker_ratio", "flicker_ratio_texture"]


def held_out_faces() -> list[np.ndarray]:
    from pipelines.faces import default_face_dirs

    return [read_image(p) for p in list_images(default_face_dirs(128)[1], recursive=True)]


def make_video(path: Path, face: np.ndarray, frames: int, width: int, height: int, zoom: float) -> Path:
    from video.synthetic import Motion, default_motion, write_moving_face_video

    m = default_motion(frames, width, height)
    m = Motion(m.angle, m.scale * zoom, m.cx, m.cy)
    return write_moving_face_video(path, face, m, width, height)


def args_for(inp: Path, out: Path | None, method: str, level: int | None, batch: int, json_path=None):
    return argparse.Namespace(input=str(inp), output=str(out) if out else None, json=json_path, method=method,
                              level=level, ref_dir=None, checkpoint_dir=None, input_is_capture=False,
                              batch_size=batch, device="cpu", seed=777, no_noise=False, psf=None,
                              attack_epsilon=8.0, attack_steps=20, no_harmonize=False, ref_pick="first",
                              num_refs=None, overwrite=True)


def speed(tmp: Path, face: np.ndarray, frames: int, rounds: int = 3) -> dict:
    """Frames/s of the whole run, frame by frame and batched, timed round robin (``rounds`` pairs, so that a
    changing machine load hits both alike): medians over the rounds and the median of the per-round ratios."""
    from pipelines import video as video_mode

    src = make_video(tmp / "speed_640.mp4", face, frames, 640, 480, 1.8)
    res = {"frames": frames, "size": "640x480", "threads": torch.get_num_threads(), "rounds": rounds}
    # warm-up on 4 frames: the first run in a process pays the imports (torch, kornia, dlib: ~15 s), which
    # would otherwise be charged to whichever configuration is timed first
    warm = make_video(tmp / "speed_warmup.mp4", face, 4, 640, 480, 1.8)
    for batch in (1, 16):
        video_mode.run(args_for(warm, tmp / f"speed_warmup_{batch}.mp4", "anonymizer", None, batch))
    runs: dict[str, list[dict]] = {"frame_by_frame": [], "batched": []}
    for _ in range(rounds):
        for label, batch in (("frame_by_frame", 1), ("batched", 16)):
            load0 = os.getloadavg()[0]
            t0 = time.perf_counter()
            stats = video_mode.run(args_for(src, tmp / f"speed_{label}.mp4", "anonymizer", None, batch))
            wall = time.perf_counter() - t0
            runs[label].append({"frames_per_s": frames / wall, "seconds": wall,
                                "deid_pass_frames_per_s": stats["deid_frames_per_s"],
                                "detect_pass_frames_per_s": stats["detect_frames_per_s"], "load_avg_before": load0})
    for label, batch in (("frame_by_frame", 1), ("batched", 16)):
        res[label] = {"batch_size": batch, "runs": runs[label],
                      **{k: float(np.median([r[k] for r in runs[label]]))
                         for k in ("frames_per_s", "deid_pass_frames_per_s", "detect_pass_frames_per_s",
                                   "load_avg_before")}}
    ratios = [b["frames_per_s"] / f["frames_per_s"] for f, b in zip(runs["frame_by_frame"], runs["batched"])]
    res["ratios_per_round"] = ratios
    res["ratio_batched_vs_frame_by_frame"] = float(np.median(ratios))
    return res


def quality(tmp: Path, name: str, src: Path, distractors: np.ndarray, detector, extractor, embedder) -> dict:
    from pipelines import video as video_mode
    from video.attack import preservation
    from video.deid import blur_box
    from video.evaluate import evaluate_attributes, identity_and_flicker, merge_rows
    from video.extract import detect_tracks, extract_file
    from video.io import read_frames, read_video

    gt = extract_file(src, detector, extractor)
    table, rows_by_method = {}, {}
    for method, level in METHODS:
        out = tmp / f"{name}_{method}.mp4"
        t0 = time.perf_counter()
        stats = video_mode.run(args_for(src, out, method, level, 16))
        pred = extract_file(out, detector, extractor)
        rows, summary = evaluate_attributes(gt, pred)
        extra, ident = identity_and_flicker(read_frames(src), read_frames(out), gt, embedder, distractors)
        summary.update(ident)
        summary["deid_frames_per_s"] = stats["deid_frames_per_s"]
        summary["seconds"] = time.perf_counter() - t0
        table[f"{method} {level}" if level else method] = summary
        rows_by_method[method] = merge_rows(rows, extra)
        print(f"  {name} {method}: " + ", ".join(f"{k} {summary[k]:.3g}" for k in COLUMNS
                                                  if isinstance(summary.get(k), float)), flush=True)
    frames = read_video(src)
    tracks = detect_tracks(src, detector)
    blurred = [blur_box(f, t[0].box, 30) if t else f for f, t in zip(frames, tracks)]
    attacked = read_video(tmp / f"{name}_blur-attack.mp4")
    pres = preservation(frames, {"blur 30 (in memory)": blurred, "blur-attack (after H.264)": attacked},
                        detector, extractor)
    return {"table": table, "rows": rows_by_method, "preservation": pres, "frames": len(frames)}


def markdown(table: dict) -> str:
    head = "| method | " + " | ".join(COLUMNS) + " |\n|---|" + "---|" * len(COLUMNS) + "\n"
    body = ""
    for m, s in table.items():
        body += f"| {m} | " + " | ".join("-" if s.get(k) is None else f"{s[k]:.3g}" for k in COLUMNS) + " |\n"
    return head + body


def frames_figure(src: Path, outs: dict[str, Path], idx: list[int]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from video.io import read_video

    cols = {"original": read_video(src), **{k: read_video(v) for k, v in outs.items()}}
    fig, axes = plt.subplots(len(idx), len(cols), figsize=(2.6 * len(cols), 2.0 * len(idx)), squeeze=False)
    for j, (name, frames) in enumerate(cols.items()):
        for i, t in enumerate(idx):
            axes[i, j].imshow(frames[t])
            axes[i, j].axis("off")
            if i == 0:
                axes[i, j].set_title(name, fontsize=9)
    fig.tight_layout()
    return fig


def metrics_figure(rows_by_method: dict, metrics=("iou", "landmarks_px", "pose_error_deg", "flicker_pred")):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(metrics), 1, figsize=(8, 1.9 * len(metrics)), sharex=True)
    for ax, m in zip(axes, metrics):
        for method, rows in rows_by_method.items():
            y = np.array([np.nan if r.get(m) is None else r[m] for r in rows], float)
            ax.plot([r["frame_id"] for r in rows], y, lw=1.1, label=method)
        if m == "flicker_pred":
            rows = next(iter(rows_by_method.values()))
            ax.plot([r["frame_id"] for r in rows], [np.nan if r.get("flicker_gt") is None else r["flicker_gt"]
                                                    for r in rows], "k--", lw=1, label="original")
        ax.set_ylabel(m, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=6, loc="lower left")
    axes[-1].set_xlabel("frame")
    fig.tight_layout()
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--speed_frames", type=int, default=120,
                   help="frames of the speed video (120 = 5 s at 24 fps; the start-up, model loading and the "
                        "first decode / last encode of a batch, weighs more on shorter ones)")
    p.add_argument("--speed_rounds", type=int, default=5, help="round-robin pairs of speed runs (medians)")
    p.add_argument("--long_frames", type=int, default=150)
    p.add_argument("--out", default="results/bench_video")
    p.add_argument("--figures", default=None, help="folder for video_frames.png / video_metrics.png (e.g. docs)")
    p.add_argument("--skip_speed", action="store_true")
    p.add_argument("--skip_quality", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    import logging

    logging.basicConfig(level=logging.WARNING)
    from metrics.identity import FaceEmbedder
    from video.attributes import LandmarkExtractor
    from video.tracking import FrameDetector

    out = Path(a.out)
    tmp = out / "videos"
    tmp.mkdir(parents=True, exist_ok=True)
    faces = held_out_faces()
    result = {"load_avg_start": os.getloadavg(), "threads": a.threads, "cpu_count": os.cpu_count()}
    if not a.skip_speed:
        result["speed"] = speed(tmp, faces[1], a.speed_frames, a.speed_rounds)
        s = result["speed"]
        print(f"speed 640x480 ({a.threads} threads): batched {s['batched']['frames_per_s']:.2f} frames/s, "
              f"frame by frame {s['frame_by_frame']['frames_per_s']:.2f} frames/s, "
              f"ratio {s['ratio_batched_vs_frame_by_frame']:.2f}x (median of {s['rounds']} round-robin pairs: "
              f"{', '.join(f'{r:.2f}' for r in s['ratios_per_round'])}; load {s['batched']['load_avg_before']:.1f}); "
              f"detect pass {s['batched']['detect_pass_frames_per_s']:.2f} vs "
              f"{s['frame_by_frame']['detect_pass_frames_per_s']:.2f} frames/s, de-identification pass "
              f"{s['batched']['deid_pass_frames_per_s']:.2f} vs {s['frame_by_frame']['deid_pass_frames_per_s']:.2f}",
              flush=True)
    if a.skip_quality:
        result["load_avg_end"] = os.getloadavg()
        save_json(out / "bench_video.json", result)
        return
    detector, extractor, embedder = FrameDetector(batch_size=16), LandmarkExtractor(), FaceEmbedder()
    # distractor gallery: the other held-out people (not in either video)
    chips = [(f * 255 + 0.5).astype(np.uint8) for f in faces[2:]]
    dets = detector.detect(chips)
    imgs = [f for f, d in zip(faces[2:], dets) if d]
    lms = [extractor.landmarks(c, d[0].box)[0] for c, d in zip(chips, dets) if d]
    distractors = embedder.embed(imgs, lms)
    videos = {"test_60f_320x240": make_video(tmp / "test_60f.mp4", faces[0], 60, 320, 240, 1.0),
              f"long_{a.long_frames}f_640x480": make_video(tmp / "long.mp4", faces[1], a.long_frames, 640, 480, 1.8)}
    result["quality"] = {}
    for name, src in videos.items():
        q = quality(tmp, name, src, distractors, detector, extractor, embedder)
        result["quality"][name] = {k: v for k, v in q.items() if k != "rows"}
        result["quality"][name]["distractors"] = len(distractors)
        save_json(out / f"rows_{name}.json", q["rows"])
        if a.figures and name.startswith("long"):
            n = q["frames"]
            outs = {m if lv is None else f"{m} {lv}": tmp / f"{name}_{m}.mp4" for m, lv in METHODS}
            save_figure(Path(a.figures) / "video_frames.png", frames_figure(src, outs, [0, n // 4, n // 2]), dpi=80)
            save_figure(Path(a.figures) / "video_metrics.png", metrics_figure(q["rows"]), dpi=100)
    result["load_avg_end"] = os.getloadavg()
    save_json(out / "bench_video.json", result)
    text = ""
    for name, q in result["quality"].items():
        text += f"\n### {name} ({q['frames']} frames; rank-1 gallery: original + {q['distractors']} distractors)\n\n"
        text += markdown(q["table"]) + "\nblur-attack, what each detector reads (vs the original):\n\n"
        text += "\n".join(f"- {k}: " + json.dumps({kk: (round(vv, 3) if isinstance(vv, float) else vv)
                                                   for kk, vv in v.items()}) for k, v in q["preservation"].items())
        text += "\n"
    save_text(out / "bench_video.md", text)
    print(text)


if __name__ == "__main__":
    main()
