"""``python main.py --mode eval --gen_dir DIR --real_dir DIR --out DIR [--baselines lowres,blur,pixelate]
[--attacks wiener,rl,inverter] [--detectors mtcnn,dlib] [--fid_stats F.npz] [--max_images N]``.

Pairs every image of ``--gen_dir`` with the original of the same file name in ``--real_dir`` (the same stem
with another suffix also pairs), then scores the generated images and every requested baseline / attack with
:class:`metrics.evaluate.Evaluator`. Writes ``<out>/eval.json`` (the generated images' numbers at the top level,
every method under ``methods``) and ``<out>/eval.md`` (the table of :func:`metrics.report.markdown_table`).

Pairs that cannot be used (no original / unreadable file / size mismatch) are skipped and listed in
``eval.json["skipped"]`` with the reason; an empty folder or no usable pair at all is an error.

Attacks need the camera (``--lens`` / ``--psf``, as every imaging mode): the originals are captured through
it, then the capture is attacked with the true PSF (Wiener, Richardson-Lucy) or a learned inverter. With
``inverter`` in ``--attacks`` the inverter trains on the first half of the pairs (sorted by name) and every
attack row is scored on the second half only (disjoint from the inverter's training images).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from data.files import save_json, save_text
from data.images import ImageReadError, list_images, read_image
from pipelines.safety import final_path

log = logging.getLogger(__name__)



def pair_folders(gen_dir: str | Path, real_dir: str | Path, max_images: int | None = None
                 ) -> tuple[list[np.ndarray], list[np.ndarray], list[str], list[dict]]:
    """Read the generated / original pairs of two folders.

    Returns:
        ``(generated, originals, names, skipped)``: (H, W, 3) float32 images in [0, 1], the generated file
        names, and ``[{"name", "reason"}]`` for every file left out.

    Raises:
        FileNotFoundError: a folder does not exist.
        ValueError: a folder has no images, no file name is shared, or no pair is usable.
    """
    gen_files, real_files = list_images(gen_dir), list_images(real_dir)
    for folder, files in ((gen_dir, gen_files), (real_dir, real_files)):
        if not files:
            raise ValueError(f"{folder}: no images (suffixes .png .jpg .jpeg .bmp .tif .tiff .webp)")
    by_name = {p.name: p for p in real_files}
    by_stem: dict[str, list[Path]] = {}
    for p in real_files:
        by_stem.setdefault(p.stem, []).append(p)
    skipped: list[dict] = []
    pairs: list[tuple[Path, Path]] = []
    for g in gen_files:
        r = by_name.get(g.name) or (by_stem[g.stem][0] if len(by_stem.get(g.stem, [])) == 1 else None)
        if r is None:
            skipped.append({"name": g.name, "reason": f"no original of that name in {real_dir}"})
        else:
            pairs.append((g, r))
    if not pairs:
        raise ValueError(f"no file name of {gen_dir} ({gen_files[0].name}, ...) matches one in {real_dir} "
                         f"({real_files[0].name}, ...): outputs are paired with originals by file name")
    if max_images is not None:
        if max_images < 1:
            raise ValueError(f"--max_images must be >= 1, got {max_images}")
        pairs = pairs[:max_images]
    generated, originals, names = [], [], []
    for g, r in pairs:
        try:
            gi, ri = read_image(g), read_image(r)
        except ImageReadError as err:
            skipped.append({"name": g.name, "reason": str(err)})
            continue
        if gi.shape != ri.shape:
            skipped.append({"name": g.name, "reason": f"size {gi.shape[1]}x{gi.shape[0]} differs from the "
                                                      f"original's {ri.shape[1]}x{ri.shape[0]}"})
            continue
        generated.append(gi)
        originals.append(ri)
        names.append(g.name)
    for s in skipped:
        log.warning("skipped %s: %s", s["name"], s["reason"])
    if not names:
        raise ValueError(f"no usable image pair in {gen_dir} / {real_dir} ({len(skipped)} skipped: "
                         f"{skipped[0]['reason']})")
    return generated, originals, names, skipped


def attack_camera(args: argparse.Namespace, originals: list[np.ndarray]):
    """The camera (--lens / --psf) that captures the originals for the attacks, its PSF binned to their size.

    Raises:
        ValueError: originals of several sizes, or a side below 256 px that does not divide 256.
    """
    from pipelines.common import build_camera

    shapes = sorted({im.shape[:2] for im in originals})
    if len(shapes) != 1:
        raise ValueError(f"the attacks capture the originals through one camera: they must share one size, got "
                         f"{', '.join(f'{w}x{h}' for h, w in shapes)}")
    return build_camera(args.lens, args.psf, noise=not args.no_noise, object_distance=args.object_distance,
                        img_size=max(shapes[0]), sensor=args.sensor)


def run(args: argparse.Namespace) -> None:
    """Evaluate ``args.gen_dir`` against ``args.real_dir``; write eval.json and eval.md to ``args.out``."""
    from metrics.attacks import ATTACKS, run_attacks
    from metrics.baselines import apply_baseline, parse_baselines
    from metrics.evaluate import DETECTORS, Evaluator, parse_list
    from metrics.report import markdown_table
    from pipelines.common import resolve_device

    if args.gen_dir is None:
        return run_checkpoint(args)
    if args.real_dir is None:
        raise ValueError("--mode eval with --gen_dir needs --real_dir (the originals, paired by file name)")
    detectors = parse_list(args.detectors, DETECTORS, "detector")
    baselines = parse_baselines(args.baselines or "")
    attacks = parse_list(getattr(args, "attacks", "") or "", ATTACKS, "attack")
    if "attribute" in attacks:
        raise ValueError("--attacks attribute needs domain labels: run it with --checkpoint_dir (the reference "
                         "protocol, whose --val_img_dir has one folder per domain), not on two folders")
    out = Path(args.out or getattr(args, "eval_dir", None) or "expr/eval")
    device = str(resolve_device(args.device))

    warnings = []
    if Path(args.gen_dir).resolve() == Path(args.real_dir).resolve():
        warnings.append(f"--gen_dir and --real_dir are the same folder ({args.gen_dir}): every image is scored "
                        "against itself (FID 0, every face found and re-identified); these are not results")
        log.warning("WARNING: %s", warnings[-1])
    generated, originals, names, skipped = pair_folders(args.gen_dir, args.real_dir, args.max_images)
    log.info("evaluating %d pairs (%d skipped)", len(names), len(skipped))
    evaluator = Evaluator(originals, names, detectors=detectors, fid=True, fid_stats=args.fid_stats,
                          fid_backend=getattr(args, "fid_backend", "torchscript"),
                          fid_weights=getattr(args, "fid_weights", None), device=device)
    methods = {"generated": evaluator.evaluate(generated)}
    for name, param in baselines.items():
        log.info("baseline %s", name)
        methods[name] = evaluator.evaluate([apply_baseline(name, im, param) for im in originals])
    if attacks:
        # two folders carry no attacker split: the inverter trains on half of the pairs (run_attacks says so)
        methods.update(run_attacks(evaluator, attack_camera(args, originals), attacks, args.inverter_iters,
                                   args.seed, device, inverter_base=args.inverter_base,
                                   inverter_depth=args.inverter_depth, inverter_loss=args.inverter_loss))

    result = dict(methods["generated"])
    result.update({
        "methods": methods,
        "num_pairs": len(names),
        "skipped": skipped,
        "warnings": warnings,
        "settings": {"gen_dir": str(args.gen_dir), "real_dir": str(args.real_dir), "detectors": detectors,
                     "baselines": baselines, "attacks": attacks, "fid_stats": args.fid_stats,
                     "fid_backend": evaluator.extractor.backend if evaluator.extractor is not None else None,
                     "max_images": args.max_images},
    })
    save_json(out / "eval.json", result)
    table = markdown_table(methods, detectors)
    notes = "".join(f"**WARNING**: {w}\n\n" for w in warnings)
    save_text(out / "eval.md", f"# Evaluation: {args.gen_dir} vs {args.real_dir}\n\n{notes}{table}")
    print(table)
    for w in warnings:
        print(f"WARNING: {w}")
    print(f"wrote {final_path(out / 'eval.json')} and {final_path(out / 'eval.md')} ({len(names)} pairs, "
          f"{len(skipped)} skipped)")


def run_checkpoint(args: argparse.Namespace) -> None:
    """The reference protocol on a Stage II checkpoint (see :mod:`pipelines.evaluate_checkpoint`)."""
    from metrics.report import markdown_table
    from pipelines.evaluate_checkpoint import run_protocol

    if not args.checkpoint_dir:
        raise ValueError("--mode eval needs --gen_dir and --real_dir, or --checkpoint_dir (a Stage II checkpoint)")
    out = Path(args.out or args.eval_dir or "expr/eval")
    methods, info = run_protocol(args)
    result = dict(methods["anonymized"])
    result.update({"methods": methods, "settings": info})
    save_json(out / "eval.json", result)
    table = markdown_table(methods, attribute_info=info.get("attribute"))
    save_text(out / "eval.md", f"# Evaluation of {info['checkpoint']} (step {info['step']})\n\n{table}")
    print(table)
    print(f"wrote {final_path(out / 'eval.json')} and {final_path(out / 'eval.md')}")
