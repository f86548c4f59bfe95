"""The demo on the shipped weights: every output exists, metrics are finite and in their documented ranges."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

import main
from pipelines.common import SHIPPED_ANONYMIZER, SHIPPED_OPTICS
from pipelines.demo import NUM_SOURCES, RANGES


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main.main(["--mode", "demo", "--out", str(out)]) == 0
    return out


def test_shipped_checkpoints_are_small_and_weights_only():
    import torch

    total = 0
    for path in (SHIPPED_OPTICS, SHIPPED_ANONYMIZER):
        assert path.is_file(), f"{path} missing"
        total += path.stat().st_size
        state = torch.load(path, map_location="cpu", weights_only=True)  # raises on pickled objects
        assert state["version"] >= 1
    assert total <= 25 * 1024 * 1024


@pytest.mark.slow  # runs the whole demo (~40-90 s on 2 cores); the shipped-files test stays fast
def test_demo_writes_every_output(demo_out):
    for name in ("demo.png", "psf.png", "metrics.json", "metrics.md"):
        assert (demo_out / name).is_file(), name
    fig = np.asarray(Image.open(demo_out / "demo.png"))
    assert fig.ndim == 3 and min(fig.shape[:2]) > 200 and fig.std() > 10  # a real figure, not a blank canvas


@pytest.mark.slow  # runs the whole demo (~40-90 s on 2 cores); the shipped-files test stays fast
def test_demo_metrics_are_finite_and_in_range(demo_out):
    report = json.loads((demo_out / "metrics.json").read_text())
    assert report["num_faces"] == NUM_SOURCES
    assert report["problems"] == []
    methods = report["methods"]
    assert {"capture", "anonymized"} <= set(methods)
    assert any(m.startswith("lowres") for m in methods) and any(m.startswith("blur") for m in methods)
    assert any(m.startswith("pixelate") for m in methods)
    for name, res in methods.items():
        for det in ("mtcnn", "dlib"):
            g = res[det]
            assert 0.0 <= g["detection_rate"] <= 1.0
            assert g["pairs"] + g["misses"] == NUM_SOURCES
            for key, (lo, hi) in RANGES.items():
                if key in g and g[key] is not None:
                    assert math.isfinite(g[key]) and lo <= g[key] <= hi, (name, det, key, g[key])
        assert 0.0 <= res["reid_rank1"] <= 1.0
    # the privacy camera must hide identity far better than the 16x16 low-resolution baseline does
    lowres = next(v for k, v in methods.items() if k.startswith("lowres"))
    assert methods["capture"]["reid_rank1"] < lowres["reid_rank1"]
