"""Shared fixtures of the reliability tests: the CLI run in-process, file-tree hashes, tiny inputs.

Every test here also checks (autouse) that the repository's shipped ``checkpoints/`` did not change.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest

import main
from tests.helpers import write_headshots

REPO = Path(__file__).resolve().parents[2]
FACE_SIZE = 64

TINY_LENS_YAML = """name: tiny
wavelengths: [640.0e-9, 550.0e-9, 440.0e-9]
design_wavelength: 550.0e-9
aperture_radius: 2.0e-3
focus_distance: 5.0
sensor_distance: 50.0e-3
object_distance: 5.0
pixel_pitch: 3.713103e-6
psf_size: 32
pupil_samples: 64
material: fused_silica
zernike: {4: 0.0}
height_map: zernike
"""


def tree_digest(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder`` (empty when it does not exist)."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(autouse=True)
def shipped_checkpoints_unchanged():
    before = tree_digest(REPO / "checkpoints")
    yield
    assert tree_digest(REPO / "checkpoints") == before, "the repository's checkpoints/ changed"


@pytest.fixture
def digest():
    return tree_digest


@pytest.fixture
def cli(caplog):
    """``cli(*argv) -> (exit code, the log text of that run)``: main.main in-process."""
    def run(*argv: str) -> tuple[int, str]:
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            rc = main.main([*map(str, argv), "--log_level", "WARNING"])
        return rc, caplog.text

    return run


@pytest.fixture(scope="session")
def tiny_lens(tmp_path_factory) -> Path:
    """A small in-focus lens (32 px PSF window, 64-sample pupil): fast simulations."""
    path = tmp_path_factory.mktemp("lens") / "tiny.yaml"
    path.write_text(TINY_LENS_YAML)
    return path


@pytest.fixture(scope="session")
def face_dir(tmp_path_factory) -> Path:
    """Eight real headshots (the embedded photos) as 64 px PNGs."""
    return write_headshots(tmp_path_factory.mktemp("faces"), FACE_SIZE)


@pytest.fixture
def fake_checkpoint():
    """``fake_checkpoint(path, **args)``: a loadable project checkpoint whose ``args`` are ``args``."""
    from data.checkpoint import save_checkpoint

    def make(path: Path, **args) -> Path:
        return save_checkpoint(path, {"step": int(Path(path).name.split("_")[0]), "args": args})

    return make


@pytest.fixture
def gray_images():
    """``gray_images(folder, names, size)``: smooth random RGB images (not faces) written as given names."""
    from data.files import save_image

    def make(folder: Path, names: list[str], size: int = 32, seed: int = 0) -> Path:
        rng = np.random.default_rng(seed)
        for name in names:
            save_image(Path(folder) / name, rng.uniform(0.2, 0.8, (size, size, 3)).astype(np.float32))
        return Path(folder)

    return make
