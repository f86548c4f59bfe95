"""Datasets (data/datasets.py): scan reports, image modes, domains, splits, source / reference items."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.datasets import (FLAT_DOMAIN, ReferenceDataset, SourceDataset, balanced_sampler, resize_center_crop,
                           scan, split_files, split_of, split_report)
from data.images import read_image


def _rgb(seed: int, h: int = 40, w: int = 30) -> np.ndarray:
    return (np.random.default_rng(seed).uniform(0, 255, (h, w, 3))).astype(np.uint8)


def _save(path: Path, arr: np.ndarray, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def _jpeg_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture()
def domain_tree(tmp_path: Path) -> Path:
    """CelebA-HQ-like layout with good images and three kinds of corrupt files."""
    root = tmp_path / "train"
    for i in range(3):
        _save(root / "male" / f"m{i}.png", _rgb(i))
    for i in range(2):
        _save(root / "female" / f"f{i}.jpg", _rgb(10 + i), "JPEG")
    full = _jpeg_bytes(_rgb(20, 64, 64))
    (root / "female" / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (root / "male" / "text.png").write_text("this is not a PNG\n")
    (root / "male" / "empty.jpg").write_bytes(b"")
    (root / "male" / "notes.txt").write_text("labels\n")
    return root


def test_scan_skips_and_reports_corrupt_files_with_names(domain_tree: Path):
    report = scan(domain_tree)
    skipped = {p.name: reason for p, reason in report.skipped}
    assert set(skipped) == {"truncated.jpg", "text.png", "empty.jpg", "notes.txt"}
    assert report.num_skipped == 4
    assert "empty" in skipped["empty.jpg"]
    assert "not a readable image" in skipped["truncated.jpg"] and "not a readable image" in skipped["text.png"]
    assert "not an image file" in skipped["notes.txt"]
    assert report.domains == ["female", "male"]  # sorted
    assert report.counts() == {"female": 2, "male": 3}
    d = report.to_dict()
    assert d["num_skipped"] == 4 and {s["file"] for s in d["skipped"]} == {
        "female/truncated.jpg", "male/text.png", "male/empty.jpg", "male/notes.txt"}
    for name in ("truncated.jpg", "text.png", "empty.jpg"):
        assert name in report.summary()


def test_source_dataset_items_and_labels(domain_tree: Path):
    ds = SourceDataset(domain_tree, img_size=32)
    assert len(ds) == 5 and ds.domains == ["female", "male"]
    for i in range(len(ds)):
        image, label, path = ds[i]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert ds.domains[label] == Path(path).parent.name
    # the validation set's labels follow the training set's domain list even if a domain is missing there
    (domain_tree.parent / "val" / "male").mkdir(parents=True)
    _save(domain_tree.parent / "val" / "male" / "v.png", _rgb(5))
    with pytest.raises(FileNotFoundError, match="female"):
        scan(domain_tree.parent / "val", domains=ds.domains)


def test_flat_folder_is_one_domain(tmp_path: Path):
    for i in range(3):
        _save(tmp_path / f"{i}.png", _rgb(i))
    report = scan(tmp_path)
    assert report.layout == "flat" and report.domains == [FLAT_DOMAIN] and report.labels == [0, 0, 0]


def test_scan_errors_name_the_folder(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        scan(tmp_path / "nowhere")
    (tmp_path / "bad.png").write_text("x")
    with pytest.raises(ValueError, match="no readable image.*bad.png"):
        scan(tmp_path)


def test_gray_rgba_and_16bit_pngs_load_as_rgb(tmp_path: Path):
    gray = np.arange(0, 240, dtype=np.uint8).reshape(12, 20)
    _save(tmp_path / "gray.png", gray)
    rgba = np.zeros((12, 20, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    rgba[:, :10, 3] = 0  # left half transparent -> white
    _save(tmp_path / "rgba.png", rgba)
    g16 = (np.arange(240, dtype=np.uint32).reshape(12, 20) * 273).astype(np.uint16)  # up to 65247
    Image.fromarray(g16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")

    im = read_image(tmp_path / "gray.png")
    assert im.shape == (12, 20, 3) and np.allclose(im[..., 0], gray / 255.0) and np.all(im[..., 0] == im[..., 2])
    im = read_image(tmp_path / "rgba.png")
    np.testing.assert_allclose(im[:, :10], 1.0)
    np.testing.assert_allclose(im[:, 10:], np.broadcast_to([200 / 255, 0, 0], (12, 10, 3)), atol=1e-6)
    im = read_image(tmp_path / "g16.png")
    np.testing.assert_allclose(im[..., 1], g16 / 65535.0, atol=1e-6)  # 16-bit precision kept

    ds = SourceDataset(tmp_path, img_size=12)
    assert len(ds) == 3 and all(ds[i][0].shape == (3, 12, 12) for i in range(3))


def test_split_is_deterministic_and_stable_when_files_are_added():
    names = [f"face_{i:04d}.png" for i in range(500)]
    train1, val1 = split_files(names, 0.1)
    train2, val2 = split_files(list(reversed(names)), 0.1)
    assert set(train1) == set(train2) and set(val1) == set(val2)
    assert 25 <= len(val1) <= 75 and set(train1).isdisjoint(val1) and len(train1) + len(val1) == 500
    more = names + [f"new_{i}.jpg" for i in range(200)]
    train3, val3 = split_files(more, 0.1)
    assert set(val1) <= set(val3) and set(train1) <= set(train3)  # nobody moved
    # the decision depends on the file name only (not the folder), and on the salt
    assert split_of("a/b/face_0001.png") == split_of("face_0001.png")
    assert [split_of(n, 0.5, "x") for n in names] != [split_of(n, 0.5, "y") for n in names]


def test_split_report_partitions_a_scanned_folder(tmp_path: Path):
    for i in range(30):
        _save(tmp_path / "d" / f"{i}.png", _rgb(i, 8, 8))
    report = scan(tmp_path)
    tr, va = split_report(report, "train", 0.3), split_report(report, "val", 0.3)
    assert sorted(tr.files + va.files) == sorted(report.files) and not set(tr.files) & set(va.files)
    assert split_report(report, "val", 0.3).files == va.files


def test_reference_pairs_come_from_one_domain(domain_tree: Path):
    ref = ReferenceDataset(domain_tree, img_size=16, seed=1)
    src = SourceDataset(domain_tree, img_size=16)
    for i in range(len(ref)):
        x1, x2, y = ref[i]
        j = int(ref.partner[i])
        assert j != i and ref.targets[j] == y == ref.targets[i]
        assert torch.equal(x1, src[i][0]) and torch.equal(x2, src[j][0])
    assert np.array_equal(ReferenceDataset(domain_tree, 16, seed=1).partner, ref.partner)


def test_cache_returns_the_same_images_and_augment_keeps_range(domain_tree: Path):
    plain = SourceDataset(domain_tree, img_size=24)
    cached = SourceDataset(domain_tree, img_size=24, cache=True)
    for _ in range(2):
        for i in range(len(plain)):
            assert torch.allclose(plain[i][0], cached[i][0], atol=0.5 / 255 + 1e-6)
    torch.manual_seed(0)
    aug = SourceDataset(domain_tree, img_size=24, augment=True)
    x = aug[0][0]
    assert x.shape == (3, 24, 24) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_balanced_sampler_draws_domains_equally(domain_tree: Path):
    ds = SourceDataset(domain_tree, img_size=8)
    idx = list(balanced_sampler(ds, num_samples=4000, seed=0))
    frac_female = np.mean([ds.targets[i] == 0 for i in idx])
    assert abs(frac_female - 0.5) < 0.04  # 2 female vs 3 male files, drawn 50/50


def test_resize_center_crop_keeps_the_centre():
    img = np.zeros((40, 80, 3), np.float32)
    img[:, 20:60] = 1.0  # the central 40 x 40 square is white, the sides black
    img[5, 30] = 0.25  # a marker inside the centre square
    out = resize_center_crop(img, 40)  # no resampling: exactly the centre crop
    assert torch.equal(out, torch.from_numpy(img[:, 20:60].transpose(2, 0, 1).copy()))
    out = resize_center_crop(img, 20)  # 2x reduction: white inside (antialiasing blurs the outer column only)
    assert out.shape == (3, 20, 20)
    assert float(out[:, 4:, 1:-1].min()) == pytest.approx(1.0, abs=1e-6)
    assert float(out[:, :, 0].max()) < 1.0


def test_file_broken_after_a_header_scan_is_replaced_within_its_domain(domain_tree: Path):
    report = scan(domain_tree, verify="header")  # header checks cannot see a truncated JPEG
    names = [p.name for p in report.files]
    assert "truncated.jpg" in names and "text.png" not in names
    ds = SourceDataset(report, img_size=16)
    i = names.index("truncated.jpg")
    image, label, path = ds[i]
    assert Path(path).name != "truncated.jpg" and Path(path).parent.name == "female" == ds.domains[label]
    assert [p.name for p, _ in ds.failed] == ["truncated.jpg"]
