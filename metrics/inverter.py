"""The learned inverter attack: a residual U-Net that turns captures back into faces, its losses (pixel L1 and
the identity-band correlation) and its training, either on fixed capture / clean pairs or, as the camera-owning
attacker of the threat model does, on fresh captures of the attacker's own (augmented) faces every step.

The same network and loss are Stage I's adversary (anonymizer/stage1/losses.py). Images (B, 3, H, W) in [0, 1]
(tensors) or (H, W, 3) float32 in [0, 1] (numpy, at the API edges).
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


class _Block(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.2),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.LeakyReLU(0.2))


class Inverter(nn.Module):
    """Residual U-Net: capture (B, 3, H, W) in [0, 1] -> estimate of the clean image.

    Args:
        base: channels of the first level (doubling per level, at most 8 x base).
        depth: number of down / up levels (H and W must be divisible by 2 ** depth; :func:`invert` pads).
    """

    def __init__(self, base: int = 16, depth: int = 2) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"inverter depth must be >= 1, got {depth}")
        self.base, self.depth = int(base), int(depth)
        widths = [min(8, 2 ** i) * base for i in range(depth + 1)]
        self.enc = nn.ModuleList([_Block(3, widths[0])] + [_Block(widths[i - 1], widths[i]) for i in range(1, depth)])
        self.mid = _Block(widths[depth - 1], widths[depth])
        self.dec = nn.ModuleList([_Block(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(depth))])
        self.out = nn.Conv2d(widths[0], 3, 1)

    @property
    def multiple(self) -> int:
        """Image sides must be multiples of this [px]."""
        return 2 ** self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) in [0, 1] -> (B, 3, H, W) in [0, 1]."""
        skips, h = [], x
        for i, block in enumerate(self.enc):
            h = block(h if i == 0 else F.avg_pool2d(h, 2))
            skips.append(h)
        h = self.mid(F.avg_pool2d(h, 2))
        for block, skip in zip(self.dec, reversed(skips)):
            h = block(torch.cat([F.interpolate(h, scale_factor=2.0), skip], 1))
        return (x + self.out(h)).clamp(0.0, 1.0)


IDENTITY_BAND = (4.0, 16.0)
"""Identity band [cycles per face width] of the inverter's band loss and of the adversarial Stage I objective:
mid frequencies that face recognition relies on (Costen et al. 1996; Nasanen 1999), from the 4 c/face that a
machine attacker still exploits (see anonymizer.stage1.losses.DEFAULT_PRIVACY_BAND) to 16 c/face."""

FACE_WIDTH_FRACTION = 0.66
"""Face width over the side of an aligned crop (data.align's template; as anonymizer.stage1.losses)."""


def band_pass(images: torch.Tensor, band: tuple[float, float | None] = IDENTITY_BAND,
              face_width_fraction: float = FACE_WIDTH_FRACTION) -> torch.Tensor:
    """Keep only the spatial frequencies of ``band`` (ideal ring filter on the FFT grid, periodic boundary).

    Args:
        images: (B, C, H, W) (an aligned face crop of side W).
        band: (low, high) [cycles per face width]; high None = Nyquist.

    Returns:
        (B, C, H, W) real, zero mean.
    """
    h, w = images.shape[-2:]
    fy = torch.fft.fftfreq(h, device=images.device, dtype=images.dtype)[:, None]
    fx = torch.fft.fftfreq(w, device=images.device, dtype=images.dtype)[None, :]
    fr = torch.sqrt(fy ** 2 + fx ** 2) * w * face_width_fraction  # cycles per face width
    lo, hi = band
    mask = (fr >= lo) & (fr <= (hi if hi is not None else float("inf")))
    return torch.fft.ifft2(torch.fft.fft2(images) * mask.to(images.dtype)).real


def identity_correlation(estimate: torch.Tensor, clean: torch.Tensor, band: tuple[float, float | None] = IDENTITY_BAND,
                         face_width_fraction: float = FACE_WIDTH_FRACTION) -> torch.Tensor:
    """Normalised cross-correlation of the identity-band content of an estimate and the clean face.

    1 = the estimate restores the band exactly (up to contrast), 0 = no identity-band detail in common (what a
    capture that removed the band gives), negative = anti-correlated. Differentiable in both arguments.

    Args:
        estimate, clean: (B, C, H, W).

    Returns:
        (B,) in [-1, 1].
    """
    a = band_pass(estimate, band, face_width_fraction).flatten(1)
    b = band_pass(clean, band, face_width_fraction).flatten(1)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-8)


INVERTER_LOSSES = ("l1", "band")
"""``l1``: pixel L1; ``band``: L1 + (1 - identity-band correlation), the perceptual term of this package (no
differentiable face-recognition network is available offline, dlib's ResNet is not differentiable)."""


