"""``--mode train_optics``: Stage I, the lens and the heatmap regressor trained jointly.

    python main.py --mode train_optics --img_size 128 --total_iters 2000 --checkpoint_dir expr/optics \
        [--train_img_dir DIR --val_img_dir DIR] [--lens face-deid | LENS.yaml | STAGE1.ckpt] [--psf PSF.npy]
        [--teacher dlib|mtcnn] [--heatmap_mode grouped|landmarks] [--heatmap_sigma PX] [--regressor heatmap|linear]
        [--lambda_privacy 1] [--lambda_psf 0.1] [--optics_lr 1e-3] [--regressor_lr 1e-3] [--freeze_lens]
        [--quantize_levels N] [--lambda_adv W --adversary_base 16 --adversary_depth 3 --adversary_lr 1e-3
         --adversary_steps 1 --inverter_loss band] [--lambda_wiener W2] [--resume_iter K] [--wandb]

``--regressor linear`` (with ``--heatmap_mode landmarks``) uses the closed-form linear shape regressor
(anonymizer/stage1/shape.py; refitted every 50 steps while the lens trains) instead of the CNN heatmap U-Net.
``--lambda_adv > 0`` trains the lens against an inverter adversary (anonymizer/stage1/losses.py explains the
objective). ``--quantize_levels N`` trains through the N-level height quantiser of the fabrication export; the
lens' height range is then fixed to +- one design wave (unless the lens file sets one), so that
``--mode fabricate --levels N`` writes exactly the levels the lens was trained with.

Without image folders the embedded face set is used (pipelines.faces.default_face_dirs). Checkpoints
(``<step>_optics.ckpt``), sample grids (``samples/<step>_stage1.png``: clean | capture | predicted heatmap |
target) and ``stage1_data.json`` (skipped files, images without a teacher face) go to ``--checkpoint_dir``
(default expr/optics). The checkpoint format is described in anonymizer/stage1/trainer.py.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from data.files import save_image, save_json
from pipelines.common import build_camera, image_dirs, init_wandb, resolve_device, seed_everything
from pipelines.safety import PROGRESS, STAGE1_ARCH, prepare_training_dir

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT_DIR = "expr/optics"
REGRESSOR = {"base": 16, "depth": 3}


def load_face_set(folder: Path, img_size: int, teacher, report: dict[str, Any], name: str, min_images: int = 1):
    """Scan a folder (corrupt files skipped and reported), run / read the teacher, return a FaceLandmarkSet.

    Raises:
        ValueError: fewer than ``min_images`` readable images (checked before the teacher runs), or no face.
    """
    from anonymizer.stage1.trainer import FaceLandmarkSet
    from data.datasets import SourceDataset, scan

    scanned = scan(folder)
    dataset = SourceDataset(scanned, img_size, augment=False, cache=True)
    if len(dataset) < min_images:
        raise ValueError(f"{folder}: {len(dataset)} images, fewer than one batch (--batch_size {min_images})")
    result = teacher.landmarks_for_files(dataset.files, img_size)
    report[name] = {"folder": str(folder), "num_images": len(dataset), "num_skipped": scanned.num_skipped,
                    "skipped": [{"file": str(p), "reason": r} for p, r in scanned.skipped],
                    "num_without_face": result.num_missing, "without_face": result.missing}
    log.info("%s: %d images, %d skipped, %d without a %s face (excluded from the heatmap loss)", name,
             len(dataset), scanned.num_skipped, result.num_missing, teacher.name)
    if result.num_missing == len(dataset):
        raise ValueError(f"{folder}: the {teacher.name} teacher found no face in any of the {len(dataset)} images")
    return FaceLandmarkSet(dataset, result.landmarks, result.found)


def build_stage1_camera(args: argparse.Namespace):
    """The trainable Stage I camera with sensor noise (:func:`pipelines.common.build_camera`): measured PSF
    (--psf), or a lens from a preset / YAML / Stage I checkpoint; with --quantize_levels N it trains through the
    fabricated element's forward model (``optics.quantize.build_lens`` gives a FabricatedLens)."""
    from optics.camera import Camera
    from optics.quantize import FabricatedLens, QuantizedLens, default_quantize_range

    camera = build_camera(args.lens, args.psf, noise=True, object_distance=args.object_distance,
                          quantize_levels=args.quantize_levels, trainable=True, sensor=args.sensor)
    lens = camera.lens
    if type(lens) is QuantizedLens:
        # a checkpoint trained with the older pupil-sample quantiser keeps its levels and range, now through the
        # fabricated element's forward model
        config = lens.config
        if config.height_range is None:
            config = config.replace(height_range=list(default_quantize_range(config)))
        fixed = FabricatedLens(config, lens.levels, lens.h_range)
        fixed.load_state_dict(lens.state_dict())
        camera = Camera(fixed.requires_grad_(True), sensor=camera.sensor.config, noise=True)
    return camera


