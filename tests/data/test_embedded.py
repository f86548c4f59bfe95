"""Embedded face set locations (data/embedded.py): package photos, roster, cache path independent of the CWD."""
from __future__ import annotations

from pathlib import Path

import pytest

import data
from data import embedded


def test_package_photos_and_roster_are_found():
    folder = embedded.image_dir()
    photos = [p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")]
    assert len(photos) == 471
    teams = set(embedded.roster().values())
    assert len(teams) == 30  # team is the only label: not a visual domain, hence one domain


def test_cache_path_comes_from_the_package_not_the_cwd(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(embedded.CACHE_ENV, raising=False)
    expected = Path(data.__file__).resolve().parent / "nba_faces" / "256"
    monkeypatch.chdir(tmp_path)
    assert embedded.embedded_face_dir(256) == expected
    assert embedded.split_dirs(256) == (expected / "train", expected / "val")
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path))
    assert embedded.embedded_face_dir(64) == tmp_path / "nba_faces" / "64"
    with pytest.raises(ValueError, match="img_size"):
        embedded.embedded_face_dir(8)


def test_embedded_split_is_about_90_10_and_stable():
    names = sorted(p.name for p in embedded.image_dir().iterdir())
    val = [n for n in names if embedded.embedded_split(n) == "val"]
    assert 0.05 < len(val) / len(names) < 0.15
    # decided by the file name alone (the folder does not matter)
    assert all(embedded.embedded_split(f"/some/dir/{n}") == "val" for n in val)
