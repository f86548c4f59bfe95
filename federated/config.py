"""Settings of a federated Stage I run (one JSON-able dataclass shared by the ServerApp and the ClientApps)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from data.files import plain, save_json

SECAGG_QUANTIZATION_RANGE = 2 ** 22
"""Integers per clipping interval in SecAgg+ (Flower's default): resolution ``2 clipping_range / 2**22``."""
SECAGG_MODULUS_RANGE = 2 ** 32
"""Range of the random masks (Flower's default; must exceed quantization_range x number of clients)."""


@dataclass
class FederatedConfig:
    """A federated run.

    Attributes:
        num_clients: N sites (Flower supernodes), >= 2 (>= 3 with secure aggregation).
        rounds: total FedAvg rounds R (a resumed run continues up to R).
        local_steps: Stage I steps K each client runs per round (the global step after round r is r x K).
        secure_aggregation: SecAgg+ (Flower's SecAggPlusWorkflow + secaggplus_mod) instead of plain FedAvg.
        num_shares: SecAgg+ shares of each client's secret keys (its neighbourhood size, itself included);
            0 = all N clients (every pair of clients masks each other). Must be > 2.
        reconstruction_threshold: shares needed to rebuild a key (the masks of a client that drops out, or the
            self-mask of one that stays); 0 = a majority, ``num_shares // 2 + 1``. A round survives as long as
            every client keeps at least this many live neighbours; below it the round is aborted and the global
            model is left unchanged. Privacy holds against fewer than ``threshold`` colluding parties.
        clipping_range: SecAgg+ clips each weighted update entry to [-c, c] before quantisation (units of the
            wire, see federated.params: waves for the lens, plain weights for the networks).
        quantization_range: SecAgg+ fixed-point levels over [-c, c] (error per entry <= 2c / range).
        max_weight: SecAgg+'s bound of a client's weight (its number of images); 0 = the federation's total
            number of training images (each weight <= 1 keeps the quantisation fine).
        unequal_clients: client shares 1 : 2 : ... : N identities instead of equal.
        identity_pattern: regex of a file stem's identity (federated.data).
        save_every: checkpoint every this many rounds (the last round always).
        checkpoint_dir: where ``<step>_optics.ckpt`` and ``federated_log.json`` go.
        args: the Stage I settings (camera, teacher, Stage I flags, image folders) as a plain dict, what
            ``pipelines.train_optics.build_stage1_camera`` / ``stage1_config`` read.
        drop: {round: [client ids]} clients that fail (raise) in that round's training, for the dropout tests
            and the robustness benchmark; empty in normal runs.
        dump_dir: when set, each client also writes its plain update (``r<round>_c<client>.npz``) there, so that
            tests can compare what the server received with what the clients computed. Never set in real runs.
    """
    num_clients: int = 4
    rounds: int = 3
    local_steps: int = 1
    secure_aggregation: bool = False
    num_shares: int = 0
    reconstruction_threshold: int = 0
    clipping_range: float = 0.5
    quantization_range: int = SECAGG_QUANTIZATION_RANGE
    max_weight: float = 0.0
    unequal_clients: bool = False
    identity_pattern: str = r"^(.*)$"
    save_every: int = 1
    checkpoint_dir: str = "expr/federated"
    args: dict = field(default_factory=dict)
    drop: dict = field(default_factory=dict)
    dump_dir: str = ""

    def shares(self) -> tuple[int, int]:
        """(num_shares, reconstruction_threshold) after the defaults are resolved."""
        n = self.num_shares or self.num_clients
        t = self.reconstruction_threshold or n // 2 + 1
        return n, t

    def validate(self) -> None:
        """Raises ValueError (naming the flag) for settings no run can use."""
        if self.num_clients < 2:
            raise ValueError(f"--num_clients must be >= 2, got {self.num_clients}")
        if self.rounds < 1:
            raise ValueError(f"--rounds must be >= 1, got {self.rounds}")
        if self.local_steps < 1:
            raise ValueError(f"--local_steps must be >= 1, got {self.local_steps}")
        if self.save_every < 1:
            raise ValueError(f"--save_every must be >= 1, got {self.save_every}")
        if self.secure_aggregation:
            n, t = self.shares()
            if self.num_clients < 3:
                raise ValueError(f"--secure_aggregation needs >= 3 clients, got --num_clients {self.num_clients}")
            if not 2 < n <= self.num_clients:
                raise ValueError(f"--num_shares {n} must be in [3, --num_clients {self.num_clients}]")
            if not 2 <= t < n:
                raise ValueError(f"--reconstruction_threshold {t} must be in [2, num_shares {n})")
            if self.clipping_range <= 0:
                raise ValueError(f"--clipping_range must be > 0, got {self.clipping_range}")
            if self.quantization_range * self.num_clients >= SECAGG_MODULUS_RANGE:
                raise ValueError(f"--quantization_range {self.quantization_range} x {self.num_clients} clients "
                                 f"overflows SecAgg+'s modulus 2**32")

    def dropped(self, server_round: int) -> list[int]:
        """Client ids that fail in ``server_round`` (keys may be ints or strings after a JSON round trip)."""
        return [int(c) for c in self.drop.get(server_round, self.drop.get(str(server_round), []))]

    def to_dict(self) -> dict[str, Any]:
        return plain(asdict(self))

    def save(self, path: str | Path) -> Path:
        return save_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "FederatedConfig":
        """Read a ``federation.json`` written by :meth:`save` (or by ``--mode train_federated``).

        Raises:
            FileNotFoundError / ValueError: missing or malformed file (names it).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: federation config not found")
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: not a federation config ({err})") from err
