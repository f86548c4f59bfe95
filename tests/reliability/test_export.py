"""export never writes into the shipped checkpoints/ implicitly, and writes both release files or neither."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture
def stage1_checkpoint(tmp_path) -> Path:
    """A small but complete Stage I training checkpoint (lens + regressor + optimiser state)."""
    from anonymizer.stage1.heatmap import HeatmapRegressor
    from data.checkpoint import save_checkpoint
    from optics.lens import Lens, load_lens_config

    cfg = load_lens_config("in-focus", psf_size=32, pupil_samples=64)
    reg_cfg = {"in_channels": 3, "out_channels": 2, "base": 4, "depth": 2}
    return save_checkpoint(tmp_path / "train" / "000010_optics.ckpt", {
        "step": 10, "args": {}, "lens_config": cfg.to_dict(), "lens": Lens(cfg).state_dict(),
        "regressor_config": reg_cfg, "regressor": HeatmapRegressor(**reg_cfg).state_dict(),
        "heatmap": {"mode": "grouped", "sigma": 2.0, "num_channels": 2, "img_size": 64},
        "optims": {"big": torch.zeros(1000)}, "rng": {}})


def test_export_without_out_is_refused(stage1_checkpoint, cli):
    rc, log = cli("--mode", "export", "--optics_checkpoint", stage1_checkpoint)
    assert rc == 2 and "--mode export requires --out DIR" in log  # shipped checkpoints/: autouse check


def test_export_refuses_to_replace_existing_files_without_overwrite(tmp_path, stage1_checkpoint, cli, digest):
    out = tmp_path / "release"
    out.mkdir()
    (out / "stage1_optics.ckpt").write_bytes(b"the release the user ships")
    before = digest(out)
    rc, log = cli("--mode", "export", "--optics_checkpoint", stage1_checkpoint, "--out", out)
    assert rc == 2
    assert str(out / "stage1_optics.ckpt") in log and "--overwrite" in log
    assert digest(out) == before


def test_export_with_a_bad_stage2_checkpoint_writes_neither_file(tmp_path, stage1_checkpoint, cli, digest):
    out = tmp_path / "release"
    out.mkdir()
    (out / "stage1_optics.ckpt").write_bytes(b"old optics release")
    (out / "stage2_anonymizer.ckpt").write_bytes(b"old anonymizer release, paired with the optics above")
    bad = tmp_path / "nets"
    bad.mkdir()
    (bad / "000001_nets.ckpt").write_text("not a checkpoint")
    before = digest(out)
    rc, log = cli("--mode", "export", "--optics_checkpoint", stage1_checkpoint, "--checkpoint_dir", bad,
                  "--out", out, "--overwrite")
    assert rc == 2 and str(bad / "000001_nets.ckpt") in log
    assert digest(out) == before  # the shipped pair is left as it was, not half replaced


def test_export_with_overwrite_replaces_the_file(tmp_path, stage1_checkpoint, cli):
    from anonymizer.stage1.trainer import load_optics_checkpoint

    out = tmp_path / "release"
    out.mkdir()
    (out / "stage1_optics.ckpt").write_bytes(b"old")
    assert cli("--mode", "export", "--optics_checkpoint", stage1_checkpoint, "--out", out, "--overwrite")[0] == 0
    load_optics_checkpoint(out / "stage1_optics.ckpt")
    assert sorted(p.name for p in out.iterdir()) == ["stage1_optics.ckpt"]
