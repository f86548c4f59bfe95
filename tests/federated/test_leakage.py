"""The leakage attack's parts: TV prior, assignment, image scores (closed forms), and that the attacker's
loss is the trainer's image-dependent Stage I loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from federated.leakage import data_loss, image_scores, match_images, total_variation


def test_total_variation_closed_form():
    assert float(total_variation(torch.full((2, 3, 8, 8), 0.3))) == 0.0
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2
    x = checker.float().expand(1, 3, 8, 8)
    assert float(total_variation(x)) == pytest.approx(2.0)  # every neighbour pair differs by 1


def test_match_images_recovers_a_permutation(rng):
    truth = rng.random((4, 8, 8, 3)).astype(np.float32)
    recon = np.concatenate([truth[[2, 0, 3, 1]] + 0.01, rng.random((3, 8, 8, 3)).astype(np.float32)])
    assert match_images(recon, truth) == [1, 3, 0, 2]


def test_image_scores_psnr_of_known_error():
    truth = np.full((16, 16, 3), 0.5, np.float32)
    off = truth + 0.1  # MSE 0.01 -> PSNR 20 dB
    s = image_scores([off, truth + 0.01], [truth, truth])
    assert s["psnr_per_image"][0] == pytest.approx(20.0, abs=1e-4)
    assert s["psnr_per_image"][1] == pytest.approx(40.0, abs=1e-3)


def test_attacker_loss_is_the_trainers_image_term(small_faces):
    from tests.federated.conftest import make_factory

    factory, face_set = make_factory(small_faces, 3, ["--heatmap_mode", "landmarks"])
    trainer = factory.trainer(face_set, seed=3)
    images, landmarks, found = face_set.batch([0, 1, 2])
    trainer.camera.noise = False
    _, parts, _ = trainer.losses(images, landmarks, found, torch.Generator().manual_seed(0))
    expected = parts["heatmap"] + trainer.cfg.lambda_coord * parts["nme"]
    got = data_loss(trainer, images, torch.nan_to_num(landmarks), found).detach()
    assert float(got) == pytest.approx(expected, rel=1e-5)
    # twice differentiable (the gradient-matching objective needs d/dx of a parameter gradient)
    x = images.clone().requires_grad_(True)
    g = torch.autograd.grad(data_loss(trainer, x, torch.nan_to_num(landmarks), found),
                            list(trainer.regressor.parameters())[:1], create_graph=True)[0]
    (dx,) = torch.autograd.grad(g.square().sum(), x)
    assert torch.isfinite(dx).all() and dx.abs().sum() > 0


def test_matching_objective_singles_out_the_true_batch(small_faces):
    """A client's real one-step update: the attack's loss is far lower at the client's true batch than at a
    grey image or at other faces (the objective identifies the data; the optimiser has to find it)."""
    from anonymizer.stage1.trainer import batch_indices
    from federated.leakage import matching_loss
    from federated.params import encode_update, get_arrays, set_arrays, wire_scales
    from tests.federated.conftest import make_factory

    factory, face_set = make_factory(small_faces, 3)
    data = factory.client_data(0)
    client = factory.trainer(data, seed=11)
    start = get_arrays(client)
    client.train_step()
    update = encode_update(get_arrays(client), start, wire_scales(client))
    server = factory.server_trainer("unused")
    set_arrays(server, start)
    images, landmarks, _ = data.batch(batch_indices(0, 2, len(data), 11))
    prior = torch.as_tensor(np.nanmean(face_set.landmarks.numpy(), axis=0)).expand(2, -1, -1).clone()
    at_truth = matching_loss(server, update, images, torch.nan_to_num(landmarks))
    at_grey = matching_loss(server, update, torch.full_like(images, 0.5), prior)
    others = [i for i in range(len(data)) if i not in batch_indices(0, 2, len(data), 11)][:2]
    at_others = matching_loss(server, update, data.batch(others)[0], prior)
    assert at_truth < 0.5 * min(at_grey, at_others)
