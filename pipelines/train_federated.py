"""``--mode train_federated``: Stage I (lens + heatmap regressor) trained by N sites with Flower FedAvg,
optionally under SecAgg+ secure aggregation.

    python main.py --mode train_federated --num_clients 4 --rounds 10 --local_steps 5 --img_size 64 \
        --checkpoint_dir expr/federated [--secure_aggregation [--num_shares 4 --reconstruction_threshold 3
        --clipping_range 0.5 --quantization_range 4194304]] [--unequal_clients] [--identity_pattern REGEX]
        [--train_img_dir DIR --val_img_dir DIR] [Stage I flags: --lens --heatmap_mode --lambda_privacy ...]
        [--resume_iter STEP] [--save_every_rounds 1] [--prepare_only]

The training images (the embedded face set by default) are split into ``--num_clients`` sites with disjoint
identities (federated/data.py); each site runs ``--local_steps`` Stage I steps per round on its own images.
Flower's simulation engine runs the sites on this machine (one supernode per site, one CPU each). Outputs in
``--checkpoint_dir``: ``federation.json`` (the settings and each site's files: what a real deployment gives
the ServerApp / ClientApps, see below), ``<step>_optics.ckpt`` (ordinary Stage I checkpoints of the global
model, step = round x local_steps; resume with ``--resume_iter STEP``), ``federated_log.json`` (time per
round, results / failures), ``federated_summary.json`` (held-out heatmap loss / NME of the final model) and a
sample grid.

Real processes across machines: the same apps are ``pipelines.train_federated:server_app`` and
``pipelines.train_federated:client_app``; both read ``federation.json`` from the run config key
``config-file`` (``--prepare_only`` writes it without training), and a site's images come from its node
config key ``data-dir`` (the README's "Federated training" section has the flower-superlink /
flower-supernode / flwr run commands).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import federated  # noqa: F401  (telemetry off before flwr is imported)

from data.checkpoint import latest_step
from data.files import save_image, save_json
from federated.config import FederatedConfig
from pipelines.common import image_dirs, resolve_device, seed_everything

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT_DIR = "expr/federated"
ARG_KEYS = ("lens", "psf", "object_distance", "quantize_levels", "img_size", "batch_size", "teacher",
            "heatmap_mode", "heatmap_sigma", "seed", "device")
"""Flags every process needs besides the Stage I group (which is copied whole, so new Stage I flags carry over)."""


class Stage1Factory:
    """Builds the Stage I pieces of a federation in any process (driver, Ray worker, real site).

    Args:
        args: plain dict of the run's flags (what ``pipelines.train_optics.build_stage1_camera`` and
            ``stage1_config`` read).
        train_dir: the federation's training folder (simulation), or None (real sites: node config ``data-dir``).
        partitions: per client, the indices into the training folder's files (simulation).
    """

    def __init__(self, args: dict, train_dir: str | None = None, partitions: list[list[int]] | None = None):
        self.args = dict(args)
        self.train_dir = train_dir
        self.partitions = partitions or []
        self._cache: dict[str, Any] = {}

    def __getstate__(self):
        return {"args": self.args, "train_dir": self.train_dir, "partitions": self.partitions}

    def __setstate__(self, state):
        self.__init__(**state)

    @property
    def seed(self) -> int:
        return int(self.args["seed"])

    @property
    def total_images(self) -> int:
        return sum(len(p) for p in self.partitions) or int(self.args.get("total_images") or 1000)

    def _ns(self) -> argparse.Namespace:
        return argparse.Namespace(**self.args)

    def device(self) -> str:
        return str(resolve_device(self.args.get("device", "cpu")))

    def face_set(self, folder: str | Path, name: str = "train"):
        """The FaceLandmarkSet of a folder (teacher landmarks from the on-disk cache), once per process."""
        from anonymizer.stage1.teacher import LandmarkTeacher
        from pipelines.train_optics import load_face_set

        key = f"{name}:{folder}"
        if key not in self._cache:
            teacher = LandmarkTeacher(self.args["teacher"], device=self.device())
            self._cache[key] = load_face_set(Path(folder), int(self.args["img_size"]), teacher, {}, name)
        return self._cache[key]

    def client_data(self, partition_id: int | None, node_config: dict | None = None):
        """A site's FaceLandmarkSet: its ``data-dir`` (real site) or its partition of the training folder."""
        from federated.data import client_face_set

        node_config = node_config or {}
        if node_config.get("data-dir"):
            return self.face_set(node_config["data-dir"], "site")
        if partition_id is None or not 0 <= partition_id < len(self.partitions):
            raise ValueError(f"client partition {partition_id} unknown: the federation has {len(self.partitions)} "
                             "partitions (a real site needs node config data-dir=...)")
        return client_face_set(self.face_set(self.train_dir), self.partitions[partition_id])

    def trainer(self, train_set, seed: int, checkpoint_dir: str | None = None):
        """A fresh Stage1Trainer (the camera and objective of ``--mode train_optics``) with this seed."""
        from anonymizer.stage1.teacher import TEACHERS
        from anonymizer.stage1.trainer import Stage1Trainer
        from pipelines.train_optics import build_stage1_camera, stage1_config

        ns = self._ns()
        cfg = stage1_config(ns, TEACHERS[ns.teacher])
        cfg.seed = int(seed)
        return Stage1Trainer(build_stage1_camera(ns), cfg, train_set, None, checkpoint_dir=checkpoint_dir,
                             device=self.device(), args=self.args, teacher=ns.teacher)

    def server_trainer(self, checkpoint_dir: str):
        """The trainer that only holds / saves / loads the global model (never trains)."""
        return self.trainer(None, self.seed, checkpoint_dir)


