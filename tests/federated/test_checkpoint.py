"""The federated result is an ordinary Stage I checkpoint: Stage II, eval / demo (build_camera) and export
load it, with the global weights the server holds (no Flower needed: the server's save path)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from federated.config import FederatedConfig
from federated.params import get_arrays, set_arrays


@pytest.mark.slow  # ~6 s idle, ~18 s under load; the fast SecAgg+ test already loads its checkpoint
def test_global_model_checkpoint_loads_everywhere(small_faces, tmp_path):
    from anonymizer.stage1.trainer import load_optics_checkpoint
    from anonymizer.stage2.sampling import frozen_optics_from_checkpoint
    from federated.server import FederatedServer
    from pipelines.common import build_camera
    from tests.federated.conftest import IMG_SIZE, make_factory

    factory, face_set = make_factory(small_faces, 3)
    cfg = FederatedConfig(num_clients=3, rounds=2, local_steps=3, checkpoint_dir=str(tmp_path))
    server = FederatedServer(factory, cfg)
    # pretend a round moved the model: a client's real local steps become the global model
    client = factory.trainer(factory.client_data(0), seed=5)
    set_arrays(client, server.global_arrays)
    client.train_step()
    server.global_arrays = get_arrays(client)
    path = server.save(1)
    assert path.name == "000003_optics.ckpt"  # step = round x local_steps
    expected_keys = set(client.state()) | {"version", "federated"}
    state = torch.load(path, weights_only=True)
    assert set(state) == expected_keys and state["step"] == 3
    optic, regressor, meta = load_optics_checkpoint(path)
    assert torch.equal(optic.state_dict()["zernike_coeffs"], client.lens.state_dict()["zernike_coeffs"])
    for k, v in client.regressor.state_dict().items():
        assert torch.equal(regressor.state_dict()[k], v)
    frozen = frozen_optics_from_checkpoint(path, IMG_SIZE)  # Stage II --optics_checkpoint
    assert frozen is not None
    camera = build_camera(str(path), img_size=IMG_SIZE)  # eval / demo lens spec
    assert camera(torch.rand(1, 3, IMG_SIZE, IMG_SIZE)).shape == (1, 3, IMG_SIZE, IMG_SIZE)
    # resuming from it restores the global weights exactly
    again = FederatedServer(factory, cfg, resume_step=3)
    assert again.start_round == 1
    assert all(np.array_equal(a.astype(np.float32), b.astype(np.float32))
               for a, b in zip(again.global_arrays, server.global_arrays))
    with pytest.raises(ValueError, match="not a multiple of --local_steps 3"):
        FederatedServer(factory, cfg, resume_step=2)
