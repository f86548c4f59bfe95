"""``main.py --mode train`` end to end on real faces: interrupted + resumed == uninterrupted (weights equal), a
resume with other optics is refused, and ``--mode sample`` keeps its layout (reference/<src>__<ref>.png)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from anonymizer.stage1.heatmap import HeatmapRegressor
from tests.helpers import gaussian_psf

S = 64


def stage1_checkpoint(path: Path, sigma: float = 1.5) -> Path:
    """A Stage I checkpoint in the documented format (measured-PSF variant) with an untrained 68-channel
    regressor."""
    from data.checkpoint import save_checkpoint

    torch.manual_seed(0)
    reg = HeatmapRegressor(3, 68, base=4, depth=2)
    return save_checkpoint(path, {"step": 1, "args": {}, "lens_config": None, "lens": None,
                                  "psf": gaussian_psf(sigma=sigma), "regressor_config": dict(reg.config),
                                  "regressor": reg.state_dict(),
                                  "heatmap": {"mode": "landmarks", "sigma": 1.0, "num_channels": 68, "img_size": S,
                                              "teacher": "dlib"}})


@pytest.mark.slow
def test_main_train_resume_and_sample(tmp_path: Path) -> None:
    import main
    from data.checkpoint import load_checkpoint
    from pipelines.faces import default_face_dirs

    _, val_dir = default_face_dirs(128)
    files = sorted(val_dir.rglob("*.png"))[:6] or sorted(val_dir.rglob("*.jpg"))[:6]
    faces = tmp_path / "faces" / "face"
    faces.mkdir(parents=True)
    for f in files:
        shutil.copy(f, faces / f.name)
    optics = stage1_checkpoint(tmp_path / "000001_optics.ckpt")
    common = ["--mode", "train", "--img_size", str(S), "--base_dim", "8", "--max_conv_dim", "16", "--hidden_dim",
              "16", "--style_dim", "8", "--batch_size", "2", "--train_img_dir", str(faces.parent), "--val_img_dir",
              str(faces.parent), "--optics_checkpoint", str(optics), "--sample_every", "100", "--eval_every", "0",
              "--print_every", "1", "--save_every", "2", "--log_level", "WARNING", "--lambda_ds", "1"]
    assert main.main(common + ["--total_iters", "3", "--checkpoint_dir", str(tmp_path / "a"),
                               "--sample_dir", str(tmp_path / "sa")]) == 0
    assert main.main(common + ["--total_iters", "2", "--checkpoint_dir", str(tmp_path / "b"),
                               "--sample_dir", str(tmp_path / "sb"), "--num_workers", "2"]) == 0
    assert main.main(common + ["--total_iters", "3", "--resume_iter", "2", "--checkpoint_dir", str(tmp_path / "b"),
                               "--sample_dir", str(tmp_path / "sb")]) == 0
    a = load_checkpoint(tmp_path / "a" / "000003_nets.ckpt")
    b = load_checkpoint(tmp_path / "b" / "000003_nets.ckpt")
    for key in ("nets", "nets_ema"):
        for net, weights in a[key].items():
            for name, t in weights.items():
                assert torch.equal(t, b[key][net][name]), (key, net, name)

    other = stage1_checkpoint(tmp_path / "other" / "000001_optics.ckpt", sigma=2.5)
    args = [x if x != str(optics) else str(other) for x in common]
    assert main.main(args + ["--total_iters", "4", "--resume_iter", "3", "--checkpoint_dir", str(tmp_path / "b"),
                             "--sample_dir", str(tmp_path / "sb")]) == 2  # PSF differs: a one-line error

    refs = tmp_path / "refs"
    refs.mkdir()
    for f in files[:2]:
        shutil.copy(f, refs / f.name)
    out = tmp_path / "results"
    assert main.main(["--mode", "sample", "--checkpoint_dir", str(tmp_path / "a"), "--resume_iter", "3",
                      "--src_dir", str(faces.parent), "--ref_dir", str(refs), "--result_dir", str(out),
                      "--num_outs_per_domain", "1", "--log_level", "WARNING"]) == 0
    names = {p.name for p in (out / "reference").glob("*.png")}
    assert len(names) == 6 * 2 and f"{files[0].stem}__{files[1].stem}.png" in names
