"""Face alignment with the real MTCNN (pipelines/faces.py) and the ``--mode align`` command."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.align import (align_face, alignment_transform, apply_transform, eye_angle, similarity_matrix,
                        similarity_params, template_landmarks, warp_image)
from data.datasets import resize_center_crop
from data.files import save_image

SIZE = 96
"""Crop side of the geometry checks. MTCNN's own landmark scatter grows with the face size (~1 px at 96, up to
~6 px at 256 for a face filling the crop), so a 2 px tolerance on RE-DETECTED landmarks is meaningful here."""
BASE = 160
"""Side of the test photo [px] (small: MTCNN on a 2-core CPU)."""


@pytest.fixture(scope="module")
def detector():
    from pipelines.faces import make_detector

    return make_detector()


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    """A real face photo (scikit-image's astronaut), head and shoulders, BASE x BASE, (H, W, 3) in [0, 1]."""
    from skimage import data

    img = data.astronaut()[:300, 50:350].astype(np.float32) / 255.0
    return resize_center_crop(img, BASE).permute(1, 2, 0).numpy()


def _known_warp() -> np.ndarray:
    """Rotation by 25 degrees and scale 0.8 about the image centre, then a shift of (6, -4) px."""
    c = np.array([BASE / 2 - 0.5, BASE / 2 - 0.5])
    t = similarity_matrix(1, 0, *c) @ similarity_matrix(0.8, np.radians(25.0), 0, 0) @ similarity_matrix(1, 0, *-c)
    t[:2, 2] += [6.0, -4.0]
    return t


@pytest.fixture(scope="module")
def landmarks(detector, face):
    """(warped photo, landmarks of the photo, landmarks of the warped photo) with the alignment's detector."""
    from pipelines.faces import face_landmarks

    warped = warp_image(face, _known_warp(), BASE, pad_mode="edge")
    lm0, lm1 = face_landmarks(detector, [face, warped])
    assert lm0 is not None and lm1 is not None
    return warped, lm0, lm1


def test_alignment_undoes_a_known_similarity_warp(detector, landmarks):
    from pipelines.faces import detect_landmarks

    t = _known_warp()
    warped, lm0, lm1 = landmarks
    assert abs(eye_angle(lm1) - eye_angle(lm0) - 25.0) < 2.0  # the detector sees the rotation we applied

    crop, m = align_face(warped, lm1, SIZE)
    (lm2,) = detect_landmarks(detector, [crop])
    assert lm2 is not None
    # eyes level, and every re-detected landmark where the similarity put it
    assert abs(eye_angle(lm2)) < 2.0
    assert np.linalg.norm(lm2 - apply_transform(m, lm1), axis=1).max() < 2.0

    # the alignment recovered the known transform: aligning the warped photo == aligning the original
    m0 = alignment_transform(lm0, SIZE)
    s_w, a_w, _, _ = similarity_params(m @ t)
    s_0, a_0, _, _ = similarity_params(m0)
    assert abs(np.degrees(a_w - a_0)) < 2.0 and abs(s_w / s_0 - 1.0) < 0.03
    centre = template_landmarks(SIZE).mean(axis=0)
    src_centre = apply_transform(np.linalg.inv(m0), centre[None])
    assert np.linalg.norm(apply_transform(m @ t, src_centre) - centre) < 2.0


def test_realigned_landmarks_land_on_the_template(detector, landmarks):
    """With this face's own (level, centred) landmark layout as template, all 5 re-detected landmarks of the
    aligned warped photo lie within 2 px of the template."""
    from pipelines.faces import detect_landmarks

    warped, lm0, lm1 = landmarks
    own = (apply_transform(alignment_transform(lm0, SIZE), lm0) + 0.5) / SIZE  # unit template, eyes level
    assert abs(eye_angle(own)) < 3.0
    crop, _ = align_face(warped, lm1, SIZE, template=own)
    (lm2,) = detect_landmarks(detector, [crop])
    assert np.linalg.norm(lm2 - template_landmarks(SIZE, own), axis=1).max() < 2.0
    assert abs(eye_angle(lm2)) < 2.0


def test_align_command_reports_exactly_the_two_failures(tmp_path: Path, face, detector, monkeypatch):
    import main
    import pipelines.faces

    monkeypatch.setattr(pipelines.faces, "make_detector", lambda device="cpu": detector)  # same real MTCNN, no reload

    inp, out = tmp_path / "inp", tmp_path / "out"
    save_image(inp / "portraits" / "astronaut.jpg", face)  # a domain sub-folder, JPEG in -> PNG out
    gradient = np.linspace(0, 1, 96 * 96, dtype=np.float32).reshape(96, 96)
    save_image(inp / "sky.png", np.repeat(gradient[..., None], 3, axis=2))  # an image without a face
    buf = io.BytesIO()
    Image.fromarray((face * 255).astype(np.uint8)).save(buf, format="JPEG")
    (inp / "broken.jpg").write_bytes(buf.getvalue()[:2000])  # truncated JPEG
    (inp / "README.txt").write_text("not an image\n")

    assert main.main(["--mode", "align", "--inp_dir", str(inp), "--out_dir", str(out), "--img_size", "96",
                      "--device", "cpu"]) == 0
    report = json.loads((out / "align_report.json").read_text())
    assert report["aligned"] == 1 and report["num_inputs"] == 3
    reasons = {f["file"]: f["reason"] for f in report["failures"]}
    assert report["num_failures"] == 2 and set(reasons) == {"sky.png", "broken.jpg"}
    assert reasons["sky.png"] == "no face" and reasons["broken.jpg"].startswith("unreadable")
    assert report["ignored"] == ["README.txt"]
    saved = out / "portraits" / "astronaut.png"
    assert saved.is_file() and Image.open(saved).size == (96, 96)
    assert sorted(p.name for p in out.rglob("*.png")) == ["astronaut.png"]


def test_embedded_build_reports_photos_without_a_face(tmp_path: Path, detector):
    """The embedded-set builder on three of the package's photos: two real faces, one grey silhouette
    placeholder (the package has 83 of them). The silhouette is listed under no_face, not silently dropped."""
    import shutil

    from data import embedded
    from pipelines.faces import build_embedded_faces

    src = tmp_path / "photos"
    src.mkdir()
    names = ["AJ_Hoggard.jpg", "Adem_Bona.png", "Ace_Bailey.png"]  # 75x100 JPEG, 260x190 PNG, silhouette
    for n in names:
        shutil.copy(embedded.image_dir() / n, src / n)
    out = build_embedded_faces(48, detector=detector, source_dir=src, target_dir=tmp_path / "cache" / "48")
    report = json.loads((out / "report.json").read_text())
    assert report["num_photos"] == 3 and report["num_faces"] == 2
    assert report["no_face"] == ["Ace_Bailey.png"] and report["unreadable"] == {}
    crops = sorted(out.rglob("*.png"))
    assert sorted(p.name for p in crops) == ["AJ_Hoggard.png", "Adem_Bona.png"]
    for p in crops:  # <split>/face/<name>.png, split by hashed original name
        original = next(n for n in names if Path(n).stem == p.stem)
        assert p.parent.name == embedded.EMBEDDED_DOMAIN and p.parent.parent.name == embedded.embedded_split(original)
        assert Image.open(p).size == (48, 48)
    assert not list((tmp_path / "cache").glob(".*"))  # no temporary folder left behind
