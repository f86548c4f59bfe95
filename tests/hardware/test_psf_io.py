"""Reading measured PSF captures and calibrated PSF files: formats, sidecars, overrides, clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hardware.psf_io import PSFFileError, load_calibrated_psf, load_capture, load_psf_dir, save_calibrated_psf
from hardware.pngio import encode_png, read_png
from tests.helpers import write_capture


def test_png16_rgb_roundtrip_all_filters(tmp_path, rng):
    img = rng.integers(0, 65536, size=(17, 23, 3), dtype=np.uint16)
    p = tmp_path / "a.png"
    p.write_bytes(encode_png(img))
    assert np.array_equal(read_png(p), img)
    cv2 = pytest.importorskip("cv2")  # libpng picks Sub / Up / Average / Paeth filters adaptively
    smooth = (np.add.outer(np.arange(40), np.arange(30))[..., None] * np.array([100, 37, 5])).astype(np.uint16)
    for i, arr in enumerate((img, smooth, (img // 256).astype(np.uint8))):
        q = tmp_path / f"cv{i}.png"
        cv2.imwrite(str(q), arr[..., ::-1])
        assert np.array_equal(read_png(q), arr)


def test_per_channel_png16_with_sidecars_and_override(tmp_path, rng):
    frames = rng.integers(0, 4096, size=(3, 20, 24)).astype(np.uint16)
    for c, name in enumerate("RGB"):
        write_capture(tmp_path / f"psf_{c}.png", frames[c], channel=name, pixel_pitch=3e-6, bit_depth=12,
                      object_distance=2.0, exposure=0.01, black_level=64)
    meas = load_psf_dir(tmp_path, num_channels=3)
    assert meas.frames.shape == (1, 3, 20, 24)
    assert np.array_equal(meas.frames[0], frames.astype(np.float64))
    assert meas.pixel_pitch == 3e-6 and meas.object_distances == [2.0]
    assert np.all(meas.saturation_level == 4095) and np.all(meas.black_level == 64)
    over = load_psf_dir(tmp_path, num_channels=3, overrides={"pixel_pitch": 5e-6, "black_level": None})
    assert over.pixel_pitch == 5e-6 and np.all(over.black_level == 64)


def test_rgb_tiff_npy_depth_stack_and_dark(tmp_path, rng):
    import tifffile

    a = rng.integers(0, 65535, size=(16, 16, 3), dtype=np.uint16)
    b = rng.integers(0, 65535, size=(16, 16, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "near.tif", a)
    (tmp_path / "near.json").write_text(json.dumps({"object_distance": 1.0}))
    write_capture(tmp_path / "far.png", b, object_distance=3.0)
    dark = rng.integers(0, 100, size=(16, 16)).astype(np.uint16)
    write_capture(tmp_path / "dark_0.png", dark)
    meas = load_psf_dir(tmp_path, num_channels=3)
    assert meas.object_distances == [1.0, 3.0]
    assert np.array_equal(meas.frames[0], a.transpose(2, 0, 1)) and np.array_equal(meas.frames[1],
                                                                                     b.transpose(2, 0, 1))
    assert np.array_equal(meas.dark, np.repeat(dark[None].astype(float), 3, 0))
    stack_dir = tmp_path / "stack"
    stack = rng.random((2, 12, 12))
    write_capture(stack_dir / "psf.npy", stack, object_distances=[0.5, 0.7], channel=0)
    s = load_psf_dir(stack_dir, num_channels=1)
    assert s.object_distances == [0.5, 0.7] and np.array_equal(s.frames[:, 0], stack)


@pytest.mark.parametrize("declared,values,dtype,msg", [
    (12, 5000, np.uint16, "exceed bit_depth 12"),
    (16, 200, np.uint8, "does not fit the 8-bit file"),
])
def test_wrong_bit_depth_in_sidecar(tmp_path, declared, values, dtype, msg):
    img = np.full((8, 8), values, dtype=dtype)
    path = write_capture(tmp_path / "psf_g.png", img, bit_depth=declared, channel=1)
    with pytest.raises(PSFFileError, match=msg) as err:
        load_capture(path)
    assert str(path) in str(err.value)


def test_sidecar_errors_name_file_and_key(tmp_path):
    path = write_capture(tmp_path / "psf.png", np.ones((8, 8), np.uint8), pixel_pitch=3.7)
    with pytest.raises(PSFFileError, match="pixel_pitch") as err:
        load_capture(path)
    assert "psf.json" in str(err.value)
    path.with_suffix(".json").write_text(json.dumps({"pitch": 1e-6}))
    with pytest.raises(PSFFileError, match="unknown sidecar key"):
        load_capture(path)


def test_channel_count_mismatch(tmp_path, rng):
    rgb = rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
    path = write_capture(tmp_path / "psf.png", rgb)
    with pytest.raises(PSFFileError, match="3 colour planes but the lens has 1") as err:
        load_psf_dir(tmp_path, num_channels=1)
    assert str(path) in str(err.value)
    two = tmp_path / "two"
    write_capture(two / "psf_R.png", rgb[..., 0])
    write_capture(two / "psf_G.png", rgb[..., 1])
    with pytest.raises(PSFFileError, match=r"channel\(s\) \[2\] missing") as err:
        load_psf_dir(two, num_channels=3)
    assert "psf_R.png" in str(err.value)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        load_calibrated_psf(tmp_path / "nope.npy")
    with pytest.raises(FileNotFoundError, match="no_dir"):
        load_psf_dir(tmp_path / "no_dir")
    with pytest.raises(FileNotFoundError, match="dark.png"):
        (tmp_path / "d").mkdir()
        write_capture(tmp_path / "d" / "psf.png", np.ones((8, 8), np.uint8))
        load_psf_dir(tmp_path / "d", num_channels=1, dark=[tmp_path / "dark.png"])


def test_calibrated_psf_roundtrip_and_bad_values(tmp_path, rng):
    psf = rng.random((3, 9, 9))
    path = save_calibrated_psf(tmp_path / "cal.npy", psf, {"pixel_pitch": 3e-6})
    got = load_calibrated_psf(path)
    assert got.dtype == torch.float32 and got.shape == (3, 9, 9)
    assert torch.allclose(got.sum((1, 2)), torch.ones(3), atol=1e-6)
    assert np.allclose(got.numpy(), psf / psf.sum((1, 2), keepdims=True), atol=1e-7)
    cases = {"nan": (np.nan, "NaN"), "neg": (-0.1, "negative"), "zero": (None, "all zero")}
    for name, (value, msg) in cases.items():
        bad = psf.copy()
        if value is None:
            bad[1] = 0
        else:
            bad[0, 4, 4] = value
        p = tmp_path / f"{name}.npy"
        np.save(p, bad)
        with pytest.raises(PSFFileError, match=msg) as err:
            load_calibrated_psf(p)
        assert str(p) in str(err.value)
    np.savez(tmp_path / "z.npz", psf=psf[0])
    assert load_calibrated_psf(tmp_path / "z.npz").shape == (1, 9, 9)
