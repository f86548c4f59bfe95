"""Attacks on the privacy-preserving capture: undo the optics, then try to re-identify.

- :func:`wiener_attack` / :func:`richardson_lucy_attack`: non-blind deconvolution with the TRUE PSF (the
  strongest classical attacker: knows the lens exactly), per colour channel, scikit-image.
- :func:`train_inverter` / :func:`invert`: a learned inverter (small U-Net) trained on capture -> clean pairs
  from a split disjoint from the evaluated images.
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


class _Block(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.2),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.LeakyReLU(0.2))


class Inverter(nn.Module):
    """Small residual U-Net (two down / up levels): capture (B, 3, H, W) in [0, 1] -> estimate of the clean image.

    H and W must be divisible by 4.
    """

    def __init__(self, base: int = 16) -> None:
        super().__init__()
        self.enc1, self.enc2, self.mid = _Block(3, base), _Block(base, 2 * base), _Block(2 * base, 4 * base)
        self.dec2, self.dec1 = _Block(6 * base, 2 * base), _Block(3 * base, base)
        self.out = nn.Conv2d(base, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) in [0, 1] -> (B, 3, H, W) in [0, 1]."""
        e1 = self.enc1(x)
        e2 = self.enc2(F.avg_pool2d(e1, 2))
        m = self.mid(F.avg_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([F.interpolate(m, scale_factor=2.0), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0), e1], 1))
        return (x + self.out(d1)).clamp(0.0, 1.0)


def _stack(images: Sequence[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack([check_image(im, i) for i, im in enumerate(images)]).transpose(0, 3, 1, 2))


def train_inverter(captures: Sequence[np.ndarray], cleans: Sequence[np.ndarray], iters: int = 500,
                   batch_size: int = 8, crop: int = 64, lr: float = 2e-3, base: int = 16, seed: int = 0,
                   device: str = "cpu") -> Inverter:
    """Train an :class:`Inverter` on capture -> clean pairs (L1 loss, Adam, random aligned crops).

    Args:
        captures, cleans: paired (H, W, 3) float32 images in [0, 1], all the same size; must come from images
            disjoint from those the attack is evaluated on.
        iters: optimiser steps; crop: training crop side [px] (multiple of 4, <= image size).

    Returns:
        the trained module in eval mode (on ``device``).
    """
    from tqdm import tqdm

    if len(captures) != len(cleans) or len(captures) == 0:
        raise ValueError(f"{len(captures)} captures vs {len(cleans)} clean images: need equal, non-zero counts")
    x, y = _stack(captures), _stack(cleans)
    if x.shape != y.shape:
        raise ValueError(f"captures {tuple(x.shape)} and clean images {tuple(y.shape)} differ in size")
    h, w = x.shape[-2:]
    crop = min(crop, h, w) // 4 * 4
    if crop < 4:
        raise ValueError(f"images of {h}x{w} are too small for the inverter")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = Inverter(base).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in tqdm(range(iters), desc="inverter", leave=False, disable=iters < 50):
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=gen)
        top = torch.randint(0, h - crop + 1, (batch_size,), generator=gen)
        left = torch.randint(0, w - crop + 1, (batch_size,), generator=gen)
        xb = torch.stack([x[i, :, t:t + crop, l:l + crop] for i, t, l in zip(idx, top, left)]).to(device)
        yb = torch.stack([y[i, :, t:t + crop, l:l + crop] for i, t, l in zip(idx, top, left)]).to(device)
        loss = F.l1_loss(net(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def invert(net: Inverter, captures: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Apply a trained inverter to (H, W, 3) captures (edge-padded to a multiple of 4 and cropped back)."""
    device = next(net.parameters()).device
    out = []
    for i, cap in enumerate(captures):
        t = torch.from_numpy(check_image(cap, i).transpose(2, 0, 1).copy())[None].to(device)
        h, w = t.shape[-2:]
        t = F.pad(t, (0, (-w) % 4, 0, (-h) % 4), mode="replicate")
        out.append(net(t)[0, :, :h, :w].permute(1, 2, 0).cpu().numpy().astype(np.float32))
    return out


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


def run_attacks(evaluator, camera: nn.Module, attacks: Sequence[str], inverter_iters: int = 500, seed: int = 0,
                device: str = "cpu") -> dict[str, dict]:
    """Capture the originals through ``camera`` and score the raw capture and each attack on it.

    ``camera`` is also the attacker's TRUE PSF (the threat model: the attacker owns or has measured the camera).

    Args:
        evaluator: ``metrics.evaluate.Evaluator`` holding the originals (H, W, 3) in [0, 1].
        camera: ``optics.camera.Camera`` whose PSF is on the originals' pixel grid.
        attacks: names among wiener, rl, inverter (others are ignored here).
        inverter_iters: training steps of the learned inverter.
        seed: sensor-noise seed of the captures.
        device: where the inverter trains.

    Returns:
        {"capture": ..., "wiener": ..., "rl": ..., "inverter": ...} (those requested, plus the capture).

    Raises:
        ValueError: the inverter with fewer than 2 images.
    """
    from data.images import to_numpy, to_tensor

    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        psf = camera.psf().detach().cpu().numpy()
        captures = [to_numpy(camera(to_tensor(im), generator=gen)) for im in evaluator.originals]
    n = len(captures)
    idx = list(range(n))
    methods: dict[str, dict] = {}
    net = None
    if "inverter" in attacks:
        if n < 2:
            raise ValueError("the inverter attack needs at least 2 image pairs (half train, half test)")
        half = n // 2
        train, idx = idx[:half], idx[half:]
        log.info("inverter: training on %d capture/clean pairs, attacks scored on the other %d", half, len(idx))
        net = train_inverter([captures[i] for i in train], [evaluator.originals[i] for i in train],
                             iters=int(inverter_iters), device=device)
    test_caps = [captures[i] for i in idx]
    methods["capture"] = evaluator.evaluate(test_caps, idx)
    if "wiener" in attacks:
        methods["wiener"] = evaluator.evaluate([wiener_attack(c, psf) for c in test_caps], idx)
    if "rl" in attacks:
        methods["rl"] = evaluator.evaluate([richardson_lucy_attack(c, psf) for c in test_caps], idx)
    if net is not None:
        methods["inverter"] = evaluator.evaluate(invert(net, test_caps), idx)
    return methods
