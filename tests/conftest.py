"""Fixtures of the whole test suite.

``device`` / ``dtype`` (as kornia's BaseTester): tests that take them run on every device present (cpu, plus
cuda when available) and in float32 and float64, so "device and dtype follow the input" is checked. Real
models and faces are loaded once per session.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import NBA_NAMES, astronaut_window, nba_dir

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def dtype(request) -> torch.dtype:
    return request.param


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread while a test runs (restored after it).

    On a shared 2-core machine, OpenMP's 2-thread parallel regions spin-wait for a descheduled partner: a tiny
    U-Net step measured 5.4 s with 2 threads vs 0.12 s with 1 under load ~9.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


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


@pytest.fixture(scope="session")
def nba_faces() -> list[np.ndarray]:
    from data.images import read_image

    folder = nba_dir()
    faces = [read_image(folder / name) for name in NBA_NAMES if (folder / name).is_file()]
    if len(faces) < 6:
        pytest.skip("expected NBA headshots missing")
    return faces
