"""The Flower ServerApp of federated Stage I: FedAvg of the clients' updates, optionally under SecAgg+.

Round r (global numbering, continued across resumes): the strategy sends the global model and
``{"server_round": r}``; each client runs K local Stage I steps and answers with its scaled update
(federated.params); the strategy averages the updates weighted by the clients' image counts and adds the mean
(times the wire scale) to the global model, which is kept in float32 precision (what the clients train in).

Plain FedAvg (``secure_aggregation`` off): Flower's default fit workflow; the server sees every client's update.

SecAgg+ (on): ``SecAggPlusWorkflow(num_shares, reconstruction_threshold, clipping_range, quantization_range,
max_weight)`` on the server and ``secaggplus_mod`` on the clients. Each client multiplies its update by its
weight ``n_i / max_weight``, clips it to ``[-clipping_range, clipping_range]``, quantises it stochastically to
``quantization_range`` levels, and adds pairwise masks (agreed with each of its ``num_shares - 1`` neighbours)
and a self mask; the secret of each mask is Shamir-shared among the neighbours with ``reconstruction_threshold``.
The server sums the masked vectors and unmasks only the sum (rebuilding the pairwise masks of clients that
dropped out after sharing their keys); the strategy's ``aggregate_fit`` then receives the same dequantised
weighted mean in place of every client's parameters -- never an individual update. If any client keeps fewer
than ``reconstruction_threshold`` live neighbours, the round is aborted (aggregate_fit is not called) and the
global model stays as it was.

Checkpoints: after every ``save_every`` rounds and the last one, ``<checkpoint_dir>/<r K:06d>_optics.ckpt`` is
written by a Stage I trainer holding the global weights -- an ordinary Stage I checkpoint (same keys as
``Stage1Trainer.state()``, step = r K) plus a ``"federated"`` entry (settings, round log), so Stage II
(``--optics_checkpoint``), eval and the demo load it. A run resumes from the checkpoint of step r K and
continues with round r + 1.
"""
from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import federated  # noqa: F401  (telemetry off before flwr is imported)

import numpy as np

from data.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from data.files import save_json
from federated.config import SECAGG_MODULUS_RANGE, FederatedConfig
from federated.params import apply_update, get_arrays, set_arrays, wire_scales

log = logging.getLogger(__name__)

CHECKED_KEYS = ("num_clients", "local_steps", "unequal_clients", "identity_pattern")
"""Settings a resumed run must share with its checkpoint (they define the clients' data and steps)."""


def _digest(tensors: list[bytes]) -> str:
    h = hashlib.sha1()
    for t in tensors:
        h.update(t)
    return h.hexdigest()


