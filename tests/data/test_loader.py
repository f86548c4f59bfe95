"""Stage II DataLoader: batches are a function of (seed, step, rank) only (workers or not), ranks are disjoint,
the self-reference's landmarks follow its geometric jitter."""
from __future__ import annotations

import pytest
import torch

from data.loader import FLIP_68, Stage2Steps, flip_points, jitter_reference, step_loader

S = 32


class Faces:
    """In-memory images with landmarks (the ``load`` / ``targets`` interface of SourceDataset)."""

    def __init__(self, n: int = 8):
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 3, S, S, generator=g)
        self.points = torch.rand(n, 68, 2, generator=g) * (S - 8) + 4
        self.targets = [0] * n

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int) -> torch.Tensor:
        return self.images[i].clone()


def make(seed: int = 1, rank: int = 0, world: int = 1) -> Stage2Steps:
    f = Faces()
    return Stage2Steps(f, f.points, batch_size=2, latent_dim=3, seed=seed, rank=rank, world_size=world)


def equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_batches_are_a_function_of_seed_step_and_rank() -> None:
    a, b = make(), make()
    for step in (7, 0, 3, 0):  # any order: no state carried between steps
        assert equal(a[step], b[step])
    assert not torch.equal(a[0]["z_trg"], a[1]["z_trg"])
    assert not equal(make(seed=2)[0], a[0])
    assert not torch.equal(make(rank=1, world=2)[0]["x_src"], make(rank=0, world=2)[0]["x_src"])


def test_workers_give_the_same_batches_as_the_main_process() -> None:
    data = make()
    main = list(step_loader(data, 2, 6, num_workers=0))
    workers = list(step_loader(data, 2, 6, num_workers=2))
    assert len(main) == len(workers) == 4
    assert all(equal(x, y) for x, y in zip(main, workers))
    assert equal(main[1], data[3])  # the loader yields exactly the steps it was asked for, in order


def test_ranks_train_on_disjoint_sources_within_an_epoch() -> None:
    f = Faces()
    seen = []
    for rank in (0, 1):
        d = Stage2Steps(f, f.points, 2, 3, seed=1, rank=rank, world_size=2)
        for step in range(d.per_epoch):
            seen.append({tuple(x.flatten()[:4].tolist()) for x in d[step]["x_src"]})
    flat = [s for group in seen for s in group]
    assert len(flat) == len(set(flat)) == 8


def test_cross_references_are_other_people() -> None:
    d = make()
    for step in range(6):
        b = d[step]
        for i in range(2):
            assert not torch.equal(b["x_ref"][i], b["x_src"][i]) or torch.equal(b["x_ref"][i], b["x_src"][i].flip(-1))
            assert not torch.allclose(b["pts_ref"][i], b["pts_src"][i])


def test_flip_permutation_is_an_involution_and_mirrors_points() -> None:
    assert sorted(FLIP_68) == list(range(68)) and [FLIP_68[FLIP_68[i]] for i in range(68)] == list(range(68))
    p = torch.rand(68, 2) * 30
    assert torch.allclose(flip_points(flip_points(p, 32), 32), p, atol=1e-5)
    assert torch.allclose(flip_points(p, 32)[45, 0], 31 - p[36, 0])  # outer eye corners swap


def test_jitter_moves_the_landmarks_with_the_image() -> None:
    size = 64
    pts = torch.tensor([[20.0, 24.0], [44.0, 40.0]] + [[32.0, 32.0]] * 66)
    img = torch.zeros(3, size, size)
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    for x, y in pts[:2].tolist():
        img += torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / 2.0)
    out, moved = jitter_reference(img.clamp(0, 1), pts, torch.Generator().manual_seed(4), photometric=0)
    for p in moved[:2]:
        x0, y0 = int(round(p[0].item())), int(round(p[1].item()))
        w = out[0, y0 - 4:y0 + 5, x0 - 4:x0 + 5]
        c = torch.stack([(w * xs[y0 - 4:y0 + 5, x0 - 4:x0 + 5]).sum(), (w * ys[y0 - 4:y0 + 5, x0 - 4:x0 + 5]).sum()])
        assert (c / w.sum() - p).norm() < 0.3
    assert not torch.allclose(moved[:2], pts[:2], atol=0.5)  # it did move


def test_bad_inputs_are_clear_errors() -> None:
    f = Faces()
    with pytest.raises(ValueError, match="non-finite"):
        Stage2Steps(f, torch.full((8, 68, 2), float("nan")), 2, 3, seed=1)
    with pytest.raises(ValueError, match="fewer than one batch"):
        Stage2Steps(f, f.points, 5, 3, seed=1, world_size=2)
    with pytest.raises(ValueError, match="num_workers"):
        step_loader(make(), 0, 2, num_workers=-1)
