"""Output folders: checked before any work, written whole or not at all, one output per input file."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

OUT_FLAG_CASES = {
    "simulate": ["--out", "{f}"],
    "calibrate": ["--psf_dir", "{d}", "--out", "{f}"],
    "fabricate": ["--out", "{f}"],
    "eval": ["--gen_dir", "{d}", "--real_dir", "{d}", "--out", "{f}"],
    "demo": ["--out", "{f}"],
    "sample": ["--checkpoint_dir", "{d}", "--src_dir", "{d}", "--ref_dir", "{d}", "--result_dir", "{f}"],
    "export": ["--optics_checkpoint", "{d}/x.ckpt", "--out", "{f}"],
    "align": ["--inp_dir", "{d}", "--out_dir", "{f}"],
    "train_optics": ["--checkpoint_dir", "{f}"],
    "train": ["--checkpoint_dir", "{f}"],
}


@pytest.mark.parametrize("mode", sorted(OUT_FLAG_CASES))
def test_output_flag_naming_an_existing_file_is_one_clear_error(mode, tmp_path, cli, digest):
    existing = tmp_path / "results.txt"
    existing.write_text("the user's notes\n")
    before = digest(tmp_path)
    argv = [a.format(f=existing, d=tmp_path) for a in OUT_FLAG_CASES[mode]]
    rc, log = cli("--mode", mode, *argv)
    assert rc == 2
    flag = argv[argv.index(str(existing)) - 1]
    assert f"{flag} {existing}: exists and is a file" in log and "Traceback" not in log
    assert digest(tmp_path) == before


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create files in: a 0o555 folder, or (root ignores permissions) sysfs."""
    if os.geteuid() == 0:
        return Path("/sys/kernel")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return ro


def test_read_only_output_folder_is_refused_before_any_work(tmp_path, cli, tiny_lens):
    parent = _unwritable_folder(tmp_path)
    out = parent / "ppoptics_simulate"
    rc, log = cli("--mode", "simulate", "--lens", tiny_lens, "--out", out)
    assert rc == 2
    assert f"--out {out}: folder {parent} is not writable" in log
    assert not out.exists()


def test_simulate_with_a_bad_image_leaves_no_partial_output(tmp_path, cli, tiny_lens, gray_images, digest):
    images = gray_images(tmp_path / "images", ["a.png", "b.png"])
    (images / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    before = digest(images)
    rc, log = cli("--mode", "simulate", "--lens", tiny_lens, "--images", images, "--out", out)
    assert rc == 2 and "c.png" in log
    assert not out.exists(), "no psf.npy / psf.png / mtf.png / capture without summary.json"
    assert digest(images) == before


def test_simulate_failure_keeps_the_previous_complete_output(tmp_path, cli, tiny_lens, gray_images, digest):
    images = gray_images(tmp_path / "images", ["a.png"])
    out = tmp_path / "out"
    assert cli("--mode", "simulate", "--lens", tiny_lens, "--images", images, "--out", out)[0] == 0
    first = digest(out)
    assert {"psf.npy", "psf.png", "mtf.png", "summary.json", "captures/a.png"} <= set(first)
    (images / "z.png").write_bytes(b"not an image")
    rc, log = cli("--mode", "simulate", "--lens", tiny_lens, "--images", images, "--out", out, "--no_noise")
    assert rc == 2 and "z.png" in log
    assert digest(out) == first  # the earlier run's files, none of the failed run's
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_simulate_keeps_both_outputs_of_inputs_with_the_same_stem(tmp_path, cli, tiny_lens, gray_images):
    images = gray_images(tmp_path / "images", ["a.png", "a.jpg", "b.png"])
    out = tmp_path / "out"
    assert cli("--mode", "simulate", "--lens", tiny_lens, "--images", images, "--out", out, "--no_noise")[0] == 0
    summary = json.loads((out / "summary.json").read_text())
    written = sorted(p.name for p in (out / "captures").iterdir())
    assert written == ["a_jpg.png", "a_png.png", "b.png"]
    assert summary["captures"] == len(written) == 3
    assert sorted(summary["capture_files"].values()) == [f"captures/{n}" for n in written]
    # each capture is its own input's: the PNG and the (lossy) JPEG versions differ
    a_png = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(out / "captures" / "a_png.png"))
    a_jpg = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(out / "captures" / "a_jpg.png"))
    assert not np.array_equal(a_png, a_jpg)


def test_sample_keeps_both_outputs_of_inputs_with_the_same_stem(tmp_path, cli, face_dir):
    from data.files import save_image
    from data.images import read_image
    from pipelines.stage2_loop import save_stage2
    from tests.helpers import STAGE2_SIZE, make_solver

    solver, optics = make_solver(num_domains=1, noise=False)
    ckpt = save_stage2(tmp_path / "ckpt", solver, optics, step=1, args={})
    faces = sorted(face_dir.glob("*.png"))
    src, ref = tmp_path / "src", tmp_path / "ref"
    save_image(src / "a.png", read_image(faces[0]))
    save_image(src / "a.jpg", read_image(faces[1]))
    save_image(ref / "r.png", read_image(faces[2]))
    save_image(ref / "r.jpg", read_image(faces[3]))
    out = tmp_path / "results"
    rc, _ = cli("--mode", "sample", "--checkpoint_dir", ckpt, "--src_dir", src, "--ref_dir", ref,
                "--result_dir", out, "--num_outs_per_domain", "1", "--img_size", STAGE2_SIZE)
    assert rc == 0
    assert sorted(p.name for p in (out / "capture").iterdir()) == ["a_jpg.png", "a_png.png"]
    assert sorted(p.name for p in (out / "reference").iterdir()) == [
        "a_jpg__r_jpg.png", "a_jpg__r_png.png", "a_png__r_jpg.png", "a_png__r_png.png"]
    assert json.loads((out / "sample.json").read_text())["sources"] == 2
