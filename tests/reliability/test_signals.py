"""Signals: Ctrl-C / SIGTERM end a run with one line (and a resume hint), no temp file or half output remains;
a run killed (SIGKILL) in the middle of a checkpoint write resumes from the last complete checkpoint exactly."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from data.checkpoint import latest_step, load_checkpoint

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
STAGE1 = ["--img_size", "64", "--batch_size", "2", "--sample_every", "100000", "--print_every", "100000",
          "--save_every", "1", "--seed", "5"]


def _default_sigint() -> None:
    # a shell starts background jobs (`cmd &`) with SIGINT ignored, and Python then installs no KeyboardInterrupt
    # handler: give the child the disposition of a foreground program, which is what Ctrl-C reaches
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(*argv) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "main.py"), *map(str, argv), "--log_level", "WARNING"],
                            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)


def _wait_for(proc: subprocess.Popen, found, timeout: float = 120.0) -> bool:
    """Poll (tight loop) until ``found()`` is true; False when the process ended first or on timeout."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if found():
            return True
        if proc.poll() is not None:
            return False
    return False


def _temps(folder: Path) -> list[Path]:
    return list(folder.glob(".*.tmp")) if folder.is_dir() else []


def _measurement(folder: Path) -> None:
    from tests.helpers import small_lens_config, synthetic_psf_frames, write_capture

    frames, _ = synthetic_psf_frames({4: 5e-7}, [5.0], noise=False, photons=1.0, background=0.0)
    for c, name in enumerate("RGB"):
        adu = np.clip(np.round(frames[0, c] / frames.max() * 50000 + 50), 0, 65535).astype(np.uint16)
        write_capture(folder / f"psf_{name}.png", adu, channel=name, object_distance=5.0, bit_depth=16,
                      pixel_pitch=small_lens_config().pixel_pitch, exposure=0.01)


def test_ctrl_c_during_calibrate_leaves_no_partial_output(tmp_path):
    from tests.helpers import small_lens_config

    psf_dir, out = tmp_path / "captures", tmp_path / "calib"
    _measurement(psf_dir)
    lens = tmp_path / "lens.yaml"
    lens.write_text(yaml.safe_dump(small_lens_config().to_dict()))
    proc = _start("--mode", "calibrate", "--psf_dir", psf_dir, "--lens", lens, "--out", out, "--fit_iters", "1000000")
    # interrupt once calibrated_psf.npy is written (into the staging folder) and the fit is running
    assert _wait_for(proc, lambda: list(out.glob(".staging-*/calibrated_psf.npy"))), proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted (SIGINT)" in err and "Traceback" not in err
    assert not out.exists(), "no calibrated_psf.* without fit.json"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_during_a_checkpoint_write_leaves_no_temp_file_and_says_how_to_resume(sig, tmp_path, face_dir,
                                                                                   tiny_lens):
    ckpt = tmp_path / "optics"
    proc = _start("--mode", "train_optics", "--train_img_dir", face_dir, "--checkpoint_dir", ckpt, "--lens",
                  tiny_lens, "--total_iters", "100000", *STAGE1)
    assert _wait_for(proc, lambda: latest_step(ckpt, "optics") and _temps(ckpt)), proc.communicate()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig
    assert "Traceback" not in err
    assert not _temps(ckpt), "a temp file of the interrupted write remains"
    line = [ln for ln in err.splitlines() if "interrupted" in ln][-1]
    assert f"interrupted ({signal.Signals(sig).name}) at step " in line and "; resume with --resume_iter " in line
    resume = int(line.rsplit(" ", 1)[1])
    assert resume == latest_step(ckpt, "optics")
    assert load_checkpoint(ckpt / f"{resume:06d}_optics.ckpt")["step"] == resume


@pytest.mark.slow
def test_sigkill_in_a_checkpoint_write_then_resume_continues_the_loss_trajectory_exactly(tmp_path, face_dir,
                                                                                       tiny_lens, cli):
    total = 6
    common = ["--mode", "train_optics", "--train_img_dir", face_dir, "--lens", tiny_lens, *STAGE1]
    killed_mid_write = False
    for attempt in range(3):
        ckpt = tmp_path / f"killed{attempt}"
        proc = _start(*common, "--checkpoint_dir", ckpt, "--total_iters", total)
        # kill at the first temp file after the first complete checkpoint: in the middle of writing the second
        if not _wait_for(proc, lambda: latest_step(ckpt, "optics") and _temps(ckpt)):
            proc.communicate()
            continue
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        if _temps(ckpt):  # the write was cut off (else it finished between the poll and the kill: try again)
            killed_mid_write = True
            break
    assert killed_mid_write, "could not catch a checkpoint write in 3 runs"
    last = latest_step(ckpt, "optics")
    assert 1 <= last < total
    assert load_checkpoint(ckpt / f"{last:06d}_optics.ckpt")["step"] == last  # the last complete one loads

    rc, _ = cli(*common, "--checkpoint_dir", ckpt, "--total_iters", total, "--resume_iter", last)
    assert rc == 0 and not _temps(ckpt)
    assert cli(*common, "--checkpoint_dir", tmp_path / "straight", "--total_iters", total)[0] == 0
    resumed = load_checkpoint(ckpt / f"{total:06d}_optics.ckpt")["history"]
    straight = load_checkpoint(tmp_path / "straight" / f"{total:06d}_optics.ckpt")["history"]
    assert len(resumed) == len(straight) == total
    assert resumed == straight  # every loss of every step, bit for bit