def wiener_deconvolve(capture: torch.Tensor, psf: torch.Tensor, balance: float = 1e-2) -> torch.Tensor:
    """Differentiable Wiener deconvolution with a known PSF, the same filter as the harness's Wiener attack
    (metrics.attacks.wiener_attack: ``skimage.restoration.wiener`` with its Laplacian regulariser, the capture
    edge-padded by half the PSF first), so that Stage I can train the lens against it.

    X = conj(H) Y / (|H|^2 + balance |L|^2), H the PSF's and L the 3x3 Laplacian's transfer functions on the
    padded grid, both centred at the origin. The estimate is not clipped (the attack clips to [0, 1]; the
    identity-band correlation it feeds is insensitive to the offset, and clipping would stop the gradient).

    Args:
        capture: (B, C, H, W).
        psf: (C, h, w) on the capture's pixel grid, each channel summing to 1 (differentiable).
        balance: regularisation weight (noise-to-signal), as the attack's.

    Returns:
        (B, C, H, W) estimate, differentiable in ``capture`` and ``psf``.
    """
    if psf.ndim != 3 or psf.shape[0] != capture.shape[1]:
        raise ValueError(f"wiener_deconvolve: psf {tuple(psf.shape)} must be (C, h, w) with C = "
                         f"{capture.shape[1]} channels")
    h, w = psf.shape[-2:]
    # odd-sized window so that the centre (h // 2, w // 2) is the array centre (as the attack's _centred_psf)
    psf = F.pad(psf, (0, 1 - w % 2, 0, 1 - h % 2))
    h, w = psf.shape[-2:]
    ph, pw = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    padded = F.pad(capture, (pw, pw, ph, ph), mode="replicate")
    size = padded.shape[-2:]

    def transfer(kernel: torch.Tensor) -> torch.Tensor:
        kh, kw = kernel.shape[-2:]
        grid = F.pad(kernel, (0, size[1] - kw, 0, size[0] - kh))
        return torch.fft.rfft2(torch.roll(grid, (-(kh // 2), -(kw // 2)), (-2, -1)))

    lap = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]], dtype=psf.dtype,
                       device=psf.device)
    tf, reg = transfer(psf), transfer(lap)
    filt = tf.conj() / (tf.abs() ** 2 + balance * reg.abs() ** 2)
    out = torch.fft.irfft2(torch.fft.rfft2(padded) * filt, s=size)
    return out[..., ph:ph + capture.shape[-2], pw:pw + capture.shape[-1]]


def inverter_loss(estimate: torch.Tensor, clean: torch.Tensor, kind: str = "band",
                  band: tuple[float, float | None] = IDENTITY_BAND) -> torch.Tensor:
    """Training loss of an inverter (scalar); ``kind`` in :data:`INVERTER_LOSSES`.

    Args:
        estimate, clean: (B, 3, H, W) in [0, 1].
    """
    if kind not in INVERTER_LOSSES:
        raise ValueError(f"unknown inverter loss {kind!r} (choose from {', '.join(INVERTER_LOSSES)})")
    loss = F.l1_loss(estimate, clean)
    if kind == "band":
        loss = loss + (1.0 - identity_correlation(estimate, clean, band)).mean()
    return loss


def _stack(images: Sequence[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack([check_image(im, i) for i, im in enumerate(images)]).transpose(0, 3, 1, 2))


def train_inverter(captures: Sequence[np.ndarray], cleans: Sequence[np.ndarray], iters: int = 500,
                   batch_size: int = 8, crop: int = 64, lr: float = 2e-3, base: int = 16, seed: int = 0,
                   device: str = "cpu", depth: int = 2, loss: str = "l1") -> Inverter:
    """Train an :class:`Inverter` on fixed capture -> clean pairs (Adam, random aligned crops).

    The camera-owning attacker of the threat model uses :func:`train_camera_inverter` instead (fresh captures
    of its own faces every step); this form is for pairs only (e.g. a measured capture set).

    Args:
        captures, cleans: paired (H, W, 3) float32 images in [0, 1], all the same size; must come from images
            disjoint from those the attack is evaluated on.
        iters: optimiser steps; crop: training crop side [px] (multiple of 2 ** depth, <= image size).
        loss: one of :data:`INVERTER_LOSSES`.

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
    m = 2 ** depth
    crop = min(crop, h, w) // m * m
    if crop < m:
        raise ValueError(f"images of {h}x{w} are too small for the inverter")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = Inverter(base, depth).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in tqdm(range(iters), desc="inverter", leave=False, disable=iters < 50):
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=gen)
        top = torch.randint(0, h - crop + 1, (batch_size,), generator=gen)
        left = torch.randint(0, w - crop + 1, (batch_size,), generator=gen)
        xb = torch.stack([x[i, :, t:t + crop, l:l + crop] for i, t, l in zip(idx, top, left)]).to(device)
        yb = torch.stack([y[i, :, t:t + crop, l:l + crop] for i, t, l in zip(idx, top, left)]).to(device)
        loss_value = inverter_loss(net(xb), yb, loss)
        opt.zero_grad(set_to_none=True)
        loss_value.backward()
        opt.step()
    return net.eval()


def augment_faces(images: torch.Tensor, generator: torch.Generator, max_shift: int = 4) -> torch.Tensor:
    """Attacker-side augmentation of clean faces: random horizontal flip, integer shift (edge-replicated) and
    brightness / contrast jitter (x 0.8-1.2, +-0.05).

    Args:
        images: (B, 3, H, W) in [0, 1].

    Returns:
        (B, 3, H, W) in [0, 1].
    """
    b = images.shape[0]
    dev = images.device
    flip = (torch.rand(b, generator=generator) < 0.5).to(dev)
    out = torch.where(flip[:, None, None, None], images.flip(-1), images)
    if max_shift > 0:
        shifts = torch.randint(-max_shift, max_shift + 1, (b, 2), generator=generator)
        padded = F.pad(out, [max_shift] * 4, mode="replicate")
        h, w = images.shape[-2:]
        out = torch.stack([padded[i, :, max_shift + int(dy):max_shift + int(dy) + h,
                                  max_shift + int(dx):max_shift + int(dx) + w] for i, (dy, dx) in enumerate(shifts)])
    gain = (0.8 + 0.4 * torch.rand(b, 1, 1, 1, generator=generator)).to(dev)
    offset = (0.1 * torch.rand(b, 1, 1, 1, generator=generator) - 0.05).to(dev)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return ((out - mean) * gain + mean + offset).clamp(0.0, 1.0)


def capture_with(camera: nn.Module, images: torch.Tensor, generator: torch.Generator | None = None,
                 psf: torch.Tensor | None = None) -> torch.Tensor:
    """``camera(images)`` with sensor noise from ``generator``; a precomputed ``psf`` (C, h, w) is passed to cameras
    that take one (optics.camera.Camera), so a lens PSF is not recomputed per batch."""
    if psf is not None:
        return camera(images, psf=psf, generator=generator)
    return camera(images, generator=generator)


def train_camera_inverter(camera: nn.Module, cleans: torch.Tensor, iters: int = 3000, batch_size: int = 8,
                          base: int = 32, depth: int = 3, lr: float = 1e-3, loss: str = "band", augment: bool = True,
                          seed: int = 0, device: str | torch.device = "cpu",
                          log_every: int = 0) -> Inverter:
    """The camera-owning attacker's inverter: trained on fresh captures of its OWN faces, made every step.

    Threat model: the attacker owns (or has measured) the camera, so it can image any number of its public faces
    with fresh sensor noise. Each step draws a batch of ``cleans``, augments it (:func:`augment_faces`),
    captures it through ``camera`` (no gradient into the camera) and takes an Adam step on
    :func:`inverter_loss`; the learning rate follows a cosine decay to 1 % (converges within ``iters``).

    Args:
        camera: module ``forward(images, generator=...)`` (and ``psf()`` for an optics.camera.Camera) imaging
            (B, 3, H, W) in [0, 1] to captures of the same size.
        cleans: (N, 3, H, W) in [0, 1], the attacker's faces (disjoint from the evaluated people).
        iters, batch_size, lr: optimisation budget.
        base, depth: :class:`Inverter` size (H, W must be multiples of 2 ** depth).
        loss: one of :data:`INVERTER_LOSSES`.

    Returns:
        the trained Inverter in eval mode on ``device``.
    """
    from tqdm import tqdm

    if cleans.ndim != 4 or cleans.shape[1] != 3 or cleans.shape[0] < 1:
        raise ValueError(f"attacker faces must be (N, 3, H, W) with N >= 1, got {tuple(cleans.shape)}")
    h, w = cleans.shape[-2:]
    if h % 2 ** depth or w % 2 ** depth:
        raise ValueError(f"attacker faces of {h}x{w} px: sides must be multiples of {2 ** depth} (inverter depth "
                         f"{depth})")
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator(device=device).manual_seed(seed + 1)
    torch.manual_seed(seed)
    net = Inverter(base, depth).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, iters), eta_min=lr * 0.01)
    camera = camera.to(device)
    psf = None
    if hasattr(camera, "psf"):
        with torch.no_grad():
            psf = camera.psf().detach()
    net.train()
    for it in tqdm(range(iters), desc="inverter (attacker)", leave=False, disable=iters < 50):
        idx = torch.randint(0, cleans.shape[0], (min(batch_size, cleans.shape[0]),), generator=gen)
        clean = cleans[idx].to(device)
        if augment:
            clean = augment_faces(clean, gen)
        with torch.no_grad():
            cap = capture_with(camera, clean, noise_gen, psf).clamp(0.0, 1.0)
        value = inverter_loss(net(cap), clean, loss)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        sched.step()
        if log_every and (it + 1) % log_every == 0:
            log.info("inverter step %d/%d: loss %.4f", it + 1, iters, float(value))
    return net.eval()


@torch.no_grad()
def invert(net: Inverter, captures: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Apply a trained inverter to (H, W, 3) captures (edge-padded to a multiple of 4 and cropped back)."""
    device = next(net.parameters()).device
    out = []
    for i, cap in enumerate(captures):
        t = torch.from_numpy(check_image(cap, i).transpose(2, 0, 1).copy())[None].to(device)
        h, w = t.shape[-2:]
        m = getattr(net, "multiple", 4)
        t = F.pad(t, (0, (-w) % m, 0, (-h) % m), mode="replicate")
        out.append(net(t)[0, :, :h, :w].permute(1, 2, 0).cpu().numpy().astype(np.float32))
    return out
