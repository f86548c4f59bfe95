"""``python main.py --mode align --inp_dir DIR --out_dir DIR [--img_size 256]``.

Detects each face (MTCNN, 5 landmarks), aligns it by a similarity transform onto the fixed template of
:mod:`data.align` (eyes level at 0.39 of the height, 0.30 of the width apart), crops ``img_size`` squares and
saves them as PNG under the same relative names (domain sub-folders kept). ``out_dir/align_report.json`` lists
the aligned count and every failure with its reason (``no face``, ``unreadable: ...``).
"""
from __future__ import annotations

import argparse
import logging

from pipelines.common import resolve_device
from pipelines.faces import align_folder

log = logging.getLogger(__name__)


def run(args: argparse.Namespace) -> None:
    """Align every image of ``args.inp_dir`` into ``args.out_dir`` at ``args.img_size``."""
    if args.img_size < 16:
        raise ValueError(f"--img_size must be >= 16, got {args.img_size}")
    report = align_folder(args.inp_dir, args.out_dir, img_size=args.img_size, device=str(resolve_device(args.device)))
    print(f"aligned {report['aligned']} of {report['num_inputs']} images into {args.out_dir}; "
          f"{report['num_failures']} failures (see {args.out_dir}/align_report.json)")
    for f in report["failures"]:
        print(f"  {f['file']}: {f['reason']}")
