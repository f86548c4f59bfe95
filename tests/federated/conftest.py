"""Fixtures of the federated tests: a small real face folder and the Stage I factory of a tiny federation."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

IMG_SIZE = 32


def make_factory(train_dir: Path, num_clients: int, extra: list[str] | None = None):
    """(factory, face set) of a federation over ``train_dir`` (teacher landmarks computed here, so the Flower
    workers read them from the on-disk cache)."""
    from federated.data import partition_identities
    from main import build_parser
    from pipelines.train_federated import Stage1Factory

    args = build_parser().parse_args(["--mode", "train_federated", "--img_size", str(IMG_SIZE), "--batch_size", "2",
                                      "--device", "cpu", *(extra or [])])
    factory = Stage1Factory(dict(vars(args)), str(train_dir))
    face_set = factory.face_set(train_dir)
    factory.partitions = partition_identities(face_set.dataset.files, num_clients, seed=args.seed)
    return factory, face_set


@pytest.fixture(scope="session")
def small_faces(tmp_path_factory) -> Path:
    """A folder of 12 real aligned faces (embedded NBA set at 32 px), one domain."""
    from pipelines.faces import default_face_dirs

    train, _ = default_face_dirs(IMG_SIZE)
    files = sorted((train / "face").glob("*.png"))[:12]
    if len(files) < 12:
        pytest.skip("embedded face set smaller than expected")
    out = tmp_path_factory.mktemp("fed_faces") / "train"
    (out / "face").mkdir(parents=True)
    for f in files:
        shutil.copy(f, out / "face" / f.name)
    return out
