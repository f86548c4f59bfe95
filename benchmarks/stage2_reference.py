"""Stage II must-show measurements, side by side in one run: the anonymizer, the ``reference-warp`` baseline (no
network), the low-resolution baseline and optionally an older anonymizer checkpoint.

Protocol: N held-out sources (embedded validation set, spread evenly) x R references (other validation people,
public faces); every source with every reference. References (``--ref_pick``): ``spread`` = validation people
spread evenly over the set; ``distinctive`` = the R validation people (not among the sources) least like the
TRAINING faces in dlib's embedding (metrics.reference_transfer.distinctive_references; the sources are never
looked at); with ``--ref_pool train`` the R most distinctive TRAINING faces instead (public faces: the pool
``--mode video`` draws its references from by default). The ``real reference`` row scores the reference faces themselves as outputs: the ceiling of
perfect reference transfer (on this homogeneous set, different real people are within dlib's 0.6 in ~12 % of
pairs). For each method (outputs at the model's size):

* reference dependence (pixels), reference-transfer accuracy (dlib embedding nearest to its own reference,
  chance 1/R), diversity, dlib distance to the source (> 0.6), rank-1 re-identification vs the clean sources
  (chance 1/N): :mod:`metrics.reference_transfer`;
* dlib CNN detector and MTCNN detection rates; dlib 68-point NME of the output vs the clean source (dlib CNN box +
  68-point predictor on both, normalised by the source's outer-eye distance, over outputs where both are found);
* FID (TorchScript Inception, metrics.fid) of the N x R outputs against all training faces (few samples: biased
  upwards, comparable between methods of the same run).

    python benchmarks/stage2_reference.py --checkpoint checkpoints/stage2_anonymizer.ckpt --out expr/stage2_ref \
        [--old_checkpoint OLD.ckpt] [--sources 12] [--references 6] [--ref_pick spread|distinctive] \
        [--ref_pool val|train] \
        [--shape_mix A] [--methods anonymizer,reference-warp,lowres,real reference] [--no_fid]

Writes ``<out>/stage2_reference.json`` and ``.md`` and a grid per method.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anonymizer.stage2.sampling import anonymize, load_anonymizer, reference_landmarks, reference_warp  # noqa: E402
from data.datasets import SourceDataset  # noqa: E402
from data.files import save_json, save_text  # noqa: E402
from metrics.baselines import lowres  # noqa: E402
from metrics.reference_transfer import embedding_metrics, pixel_dependence  # noqa: E402

log = logging.getLogger("stage2_reference")


def pick(val: SourceDataset, n_src: int, n_ref: int) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
    idx = np.linspace(0, len(val) - 1, n_src + n_ref).round().astype(int)
    every = max(2, (n_src + n_ref) // max(1, n_ref))
    ref_i = idx[1::every][:n_ref]
    src_i = np.array([i for i in idx if i not in set(ref_i)])[:n_src]
    if len(src_i) < n_src or len(ref_i) < n_ref:
        raise ValueError(f"validation set has {len(val)} images, too few for {n_src} + {n_ref}")
    names = lambda ii: [Path(val.files[i]).stem for i in ii]  # noqa: E731
    return (torch.stack([val.load(int(i)) for i in src_i]), torch.stack([val.load(int(i)) for i in ref_i]),
            names(src_i), names(ref_i))


def distinctive_pick(pool: SourceDataset, train: SourceDataset, src_names: list[str], n_ref: int, embedder
                     ) -> tuple[torch.Tensor, list[str]]:
    """The ``n_ref`` people of ``pool`` (not among the sources) least like the TRAINING faces in dlib's embedding
    (metrics.reference_transfer.distinctive_references): public faces only, the sources are never looked at.
    ``pool`` is the validation set (the held-out protocol) or the training set itself (the pool ``--mode video``
    draws from by default; each candidate's zero distance to itself counts alike for all)."""
    from metrics.reference_transfer import distinctive_references

    cand = [i for i in range(len(pool)) if Path(pool.files[i]).stem not in set(src_names)]
    emb = lambda ds, ii: embedder.embed([ds.load(int(i)).permute(1, 2, 0).numpy() for i in ii])  # noqa: E731
    chosen = [cand[j] for j in distinctive_references(emb(pool, cand), emb(train, range(len(train))), n_ref)]
    return torch.stack([pool.load(i) for i in chosen]), [Path(pool.files[i]).stem for i in chosen]


def grid_of(method: str, nets, camera, regressor, src, refs, ref_pts, shape_mix: float = 0.0) -> np.ndarray:
    """(N, R, S, S, 3) outputs of a method."""
    n, r = len(src), len(refs)
    if method == "real reference":  # the ceiling of perfect reference transfer: the reference person itself
        return np.repeat(refs.permute(0, 2, 3, 1).numpy()[None], n, axis=0)
    if method == "lowres":
        one = np.stack([lowres(x.permute(1, 2, 0).numpy(), 16) for x in src])
        return np.repeat(one[:, None], r, axis=1)
    if method == "reference-warp":
        cap = camera(src)
        rows = []
        for j in range(r):
            rows.append(reference_warp(cap, regressor, refs[j:j + 1].expand(n, -1, -1, -1),
                                       ref_pts[j:j + 1].expand(n, -1, -1), shape_mix=shape_mix))
        return torch.stack(rows, 1).permute(0, 1, 3, 4, 2).cpu().numpy()
    res = anonymize(nets, camera, regressor, src, refs, ref_points=ref_pts if nets.generator.reference_input
                    else None, batch_size=4, shape_mix=shape_mix)
    return res.outputs.permute(0, 1, 3, 4, 2).cpu().numpy()


def detection_metrics(flat: list[np.ndarray], src_np: list[np.ndarray], r: int, cnn, mtcnn) -> dict[str, float]:
    from metrics.geometry import landmark_nme

    det_out = cnn.detect(flat)
    det_src = cnn.detect(src_np)
    nmes = []
    for k, d in enumerate(det_out):
        s = det_src[k // r]
        if d is not None and s is not None:
            nmes.append(landmark_nme(d.landmarks, s.landmarks))
    m = mtcnn.detect(flat)
    return {"dlib_cnn_rate": float(np.mean([d is not None for d in det_out])),
            "mtcnn_rate": float(np.mean([d is not None for d in m])),
            "nme_vs_source": float(np.mean(nmes)) if nmes else float("nan"), "nme_count": len(nmes),
            "_landmarks": [d.landmarks if d is not None else None for d in det_out]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "stage2_anonymizer.ckpt"))
    p.add_argument("--old_checkpoint", default=None, help="an earlier anonymizer measured in the same run")
    p.add_argument("--out", default=str(ROOT / "expr" / "stage2_reference"))
    p.add_argument("--sources", type=int, default=12)
    p.add_argument("--references", type=int, default=6)
    p.add_argument("--no_fid", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape_mix", type=float, default=0.0,
                   help="fraction of the face shape from the reference, for the anonymizer and reference-warp "
                        "(anonymizer.stage2.warp.blend_shape; 0 = the capture's landmarks, as anonymize's default)")
    p.add_argument("--methods", default="anonymizer,reference-warp,lowres,real reference",
                   help="comma list among anonymizer, reference-warp, lowres, real reference (the references "
                        "themselves: the ceiling of perfect transfer); an --old_checkpoint is added")
    p.add_argument("--ref_pick", default="spread", choices=["spread", "distinctive"],
                   help="references: validation people spread over the set, or the most distinctive ones against "
                        "the training faces (metrics.reference_transfer.distinctive_references)")
    p.add_argument("--ref_pool", default="val", choices=["val", "train"],
                   help="--ref_pick distinctive: draw the references from the other validation people (held out) or "
                        "from the public training faces (the default pool of --mode video)")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    torch.manual_seed(a.seed)
    from metrics.detectors import DlibDetector, MTCNNDetector
    from metrics.identity import FaceEmbedder
    from pipelines.faces import default_face_dirs

    nets, camera, regressor, meta = load_anonymizer(a.checkpoint, noise=True)
    size = int(meta["model"]["img_size"])
    train_dir, val_dir = default_face_dirs(size)
    val = SourceDataset(val_dir, size)
    src, refs, src_names, ref_names = pick(val, a.sources, a.references)
    embedder = FaceEmbedder()
    if a.ref_pick == "distinctive":
        train = SourceDataset(train_dir, size)
        refs, ref_names = distinctive_pick(train if a.ref_pool == "train" else val, train, src_names, a.references,
                                           embedder)
    elif a.ref_pool == "train":
        raise ValueError("--ref_pool train needs --ref_pick distinctive")
    log.info("sources %s; references (%s, %s pool) %s", src_names, a.ref_pick, a.ref_pool, ref_names)
    ref_pts = reference_landmarks(refs)
    methods = {"anonymizer": (nets, camera, regressor), "reference-warp": (None, camera, regressor),
               "lowres": (None, None, None), "real reference": (None, None, None)}
    wanted = [m.strip() for m in a.methods.split(",") if m.strip()]
    unknown = sorted(set(wanted) - set(methods))
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; choose among {sorted(methods)}")
    methods = {k: v for k, v in methods.items() if k in wanted}
    if a.old_checkpoint:
        old = load_anonymizer(a.old_checkpoint, noise=True)
        if int(old[3]["model"]["img_size"]) != size:
            raise ValueError(f"{a.old_checkpoint}: img_size differs from {a.checkpoint}")
        methods["old anonymizer"] = old[:3]
    cnn, mtcnn = DlibDetector("cnn", upsample=1), MTCNNDetector()
    src_np = [x.permute(1, 2, 0).numpy() for x in src]
    src_emb = embedder.embed(src_np)
    ref_emb = embedder.embed([x.permute(1, 2, 0).numpy() for x in refs])
    fid_ref = None
    if not a.no_fid:
        from metrics.fid import InceptionFeatures, statistics

        inception = InceptionFeatures()
        train = SourceDataset(train_dir, size)
        fid_ref = statistics(inception.features([train.load(i).permute(1, 2, 0).numpy() for i in range(len(train))],
                                                progress=False))
    results: dict[str, dict] = {}
    out_dir = Path(a.out)
    for name, (mnets, mcam, mreg) in methods.items():
        t0 = time.perf_counter()
        torch.manual_seed(a.seed)
        with torch.no_grad():
            grid = grid_of(name, mnets, mcam, mreg, src, refs, ref_pts, a.shape_mix).clip(0, 1).astype(np.float32)
        n, r = grid.shape[:2]
        flat = [grid[i, j] for i in range(n) for j in range(r)]
        res = pixel_dependence(grid)
        det = detection_metrics(flat, src_np, r, cnn, mtcnn)
        lms = det.pop("_landmarks")
        emb = embedder.embed(flat, [lm for lm in lms]).reshape(n, r, -1)
        res.update(embedding_metrics(emb, ref_emb, src_emb))
        res.update(det)
        if fid_ref is not None:
            from metrics.fid import fid_from_features

            res["fid_vs_train"] = fid_from_features(inception.features(flat, progress=False), *fid_ref)
        res["seconds"] = time.perf_counter() - t0
        results[name] = res
        from anonymizer.stage2.sampling import save_grid

        rows = [[None, *refs]] + [[src[i], *[torch.from_numpy(grid[i, j]).permute(2, 0, 1) for j in range(r)]]
                                  for i in range(n)]
        save_grid(out_dir / f"grid_{name.replace(' ', '_')}.png", rows)
        log.info("%s: %s", name, {k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()})
    keys = ["ref_dependence_ratio", "ref_change", "src_change", "ref_transfer_acc", "ref_transfer_chance",
            "diversity", "dist_to_source_gt_0.6", "reid_rank1", "reid_chance", "dlib_cnn_rate", "mtcnn_rate",
            "nme_vs_source", "fid_vs_train"]
    lines = ["| method | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, res in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{res[k]:.3f}" if k in res else "-" for k in keys) + " |")
    table = "\n".join(lines)
    print(table)
    info = {"checkpoint": a.checkpoint, "step": meta["step"], "old_checkpoint": a.old_checkpoint,
            "shape_mix": a.shape_mix, "ref_pick": a.ref_pick, "ref_pool": a.ref_pool,
            "sources": src_names, "references": ref_names, "img_size": size,
            "protocol": "embedded validation people; every source x every reference; sensor noise on; dlib CNN "
                        "(upsample 1) + 68-point predictor for detection / NME / embedding landmarks",
            "methods": results}
    save_json(out_dir / "stage2_reference.json", info)
    save_text(out_dir / "stage2_reference.md", table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
