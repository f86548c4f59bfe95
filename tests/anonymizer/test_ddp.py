"""Two CPU processes (gloo, DistributedDataParallel) give the gradients of one process on the joint batch."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from anonymizer.distributed import DistInfo
from anonymizer.stage1.heatmap import HeatmapRegressor
from anonymizer.stage2.model import build_model
from anonymizer.stage2.solver import Batch, Solver, TrainOptions, gradients

S = 32
TINY = dict(img_size=S, num_domains=2, base_dim=8, max_conv_dim=16, hidden_dim=16, style_dim=8, latent_dim=4,
            heatmap_channels=68, reference_input=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch() -> Batch:
    from anonymizer.stage2.warp import FACE_TEMPLATE

    g = torch.Generator().manual_seed(7)
    img = lambda: torch.rand(4, 3, S, S, generator=g)  # noqa: E731
    pts = lambda: torch.tensor(FACE_TEMPLATE * S, dtype=torch.float32)[None] + torch.randn(4, 68, 2, generator=g) * 0.3  # noqa: E731,E501
    return Batch(img(), pts(), torch.tensor([0, 1, 1, 0]), img(), pts(), img(), pts(), img(), pts(),
                 torch.tensor([1, 1, 0, 0]), torch.randn(4, 4, generator=g), torch.randn(4, 4, generator=g))


def _grads(info: DistInfo) -> dict[str, list[torch.Tensor]]:
    """D gradients after a D step's backward and G/E gradients after a self and a cross G step's backward."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    nets, nets_ema = build_model(**TINY)
    delta = torch.zeros(3, 3, 3)
    delta[:, 1, 1] = 0.5
    delta[:, 0, 1] = 0.5
    from optics.camera import Camera

    camera = Camera(delta, noise=False)
    regressor = HeatmapRegressor(3, 68, base=4, depth=1)
    solver = Solver(nets, nets_ema, camera, regressor, TrainOptions(latent_dim=4), "cpu", info)
    full = _batch()
    if info.enabled:
        half = slice(2 * info.rank, 2 * info.rank + 2)
        full = Batch(**{k: getattr(full, k)[half] for k in full.__dataclass_fields__})
    capture, heatmap, _ = solver.observe(full.x_src)
    points = full.pts_src  # known geometry (an untrained regressor's points collapse to the centre)
    out = {}
    for kind in ("self", "cross"):
        gen = solver.fake(full, capture, heatmap, points, kind)  # one fake per step, as Solver.train_step
        loss, _ = solver.d_loss(full, gen[0], gen[3])
        solver._backward(loss)
        out[f"D_{kind}"] = gradients([solver.D])
        loss, _ = solver.g_loss(full, capture, heatmap, points, kind, lambda_ds=1.0, generated=gen)
        solver._backward(loss)
        out[f"GE_{kind}"] = gradients([solver.G, solver.E])
    return out


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save(_grads(DistInfo(rank, world, rank)), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_on_the_joint_batch(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    single = _grads(DistInfo())
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for key, ref in single.items():
        assert len(ref) > 0
        assert any(g.abs().sum() > 0 for g in ref), key
        for r in ranks:
            for a, b in zip(r[key], ref):
                assert torch.allclose(a, b, atol=2e-5, rtol=1e-3), (key, tuple(a.shape), float((a - b).abs().max()), float(b.abs().max()))
