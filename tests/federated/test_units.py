"""Partitions, the parameter list of the trainer, the wire encoding and the settings checks (no Flower)."""
from __future__ import annotations

import numpy as np
import pytest

from federated.config import FederatedConfig
from federated.data import client_shares, identity_of, partition_identities
from federated.params import apply_update, array_names, encode_update, get_arrays, set_arrays, wire_scales


def test_partition_disjoint_identities_cover_every_file():
    # two photos per person: a person's photos must never be split over two clients
    files = [f"/d/face/p{k:02d}_{j}.png" for k in range(10) for j in range(2)]
    parts = partition_identities(files, 3, identity_pattern=r"^(.*)_\d+$")
    assert sorted(i for p in parts for i in p) == list(range(20))
    owners = {}
    for c, p in enumerate(parts):
        for i in p:
            owners.setdefault(identity_of(files[i], r"^(.*)_\d+$"), set()).add(c)
    assert all(len(v) == 1 for v in owners.values()) and len(owners) == 10
    assert [len(p) // 2 for p in parts] == client_shares(10, 3)


def test_unequal_shares_follow_1_to_n():
    assert client_shares(12, 3) == [4, 4, 4]
    # 1 each, then 9 spare identities by weight 1:2:3 -> 1.5, 3, 4.5 -> largest remainders
    shares = client_shares(12, 3, unequal=True)
    assert sum(shares) == 12 and shares[0] < shares[1] < shares[2]
    s = client_shares(103, 4, unequal=True)
    assert sum(s) == 103 and all(abs(s[c] - 1 - 99 * (c + 1) / 10) < 1 for c in range(4))


def test_partition_errors_name_the_problem():
    with pytest.raises(ValueError, match="3 identities cannot be split over 4 clients"):
        partition_identities(["a.png", "b.png", "c.png"], 4)
    with pytest.raises(ValueError, match="does not match --identity_pattern"):
        identity_of("/x/abc.png", r"^(\d+)$")


def test_partition_is_a_function_of_the_seed():
    files = [f"{k}.png" for k in range(30)]
    assert partition_identities(files, 4, seed=3) == partition_identities(files, 4, seed=3)
    assert partition_identities(files, 4, seed=3) != partition_identities(files, 4, seed=4)


def test_config_validation_and_json_round_trip(tmp_path):
    with pytest.raises(ValueError, match="needs >= 3 clients"):
        FederatedConfig(num_clients=2, secure_aggregation=True).validate()
    with pytest.raises(ValueError, match="reconstruction_threshold 4 must be in"):
        FederatedConfig(num_clients=4, secure_aggregation=True, reconstruction_threshold=4).validate()
    cfg = FederatedConfig(num_clients=5, secure_aggregation=True, drop={2: [1, 3]}, args={"img_size": 32})
    assert cfg.shares() == (5, 3)
    back = FederatedConfig.load(cfg.save(tmp_path / "federation.json"))
    assert back.dropped(2) == [1, 3] and back.dropped(1) == [] and back.args == {"img_size": 32}
    with pytest.raises(FileNotFoundError, match="missing.json"):
        FederatedConfig.load(tmp_path / "missing.json")


def test_trainer_arrays_round_trip_and_wire_scale(small_faces):
    from tests.federated.conftest import make_factory

    factory, face_set = make_factory(small_faces, 3)
    a = factory.trainer(factory.client_data(0), seed=1)
    b = factory.trainer(factory.client_data(1), seed=2)
    names = array_names(a)
    assert names[0] == "lens.zernike_coeffs" and all(n.startswith(("lens.", "regressor.")) for n in names)
    scales = wire_scales(a)
    assert scales[0] == pytest.approx(a.lens.config.wave_height) and set(scales[1:]) == {1.0}
    before = get_arrays(a)
    a.train_step()
    after = get_arrays(a)
    update = encode_update(after, before, scales)
    # one Adam step moves each lens coefficient by at most ~optics_lr waves
    assert 0 < np.abs(update[0]).max() <= 1.01 * factory.args["optics_lr"]
    rebuilt = apply_update(before, update, scales)
    assert all(np.allclose(x, y, rtol=0, atol=1e-12) for x, y in zip(rebuilt, after))
    set_arrays(b, after)
    assert all(np.array_equal(x, y) for x, y in zip(get_arrays(b), after))
    with pytest.raises(ValueError, match="arrays for"):
        set_arrays(b, after[:-1])
    with pytest.raises(ValueError, match="lens.zernike_coeffs: array of shape"):
        set_arrays(b, [np.zeros(3)] + after[1:])


def test_adversarial_objective_is_federated_too(small_faces):
    """With the privacy objective's adversary (--lambda_adv > 0) its weights are part of the federated model,
    so a site's adversary update reaches the global model like the lens and regressor."""
    from tests.federated.conftest import make_factory

    factory, _ = make_factory(small_faces, 3, ["--lambda_adv", "0.1"])
    trainer = factory.trainer(factory.client_data(0), seed=1)
    names = array_names(trainer)
    assert any(n.startswith("adversary.") for n in names)
    before = get_arrays(trainer)
    trainer.train_step()
    moved = {n.split(".")[0] for n, a, b in zip(names, before, get_arrays(trainer)) if not np.array_equal(a, b)}
    assert moved == {"lens", "regressor", "adversary"}
