"""Federated Stage I: Flower FedAvg (optionally with SecAgg+) around the Stage I trainer, and the
gradient-inversion leakage attack an honest-but-curious server can run on what it receives.

Modules: :mod:`federated.params` (the trainer's parameters as a list of arrays, the scaled update that goes on
the wire), :mod:`federated.data` (disjoint identities per client), :mod:`federated.client` (the ClientApp),
:mod:`federated.server` (the ServerApp, the FedAvg strategy, SecAgg+ settings, checkpoints and resume),
:mod:`federated.leakage` (gradient inversion, Geiping et al. 2020).

Flower's telemetry is switched off here (``FLWR_TELEMETRY_ENABLED=0`` unless the user set it), before any
module of this package imports flwr.
"""
from __future__ import annotations

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
