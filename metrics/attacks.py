"""Attacks on the privacy-preserving capture: undo the optics, then try to re-identify.

- :func:`wiener_attack` / :func:`richardson_lucy_attack`: non-blind deconvolution with the TRUE PSF (the
  strongest classical attacker: knows the lens exactly), per colour channel, scikit-image.
- the learned inverter (metrics/inverter.py, re-exported here): a U-Net trained on fresh captures of the
  attacker's own faces through the same camera (:func:`train_camera_inverter`), or on fixed pairs
  (:func:`train_inverter`); :func:`invert` applies it.
- :func:`attribute_attack`: a small CNN trained on protected images to predict a domain label (e.g. gender);
  its test accuracy against chance says how much the attribute leaks.

Images are (H, W, 3) float32 in [0, 1]; PSFs are numpy (C, h, w), each channel summing to 1, centre at
(h // 2, w // 2) (the optics package's convention).
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metrics.detectors import check_image
from metrics.inverter import (FACE_WIDTH_FRACTION, IDENTITY_BAND, INVERTER_LOSSES, Inverter,  # noqa: F401
                              augment_faces, band_pass, capture_with, identity_correlation, invert,
                              inverter_loss, train_camera_inverter, train_inverter)

log = logging.getLogger(__name__)


def check_psf(psf, channels: int = 3) -> np.ndarray:
    """Validate a (C, h, w) PSF (numpy or torch); returns float64 numpy normalised to unit sum per channel.

    Raises:
        ValueError: wrong shape, negative / non-finite values, or an all-zero channel.
    """
    if isinstance(psf, torch.Tensor):
        psf = psf.detach().cpu().numpy()
    p = np.asarray(psf, dtype=np.float64)
    if p.ndim == 2:
        p = np.repeat(p[None], channels, axis=0)
    if p.ndim != 3 or p.shape[0] not in (1, channels):
        raise ValueError(f"PSF must be (C, h, w) with C = 1 or {channels}, got {p.shape}")
    if not np.all(np.isfinite(p)) or p.min() < 0:
        raise ValueError("PSF has negative or non-finite values")
    sums = p.sum(axis=(1, 2), keepdims=True)
    if np.any(sums <= 0):
        raise ValueError("PSF has an all-zero channel")
    p = p / sums
    return np.repeat(p, channels, axis=0) if p.shape[0] == 1 else p


def apply_psf(image: np.ndarray, psf) -> np.ndarray:
    """Linear ('same') convolution of an (H, W, 3) image with a (C, h, w) PSF, per channel (scipy FFT).

    The reference forward model for the attacks' tests and the inverter's training pairs when no camera is
    given; zero padding outside the image as in ``optics.imaging.fft_convolve``.
    """
    from scipy.signal import fftconvolve

    img = check_image(image).astype(np.float64)
    p = check_psf(psf, img.shape[2])
    h, w = p.shape[1:]
    out = np.empty_like(img)
    for c in range(img.shape[2]):
        full = fftconvolve(img[..., c], p[c], mode="full")
        out[..., c] = full[h // 2:h // 2 + img.shape[0], w // 2:w // 2 + img.shape[1]]
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _pad(image: np.ndarray, psf: np.ndarray) -> tuple[np.ndarray, int, int]:
    ph, pw = psf.shape[1] // 2 + 1, psf.shape[2] // 2 + 1
    return np.pad(image, ((ph, ph), (pw, pw), (0, 0)), mode="edge"), ph, pw


def _centred_psf(p: np.ndarray) -> np.ndarray:
    """Pad even-sized PSF channels to odd size so the centre (h // 2, w // 2) stays the array centre."""
    h, w = p.shape
    return np.pad(p, ((0, 1 - h % 2), (0, 1 - w % 2)))


def wiener_attack(capture: np.ndarray, psf, balance: float = 1e-2) -> np.ndarray:
    """Wiener deconvolution with the true PSF (``skimage.restoration.wiener``, Laplacian regulariser).

    Args:
        capture: (H, W, 3) float32 in [0, 1].
        psf: (C, h, w) true PSF.
        balance: regularisation weight (noise-to-signal); larger = smoother.

    Returns:
        (H, W, 3) float32 in [0, 1]. The capture is edge-padded by half the PSF first (less ringing from the
        periodic boundary of the FFT).
    """
    from skimage.restoration import wiener

    img = check_image(capture).astype(np.float64)
    p = check_psf(psf, img.shape[2])
    padded, ph, pw = _pad(img, p)
    out = np.stack([wiener(padded[..., c], _centred_psf(p[c]), balance, clip=False)
                    for c in range(img.shape[2])], axis=-1)
    return np.clip(out[ph:ph + img.shape[0], pw:pw + img.shape[1]], 0.0, 1.0).astype(np.float32)


def richardson_lucy_attack(capture: np.ndarray, psf, num_iter: int = 30) -> np.ndarray:
    """Richardson-Lucy deconvolution with the true PSF (``skimage.restoration.richardson_lucy``), per channel.

    Args:
        capture: (H, W, 3) float32 in [0, 1]; psf: (C, h, w); num_iter: RL iterations.

    Returns:
        (H, W, 3) float32 in [0, 1].
    """
    from skimage.restoration import richardson_lucy

    img = check_image(capture).astype(np.float64)
    p = check_psf(psf, img.shape[2])
    padded, ph, pw = _pad(img, p)
    out = np.stack([richardson_lucy(padded[..., c], _centred_psf(p[c]), num_iter=num_iter, clip=True)
                    for c in range(img.shape[2])], axis=-1)
    return np.clip(out[ph:ph + img.shape[0], pw:pw + img.shape[1]], 0.0, 1.0).astype(np.float32)


def _stack(images: Sequence[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack([check_image(im, i) for i, im in enumerate(images)]).transpose(0, 3, 1, 2))


class _Classifier(nn.Module):
    def __init__(self, num_classes: int, base: int = 16) -> None:
        super().__init__()
        layers, cin = [], 3
        for cout in (base, 2 * base, 4 * base, 4 * base):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def attribute_attack(train_imgs: Sequence[np.ndarray], train_labels: Sequence[int], test_imgs: Sequence[np.ndarray],
                     test_labels: Sequence[int], iters: int = 300, size: int = 64, batch_size: int = 16,
                     lr: float = 1e-3, seed: int = 0) -> float:
    """Accuracy of a small CNN trained on protected images to predict their domain label.

    Args:
        train_imgs, test_imgs: (H, W, 3) float32 in [0, 1] protected images (resized to ``size`` x ``size``).
        train_labels, test_labels: int labels in [0, num_classes).
        iters: Adam steps on random batches (with horizontal flips).

    Returns:
        test accuracy in [0, 1] (compare with :func:`majority_rate` of the test labels).
    """
    if len(train_imgs) != len(train_labels) or len(test_imgs) != len(test_labels):
        raise ValueError("attribute attack: images and labels differ in count")
    if not len(train_imgs) or not len(test_imgs):
        raise ValueError("attribute attack: empty training or test set")

    def prep(images: Sequence[np.ndarray]) -> torch.Tensor:
        return torch.cat([F.interpolate(_stack([im]), size=(size, size), mode="area") for im in images])

    xtr, xte = prep(train_imgs), prep(test_imgs)
    ytr, yte = torch.as_tensor(list(train_labels)).long(), torch.as_tensor(list(test_labels)).long()
    num_classes = int(max(ytr.max(), yte.max())) + 1
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = _Classifier(num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(iters):
        idx = torch.randint(0, len(xtr), (min(batch_size, len(xtr)),), generator=gen)
        xb = xtr[idx]
        flip = torch.rand(len(idx), generator=gen) < 0.5
        xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
        loss = F.cross_entropy(net(xb * 2 - 1), ytr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        pred = net(xte * 2 - 1).argmax(1)
    return float((pred == yte).float().mean())


def majority_rate(labels: Sequence[int]) -> float:
    """Accuracy of always guessing the most frequent label (chance level of the attribute attack)."""
    labels = np.asarray(list(labels))
    if labels.size == 0:
        raise ValueError("no labels")
    return float(np.bincount(labels).max() / labels.size)


def gaussian_psf(sigma: float, size: int | None = None, channels: int = 3) -> np.ndarray:
    """(C, size, size) isotropic Gaussian PSF with standard deviation ``sigma`` [px], unit sum per channel."""
    size = size or 2 * int(np.ceil(3 * sigma)) + 1
    r = np.arange(size) - size // 2
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma ** 2))
    return np.repeat((g / g.sum())[None], channels, axis=0)


ATTACKS = ("wiener", "rl", "inverter", "attribute")
"""Every attack name ``--attacks`` accepts (attribute: the checkpoint protocol's source-domain classifier)."""


def run_attacks(evaluator, camera: nn.Module, attacks: Sequence[str], inverter_iters: int = 3000, seed: int = 0,
                device: str = "cpu", attacker_images: Sequence[np.ndarray] | None = None,
                distractors: Sequence[np.ndarray] | None = None, inverter_base: int = 32, inverter_depth: int = 3,
                inverter_loss: str = "band") -> dict[str, dict]:
    """Capture the originals through ``camera`` and score the raw capture and each attack on it.

    Threat model: the attacker knows the TRUE PSF (owns or has measured the camera: Wiener / RL use it), owns
    the same camera (the learned inverter is trained on fresh captures of the attacker's own faces,
    :func:`train_camera_inverter`), and gets the victims' raw captures after noise and ADC.

    Args:
        evaluator: ``metrics.evaluate.Evaluator`` holding the originals (H, W, 3) in [0, 1] (the victims).
        camera: ``optics.camera.Camera`` whose PSF is on the originals' pixel grid (or any capture module).
        attacks: names among wiener, rl, inverter (others are ignored here).
        inverter_iters: training steps of the learned inverter.
        seed: sensor-noise seed of the captures.
        device: where the inverter trains.
        attacker_images: the attacker's own faces (H, W, 3), people disjoint from the originals (e.g. the
            training split). None: the old protocol, the inverter trains on half of the originals and every
            attack is scored on the other half (a warning says so).
        distractors: clean faces of other people, added to the gallery as distractor identities (every
            method then also gets ``reid_large``: rank-1 / rank-5 against held-out + distractors).
        inverter_base, inverter_depth, inverter_loss: the inverter (:class:`Inverter`, :data:`INVERTER_LOSSES`).

    Returns:
        {"capture": ..., "wiener": ..., "rl": ..., "inverter": ...} (those requested, plus the capture); each the
        evaluator's result plus ``reid_large`` when distractors are given, and ``attack_protocol``.

    Raises:
        ValueError: the inverter with fewer than 2 images and no attacker faces; attacker faces of another size.
    """
    from data.images import to_numpy, to_tensor

    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        # what each channel records (a monochrome capture's own PSF): the PSF a deconvolution attacker measures
        psf_of = getattr(camera, "recorded_psf", getattr(camera, "psf", None))
        psf = psf_of().detach().cpu().numpy() if psf_of is not None else None
        captures = [to_numpy(camera(to_tensor(im), generator=gen)) for im in evaluator.originals]
    if psf is None and ("wiener" in attacks or "rl" in attacks):
        raise ValueError("Wiener / Richardson-Lucy attacks need a camera with a PSF")
    n = len(captures)
    idx = list(range(n))
    methods: dict[str, dict] = {}
    net = None
    protocol = {"inverter_iters": int(inverter_iters), "inverter_base": inverter_base,
                "inverter_depth": inverter_depth, "inverter_loss": inverter_loss}
    if "inverter" in attacks:
        if attacker_images is not None and len(attacker_images):
            faces = _stack(attacker_images)
            if faces.shape[-2:] != torch.Size(evaluator.originals[0].shape[:2]):
                raise ValueError(f"attacker faces are {tuple(faces.shape[-2:])} px, the evaluated originals "
                                 f"{evaluator.originals[0].shape[:2]}: image both sets at the same size")
            protocol.update(inverter_train="attacker's own faces", num_attacker_faces=len(attacker_images))
            log.info("inverter: trained on fresh captures of %d attacker faces (%d steps); attacks scored on all %d "
                     "originals", len(attacker_images), inverter_iters, n)
        else:
            if n < 2:
                raise ValueError("the inverter attack needs attacker faces or at least 2 image pairs")
            half = n // 2
            train, idx = idx[:half], idx[half:]
            faces = _stack([evaluator.originals[i] for i in train])
            protocol.update(inverter_train="half of the originals", num_attacker_faces=half)
            log.warning("inverter: no attacker faces given; trained on %d of the originals, attacks scored on the "
                        "other %d", half, len(idx))
        h, w = faces.shape[-2:]
        m = 2 ** inverter_depth
        if h % m or w % m:  # the attacker crops its faces to the inverter's grid (invert pads the victims)
            faces = faces[..., : h // m * m, : w // m * m]
        net = train_camera_inverter(camera, faces, iters=int(inverter_iters), base=inverter_base,
                                    depth=inverter_depth, loss=inverter_loss, seed=int(seed), device=device)
        net = net.cpu()
    test_caps = [captures[i] for i in idx]
    attacked = {"capture": test_caps}
    if "wiener" in attacks:
        attacked["wiener"] = [wiener_attack(c, psf) for c in test_caps]
    if "rl" in attacks:
        attacked["rl"] = [richardson_lucy_attack(c, psf) for c in test_caps]
    if net is not None:
        attacked["inverter"] = invert(net, test_caps)
    large = _LargeGallery(evaluator, distractors) if distractors is not None and len(distractors) else None
    for name, images in attacked.items():
        methods[name] = evaluator.evaluate(images, idx)
        methods[name]["attack_protocol"] = protocol
        if large is not None:
            methods[name]["reid_large"] = large.score(images, idx)
    return methods


class _LargeGallery:
    """Held-out gallery (the evaluator's originals) + distractor identities, dlib embeddings computed once."""

    def __init__(self, evaluator, distractors: Sequence[np.ndarray]) -> None:
        emb = evaluator.embedder
        if emb is None:
            raise ValueError("distractors need an evaluator with identity=True")
        self.evaluator = evaluator
        faces = [check_image(im, i) for i, im in enumerate(distractors)]
        self.distractors = emb.embed(faces, emb.detector.detect(faces))

    def score(self, images: Sequence[np.ndarray], idx: Sequence[int]) -> dict:
        from metrics.identity import gallery_reid

        ev = self.evaluator
        probes = ev.embedder.embed(list(images), ev.embedder.detector.detect(list(images)))
        return gallery_reid(probes, [ev.ids[i] for i in idx], ev.gallery, ev.ids, self.distractors)["large"]
