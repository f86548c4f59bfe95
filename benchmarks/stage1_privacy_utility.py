"""Stage I privacy / utility, measured side by side in one run on held-out faces of the embedded set.

For three cameras, a HeatmapRegressor (per-landmark mode, 68 dlib points) is trained on the captures of the
training faces with the same budget, then measured on the held-out (val) faces:

* ``trained lens``: the face-deid lens trained jointly with the regressor (Stage I: heatmap + privacy + PSF terms);
* ``face-deid (fixed)``: the face-deid preset lens, not trained (regressor trained);
* ``low-res 16x16``: the face averaged down to 16 x 16 and upsampled back (bicubic), with the same sensor noise.

Utility: landmark NME of the regressor on the captures vs the dlib teacher on the clean images (normalised by the
outer-eye-corner distance). Privacy: dlib ResNet rank-1 re-identification of the captures against the gallery
of the clean held-out faces (chance = 1 / number of faces), with two attackers: ``oracle`` aligns each capture
with the clean image's own dlib landmarks (the strongest alignment an attacker could have), ``detector`` runs
dlib on the capture (centred fallback chip when it finds no face). Also the privacy term (identity-band power
fraction) of each camera's PSF.

    python benchmarks/stage1_privacy_utility.py [--img_size 64] [--steps 200] [--out results/stage1_benchmark]

Writes ``<out>/stage1_privacy_utility.json`` and ``.md`` and prints the table.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from anonymizer.stage1.trainer import FaceLandmarkSet, Stage1Config, Stage1Trainer  # noqa: E402
from anonymizer.stage1.losses import privacy_mtf_loss  # noqa: E402
from anonymizer.stage1.teacher import LandmarkTeacher  # noqa: E402
from data.datasets import SourceDataset, scan  # noqa: E402
from data.files import save_image, save_json, save_text  # noqa: E402
from optics.camera import Camera  # noqa: E402
from optics.lens import Lens, load_lens_config  # noqa: E402
from optics.sensor import Sensor  # noqa: E402

log = logging.getLogger("stage1_benchmark")


class LowResCamera(nn.Module):
    """Baseline capture: area-average to ``size`` x ``size``, bicubic back to the input size, sensor noise."""

    def __init__(self, size: int = 16):
        super().__init__()
        self.size = size
        self.sensor = Sensor()

    def forward(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        small = F.interpolate(image, size=(self.size, self.size), mode="area")
        up = F.interpolate(small, size=image.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)
        return self.sensor(up, noise=True, generator=generator)


def load_sets(img_size: int, teacher: LandmarkTeacher, max_train: int | None) -> tuple[FaceLandmarkSet, FaceLandmarkSet]:
    from pipelines.faces import default_face_dirs

    train_dir, val_dir = default_face_dirs(img_size)
    sets = []
    for folder, limit in ((train_dir, max_train), (val_dir, None)):
        ds = SourceDataset(scan(folder), img_size, cache=True)
        if limit:
            ds.files, ds.targets = ds.files[:limit], ds.targets[:limit]
        res = teacher.landmarks_for_files(ds.files, img_size)
        log.info("%s: %d faces, dlib found %d", folder, len(ds), int(res.found.sum()))
        sets.append(FaceLandmarkSet(ds, res.landmarks, res.found))
    return sets[0], sets[1]


def reidentification(trainer: Stage1Trainer, val: FaceLandmarkSet, embedder, gallery: np.ndarray) -> dict:
    """Rank-1 re-identification of the val captures against the clean gallery (two attackers)."""
    from metrics.identity import rank1

    keep = [i for i in range(len(val)) if bool(val.found[i])]
    images, landmarks, _ = val.batch(keep)
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        psf = trainer.capture_psf()
        captures = trainer._capture(images, psf, gen).clamp(0, 1)
    caps = [c.permute(1, 2, 0).numpy() for c in captures]
    oracle = embedder.embed(caps, [lm.numpy() for lm in landmarks])
    detected, found = embedder.embed(caps, None, return_found=True)
    return {"reid_rank1_oracle": rank1(oracle, gallery), "reid_rank1_detector": rank1(detected, gallery),
            "capture_faces_found_by_dlib": int(found.sum()), "num_probes": len(keep),
            "example": captures[:6]}


def run_condition(name: str, camera: nn.Module, cfg: Stage1Config, train: FaceLandmarkSet, val: FaceLandmarkSet,
                  steps: int, embedder, gallery: np.ndarray) -> dict:
    t0 = time.time()
    trainer = Stage1Trainer(camera, cfg, train, val)
    from tqdm import tqdm

    for _ in tqdm(range(steps), desc=name, leave=False):
        last = trainer.train_step()
    metrics = trainer.evaluate(val)
    psf = trainer.capture_psf()
    priv = float(privacy_mtf_loss(psf.detach(), cfg.img_size)) if psf is not None else None
    if priv is None:  # low-res: the transfer function of area-down + bicubic-up, measured on an impulse
        priv = lowres_privacy(camera, cfg.img_size)
    reid = reidentification(trainer, val, embedder, gallery)
    row = {"condition": name, "nme": metrics["nme"], "val_heatmap_loss": metrics["heatmap"],
           "privacy_band_power": priv, "train_last": last, "seconds": round(time.time() - t0, 1),
           **{k: v for k, v in reid.items() if k != "example"}}
    if trainer.lens is not None and trainer.train_lens:
        row["zernike_coeffs_m"] = trainer.lens.zernike_coeffs.detach().tolist()
    log.info("%s: %s", name, {k: v for k, v in row.items() if k not in ("train_last", "zernike_coeffs_m")})
    row["_example"] = reid["example"]
    return row


def lowres_privacy(camera: LowResCamera, img_size: int) -> float:
    """Identity-band power fraction of the low-res pipeline (linear, nearly shift-invariant): its response to
    an impulse at the image centre used as a PSF."""
    imp = torch.zeros(1, 3, img_size, img_size)
    imp[..., img_size // 2, img_size // 2] = 1.0
    small = F.interpolate(imp, size=(camera.size, camera.size), mode="area")
    resp = F.interpolate(small, size=(img_size, img_size), mode="bicubic", align_corners=False)[0]
    return float(privacy_mtf_loss(resp / resp.sum(dim=(-2, -1), keepdim=True), img_size))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--img_size", type=int, default=64)
    p.add_argument("--steps", type=int, default=200, help="training steps per condition")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--sigma", type=float, default=2.0, help="heatmap sigma [px]")
    p.add_argument("--lambda_privacy", type=float, default=1.0)
    p.add_argument("--lambda_psf", type=float, default=0.1)
    p.add_argument("--optics_lr", type=float, default=1e-2, help="waves of surface height per step")
    p.add_argument("--regressor_lr", type=float, default=3e-3)
    p.add_argument("--psf_size", type=int, default=128, help="PSF window / pupil samples of the lens [px]")
    p.add_argument("--max_train", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/stage1_benchmark")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    start = time.time()
    out = Path(a.out)
    teacher = LandmarkTeacher("dlib")
    train, val = load_sets(a.img_size, teacher, a.max_train)
    from metrics.identity import FaceEmbedder

    embedder = FaceEmbedder()
    keep = [i for i in range(len(val)) if bool(val.found[i])]
    clean, lms, _ = val.batch(keep)
    gallery = embedder.embed([c.permute(1, 2, 0).numpy() for c in clean], [lm.numpy() for lm in lms])

    def cfg(**kw) -> Stage1Config:
        base = dict(img_size=a.img_size, batch_size=a.batch_size, heatmap_mode="landmarks", heatmap_sigma=a.sigma,
                    num_landmarks=68, lambda_privacy=a.lambda_privacy, lambda_psf=a.lambda_psf,
                    optics_lr=a.optics_lr, regressor_lr=a.regressor_lr, seed=a.seed,
                    regressor={"base": 16, "depth": 2})
        base.update(kw)
        return Stage1Config(**base)

    lens_cfg = load_lens_config("face-deid", psf_size=a.psf_size)
    rows = [
        run_condition("trained lens", Camera(Lens(lens_cfg), noise=True), cfg(), train, val, a.steps, embedder,
                      gallery),
        run_condition("face-deid (fixed)", Camera(Lens(lens_cfg), noise=True), cfg(freeze_lens=True), train, val,
                      a.steps, embedder, gallery),
        run_condition("low-res 16x16", LowResCamera(16), cfg(), train, val, a.steps, embedder, gallery),
    ]
    examples = [r.pop("_example") for r in rows]
    grid = torch.cat([clean[:6]] + [e[:6] for e in examples], dim=-1)  # rows: faces; cols: clean | conditions
    save_image(out / "stage1_examples.png", torch.cat(list(grid), dim=-2).permute(1, 2, 0).numpy())
    result = {"img_size": a.img_size, "steps": a.steps, "batch_size": a.batch_size, "sigma": a.sigma,
              "lambda_privacy": a.lambda_privacy, "lambda_psf": a.lambda_psf, "optics_lr": a.optics_lr,
              "psf_size": a.psf_size, "num_train": len(train), "num_train_with_face": int(train.found.sum()),
              "num_val": len(val), "num_val_with_face": len(keep), "chance_rank1": 1.0 / len(keep),
              "rows": rows, "seconds": round(time.time() - start, 1)}
    lines = [f"Stage I privacy / utility ({len(keep)} held-out faces, {a.img_size} px, {a.steps} steps x "
             f"{a.batch_size}; re-id chance = {1.0 / len(keep):.3f})", "",
             "| camera | landmark NME (vs dlib on clean) | identity-band power | re-id rank-1 (oracle align) | "
             "re-id rank-1 (dlib on capture) | dlib finds face in capture |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['condition']} | {r['nme']:.4f} | {r['privacy_band_power']:.2e} | "
                     f"{r['reid_rank1_oracle']:.3f} | {r['reid_rank1_detector']:.3f} | "
                     f"{r['capture_faces_found_by_dlib']}/{r['num_probes']} |")
    table = "\n".join(lines) + "\n"
    save_json(out / "stage1_privacy_utility.json", result)
    save_text(out / "stage1_privacy_utility.md", table)
    print(table)
    print(f"total {time.time() - start:.0f} s; written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