def stage1_config(args: argparse.Namespace, num_landmarks: int):
    from anonymizer.stage1.trainer import Stage1Config

    return Stage1Config(img_size=args.img_size, batch_size=args.batch_size, heatmap_mode=args.heatmap_mode,
                        heatmap_sigma=args.heatmap_sigma, num_landmarks=num_landmarks,
                        lambda_privacy=args.lambda_privacy, lambda_psf=args.lambda_psf, optics_lr=args.optics_lr,
                        regressor_lr=args.regressor_lr, freeze_lens=args.freeze_lens, seed=args.seed,
                        regressor=dict(REGRESSOR) if args.regressor == "heatmap" else {"head": "linear"},
                        lambda_adv=args.lambda_adv, lambda_wiener=args.lambda_wiener,
                        adversary={"base": args.adversary_base, "depth": args.adversary_depth},
                        adversary_lr=args.adversary_lr, adversary_steps=args.adversary_steps,
                        adversary_loss=args.inverter_loss)


def run(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from anonymizer.stage1.trainer import Stage1Trainer
    from anonymizer.stage1.teacher import TEACHERS, LandmarkTeacher

    if args.regressor == "linear" and args.heatmap_mode != "landmarks":
        raise ValueError("--regressor linear predicts points: it needs --heatmap_mode landmarks")
    if args.total_iters < 1:
        raise ValueError(f"--total_iters must be >= 1, got {args.total_iters}")
    if args.lambda_adv < 0:
        raise ValueError(f"--lambda_adv must be >= 0, got {args.lambda_adv}")
    if args.lambda_adv > 0 and args.img_size % 2 ** args.adversary_depth:
        raise ValueError(f"--img_size {args.img_size} must be a multiple of 2 ** --adversary_depth "
                         f"({2 ** args.adversary_depth})")
    if args.resume_iter < 0 or args.resume_iter > args.total_iters:
        raise ValueError(f"--resume_iter {args.resume_iter} must be in [0, --total_iters {args.total_iters}]")
    device = resolve_device(args.device)
    seed_everything(args.seed)
    ckpt_dir = Path(args.checkpoint_dir or DEFAULT_CHECKPOINT_DIR)
    prepare_training_dir(ckpt_dir, "optics", args, STAGE1_ARCH)  # one run per folder; sets args.run_id
    train_dir, val_dir = image_dirs(args.train_img_dir, args.val_img_dir, args.img_size)
    teacher = LandmarkTeacher(args.teacher, device=str(device))
    report: dict[str, Any] = {"teacher": args.teacher, "img_size": args.img_size}
    train_set = load_face_set(train_dir, args.img_size, teacher, report, "train", min_images=args.batch_size)
    val_set = load_face_set(val_dir, args.img_size, teacher, report, "val") if val_dir else None
    save_json(ckpt_dir / "stage1_data.json", report)

    run_ = init_wandb(args.wandb, "train_optics", vars(args))
    logger = None if run_ is None else (lambda step, values: run_.log(values, step=step))  # noqa: E731

    camera = build_stage1_camera(args)
    trainer = Stage1Trainer(camera, stage1_config(args, TEACHERS[args.teacher]), train_set, val_set,
                            checkpoint_dir=ckpt_dir, device=device, args=vars(args), logger=logger,
                            teacher=args.teacher)
    if args.resume_iter:
        trainer.resume(args.resume_iter)
    PROGRESS.step = PROGRESS.saved = trainer.step
    bar = tqdm(range(trainer.step, args.total_iters), desc="train_optics", initial=trainer.step,
               total=args.total_iters)
    for _ in bar:
        values = trainer.train_step()
        step = PROGRESS.step = trainer.step
        bar.set_postfix(loss=f"{values['total']:.4f}", priv=f"{values.get('privacy', float('nan')):.2e}")
        if step % max(1, args.print_every) == 0:
            log.info("step %d: %s", step, " ".join(f"{k}={v:.4g}" for k, v in values.items()))
        if logger is not None:
            logger(step, {f"train/{k}": v for k, v in values.items()})
        if val_set is not None and (step % max(1, args.sample_every) == 0 or step == args.total_iters):
            save_image(ckpt_dir / "samples" / f"{step:06d}_stage1.png", trainer.sample_grid(val_set))
            metrics = trainer.evaluate(val_set)
            rho = metrics["adversary_identity_correlation"]
            log.info("step %d val: heatmap=%.4f nme=%s (%d/%d images with a face)%s", step, metrics["heatmap"],
                     "n/a" if metrics["nme"] is None else f"{metrics['nme']:.4f}", metrics["num_valid"],
                     metrics["num_images"], "" if rho is None else f" adversary identity-band corr={rho:.4f}")
            if metrics["wiener_identity_correlation"] is not None:
                log.info("step %d val: Wiener (true PSF) identity-band corr=%.4f", step,
                         metrics["wiener_identity_correlation"])
            if logger is not None:
                logger(step, {"val/heatmap": metrics["heatmap"],
                              **({"val/nme": metrics["nme"]} if metrics["nme"] is not None else {})})
        if step % max(1, args.save_every) == 0 and step != args.total_iters:
            trainer.save()
            PROGRESS.saved = step
    trainer.save()
    PROGRESS.saved = trainer.step
    if run_ is not None:
        run_.finish()
