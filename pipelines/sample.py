"""``--mode sample``: de-identify a folder of faces with a trained Stage II checkpoint.

    python main.py --mode sample --checkpoint_dir expr/checkpoints --resume_iter 100000 \
        --src_dir assets/src --ref_dir assets/ref --result_dir expr/results [--psf PSF.npy] [--no_noise]

Each source is imaged through the camera stored in the checkpoint (or ``--psf``), its heatmap predicted by the
frozen regressor, and new faces synthesised:

* ``reference/<src>__<ref>.png``: reference-guided (every image in ``--ref_dir``, warped onto the landmarks that
  the regressor finds in the capture, plus its style; folder per domain, or flat for a one-domain model);
* ``latent/<src>__<domain>_<k>.png``: latent-guided, ``--num_outs_per_domain`` random styles per domain (no
  reference to warp: the current Stage II training does not train this path, see anonymizer/stage2/solver.py);
* ``capture/<src>.png``, ``heatmap/<src>.png``: what the generator was given;
* grids ``reference_grid_<i>.png`` / ``latent_grid_<i>.png`` (8 sources each): rows ``source | capture |
  heatmap | outputs`` (the reference grid starts with a row of the references).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from pipelines.common import measured_psf, resolve_device
from pipelines.safety import final_path, unique_stems

log = logging.getLogger(__name__)

ROWS_PER_GRID = 8


def reference_labels(ref_domains: list[str], trained: list[str] | None, num_domains: int, ref_dir: str) -> list[int]:
    """Domain index (of the trained model) of each reference domain folder.

    Raises:
        ValueError: the folders cannot be matched to the model's domains (names the folder).
    """
    if trained and set(ref_domains) <= set(trained):
        return [trained.index(d) for d in ref_domains]
    if len(ref_domains) == 1 and num_domains == 1:
        return [0]
    if len(ref_domains) == num_domains and not trained:
        return list(range(num_domains))
    raise ValueError(f"--ref_dir {ref_dir}: domain folders {ref_domains} do not match the model's "
                     f"{num_domains} domain(s) {trained or ''}")


def run(args: argparse.Namespace) -> None:
    from anonymizer.stage2.sampling import (anonymize, heatmap_rgb, load_anonymizer, reference_landmarks,
                                            sample_rows, save_grid)
    from data.datasets import SourceDataset, scan
    from data.files import save_image, save_json

    device = resolve_device(args.device)
    nets_ema, camera, regressor, meta = load_anonymizer(args.checkpoint_dir, args.resume_iter or None, device,
                                                        noise=not args.no_noise, psf=measured_psf(args.psf))
    cfg = meta["model"]
    size, num_domains, latent_dim = int(cfg["img_size"]), int(cfg["num_domains"]), int(cfg["latent_dim"])
    log.info("anonymizer %s (step %s, %d px, %d domain(s))", meta["path"], meta["step"], size, num_domains)
    sources = SourceDataset(scan(args.src_dir), size)
    refs = SourceDataset(scan(args.ref_dir), size)
    trained = (meta.get("args") or {}).get("domains")
    trained = trained.split(",") if isinstance(trained, str) and trained else None
    label_of = reference_labels(refs.domains, trained, num_domains, args.ref_dir)
    ref_images = torch.stack([refs.load(i) for i in range(len(refs))]).to(device)
    # the references' dlib landmarks (clean public faces) once, for the warp of every source
    ref_pts = reference_landmarks(ref_images) if getattr(nets_ema.generator, "reference_input", False) else None
    ref_y = torch.tensor([label_of[t] for t in refs.targets], device=device)
    ref_names = unique_stems([Path(f) for f in refs.files])  # a.png / a.jpg: two outputs, not one
    gen = torch.Generator().manual_seed(args.seed)
    n_out = max(1, args.num_outs_per_domain)
    z = torch.randn(num_domains * n_out, latent_dim, generator=gen).to(device)
    z_y = torch.arange(num_domains, device=device).repeat_interleave(n_out)
    out = Path(args.result_dir)
    src_names = unique_stems([Path(f) for f in sources.files])
    written = 0
    for g, start in enumerate(range(0, len(sources), ROWS_PER_GRID)):
        idx = list(range(start, min(start + ROWS_PER_GRID, len(sources))))
        images = torch.stack([sources.load(i) for i in idx]).to(device)
        names = [src_names[i] for i in idx]
        by_ref = anonymize(nets_ema, camera, regressor, images, ref_images, ref_y, ref_points=ref_pts)
        by_z = anonymize(nets_ema, camera, regressor, images, z, z_y)
        hm = heatmap_rgb(by_ref.heatmap)
        for i, name in enumerate(names):
            save_image(out / "capture" / f"{name}.png", by_ref.capture[i].permute(1, 2, 0).cpu().numpy())
            save_image(out / "heatmap" / f"{name}.png", hm[i].permute(1, 2, 0).cpu().numpy())
            for j, ref in enumerate(ref_names):
                save_image(out / "reference" / f"{name}__{ref}.png",
                           by_ref.outputs[i, j].permute(1, 2, 0).cpu().numpy())
            for j in range(len(z)):
                save_image(out / "latent" / f"{name}__{int(z_y[j])}_{j % n_out}.png",
                           by_z.outputs[i, j].permute(1, 2, 0).cpu().numpy())
            written += 1
        save_grid(out / f"reference_grid_{g:03d}.png", [[None, None, None, *ref_images]] + sample_rows(by_ref, images))
        save_grid(out / f"latent_grid_{g:03d}.png", sample_rows(by_z, images))
    save_json(out / "sample.json", {"checkpoint": meta["path"], "step": meta["step"], "sources": written,
                                    "references": [str(f) for f in refs.files], "latents_per_domain": n_out,
                                    "noise": not args.no_noise, "psf": args.psf})
    log.info("wrote %d sources x (%d references + %d latents) to %s", written, len(ref_names), len(z), final_path(out))
