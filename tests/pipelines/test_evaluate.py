"""``main.py --mode eval`` (two-folder form) end to end on real faces, plus its bad-input handling."""
from __future__ import annotations

import json

import numpy as np
import torch
import pytest
from scipy.ndimage import gaussian_filter

import main
from data.files import save_image
from pipelines.evaluate import pair_folders


@pytest.fixture(scope="module")
def folders(tmp_path_factory, nba_faces):
    root = tmp_path_factory.mktemp("eval")
    gen, real = root / "gen", root / "real"
    for i, face in enumerate(nba_faces[:3]):
        save_image(real / f"p{i}.png", face)
        save_image(gen / f"p{i}.png", face if i < 2 else gaussian_filter(face, (12, 12, 0)))
    (gen / "broken.png").write_bytes(b"not a png")  # unreadable, with an original of the same name
    save_image(real / "broken.png", nba_faces[3])
    save_image(gen / "small.png", nba_faces[4][::2, ::2])  # size mismatch
    save_image(real / "small.png", nba_faces[4])
    save_image(gen / "orphan.png", nba_faces[5])  # no original
    return root


def test_eval_two_folders(folders):
    out = folders / "out"
    code = main.main(["--mode", "eval", "--gen_dir", str(folders / "gen"), "--real_dir", str(folders / "real"),
                      "--out", str(out), "--baselines", "pixelate", "--fid_stats", str(folders / "ref.npz")])
    assert code == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["num_pairs"] == 3
    reasons = {s["name"]: s["reason"] for s in result["skipped"]}
    assert set(reasons) == {"broken.png", "small.png", "orphan.png"}
    assert "readable" in reasons["broken.png"] and "differs" in reasons["small.png"]
    assert "no original" in reasons["orphan.png"]
    assert (folders / "ref.npz").is_file()
    for det in ("mtcnn", "dlib"):
        g = result[det]
        # two identical images + one heavily blurred: the identical pairs agree exactly
        assert g["pairs"] + g["misses"] == 3 and g["pairs"] >= 2
        assert g["detection_rate"] >= 2 / 3
        assert set(g) >= {"detection_rate", "bbox_center_px", "bbox_iou", "landmarks_px", "landmarks_nme"}
    assert 2 / 3 <= result["reid_rank1"] <= 1.0
    assert result["fid"] > 0
    assert set(result["methods"]) == {"generated", "pixelate"}
    assert result["methods"]["pixelate"]["fid"] > 0
    table = (out / "eval.md").read_text()
    assert "| generated |" in table and "| pixelate |" in table and "FD MTCNN" in table


def test_bad_folders(tmp_path, folders):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images"):
        pair_folders(empty, folders / "real")
    with pytest.raises(FileNotFoundError, match="missing"):
        pair_folders(tmp_path / "missing", folders / "real")
    other = tmp_path / "other"
    save_image(other / "zzz.png", np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="paired with originals by file name"):
        pair_folders(other, folders / "real")
    # main reports library errors without a traceback and exits 2
    assert main.main(["--mode", "eval", "--gen_dir", str(empty), "--real_dir", str(folders / "real"),
                      "--out", str(tmp_path / "o")]) == 2
    assert main.main(["--mode", "eval", "--gen_dir", str(folders / "gen"), "--real_dir", str(folders / "real"),
                      "--out", str(tmp_path / "o"), "--baselines", "sepia"]) == 2


def _rms_radius(psf) -> float:
    """RMS radius [px] of the green channel about its centroid."""
    p = psf[1].double()
    y, x = np.indices(p.shape)
    y, x = (torch.as_tensor(v, dtype=torch.float64) for v in (y, x))
    cy, cx = (p * y).sum(), (p * x).sum()
    return float(torch.sqrt((p * ((y - cy) ** 2 + (x - cx) ** 2)).sum()))


def test_attack_camera_bins_the_psf_to_the_image_grid():
    """A 128 px face crop is the 256 px sensor read out with 2x2 binned pixels: the blur's RMS radius in pixels
    halves (bin quantisation adds only ~1/8 px^2 to a ~30 px radius), and each channel still sums to 1."""
    from pipelines.evaluate import attack_camera

    args = main.build_parser().parse_args(["--mode", "eval", "--lens", "face-deid", "--no_noise"])
    full = attack_camera(args, [np.zeros((256, 256, 3), np.float32)]).psf().detach()
    half = attack_camera(args, [np.zeros((128, 128, 3), np.float32)]).psf().detach()
    assert _rms_radius(half) / _rms_radius(full) == pytest.approx(0.5, rel=0.02)
    torch.testing.assert_close(half.sum(dim=(1, 2)), torch.ones(3, dtype=half.dtype))
    with pytest.raises(ValueError, match="share one size"):
        attack_camera(args, [np.zeros((128, 128, 3), np.float32), np.zeros((64, 64, 3), np.float32)])
    with pytest.raises(ValueError, match="must divide 256"):
        attack_camera(args, [np.zeros((100, 100, 3), np.float32)])
