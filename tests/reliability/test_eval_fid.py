"""eval: FID weights are loaded only when known (or explicitly trusted), bad files give one line, a stale
statistics cache is refused, and scoring a folder against itself is flagged."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

FAST = ["--detectors", "", "--baselines", ""]


@pytest.fixture
def pairs(tmp_path, face_dir):
    """gen/ and real/ with the same 5 file names (gen = real faces flipped left-right)."""
    from data.files import save_image
    from data.images import read_image

    gen, real = tmp_path / "gen", tmp_path / "real"
    for p in sorted(face_dir.glob("*.png"))[:5]:
        img = read_image(p)
        save_image(real / p.name, img)
        save_image(gen / p.name, img[:, ::-1])
    return gen, real


def test_pytorch_fid_backend_with_a_bad_weights_file_is_one_clear_error(tmp_path, pairs, cli):
    bad = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    bad.write_bytes(b"\x80\x04this is not a pickle of tensors")
    out = tmp_path / "eval"
    rc, log = cli("--mode", "eval", "--gen_dir", pairs[0], "--real_dir", pairs[1], "--out", out,
                  "--fid_backend", "pytorch-fid", "--fid_weights", bad, *FAST)
    assert rc == 2 and f"--fid_weights {bad}: not a loadable weights file" in log and "Traceback" not in log
    assert not out.exists()


def test_torchscript_fid_weights_of_unknown_hash_are_not_loaded(tmp_path, pairs, cli):
    import torch

    scripted = torch.jit.script(torch.nn.Linear(2, 2))  # a valid TorchScript program, not the FID Inception
    path = tmp_path / "inception.pt"
    scripted.save(str(path))
    out = tmp_path / "eval"
    rc, log = cli("--mode", "eval", "--gen_dir", pairs[0], "--real_dir", pairs[1], "--out", out,
                  "--fid_weights", path, *FAST)
    assert rc == 2 and f"--fid_weights {path}: sha256" in log and "--trust_fid_weights" in log
    assert not out.exists()


def test_trusted_torchscript_file_that_is_not_torchscript_names_the_file(tmp_path, pairs, cli):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"garbage")
    rc, log = cli("--mode", "eval", "--gen_dir", pairs[0], "--real_dir", pairs[1], "--out", tmp_path / "eval",
                  "--fid_weights", path, "--trust_fid_weights", *FAST)
    assert rc == 2 and f"{path}: not a TorchScript FID Inception" in log


def test_the_installed_fid_inception_is_a_known_file():
    from metrics.fid import torchscript_inception_path
    from pipelines.safety import KNOWN_TORCHSCRIPT_FID, check_fid_weights, sha256_file

    path = torchscript_inception_path()
    assert sha256_file(path) in KNOWN_TORCHSCRIPT_FID  # the hash list matches the installed package
    check_fid_weights(argparse.Namespace(fid_weights=str(path), fid_backend="torchscript", trust_fid_weights=False))


def test_eval_of_a_folder_against_itself_warns_and_records_it(pairs, tmp_path, cli):
    real = pairs[1]
    for p in sorted(real.iterdir())[2:]:
        p.unlink()
    out = tmp_path / "eval"
    rc, log = cli("--mode", "eval", "--gen_dir", real, "--real_dir", real, "--out", out, *FAST)
    assert rc == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["fid"] == pytest.approx(0.0, abs=1e-3)
    assert len(result["warnings"]) == 1 and "same folder" in result["warnings"][0]
    assert "same folder" in log and "WARNING" in (out / "eval.md").read_text()


@pytest.mark.slow
def test_fid_stats_cache_of_other_images_is_refused(pairs, tmp_path, cli, digest):
    gen, real = pairs
    cache = tmp_path / "stats.npz"
    assert cli("--mode", "eval", "--gen_dir", gen, "--real_dir", real, "--out", tmp_path / "e1",
               "--fid_stats", cache, *FAST)[0] == 0
    with np.load(cache) as z:
        assert int(z["num_images"]) == 5 and len(str(z["images_sha256"])) == 64
    for name in sorted(p.name for p in real.iterdir())[2:]:  # reuse the 5-image cache for 2 images
        (gen / name).unlink()
        (real / name).unlink()
    before = digest(tmp_path)
    out = tmp_path / "e2"
    rc, log = cli("--mode", "eval", "--gen_dir", gen, "--real_dir", real, "--out", out, "--fid_stats", cache, *FAST)
    assert rc == 2 and f"{cache}: statistics of other images (5 images" in log and "the 2 in use" in log
    assert digest(tmp_path) == before and not out.exists()
