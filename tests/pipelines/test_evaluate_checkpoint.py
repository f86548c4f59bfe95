"""``main.py --mode eval --checkpoint_dir``: the reference protocol on a two-domain Stage II checkpoint, with the
attribute attack. The two domains differ by a visible attribute (overall brightness), which a normalised PSF
preserves (it keeps every image's mean), so the attack must find it on the capture and the baseline."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import main
from data.files import save_image


def _checkpoint(path: Path, num_domains: int) -> Path:
    from pipelines.stage2_loop import save_stage2
    from tests.helpers import make_solver

    solver, optics = make_solver(num_domains=num_domains, noise=False)
    return save_stage2(path, solver, optics, step=1, args={})


def _domains(root: Path, faces: list[np.ndarray], domains: tuple[str, ...]) -> Path:
    for d in domains:
        for i, face in enumerate(faces):
            img = face * 0.45 + (0.55 if d == "bright" else 0.0)
            save_image(root / d / f"p{i}.png", img.astype(np.float32))
    return root


@pytest.mark.slow  # trains a tiny Stage II model and runs the whole protocol (~40 s)
def test_protocol_with_attribute_attack(tmp_path, nba_faces):
    ckpt = _checkpoint(tmp_path / "ckpt", num_domains=2)
    data = _domains(tmp_path / "faces", nba_faces[:8], ("bright", "dark"))
    out = tmp_path / "eval"
    assert main.main(["--mode", "eval", "--checkpoint_dir", str(ckpt), "--train_img_dir", str(data),
                      "--val_img_dir", str(data), "--out", str(out), "--num_outs_per_domain", "2",
                      "--baselines", "lowres", "--attacks", "attribute", "--attribute_iters", "150",
                      "--detectors", "mtcnn", "--no_noise", "--log_level", "WARNING"]) == 0
    report = json.loads((out / "eval.json").read_text())
    methods = report["methods"]
    assert {"anonymized", "capture", "lowres"} <= set(methods), set(methods)
    info = report["settings"]["attribute"]
    # 16 sources (8 per domain) split in alternate file order: 8 / 8, 4 of each domain in the test half
    assert info["num_train"] == 8 and info["num_test"] == 8 and info["chance"] == 0.5
    assert info["clean_accuracy"] >= 7 / 8
    assert methods["capture"]["attribute_accuracy"] >= 7 / 8
    assert methods["lowres"]["attribute_accuracy"] >= 7 / 8
    assert 0.0 <= methods["anonymized"]["attribute_accuracy"] <= 1.0
    assert report["attribute_accuracy"] == methods["anonymized"]["attribute_accuracy"]  # top level = anonymized
    assert np.isfinite(report["fid"]) and methods["anonymized"]["mtcnn"]["num_images"] == 16
    table = (out / "eval.md").read_text()
    assert "Attr. acc." in table and "chance (majority class) 50.0%" in table


def test_attribute_attack_needs_domains(tmp_path, nba_faces):
    from pipelines.evaluate_checkpoint import run_protocol

    ckpt = _checkpoint(tmp_path / "ckpt", num_domains=1)
    data = _domains(tmp_path / "faces", nba_faces[:2], ("bright",))
    args = main.build_parser().parse_args(
        ["--mode", "eval", "--checkpoint_dir", str(ckpt), "--train_img_dir", str(data), "--val_img_dir", str(data),
         "--attacks", "attribute"])
    with pytest.raises(ValueError, match="attribute attack needs domain labels"):
        run_protocol(args)
    # on two folders there are no domain labels at all
    with pytest.raises(ValueError, match="needs domain labels"):
        main_args = main.build_parser().parse_args(
            ["--mode", "eval", "--gen_dir", str(data / "bright"), "--real_dir", str(data / "bright"),
             "--attacks", "attribute"])
        from pipelines.evaluate import run
        run(main_args)
