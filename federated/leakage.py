"""The leakage attack of an honest-but-curious server: gradient inversion of what it receives.

Attack (Geiping et al. 2020, "Inverting Gradients -- How easy is it to break privacy in federated
learning?"): optimise dummy images x (and their unknown landmark labels) so that the update the client's
training would produce on them points the way the observed update points,

    min_x,l   1 - cos( u(x, l), u_obs ) + tv_weight * TV(x),      x = sigmoid(z) in [0, 1]

where the cosine runs over the whole parameter vector of the lens and the heatmap regressor (wire units, see
federated.params). The attacker knows the global model, the Stage I objective and the local optimiser: a
client's first Adam step from a fresh state is ``-lr g / (|g| + eps)``, i.e. the *sign* of its gradient g, so
``u(x, l)`` is a smooth sign of the gradient on the dummy batch, ``g / (|g| + eps_rel mean|g|)`` (``adam_aware``;
off: the raw gradient, the attack as published). Captures are simulated without sensor noise (the attacker's
expected capture). Labels start from the mean landmarks of public faces and are optimised with the images.

(a) plain FedAvg: ``u_obs`` is one client's update, the batch size that of one local step. (b) SecAgg+: the
server only holds the aggregate of N >= 3 clients' updates; the attacker inverts it as the update of the union
of their batches (N x B dummy images) and is scored on the target client's B images with the best assignment.

Scores: PSNR and SSIM (skimage.metrics) of each true image against its assigned reconstruction (Hungarian
assignment on the MSE), and dlib re-identification (metrics.identity) of the reconstructions against a gallery
of clean originals.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from federated.params import federated_modules

log = logging.getLogger(__name__)


@dataclass
class InversionConfig:
    """Attack settings.

    Attributes:
        iters: Adam iterations on the dummy images.
        lr: Adam learning rate on the image logits (cosine-decayed to 0).
        tv_weight: weight of the total-variation prior (mean absolute neighbour difference).
        adam_aware: match the smooth sign of the dummy gradient (what one Adam step sends), else the raw
            gradient.
        eps_rel: smoothing of the sign, relative to the mean |gradient| of each tensor.
        optimise_labels: optimise the landmark labels too (else they stay at the prior).
        seed: seed of the dummy initialisation.
        init_std: std of the initial image logits (0 = mid-grey; the attack starts at the grey baseline).
    """
    iters: int = 200
    lr: float = 0.1
    tv_weight: float = 0.05
    adam_aware: bool = True
    eps_rel: float = 0.1
    optimise_labels: bool = True
    seed: int = 0
    init_std: float = 0.1


def _matched_params(trainer) -> tuple[list[torch.nn.Parameter], list[int], list[float]]:
    """Parameters of the lens and regressor, their index in federated.params order and their wire scale."""
    params, index, scales = [], [], []
    i = 0
    for name, module in federated_modules(trainer).items():
        named = dict(module.named_parameters())
        for key, tensor in module.state_dict().items():
            if not torch.is_floating_point(tensor):
                continue
            if name in ("lens", "regressor") and key in named:
                params.append(named[key])
                index.append(i)
                scales.append(float(module.config.wave_height) if name == "lens" else 1.0)
            i += 1
    return params, index, scales


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of horizontal and vertical neighbours of (B, C, H, W) images."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def data_loss(trainer, images: torch.Tensor, landmarks: torch.Tensor, found: torch.Tensor) -> torch.Tensor:
    """The image-dependent part of the Stage I loss (heatmap + coordinate terms of ``Stage1Trainer.losses``) on
    noise-free captures, twice differentiable: the PSF is expanded per image so that the convolution takes
    ``fft_convolve``'s autograd path (the packed path has exact first derivatives only).

    Args:
        images: (B, 3, S, S) in [0, 1]; landmarks: (B, K, 2) [px]; found: (B,) bool.
    """
    from anonymizer.stage1.heatmap import heatmap_loss, landmark_nme, landmarks_to_heatmaps, soft_argmax

    cfg = trainer.cfg
    psf = trainer.capture_psf()
    if psf is None:
        capture = trainer.camera(images, noise=False)
    else:
        capture = trainer.camera(images, noise=False, psf=psf.expand(images.shape[0], *psf.shape))
    pred = trainer.regressor(capture)
    target = landmarks_to_heatmaps(landmarks, cfg.img_size, cfg.sigma, cfg.heatmap_mode)
    total = heatmap_loss(pred, target, found)
    if cfg.heatmap_mode == "landmarks":
        nme = landmark_nme(soft_argmax(pred), landmarks)
        total = total + cfg.lambda_coord * torch.where(found, nme, torch.zeros_like(nme)).sum() / found.sum().clamp_min(1)
    return total


def _constant_gradient(trainer, params, images, landmarks, found) -> list[torch.Tensor]:
    """Gradient of the terms of the full Stage I loss that :func:`data_loss` leaves out (the PSF's privacy and
    buildability terms, which do not depend on the images; an adversarial term, when present, is frozen at
    the initial dummy batch), as ``grad(trainer.losses) - grad(data_loss)``."""
    camera_noise = getattr(trainer.camera, "noise", None)
    if camera_noise is not None:
        trainer.camera.noise = False
    try:
        total, _, _ = trainer.losses(images, landmarks, found, torch.Generator(device=trainer.device).manual_seed(0))
        full = torch.autograd.grad(total, params, allow_unused=True)
    finally:
        if camera_noise is not None:
            trainer.camera.noise = camera_noise
    part = torch.autograd.grad(data_loss(trainer, images, landmarks, found), params, allow_unused=True)
    return [(f if f is not None else torch.zeros_like(p)) - (d if d is not None else torch.zeros_like(p))
            for f, d, p in zip(full, part, params)]


def _cosine_loss(trainer, params, const, scales, target, t_norm, x, lms, found, cfg: InversionConfig) -> torch.Tensor:
    """1 - cos(u(x, lms), target) over the matched parameters (see the module docstring)."""
    grads = torch.autograd.grad(data_loss(trainer, x, lms, found), params, create_graph=True, allow_unused=True)
    dots, g_sq = 0.0, 0.0
    for g, c, s, t in zip(grads, const, scales, target):
        g = (c if g is None else g + c) * s  # gradient per wire unit
        if cfg.adam_aware:
            g = g / (g.abs() + cfg.eps_rel * g.abs().mean().detach() + 1e-30)
        dots = dots + (g * t).sum()
        g_sq = g_sq + (g * g).sum()
    return 1 - dots / (torch.sqrt(g_sq) * t_norm + 1e-30)


def _target(trainer, observed_update):
    params, index, scales = _matched_params(trainer)
    target = [-torch.as_tensor(np.asarray(observed_update[i]), dtype=torch.float32, device=trainer.device)
              for i in index]
    t_norm = torch.sqrt(sum((t * t).sum() for t in target))
    if float(t_norm) == 0:
        raise ValueError("the observed update is zero: nothing to invert")
    return params, scales, target, t_norm


def matching_loss(trainer, observed_update: Sequence[np.ndarray], images: torch.Tensor, landmarks: torch.Tensor,
                  cfg: InversionConfig | None = None) -> float:
    """The attack's gradient-matching loss (1 - cosine) at given images (B, 3, S, S) in [0, 1] and labels
    (B, K, 2) [px]: a diagnostic of how well the objective identifies the true batch (its value at the truth vs
    at the attack's result)."""
    cfg = cfg or InversionConfig()
    params, scales, target, t_norm = _target(trainer, observed_update)
    found = torch.ones(images.shape[0], dtype=torch.bool, device=trainer.device)
    const = _constant_gradient(trainer, params, images, landmarks, found)
    x = images.detach().to(trainer.device).requires_grad_(True)
    return float(_cosine_loss(trainer, params, const, scales, target, t_norm, x, landmarks, found, cfg).detach())


def gradient_inversion(trainer, observed_update: Sequence[np.ndarray], num_images: int,
                       landmark_prior: np.ndarray, cfg: InversionConfig | None = None,
                       init_image: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Reconstruct a client's batch from an observed update.

    Args:
        trainer: a Stage I trainer holding the global model the update was computed from (the server's).
        observed_update: wire-unit update, one array per tensor of federated.params (client or aggregate).
        num_images: B, dummy images to optimise.
        landmark_prior: (K, 2) [px] mean landmarks (the labels' initialisation).
        cfg: :class:`InversionConfig`.
        init_image: optional (S, S, 3) in [0, 1] start of every dummy (e.g. the mean of public faces; default
            mid-grey).

    Returns:
        (images (B, S, S, 3) float32 in [0, 1], {"final_cosine_loss", "final_tv"}).
    """
    cfg = cfg or InversionConfig()
    device = trainer.device
    size = trainer.cfg.img_size
    params, scales, target, t_norm = _target(trainer, observed_update)
    gen = torch.Generator(device="cpu").manual_seed(int(cfg.seed))
    z = cfg.init_std * torch.randn(num_images, 3, size, size, generator=gen)
    if init_image is not None:  # e.g. the mean of public faces: logit of it plus the noise
        prior_img = torch.as_tensor(np.asarray(init_image, np.float32)).permute(2, 0, 1).clamp(0.02, 0.98)
        z = z + torch.logit(prior_img)[None]
    z = z.to(device).requires_grad_(True)
    prior = torch.as_tensor(np.asarray(landmark_prior, np.float32), device=device)
    lms = prior.expand(num_images, -1, -1).clone().requires_grad_(cfg.optimise_labels)
    found = torch.ones(num_images, dtype=torch.bool, device=device)
    opt = torch.optim.Adam([z] + ([lms] if cfg.optimise_labels else []), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, cfg.iters))
    const = _constant_gradient(trainer, params, torch.sigmoid(z).detach(), lms.detach(), found)
    trainer.regressor.train()
    rec_loss = tv = torch.zeros(())
    try:
        for _ in range(cfg.iters):
            x = torch.sigmoid(z)
            rec_loss = _cosine_loss(trainer, params, const, scales, target, t_norm, x, lms, found, cfg)
            tv = total_variation(x)
            loss = rec_loss + cfg.tv_weight * tv
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                lms.clamp_(0, size - 1)
    finally:
        for p in params:
            p.grad = None
    images = torch.sigmoid(z).detach().permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)
    return images, {"final_cosine_loss": float(rec_loss.detach()), "final_tv": float(tv.detach())}


def match_images(recon: np.ndarray, truth: np.ndarray) -> list[int]:
    """For each true image, the index of its reconstruction (Hungarian assignment on the MSE; needs
    len(recon) >= len(truth))."""
    from scipy.optimize import linear_sum_assignment

    cost = ((truth[:, None] - recon[None]) ** 2).reshape(len(truth), len(recon), -1).mean(-1)
    rows, cols = linear_sum_assignment(cost)
    out = [0] * len(truth)
    for r, c in zip(rows, cols):
        out[r] = int(c)
    return out


def image_scores(recon: Sequence[np.ndarray], truth: Sequence[np.ndarray]) -> dict[str, float]:
    """Mean PSNR [dB] and SSIM of paired (S, S, 3) images in [0, 1]."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    psnr = [peak_signal_noise_ratio(t, np.clip(r, 0, 1), data_range=1.0) for r, t in zip(recon, truth)]
    ssim = [structural_similarity(t, np.clip(r, 0, 1), channel_axis=-1, data_range=1.0) for r, t in zip(recon, truth)]
    return {"psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim)), "psnr_per_image": [float(v) for v in psnr]}


def score_attack(recon: np.ndarray, truth: np.ndarray, truth_gallery_ids: Sequence[int], gallery: np.ndarray,
                 embedder) -> dict:
    """PSNR / SSIM and dlib re-identification of reconstructions of a client's images.

    Args:
        recon: (R, S, S, 3) reconstructions (R >= T); truth: (T, S, S, 3) the client's true images.
        truth_gallery_ids: index in ``gallery`` of each true image's identity.
        gallery: (G, 128) dlib embeddings of clean originals (one per identity).
        embedder: metrics.identity.FaceEmbedder.
    """
    from metrics.identity import reid_metrics

    assign = match_images(recon, truth)
    paired = recon[assign]
    scores = image_scores(list(paired), list(truth))
    probes, found = embedder.embed(list(paired), return_found=True)
    scores.update(reid_metrics(probes, gallery, list(truth_gallery_ids), list(range(len(gallery))), found))
    scores["reid_chance"] = 1.0 / len(gallery)
    return scores
