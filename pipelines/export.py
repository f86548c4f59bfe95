"""``--mode export``: small release checkpoints for inference (what checkpoints/ in the repository holds).

    python main.py --mode export --optics_checkpoint expr/optics_embedded/000800_optics.ckpt \
        --checkpoint_dir expr/anonymizer_embedded --resume_iter 450 --export_weights raw --out checkpoints --overwrite

Stage I: the lens parameters (config-derived buffers are rebuilt from ``lens_config``), the regressor and the
metadata; Stage II: the EMA networks, the frozen capture PSF and regressor, and the metadata. Optimiser states,
RNG states and the raw (non-EMA) training networks are dropped: release files resume no training, they only run.
Both load with ``weights_only=True`` through the same functions as the full checkpoints.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from data.checkpoint import load_checkpoint, save_checkpoint
from pipelines.common import SHIPPED_ANONYMIZER, SHIPPED_OPTICS
from pipelines.safety import final_path

log = logging.getLogger(__name__)

OPTICS_DROP = ("optims", "rng", "history")
ANONYMIZER_DROP = ("optims", "rng", "nets")


def export_optics(src: str | Path, dst: str | Path) -> Path:
    """Release copy of a Stage I checkpoint (lens parameters only, no optimiser / RNG state)."""
    from anonymizer.stage1.trainer import load_optics_checkpoint

    state = load_checkpoint(src)
    optic, _, _ = load_optics_checkpoint(src)  # validates, and gives the lens's own (parameter-only) state
    out = {k: v for k, v in state.items() if k not in OPTICS_DROP and k != "version"}
    if state.get("lens") is not None:
        out["lens"] = {k: v.clone() for k, v in optic.state_dict().items()}
    out["exported_from"] = str(src)
    return save_checkpoint(dst, out)


def export_anonymizer(src: str | Path, dst: str | Path, step: int | None = None, weights: str = "ema") -> Path:
    """Release copy of a Stage II checkpoint (generator networks + frozen optics, no D / optimisers / RNG).

    Args:
        weights: "ema" (the EMA networks, right for a full run) or "raw" (the training networks). After s steps
            an EMA with beta 0.999 still holds beta**s of its random initialisation (58 % after 550 steps), so a
            short run must ship its raw networks; the choice is recorded as ``exported_weights``.
    """
    if weights not in ("ema", "raw"):
        raise ValueError(f"--export_weights must be 'ema' or 'raw', got {weights!r}")
    from anonymizer.stage2.sampling import load_anonymizer, resolve_stage2_checkpoint

    path = resolve_stage2_checkpoint(src, step)
    load_anonymizer(path)  # validates before anything is written
    state = load_checkpoint(path)
    out = {k: v for k, v in state.items() if k not in ANONYMIZER_DROP and k != "version"}
    if weights == "raw":
        out["nets_ema"] = {k: v for k, v in state["nets"].items() if k in state["nets_ema"]}
    out["exported_from"] = str(path)
    out["exported_weights"] = weights
    return save_checkpoint(dst, out)


def run(args: argparse.Namespace) -> None:
    """Write the release checkpoints to ``--out`` (required; ``main`` stages the folder, so both files appear or
    neither). Both sources are validated before anything is written."""
    if not args.out:
        raise ValueError(f"--mode export requires --out DIR (the shipped {SHIPPED_OPTICS.parent} is never written "
                         "implicitly)")
    out = Path(args.out)
    if not args.optics_checkpoint and not args.checkpoint_dir:
        raise ValueError("--mode export needs --optics_checkpoint and/or --checkpoint_dir")
    if args.optics_checkpoint:
        from anonymizer.stage1.trainer import load_optics_checkpoint

        load_optics_checkpoint(args.optics_checkpoint)
    if args.checkpoint_dir:
        from anonymizer.stage2.sampling import load_anonymizer, resolve_stage2_checkpoint

        load_anonymizer(resolve_stage2_checkpoint(args.checkpoint_dir, args.resume_iter or None))
    if args.optics_checkpoint:
        p = export_optics(args.optics_checkpoint, out / SHIPPED_OPTICS.name)
        log.info("wrote %s (%.1f MB)", final_path(p), p.stat().st_size / 1e6)
    if args.checkpoint_dir:
        p = export_anonymizer(args.checkpoint_dir, out / SHIPPED_ANONYMIZER.name, args.resume_iter or None,
                              args.export_weights)
        log.info("wrote %s (%.1f MB)", final_path(p), p.stat().st_size / 1e6)