def federated_config(args: argparse.Namespace, ckpt_dir: Path) -> FederatedConfig:
    return FederatedConfig(num_clients=args.num_clients, rounds=args.rounds, local_steps=args.local_steps,
                           secure_aggregation=args.secure_aggregation, num_shares=args.num_shares,
                           reconstruction_threshold=args.reconstruction_threshold,
                           clipping_range=args.clipping_range, quantization_range=args.quantization_range,
                           max_weight=args.max_weight, unequal_clients=args.unequal_clients,
                           identity_pattern=args.identity_pattern, save_every=args.save_every_rounds,
                           checkpoint_dir=str(ckpt_dir), args={})


def run(args: argparse.Namespace) -> None:
    from federated.data import partition_identities
    from federated.params import set_arrays
    from federated.server import run_federated

    ckpt_dir = Path(args.checkpoint_dir or DEFAULT_CHECKPOINT_DIR)
    cfg = federated_config(args, ckpt_dir)
    cfg.validate()
    if args.resume_iter < 0:
        raise ValueError(f"--resume_iter must be >= 0, got {args.resume_iter}")
    existing = latest_step(ckpt_dir, "optics")
    if not args.resume_iter and existing is not None and not args.prepare_only:
        if not getattr(args, "overwrite", False):
            raise ValueError(f"{ckpt_dir}: holds Stage I checkpoints up to step {existing} of another run; resume "
                             f"with --resume_iter {existing}, choose another --checkpoint_dir, or pass --overwrite")
        for old in ckpt_dir.glob("*_optics.ckpt"):
            old.unlink()
    device = resolve_device(args.device)
    seed_everything(args.seed)
    train_dir, val_dir = image_dirs(args.train_img_dir, args.val_img_dir, args.img_size)
    plain_args = {k: v for k, v in vars(args).items() if not callable(v)}
    plain_args.update(train_img_dir=str(train_dir), val_img_dir=str(val_dir) if val_dir else None,
                      device=str(device))
    factory = Stage1Factory(plain_args, str(train_dir))
    train_set = factory.face_set(train_dir)  # teacher landmarks computed once here; the sites read the cache
    files = list(train_set.dataset.files)
    factory.partitions = partition_identities(files, args.num_clients, args.unequal_clients, args.seed,
                                              args.identity_pattern)
    cfg.args = {**plain_args, "total_images": len(files)}
    cfg.save(ckpt_dir / "federation.json")
    save_json(ckpt_dir / "federation_clients.json",
              {"train_dir": str(train_dir), "clients": [[str(files[i]) for i in p] for p in factory.partitions]})
    log.info("federation: %d clients with %s images (disjoint identities), %d rounds x %d local steps, %s",
             args.num_clients, [len(p) for p in factory.partitions], args.rounds, args.local_steps,
             "SecAgg+ (num_shares %d, threshold %d)" % cfg.shares() if cfg.secure_aggregation else "plain FedAvg")
    if args.prepare_only:
        log.info("--prepare_only: wrote %s", ckpt_dir / "federation.json")
        return
    server = run_federated(factory, cfg, resume_step=args.resume_iter)
    set_arrays(server.trainer, server.global_arrays)
    summary: dict[str, Any] = {"checkpoint": str(server.checkpoints[-1]) if server.checkpoints else None,
                               "rounds": server.rounds_log}
    if val_dir is not None:
        val_set = factory.face_set(val_dir, "val")
        metrics = server.trainer.evaluate(val_set)
        summary["val"] = {k: v for k, v in metrics.items() if k != "per_image_nme"}
        save_image(ckpt_dir / "samples" / f"{server.trainer.step:06d}_federated.png",
                   server.trainer.sample_grid(val_set))
        log.info("final global model on %d held-out faces: heatmap=%.4f nme=%s", metrics["num_images"],
                 metrics["heatmap"], "n/a" if metrics["nme"] is None else f"{metrics['nme']:.4f}")
    save_json(ckpt_dir / "federated_summary.json", summary)


# ----------------------------------------------------------------------- apps for real processes (flwr run)
def _config_of(context) -> FederatedConfig:
    path = context.run_config.get("config-file")
    if not path:
        raise ValueError("run config key 'config-file' (the federation.json of --prepare_only) is missing")
    return FederatedConfig.load(str(path))


def _deployed_server(grid, context) -> None:
    from federated.server import FederatedServer

    cfg = _config_of(context)
    factory = Stage1Factory(cfg.args)
    FederatedServer(factory, cfg, resume_step=int(context.run_config.get("resume-step", 0))).main(grid, context)


def _deployed_client_fn(context):
    from federated.client import local_round, partition_of
    from flwr.client import NumPyClient

    cfg = _config_of(context)
    factory = Stage1Factory(cfg.args)
    node_config = dict(context.node_config)

    class SiteClient(NumPyClient):
        def fit(self, parameters, config):
            update, n = local_round(factory, cfg, partition_of(node_config), node_config, parameters,
                                    int(config["server_round"]))
            return update, n, {}

    return SiteClient().to_client()


def _site_mod(msg, context, call_next):
    """SecAgg+ on the site exactly when the federation config asks for it (a secure site refuses plain rounds:
    secaggplus_mod rejects a training message without its protocol configuration)."""
    from flwr.client.mod import secaggplus_mod

    if _config_of(context).secure_aggregation:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def _make_server_app():
    from flwr.server import ServerApp

    app = ServerApp()
    app.main()(_deployed_server)
    return app


def _make_client_app():
    from flwr.client import ClientApp

    return ClientApp(client_fn=_deployed_client_fn, mods=[_site_mod])


# plain assignments: flwr run finds the components by static analysis of this file
server_app = _make_server_app()
client_app = _make_client_app()
