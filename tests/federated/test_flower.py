"""Real Flower runs (simulation engine, Ray): SecAgg+ vs plain aggregation, dropouts, resume.

Each client also writes its plain update to ``FederatedConfig.dump_dir`` (test-only), so the tests can compare
what the server-side strategy receives with what the clients computed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from federated.config import FederatedConfig
from tests.federated.conftest import make_factory

ONE_WORKER = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": 1}}


def client_updates(dump_dir: Path, server_round: int, clients) -> tuple[list[list[np.ndarray]], list[int]]:
    ups, ns = [], []
    for c in clients:
        d = np.load(Path(dump_dir) / f"r{server_round}_c{c}.npz")
        ups.append([d[f"arr_{i}"] for i in range(len(d.files) - 1)])
        ns.append(int(d["num_examples"]))
    return ups, ns


def weighted_mean(ups, ns):
    return [sum(n * u[i] for n, u in zip(ns, ups)) / sum(ns) for i in range(len(ups[0]))]


def max_diff(a, b) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def secagg_error_bound(cfg: FederatedConfig, ns, max_weight: float) -> float:
    """Largest deviation of SecAgg+'s mean from the exact weighted mean: each client's stochastic rounding errs
    by < one level (2 c / Q) on its weighted update, the sum by < n levels, divided by the total weight
    sum(n_i / max_weight); the weights' own rounding (1 / Q each) adds a relative 1e-6 at most."""
    level = 2 * cfg.clipping_range / cfg.quantization_range
    return len(ns) * level / (sum(ns) / max_weight) * (1 + 1e-3)


def test_secagg_server_sees_only_the_aggregate(small_faces, tmp_path):
    """The fast real-Flower test: 3 sites, SecAgg+, one round of one local step at 32 px."""
    from anonymizer.stage1.trainer import load_optics_checkpoint
    from federated.params import get_arrays
    from federated.server import run_federated

    factory, _ = make_factory(small_faces, 3)
    cfg = FederatedConfig(num_clients=3, rounds=1, local_steps=1, secure_aggregation=True,
                          checkpoint_dir=str(tmp_path / "ckpt"), dump_dir=str(tmp_path / "dump"))
    initial = [a.astype(np.float32).astype(np.float64) for a in get_arrays(factory.server_trainer(str(tmp_path)))]
    # one Ray worker runs the 3 sites in turn: one cold start instead of two on the shared 2-core machine
    server = run_federated(factory, cfg, keep_received=1, backend_config=ONE_WORKER)
    ups, ns = client_updates(tmp_path / "dump", 1, range(3))
    mean = weighted_mean(ups, ns)
    received = server.received[1]
    assert len(received) == 3 and [n for _, n in received] == ns
    bound = secagg_error_bound(cfg, ns, factory.total_images)
    for arrays, _ in received:
        # every "client result" the strategy gets is the unmasked aggregate, within the quantisation error ...
        assert max_diff(arrays, mean) <= bound
        # ... and none is an individual update: each differs from every client's own update by far more
        assert min(max_diff(arrays, u) for u in ups) > 100 * bound
    # the global model moved by exactly the aggregate (in metres for the lens), and was saved as Stage I ckpt
    optic, regressor, meta = load_optics_checkpoint(server.checkpoints[-1])
    assert meta["step"] == 1
    wave = optic.config.wave_height
    expected_lens = initial[0] + mean[0] * wave
    assert np.allclose(optic.state_dict()["zernike_coeffs"].double().numpy(), expected_lens, rtol=0,
                       atol=bound * wave + 1e-7 * np.abs(expected_lens).max())
    log = server.rounds_log[0]
    assert log["aggregated"] and log["num_results"] == 3 and log["num_failures"] == 0


@pytest.mark.slow
def test_secagg_dropout_above_and_below_threshold(small_faces, tmp_path):
    """num_shares 4, threshold 3: one dropout is recovered (the aggregate is the survivors' mean), two abort
    the round (the global model is unchanged)."""
    from federated.server import run_federated

    factory, _ = make_factory(small_faces, 4)
    cfg = FederatedConfig(num_clients=4, rounds=2, local_steps=1, secure_aggregation=True, num_shares=4,
                          reconstruction_threshold=3, drop={1: [0], 2: [0, 1]},
                          checkpoint_dir=str(tmp_path / "ckpt"), dump_dir=str(tmp_path / "dump"))
    server = run_federated(factory, cfg, keep_received=2)
    r1, r2 = server.rounds_log
    assert r1["aggregated"] and r1["num_results"] == 3
    ups, ns = client_updates(tmp_path / "dump", 1, [1, 2, 3])
    assert not (tmp_path / "dump" / "r1_c0.npz").exists()
    received = server.received[1]
    assert len(received) == 3
    assert max_diff(received[0][0], weighted_mean(ups, ns)) <= secagg_error_bound(cfg, ns, factory.total_images)
    assert not r2["aggregated"] and 2 not in server.received
    from data.checkpoint import load_checkpoint

    after1 = load_checkpoint(tmp_path / "ckpt" / "000001_optics.ckpt")
    final = load_checkpoint(server.checkpoints[-1])
    assert final["step"] == 2 and final["federated"]["rounds"][1]["aggregated"] is False
    for k, v in after1["regressor"].items():
        assert np.array_equal(v.numpy(), final["regressor"][k].numpy())


@pytest.mark.slow
def test_plain_fedavg_shows_updates_and_resumes_exactly(small_faces, tmp_path):
    """Plain FedAvg hands every client's update to the strategy; a run resumed from its round-1 checkpoint
    ends where an uninterrupted 2-round run ends."""
    from federated.server import run_federated

    factory, _ = make_factory(small_faces, 3)
    full = FederatedConfig(num_clients=3, rounds=2, local_steps=2, checkpoint_dir=str(tmp_path / "full"),
                           dump_dir=str(tmp_path / "dump"))
    server = run_federated(factory, full, keep_received=1)
    ups, _ = client_updates(tmp_path / "dump", 1, range(3))
    got = [a for a, _ in server.received[1]]
    assert all(min(max_diff(g, u) for u in ups) == 0.0 for g in got)  # individual updates, bit for bit

    part = FederatedConfig(num_clients=3, rounds=1, local_steps=2, checkpoint_dir=str(tmp_path / "part"))
    run_federated(factory, part)
    part.rounds = 2
    resumed = run_federated(factory, part, resume_step=2)
    assert resumed.start_round == 1 and [r["round"] for r in resumed.rounds_log] == [1, 2]
    assert max_diff(resumed.global_arrays, server.global_arrays) <= 1e-6
    with pytest.raises(ValueError, match="local_steps=2, this run has 1"):
        bad = FederatedConfig(num_clients=3, rounds=3, local_steps=1, checkpoint_dir=str(tmp_path / "part"))
        run_federated(factory, bad, resume_step=2)
