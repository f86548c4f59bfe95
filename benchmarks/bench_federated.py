"""Federated Stage I (Flower simulation) against centralised Stage I, and the gradient-inversion leakage of
plain FedAvg vs SecAgg+, measured side by side in one run on the embedded face set (CPU).

    python benchmarks/bench_federated.py [--img_size 64 --num_clients 4 --rounds 5 --local_steps 4
        --batch_size 4] [--attack_img_size 32 --attack_batch 2 --attack_iters 150] [--out DIR]

Part 1 (training): centralised Stage I on the union of the clients' images for rounds x local_steps steps,
plain FedAvg and SecAgg+ with rounds x local_steps local steps per client; all scored on the 36 held-out
faces of the embedded set: landmark NME (per-landmark heatmaps, dlib teacher) and dlib re-identification
(rank-1 against the clean held-out faces) of the captures; time per round, SecAgg+ overhead.
Part 2 (leakage): one round of one local step (the attacker's best case) in a separate small federation;
the server inverts (a) one client's plain FedAvg update and (b) the SecAgg+ aggregate it receives, and is
scored against that client's true batch (PSNR / SSIM, dlib re-identification against all the federation's
faces). Baselines in the same run: a mid-grey image and the mean face of the batch.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

log = logging.getLogger("bench_federated")


def make_factory(img_size: int, batch_size: int, num_clients: int, seed: int, extra=()):
    from federated.data import partition_identities
    from main import build_parser
    from pipelines.common import image_dirs
    from pipelines.train_federated import Stage1Factory

    args = build_parser().parse_args(["--mode", "train_federated", "--img_size", str(img_size), "--batch_size",
                                      str(batch_size), "--device", "cpu", "--heatmap_mode", "landmarks",
                                      "--seed", str(seed), *extra])
    train_dir, val_dir = image_dirs(None, None, img_size)
    factory = Stage1Factory(dict(vars(args)), str(train_dir))
    train_set = factory.face_set(train_dir)
    factory.partitions = partition_identities(train_set.dataset.files, num_clients, seed=seed)
    return factory, train_set, factory.face_set(val_dir, "val")


def to_hwc(t) -> list[np.ndarray]:
    return [a for a in t.detach().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)]


def score_model(trainer, val_set, embedder) -> dict:
    """Held-out NME and dlib re-identification of the captures (rank-1 vs the clean faces)."""
    import torch

    from metrics.identity import reid_metrics

    metrics = trainer.evaluate(val_set)
    images = val_set.batch(range(len(val_set)))[0]
    with torch.no_grad():
        gen = torch.Generator().manual_seed(5)
        captures = trainer.camera(images, psf=trainer.capture_psf(), generator=gen)
    clean = embedder.embed(to_hwc(images))
    probes, found = embedder.embed(to_hwc(captures), return_found=True)
    reid = reid_metrics(probes, clean, found=found)
    return {"nme": metrics["nme"], "heatmap": metrics["heatmap"], "num_valid": metrics["num_valid"],
            "reid_rank1": reid["reid_rank1"], "reid_same_person_rate": reid["reid_same_person_rate"],
            "reid_fallback_chips": reid["reid_fallback_chips"], "reid_chance": 1 / len(val_set)}


def training_part(a, out: Path, embedder) -> dict:
    from federated.config import FederatedConfig
    from federated.params import set_arrays
    from federated.server import run_federated

    factory, train_set, val_set = make_factory(a.img_size, a.batch_size, a.num_clients, a.seed)
    steps = a.rounds * a.local_steps
    res = {"settings": {"img_size": a.img_size, "num_clients": a.num_clients, "rounds": a.rounds,
                        "local_steps": a.local_steps, "batch_size": a.batch_size,
                        "client_images": [len(p) for p in factory.partitions], "val_images": len(val_set)}}
    central = factory.trainer(train_set, factory.seed)
    res["initial"] = score_model(central, val_set, embedder)
    t0 = time.perf_counter()
    for _ in range(steps):
        central.train_step()
    res["centralised"] = {"steps": steps, "seconds": time.perf_counter() - t0, **score_model(central, val_set, embedder)}
    log.info("centralised: %s", res["centralised"])
    for name, secure in (("fedavg", False), ("secagg", True)):
        cfg = FederatedConfig(num_clients=a.num_clients, rounds=a.rounds, local_steps=a.local_steps,
                              secure_aggregation=secure, checkpoint_dir=str(out / name))
        t0 = time.perf_counter()
        server = run_federated(factory, cfg)
        wall = time.perf_counter() - t0
        set_arrays(server.trainer, server.global_arrays)
        times = [r["seconds"] for r in server.rounds_log]
        res[name] = {"wall_seconds": wall, "round_seconds": times,
                     "round_seconds_median_after_first": float(np.median(times[1:])) if len(times) > 1 else times[0],
                     "checkpoint": str(server.checkpoints[-1]), **score_model(server.trainer, val_set, embedder)}
        log.info("%s: %s", name, res[name])
    res["secagg_overhead_per_round"] = (res["secagg"]["round_seconds_median_after_first"]
                                        / res["fedavg"]["round_seconds_median_after_first"])
    return res


def attack_part(a, out: Path, embedder) -> dict:
    from anonymizer.stage1.trainer import batch_indices
    from federated.client import client_seed
    from federated.config import FederatedConfig
    from federated.leakage import InversionConfig, gradient_inversion, image_scores, score_attack
    from federated.params import set_arrays
    from federated.server import run_federated

    factory, train_set, _ = make_factory(a.attack_img_size, a.attack_batch, a.num_clients, a.seed)
    ids = [i for p in factory.partitions for i in p][: a.attack_gallery]
    target = 0
    part0 = factory.partitions[target]
    batch = batch_indices(0, a.attack_batch, len(part0), client_seed(factory.seed, target))
    truth_idx = [part0[i] for i in batch]
    gallery_idx = sorted(set(ids) | set(truth_idx))
    gallery_imgs = to_hwc(train_set.batch(gallery_idx)[0])
    gallery = embedder.embed(gallery_imgs)
    truth = np.stack(to_hwc(train_set.batch(truth_idx)[0]))
    truth_gid = [gallery_idx.index(i) for i in truth_idx]
    prior = np.nanmean(train_set.landmarks.numpy(), axis=0)
    res = {"settings": {"img_size": a.attack_img_size, "batch_size": a.attack_batch, "num_clients": a.num_clients,
                        "iters": a.attack_iters, "tv_weight": a.attack_tv, "gallery": len(gallery_idx),
                        "rounds": 1, "local_steps": 1}}
    res["baseline_grey"] = image_scores([np.full_like(truth[0], 0.5)] * len(truth), list(truth))
    res["baseline_mean_face"] = image_scores([truth.mean(0)] * len(truth), list(truth))
    res["baseline_clean_reid"] = score_attack(truth, truth, truth_gid, gallery, embedder)["reid_rank1"]
    inv = InversionConfig(iters=a.attack_iters, tv_weight=a.attack_tv, seed=a.seed)
    for name, secure in (("a_fedavg_one_client", False), ("b_secagg_aggregate", True)):
        dump = Path(tempfile.mkdtemp(prefix=f"dump_{name}_", dir=out))
        cfg = FederatedConfig(num_clients=a.num_clients, rounds=1, local_steps=1, secure_aggregation=secure,
                              checkpoint_dir=str(out / f"attack_{name}"), dump_dir=str(dump))
        server = run_federated(factory, cfg, keep_received=1)
        received = [arr for arr, _ in server.received[1]]
        if secure:
            observed, num = received[0], a.attack_batch * a.num_clients  # the aggregate: the union of batches
        else:  # the server sees every update; pick the target client's (identified via its test dump)
            d = np.load(dump / f"r1_c{target}.npz")
            mine = [d[f"arr_{i}"] for i in range(len(d.files) - 1)]
            observed = next(r for r in received if all(np.array_equal(x, y) for x, y in zip(r, mine)))
            num = a.attack_batch
        # the model the clients started round 1 from (the server's initialisation: same seed, same weights)
        srv = factory.server_trainer(str(out / "attack_tmp"))
        set_arrays(srv, _initial_arrays(factory, out))
        t0 = time.perf_counter()
        recon, info = gradient_inversion(srv, observed, num, prior, inv)
        res[name] = {"seconds": time.perf_counter() - t0, **info,
                     **score_attack(recon, truth, truth_gid, gallery, embedder)}
        from data.files import save_image
        from federated.leakage import match_images

        paired = recon[match_images(recon, truth)]
        save_image(out / f"attack_{name}.png", np.concatenate([np.concatenate(list(truth), 1),
                                                               np.concatenate(list(paired), 1)], 0))
        log.info("%s: %s", name, {k: v for k, v in res[name].items() if k != "psnr_per_image"})
    return res


def _initial_arrays(factory, out: Path):
    """The global model of round 1 (what the clients started from): the server trainer's initialisation."""
    from federated.params import get_arrays

    return [a.astype(np.float32).astype(np.float64) for a in get_arrays(factory.server_trainer(str(out)))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--img_size", type=int, default=64)
    p.add_argument("--num_clients", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--local_steps", type=int, default=4)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--attack_img_size", type=int, default=32)
    p.add_argument("--attack_batch", type=int, default=2)
    p.add_argument("--attack_iters", type=int, default=150)
    p.add_argument("--attack_tv", type=float, default=0.5)
    p.add_argument("--attack_gallery", type=int, default=64, help="federation faces in the re-id gallery")
    p.add_argument("--seed", type=int, default=777)
    p.add_argument("--skip_training", action="store_true")
    p.add_argument("--skip_attack", action="store_true")
    p.add_argument("--out", default="expr/bench_federated")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(1)
    from data.files import save_json
    from metrics.identity import FaceEmbedder

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    embedder = FaceEmbedder()
    results = {}
    if not a.skip_training:
        results["training"] = training_part(a, out, embedder)
        save_json(out / "results.json", results)
    if not a.skip_attack:
        results["leakage"] = attack_part(a, out, embedder)
    save_json(out / "results.json", results)
    print(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
