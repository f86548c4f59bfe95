"""Training folders hold one run; numeric arguments are checked before any work."""
from __future__ import annotations

import pytest

from data.checkpoint import load_checkpoint

TINY_STAGE1 = ["--img_size", "64", "--batch_size", "2", "--sample_every", "1000", "--print_every", "1000"]


def test_fresh_train_optics_refuses_a_folder_with_another_runs_checkpoints(tmp_path, cli, digest, fake_checkpoint,
                                                                          face_dir):
    ckpt = tmp_path / "optics"
    fake_checkpoint(ckpt / "000002_optics.ckpt", img_size=64, run_id="other")
    before = digest(ckpt)
    rc, log = cli("--mode", "train_optics", "--train_img_dir", face_dir, "--checkpoint_dir", ckpt,
                  "--total_iters", "4", *TINY_STAGE1)
    assert rc == 2
    assert f"--checkpoint_dir {ckpt}: holds the checkpoints of another run" in log
    assert "--resume_iter 2" in log and "--overwrite" in log
    assert digest(ckpt) == before


def test_fresh_train_refuses_a_folder_with_another_runs_checkpoints(tmp_path, cli, digest, fake_checkpoint,
                                                                   face_dir):
    ckpt = tmp_path / "nets"
    fake_checkpoint(ckpt / "000001_nets.ckpt", img_size=64, run_id="other")
    before = digest(ckpt)
    rc, log = cli("--mode", "train", "--train_img_dir", face_dir, "--checkpoint_dir", ckpt, "--img_size", "64",
                  "--total_iters", "2", "--sample_dir", tmp_path / "samples")
    assert rc == 2
    assert f"--checkpoint_dir {ckpt}: holds the checkpoints of another run" in log and "--resume_iter 1" in log
    assert digest(ckpt) == before


def test_resume_across_architectures_is_refused(tmp_path, cli, digest, fake_checkpoint, face_dir):
    ckpt = tmp_path / "optics"
    path = fake_checkpoint(ckpt / "000002_optics.ckpt", img_size=32, heatmap_mode="grouped", teacher="dlib",
                           run_id="r1")
    before = digest(ckpt)
    rc, log = cli("--mode", "train_optics", "--train_img_dir", face_dir, "--checkpoint_dir", ckpt,
                  "--total_iters", "4", "--resume_iter", "2", "--heatmap_mode", "landmarks", *TINY_STAGE1)
    assert rc == 2
    assert str(path) in log and "--img_size 64 (checkpoint: 32)" in log
    assert "--heatmap_mode landmarks (checkpoint: grouped)" in log
    assert digest(ckpt) == before


def test_stage2_resume_across_architectures_is_refused(tmp_path, cli, digest, fake_checkpoint, face_dir):
    ckpt = tmp_path / "nets"
    path = fake_checkpoint(ckpt / "000001_nets.ckpt", img_size=64, style_dim=8, latent_dim=4, num_domains=1)
    before = digest(ckpt)
    rc, log = cli("--mode", "train", "--train_img_dir", face_dir, "--checkpoint_dir", ckpt, "--img_size", "64",
                  "--total_iters", "2", "--resume_iter", "1", "--style_dim", "16", "--latent_dim", "4",
                  "--sample_dir", tmp_path / "samples")
    assert rc == 2
    assert str(path) in log and "--style_dim 16 (checkpoint: 8)" in log and "latent_dim" not in log
    assert digest(ckpt) == before


def test_overwrite_replaces_the_other_run_and_records_a_run_id(tmp_path, cli, fake_checkpoint, face_dir, tiny_lens):
    ckpt = tmp_path / "optics"
    fake_checkpoint(ckpt / "000003_optics.ckpt", img_size=64, run_id="old-run")
    (ckpt / ".000003_optics.ckpt.abc.tmp").write_bytes(b"half a checkpoint")  # left by a killed run
    rc, _ = cli("--mode", "train_optics", "--train_img_dir", face_dir, "--checkpoint_dir", ckpt, "--lens", tiny_lens,
                "--total_iters", "2", "--overwrite", *TINY_STAGE1)
    assert rc == 0
    assert sorted(p.name for p in ckpt.glob("*.ckpt")) == ["000002_optics.ckpt"]
    assert not list(ckpt.glob(".*.tmp"))
    run_id = load_checkpoint(ckpt / "000002_optics.ckpt")["args"]["run_id"]
    assert isinstance(run_id, str) and len(run_id) == 32 and run_id != "old-run"
    # a resume keeps the run id
    assert cli("--mode", "train_optics", "--train_img_dir", face_dir, "--checkpoint_dir", ckpt, "--lens", tiny_lens,
               "--total_iters", "3", "--resume_iter", "2", *TINY_STAGE1)[0] == 0
    assert load_checkpoint(ckpt / "000003_optics.ckpt")["args"]["run_id"] == run_id


@pytest.mark.parametrize("argv, message", [
    (["--mode", "train_optics", "--batch_size", "-1"], "--batch_size must be >= 1, got -1"),
    (["--mode", "train", "--batch_size", "0"], "--batch_size must be >= 1, got 0"),
    (["--mode", "train_optics", "--total_iters", "0"], "--total_iters must be >= 1, got 0"),
    (["--mode", "calibrate", "--psf_dir", "{tmp}", "--fit_iters", "-5"], "--fit_iters must be >= 1, got -5"),
    (["--mode", "calibrate", "--psf_dir", "{tmp}", "--fit_zernike", "4,100000"],
     "--fit_zernike '4,100000': Noll indices must be in [1, 231]"),
    (["--mode", "calibrate", "--psf_dir", "{tmp}", "--fit_zernike", "4,x"], "--fit_zernike '4,x': expected a comma"),
    (["--mode", "fabricate", "--levels", "1"], "--levels must be >= 2, got 1"),
    (["--mode", "eval", "--gen_dir", "{tmp}", "--real_dir", "{tmp}", "--max_images", "0"],
     "--max_images must be >= 1, got 0"),
])
def test_bad_numeric_argument_is_refused_before_any_work(argv, message, tmp_path, cli, digest):
    out = tmp_path / "out"
    rc, log = cli(*[a.format(tmp=tmp_path) for a in argv], "--out", out, "--checkpoint_dir", out)
    assert rc == 2 and message in log
    assert not out.exists()


@pytest.mark.parametrize("mode", ["train_optics", "train"])
def test_img_size_message_lists_exactly_what_is_accepted(mode, tmp_path, cli):
    import main
    from pipelines.safety import check_args

    rc, log = cli("--mode", mode, "--img_size", "100", "--checkpoint_dir", tmp_path / "c")
    assert rc == 2
    listed = log.split("--img_size must be one of ")[1].split(" for")[0]
    sizes = [int(s) for s in listed.split(", ")]
    assert sizes == [32, 64, 128, 256, 512]
    for size in sizes:  # every listed size passes the check
        check_args(main.parse_args(["--mode", mode, "--img_size", str(size), "--checkpoint_dir", str(tmp_path / "c")]))


def test_train_optics_batch_larger_than_the_dataset_is_refused_like_train(tmp_path, cli, face_dir):
    ckpt = tmp_path / "optics"
    rc, log = cli("--mode", "train_optics", "--train_img_dir", face_dir, "--checkpoint_dir", ckpt,
                  "--total_iters", "2", "--img_size", "64", "--batch_size", "1000")
    assert rc == 2
    assert f"{face_dir}: 8 images, fewer than one batch (--batch_size 1000)" in log
    assert not list(ckpt.glob("*.ckpt"))
