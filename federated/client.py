"""The Flower ClientApp of federated Stage I: one site's local Stage I steps around the existing trainer.

Per round the client receives the global model (federated.params order), builds a fresh Stage I trainer from
the run's factory (so every objective of :class:`anonymizer.stage1.trainer.Stage1Trainer`, the adversarial one
included, carries over), loads the global weights, runs ``local_steps`` ``train_step`` calls numbered
``(round - 1) K ... round K - 1`` (the data order and the sensor noise are functions of (client seed, step)),
and returns its update ``(theta_local - theta_global) / scale`` with its number of images as FedAvg weight.
Optimiser states restart every round (local Adam, reset per round). Nothing else leaves the site: no
per-client metrics are returned (under SecAgg+ metrics would travel in the clear).

With ``mods=[secaggplus_mod]`` (secure aggregation) Flower's mod masks the update before it leaves the client;
the server only ever unmasks the sum.

The factory (``pipelines.train_federated.Stage1Factory``) provides ``client_data(partition_id, node_config)``
and ``trainer(train_set, seed)``; it must be picklable (the simulation ships the app to Ray workers).
"""
from __future__ import annotations

import logging
from pathlib import Path

import federated  # noqa: F401  (telemetry off before flwr is imported)

import numpy as np

from data.files import atomic_write
from federated.config import FederatedConfig
from federated.params import encode_update, get_arrays, max_abs, set_arrays, wire_scales

log = logging.getLogger(__name__)

CLIENT_SEED_STRIDE = 1009
"""Client c trains with seed ``seed + (c + 1) x 1009`` (its own data order and noise)."""


class ClientDropout(RuntimeError):
    """Raised by a client listed in ``FederatedConfig.drop`` for the current round (a simulated site failure)."""


def client_seed(seed: int, partition_id: int) -> int:
    return int(seed) + (int(partition_id) + 1) * CLIENT_SEED_STRIDE


def partition_of(node_config) -> int | None:
    value = node_config.get("partition-id") if node_config is not None else None
    return None if value is None else int(value)


def local_round(factory, cfg: FederatedConfig, partition_id: int | None, node_config, global_arrays,
                server_round: int) -> tuple[list[np.ndarray], int]:
    """One client's work in ``server_round``: (update on the wire, number of local images).

    Raises:
        ClientDropout: this client is listed to fail in this round.
    """
    import torch

    if partition_id is not None and partition_id in cfg.dropped(server_round):
        raise ClientDropout(f"client {partition_id} drops out of round {server_round} (FederatedConfig.drop)")
    torch.set_num_threads(1)
    train_set = factory.client_data(partition_id, node_config)
    seed = client_seed(factory.seed, partition_id if partition_id is not None else 0)
    trainer = factory.trainer(train_set, seed)
    set_arrays(trainer, global_arrays)
    trainer.step = (server_round - 1) * cfg.local_steps
    for _ in range(cfg.local_steps):
        trainer.train_step()
    update = encode_update(get_arrays(trainer), global_arrays, wire_scales(trainer))
    if cfg.secure_aggregation and max_abs(update) > cfg.clipping_range:
        log.warning("client %s round %d: update entry %.3g exceeds --clipping_range %.3g and is clipped by SecAgg+",
                    partition_id, server_round, max_abs(update), cfg.clipping_range)
    if cfg.dump_dir:
        atomic_write(Path(cfg.dump_dir) / f"r{server_round}_c{partition_id}.npz",
                     lambda fh: np.savez(fh, *update, num_examples=len(train_set)))
    return update, len(train_set)


def make_client_app(factory, cfg: FederatedConfig):
    """The ClientApp (with ``secaggplus_mod`` when ``cfg.secure_aggregation``)."""
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod

    class Stage1Client(NumPyClient):
        def __init__(self, partition_id: int | None, node_config):
            self.partition_id, self.node_config = partition_id, node_config

        def fit(self, parameters, config):
            update, n = local_round(factory, cfg, self.partition_id, self.node_config, parameters,
                                    int(config["server_round"]))
            return update, n, {}

    def client_fn(context):
        return Stage1Client(partition_of(context.node_config), dict(context.node_config)).to_client()

    return ClientApp(client_fn=client_fn, mods=[secaggplus_mod] if cfg.secure_aggregation else [])
