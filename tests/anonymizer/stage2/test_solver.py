"""Stage II solver: steps change weights with finite losses, EMA closed form, exact resume, anonymize / loading."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from anonymizer.stage1.heatmap import HeatmapRegressor
from anonymizer.stage2.sampling import anonymize, load_anonymizer
from anonymizer.stage2.solver import Batch, Solver, StepData, moving_average
from data.datasets import ReferenceDataset, SourceDataset
from data.files import save_image
from tests.helpers import STAGE2_SIZE, gaussian_psf, make_solver

S = STAGE2_SIZE


def random_batch(b: int = 2, num_domains: int = 2) -> Batch:
    g = torch.Generator().manual_seed(1)
    img = lambda: torch.rand(b, 3, S, S, generator=g)  # noqa: E731
    lab = lambda: torch.randint(0, num_domains, (b,), generator=g)  # noqa: E731
    return Batch(img(), lab(), img(), img(), lab(), torch.randn(b, 4, generator=g), torch.randn(b, 4, generator=g))


def snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def changed(module: torch.nn.Module, before: list[torch.Tensor]) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(module.parameters(), before))


def test_one_d_step_and_one_g_step_change_their_weights_only() -> None:
    solver, _ = make_solver()
    batch = random_batch()
    capture, heatmap = solver.observe(batch.x_src)
    nets = solver.nets
    before = {n: snapshot(m) for n, m in nets.items()}
    loss, parts = solver.d_loss(batch, capture, heatmap, "latent")
    assert all(math.isfinite(v) for v in parts.values()) and torch.isfinite(loss)
    solver._backward(loss)
    solver.optims["discriminator"].step()
    assert changed(nets.discriminator, before["discriminator"])
    assert not changed(nets.generator, before["generator"])
    loss, parts = solver.g_loss(batch, capture, heatmap, "latent", lambda_ds=1.0)
    assert all(math.isfinite(v) for v in parts.values()) and torch.isfinite(loss)
    assert parts["hm"] > 0 and parts["cyc"] > 0
    solver._backward(loss)
    for name in ("generator", "mapping_network", "style_encoder"):
        solver.optims[name].step()
        assert changed(getattr(nets, name), before[name]), name
    d_after = snapshot(nets.discriminator)
    assert all(torch.equal(a, b) for a, b in zip(d_after, snapshot(nets.discriminator)))


@pytest.mark.parametrize("num_domains", [1, 2])
def test_train_step_updates_every_network_and_the_ema(num_domains: int) -> None:
    solver, _ = make_solver(num_domains=num_domains)
    before = {n: snapshot(m) for n, m in solver.nets.items()}
    ema_before = snapshot(solver.nets_ema.generator)
    logs = solver.train_step(random_batch(num_domains=num_domains), step=0)
    assert all(math.isfinite(v) for v in logs.values())
    assert {"D/latent_reg", "G/ref_hm", "G/latent_cyc", "G/lambda_ds"} <= set(logs)
    for name, m in solver.nets.items():
        assert changed(m, before[name]), name
    # EMA moved by exactly (1 - beta) of the way to the new weights
    for e0, e1, p in zip(ema_before, solver.nets_ema.generator.parameters(), solver.nets.generator.parameters()):
        assert torch.allclose(e1, 0.999 * e0 + 0.001 * p.detach(), atol=1e-7)


def test_moving_average_closed_form() -> None:
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    torch.nn.init.constant_(a.weight, 2.0)
    torch.nn.init.constant_(b.weight, 10.0)
    moving_average(a, b, beta=0.9)  # 0.9 * 10 + 0.1 * 2 = 9.2
    assert torch.allclose(b.weight, torch.full((2, 3), 9.2))
    moving_average(a, b, beta=0.9)  # 0.9 * 9.2 + 0.2 = 8.48
    assert torch.allclose(b.weight, torch.full((2, 3), 8.48))
    moving_average(a, b, beta=0.0)
    assert torch.equal(b.weight, a.weight)


def face_folder(root: Path, per_domain: int = 4, domains: tuple[str, ...] = ("female", "male")) -> Path:
    rng = np.random.default_rng(0)
    for d in domains:
        for i in range(per_domain):
            base = rng.random(3) * 0.6 + 0.2
            img = np.clip(base + 0.2 * rng.standard_normal((S, S, 3)), 0, 1).astype(np.float32)
            save_image(root / d / f"{d}_{i}.png", img)
    return root


def test_resume_gives_identical_losses(tmp_path: Path) -> None:
    """Steps 0-3 in one go == steps 0-1, checkpoint, new process state (other init), load, steps 2-3."""
    from pipelines.stage2_loop import save_stage2

    from data.checkpoint import checkpoint_path, load_checkpoint

    folder = face_folder(tmp_path / "faces")
    source = SourceDataset(folder, S, augment=True, cache=True)
    reference = ReferenceDataset(folder, S, augment=True, cache=True, seed=3)

    def run(solver: Solver, start: int, stop: int) -> list[dict[str, float]]:
        data = StepData(source, reference, batch_size=2, latent_dim=4, seed=5)
        return [solver.train_step(data.batch(i), i) for i in range(start, stop)]

    solver, _ = make_solver(seed=0)
    straight = run(solver, 0, 4)

    solver, optics = make_solver(seed=0)
    first = run(solver, 0, 2)
    save_stage2(tmp_path / "ckpt", solver, optics, 2, {"note": "test"})
    del solver
    torch.manual_seed(123)  # a "new process": different global RNG state and different initial weights
    resumed, _ = make_solver(seed=99)
    state = load_checkpoint(checkpoint_path(tmp_path / "ckpt", 2, "nets"))
    resumed.load_state(state)
    resumed.regressor.load_state_dict(state["regressor"])  # the frozen Stage I regressor travels with it
    second = run(resumed, 2, 4)
    assert first == straight[:2]
    assert second == straight[2:], "resumed losses differ from the uninterrupted run"

    # the checkpoint is self-contained for inference
    nets_ema, camera, regressor, meta = load_anonymizer(tmp_path / "ckpt", step=None, noise=False)
    assert meta["step"] == 2 and meta["model"]["img_size"] == S
    assert torch.allclose(camera.psf(), gaussian_psf(), atol=1e-7)
    images = torch.stack([source.load(i) for i in range(3)])
    refs = torch.stack([source.load(i) for i in range(3, 5)])
    res = anonymize(nets_ema, camera, regressor, images, refs, domains=torch.tensor([0, 1]))
    assert res.outputs.shape == (3, 2, 3, S, S) and res.heatmap.shape == (3, 2, S, S)
    assert 0 <= res.outputs.min() and res.outputs.max() <= 1
    paired = anonymize(nets_ema, camera, regressor, images, torch.randn(3, 4), domains=1, paired=True)
    assert paired.outputs.shape == (3, 3, S, S)
    # all-pairs output (i, j) equals the paired output of source i with style j
    again = anonymize(nets_ema, camera, regressor, images[:2], refs, domains=torch.tensor([0, 1]), paired=True)
    assert torch.allclose(again.outputs[1], res.outputs[1, 1], atol=1e-5)
    with pytest.raises(ValueError, match="paired"):
        anonymize(nets_ema, camera, regressor, images, refs, paired=True)


def test_step_data_is_a_function_of_the_step(tmp_path: Path) -> None:
    folder = face_folder(tmp_path / "faces", per_domain=3)
    source = SourceDataset(folder, S, cache=True)
    reference = ReferenceDataset(folder, S, cache=True)
    a = StepData(source, reference, batch_size=2, latent_dim=4, seed=1)
    b = StepData(source, reference, batch_size=2, latent_dim=4, seed=1)
    for step in (5, 0, 2):
        x, y = a.batch(step), b.batch(step)
        assert torch.equal(x.x_src, y.x_src) and torch.equal(x.z_trg, y.z_trg) and torch.equal(x.y_ref, y.y_ref)
    assert not torch.equal(a.batch(0).z_trg, a.batch(1).z_trg)
    with pytest.raises(ValueError, match="fewer than one batch"):
        StepData(source, reference, batch_size=7, latent_dim=4, seed=1)


def stage1_checkpoint(path: Path) -> Path:
    """A Stage I checkpoint in the documented format (measured-PSF variant), with an untrained regressor."""
    from data.checkpoint import save_checkpoint

    torch.manual_seed(0)
    reg = HeatmapRegressor(3, 2, base=4, depth=2)
    return save_checkpoint(path, {"step": 1, "args": {}, "lens_config": None, "lens": None, "psf": gaussian_psf(),
                                  "regressor_config": dict(reg.config), "regressor": reg.state_dict(),
                                  "heatmap": {"mode": "grouped", "sigma": 1.0, "num_channels": 2, "img_size": S,
                                              "teacher": "dlib"}})


@pytest.mark.slow
def test_main_train_interrupted_and_resumed_equals_uninterrupted(tmp_path: Path) -> None:
    """``main.py --mode train`` for 3 steps == 2 steps, then a new run with --resume_iter 2 to 3 (weights equal),
    and ``--mode sample`` writes the documented files from the result."""
    import main
    from data.checkpoint import load_checkpoint

    faces = face_folder(tmp_path / "faces")
    optics = stage1_checkpoint(tmp_path / "000001_optics.ckpt")
    common = ["--mode", "train", "--img_size", str(S), "--num_domains", "2", "--base_dim", "8", "--max_conv_dim",
              "16", "--hidden_dim", "16", "--style_dim", "8", "--batch_size", "2", "--train_img_dir", str(faces),
              "--val_img_dir", str(faces), "--optics_checkpoint", str(optics), "--sample_every", "2",
              "--eval_every", "0", "--print_every", "1", "--save_every", "2", "--log_level", "WARNING"]
    assert main.main(common + ["--total_iters", "3", "--checkpoint_dir", str(tmp_path / "a"),
                               "--sample_dir", str(tmp_path / "sa")]) == 0
    assert main.main(common + ["--total_iters", "2", "--checkpoint_dir", str(tmp_path / "b"),
                               "--sample_dir", str(tmp_path / "sb")]) == 0
    assert main.main(common + ["--total_iters", "3", "--resume_iter", "2", "--checkpoint_dir", str(tmp_path / "b"),
                               "--sample_dir", str(tmp_path / "sb")]) == 0
    a = load_checkpoint(tmp_path / "a" / "000003_nets.ckpt")
    b = load_checkpoint(tmp_path / "b" / "000003_nets.ckpt")
    for key in ("nets", "nets_ema"):
        for net, weights in a[key].items():
            for name, t in weights.items():
                assert torch.equal(t, b[key][net][name]), (key, net, name)
    assert (tmp_path / "sa" / "000002_reference.png").is_file() and (tmp_path / "sa" / "000002_latent.png").is_file()

    refs = tmp_path / "refs"
    face_folder(refs, per_domain=1)
    out = tmp_path / "results"
    assert main.main(["--mode", "sample", "--checkpoint_dir", str(tmp_path / "a"), "--resume_iter", "3",
                      "--src_dir", str(faces / "male"), "--ref_dir", str(refs), "--result_dir", str(out),
                      "--num_outs_per_domain", "2", "--log_level", "WARNING"]) == 0
    assert len(list((out / "reference").glob("*.png"))) == 4 * 2  # 4 sources x 2 references
    assert len(list((out / "latent").glob("*.png"))) == 4 * 2 * 2  # 4 sources x 2 domains x 2 latents
    assert (out / "reference_grid_000.png").is_file() and (out / "capture" / "male_0.png").is_file()