class FederatedServer:
    """State of one federated run on the server side (the global model, the round log, the records).

    Args:
        factory: provides ``server_trainer(checkpoint_dir)`` (a Stage I trainer used only to hold, save and
            load the global weights) and ``total_images`` (the federation's number of training images).
        cfg: the run's settings.
        resume_step: 0, or the step of a checkpoint in ``cfg.checkpoint_dir`` to continue from (a multiple of
            ``cfg.local_steps``).
        keep_received: keep what ``aggregate_fit`` receives (arrays and weights) for rounds <= this number
            (tests, and the leakage attack of an honest-but-curious server).
    """

    def __init__(self, factory, cfg: FederatedConfig, resume_step: int = 0, keep_received: int = 0):
        cfg.validate()
        self.factory, self.cfg = factory, cfg
        self.keep_received = int(keep_received)
        self.trainer = factory.server_trainer(cfg.checkpoint_dir)
        self.scales = wire_scales(self.trainer)
        self.rounds_log: list[dict[str, Any]] = []
        self.start_round = 0
        if resume_step:
            self._resume(int(resume_step))
        self.global_arrays = [a.astype(np.float32).astype(np.float64) for a in get_arrays(self.trainer)]
        self.received: dict[int, list[tuple[list[np.ndarray], int]]] = {}
        self.checkpoints: list[Path] = []
        self.error: BaseException | None = None
        self._open: dict[int, float] = {}

    # ------------------------------------------------------------------------------------------ checkpoints
    def _resume(self, step: int) -> None:
        k = self.cfg.local_steps
        if step % k:
            raise ValueError(f"--resume_iter {step} is not a multiple of --local_steps {k} (federated checkpoints "
                             f"are written after whole rounds)")
        path = checkpoint_path(self.cfg.checkpoint_dir, step, "optics")
        fed = load_checkpoint(path).get("federated")
        if fed is None:
            raise ValueError(f"{path}: not a federated Stage I checkpoint (no 'federated' key)")
        for key in CHECKED_KEYS:
            if fed["config"].get(key) != getattr(self.cfg, key):
                raise ValueError(f"{path}: written with {key}={fed['config'].get(key)!r}, this run has "
                                 f"{getattr(self.cfg, key)!r}")
        if step // k >= self.cfg.rounds:
            raise ValueError(f"{path}: already at round {step // k}; --rounds {self.cfg.rounds} leaves nothing to do")
        self.trainer.resume(step)
        self.start_round = step // k
        self.rounds_log = [dict(r) for r in fed.get("rounds", [])]
        log.info("resumed the federated run from %s (round %d)", path, self.start_round)

    def save(self, server_round: int) -> Path:
        """Write the global model as the Stage I checkpoint of step ``server_round x local_steps``."""
        set_arrays(self.trainer, self.global_arrays)
        self.trainer.step = server_round * self.cfg.local_steps
        state = self.trainer.state()
        state["federated"] = {"round": server_round, "config": self.cfg.to_dict(), "rounds": self.rounds_log}
        path = save_checkpoint(checkpoint_path(self.cfg.checkpoint_dir, self.trainer.step, "optics"), state)
        self.checkpoints.append(path)
        log.info("round %d: saved %s", server_round, path)
        return path

    # ------------------------------------------------------------------------------------------- the rounds
    def round_started(self, server_round: int) -> None:
        self._close_aborted()
        self._open[server_round] = time.perf_counter()

    def _close_aborted(self) -> None:
        for r, t0 in sorted(self._open.items()):
            self.rounds_log.append({"round": r, "seconds": time.perf_counter() - t0, "aggregated": False,
                                    "num_results": 0, "num_failures": None})
            log.warning("round %d aborted (secure aggregation halted): the global model is unchanged", r)
        self._open.clear()

    def round_finished(self, server_round: int, mean_update: list[np.ndarray], results, failures) -> list[np.ndarray]:
        """Apply the mean update; log the round; checkpoint. Returns the new global arrays."""
        new = apply_update(self.global_arrays, mean_update, self.scales)
        self.global_arrays = [a.astype(np.float32).astype(np.float64) for a in new]
        t0 = self._open.pop(server_round, time.perf_counter())
        self.rounds_log.append({"round": server_round, "seconds": time.perf_counter() - t0, "aggregated": True,
                                "num_results": len(results), "num_failures": len(failures),
                                "num_examples": [int(r.num_examples) for _, r in results]})
        log.info("round %d: aggregated %d updates (%d failures) in %.2f s", server_round, len(results),
                 len(failures), self.rounds_log[-1]["seconds"])
        if server_round % self.cfg.save_every == 0 or server_round == self.cfg.rounds:
            self.save(server_round)
        return self.global_arrays

    def strategy(self):
        """The FedAvg strategy (all clients every round, no client-side evaluation)."""
        from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
        from flwr.server.strategy import FedAvg

        server = self
        n = self.cfg.num_clients

        class Stage1FedAvg(FedAvg):
            """FedAvg over the clients' updates; records what ``aggregate_fit`` receives."""

            def configure_fit(self, server_round, parameters, client_manager):
                server.round_started(server.start_round + server_round)
                return super().configure_fit(server_round, parameters, client_manager)

            def aggregate_fit(self, server_round, results, failures):
                r = server.start_round + server_round
                if r <= server.keep_received:
                    server.received[r] = [(parameters_to_ndarrays(res.parameters), int(res.num_examples))
                                          for _, res in results]
                if not results:
                    return None, {}
                # a fixed summation order (results arrive in any order): the same updates give the same bits
                results = sorted(results, key=lambda item: _digest(item[1].parameters.tensors))
                aggregated, metrics = super().aggregate_fit(server_round, results, failures)
                new = server.round_finished(r, parameters_to_ndarrays(aggregated), results, failures)
                return ndarrays_to_parameters(new), metrics

        return Stage1FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n, min_available_clients=n,
                            min_evaluate_clients=0, accept_failures=True,
                            on_fit_config_fn=lambda rnd: {"server_round": server.start_round + rnd},
                            initial_parameters=ndarrays_to_parameters(self.global_arrays))

    def fit_workflow(self):
        """SecAggPlusWorkflow with the run's settings (None: Flower's plain fit workflow)."""
        if not self.cfg.secure_aggregation:
            return None
        from flwr.server.workflow import SecAggPlusWorkflow

        num_shares, threshold = self.cfg.shares()
        max_weight = self.cfg.max_weight or float(self.factory.total_images)
        return SecAggPlusWorkflow(num_shares=num_shares, reconstruction_threshold=threshold, max_weight=max_weight,
                                  clipping_range=float(self.cfg.clipping_range),
                                  quantization_range=int(self.cfg.quantization_range),
                                  modulus_range=SECAGG_MODULUS_RANGE)

    def main(self, grid, context) -> None:
        """The ServerApp's main: run rounds ``start_round + 1 .. cfg.rounds`` (errors kept in ``self.error``)."""
        from flwr.server import LegacyContext, ServerConfig
        from flwr.server.workflow import DefaultWorkflow

        try:
            ctx = LegacyContext(context=context, config=ServerConfig(num_rounds=self.cfg.rounds - self.start_round),
                                strategy=self.strategy())
            DefaultWorkflow(fit_workflow=self.fit_workflow())(grid, ctx)
            self._close_aborted()
            last = self.cfg.rounds
            if not self.checkpoints or self.checkpoints[-1] != checkpoint_path(
                    self.cfg.checkpoint_dir, last * self.cfg.local_steps, "optics"):
                self.save(last)
            save_json(Path(self.cfg.checkpoint_dir) / "federated_log.json",
                      {"config": self.cfg.to_dict(), "rounds": self.rounds_log,
                       "checkpoints": [str(p) for p in self.checkpoints]})
        except BaseException as err:  # surfaced by run_federated (the simulation would only log it)
            self.error = err
            raise

    def server_app(self):
        from flwr.server import ServerApp

        app = ServerApp()
        app.main()(self.main)
        return app


def run_federated(factory, cfg: FederatedConfig, resume_step: int = 0, keep_received: int = 0,
                  backend_config: dict | None = None) -> FederatedServer:
    """Run the federation in Flower's simulation engine (one supernode per client, <= 1 CPU each).

    Returns:
        the :class:`FederatedServer` after the last round (global arrays, round log, checkpoints, records).

    Raises:
        whatever the ServerApp raised (bad checkpoint, settings), re-raised here.
    """
    from flwr.simulation import run_simulation

    from federated.client import make_client_app

    server = FederatedServer(factory, cfg, resume_step, keep_received)
    backend = backend_config or {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}}
    run_simulation(server_app=server.server_app(), client_app=make_client_app(factory, cfg),
                   num_supernodes=cfg.num_clients, backend_config=backend)
    if server.error is not None:
        raise server.error
    return server
