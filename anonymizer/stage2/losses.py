"""Stage II losses as plain functions. Weights are explicit arguments, never the whole args object.

Image arguments are (B, 3, H, W) in [0, 1]; styles (B, style_dim); heatmaps (B, K, H, W) in [0, 1].
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["adversarial_loss", "r1_penalty", "style_reconstruction_loss", "diversity_loss", "ds_weight",
           "cycle_loss", "heatmap_consistency_loss", "capture_consistency_loss"]


def adversarial_loss(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Non-saturating GAN loss: binary cross entropy of ``logits`` (B,) against the constant ``target`` (1 real,
    0 fake). Returns a scalar."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(target)))


def r1_penalty(d_out: torch.Tensor, x_in: torch.Tensor) -> torch.Tensor:
    """R1 zero-centred gradient penalty (Mescheder et al. 2018): ``0.5 * E_x ||d D(x) / d x||^2``.

    Args:
        d_out: (B,) discriminator logits on real images, computed from ``x_in``.
        x_in: (B, C, H, W) real images with ``requires_grad=True``.

    Returns:
        Scalar, differentiable (``create_graph=True``) so that its gradient reaches D's weights.
    """
    if not x_in.requires_grad:
        raise ValueError("r1_penalty: x_in must require grad (call x.requires_grad_() before D)")
    wide = torch.promote_types(d_out.dtype, torch.float32)  # bf16 under AMP -> float32; float64 stays float64
    (grad,) = torch.autograd.grad(d_out.to(wide).sum(), x_in, create_graph=True)
    return 0.5 * grad.to(wide).pow(2).reshape(len(grad), -1).sum(1).mean()


def style_reconstruction_loss(style_pred: torch.Tensor, style_target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error between E(G(., s)) and s; both (B, style_dim). Scalar."""
    return (style_pred - style_target).abs().mean()


def diversity_loss(fake_a: torch.Tensor, fake_b: torch.Tensor) -> torch.Tensor:
    """Diversity-sensitive term: mean |G(., s1) - G(., s2)| (to be *maximised*: the generator minimises
    ``-lambda_ds * diversity_loss``). Scalar >= 0."""
    return (fake_a - fake_b).abs().mean()


def ds_weight(lambda_ds: float, step: int, ds_iter: int) -> float:
    """Weight of the diversity term at ``step`` (0-based count of finished iterations): decays linearly from
    ``lambda_ds`` to 0 over ``ds_iter`` iterations, as StarGAN-v2. Closed form, so resuming is exact."""
    if ds_iter <= 0:
        return 0.0
    return max(0.0, lambda_ds * (1.0 - step / ds_iter))


def cycle_loss(camera: Callable[[torch.Tensor], torch.Tensor], generator: Callable[..., torch.Tensor],
               fake: torch.Tensor, heatmap: torch.Tensor, style_source: torch.Tensor,
               real: torch.Tensor) -> torch.Tensor:
    """Cycle / privacy-consistency loss through the camera.

    The generator never sees a clean face, so StarGAN-v2's cycle ``G(G(x, s_ref), s_src) = x`` becomes a cycle
    *through the optics*: the generated face is imaged by the same (frozen) camera, and the generator, given that
    capture, the source heatmap and the *source's own* style ``s_src = E(x, y_src)``, must give back the source
    face::

        fake = G(camera(x), h, s_ref);   x_rec = G(camera(fake), h, s_src);   loss = |x_rec - x|_1

    This holds only if the capture of ``fake`` keeps the geometry (pose, layout, expression) that ``camera(x)``
    carried while the appearance comes from the style alone: it penalises identity that the generator could
    otherwise smuggle through the capture, and geometry that it could drop. Gradients flow through the frozen
    camera into both generator calls.

    Args:
        camera: frozen differentiable camera, (B, 3, H, W) in [0, 1] -> same.
        generator: G(capture, heatmap, style).
        fake: (B, 3, H, W), G's output for the source.
        heatmap: (B, K, H, W) in [0, 1], heatmap of the source capture.
        style_source: (B, style_dim), style code of the source face.
        real: (B, 3, H, W) in [0, 1], the source face.

    Returns:
        Scalar L1 error.
    """
    recon = generator(camera(fake), heatmap, style_source)
    return (recon - real).abs().mean()


def heatmap_consistency_loss(camera: Callable[[torch.Tensor], torch.Tensor],
                             regressor: Callable[[torch.Tensor], torch.Tensor], fake: torch.Tensor,
                             heatmap_target: torch.Tensor) -> torch.Tensor:
    """Heatmap consistency WITH gradient: ``heatmap_loss(R(camera(fake)), h_src)`` (Stage I's relative error).

    The Stage I regressor R applied to the camera's image of the generated face must predict the source
    heatmap. Camera and R are frozen (their parameters have ``requires_grad=False``) but this function does not
    detach anything, so the gradient reaches the generator (the reference computed it under ``no_grad``, which
    trains nothing).

    Args:
        camera: (B, 3, H, W) in [0, 1] -> capture (B, 3, H, W) in [0, 1].
        regressor: capture -> (B, K, H, W) heatmap.
        fake: (B, 3, H, W), generated faces.
        heatmap_target: (B, K, H, W) in [0, 1], the source heatmap (detached by the caller).

    Returns:
        Scalar >= 0.
    """
    from anonymizer.stage1.heatmap import heatmap_loss

    pred = regressor(camera(fake))
    if pred.shape != heatmap_target.shape:
        raise ValueError(f"heatmap_consistency_loss: regressor gives {tuple(pred.shape)}, "
                         f"target is {tuple(heatmap_target.shape)}")
    # Stage I's relative foreground-weighted error: O(1) (all-zero prediction = 1) whatever K, sigma or size; a
    # plain MSE over 68 mostly-empty channels is ~1e-4 and trains nothing
    return heatmap_loss(pred.float(), heatmap_target.float())


def capture_consistency_loss(camera: Callable[[torch.Tensor], torch.Tensor], fake: torch.Tensor,
                             capture: torch.Tensor) -> torch.Tensor:
    """Optional geometry term ``|camera(fake) - capture|_1`` (B, 3, H, W) in [0, 1] -> scalar.

    Not used by the default training loop: it asks the fake to reproduce the source's blurred appearance too
    (colours, low-frequency identity cues), which works against de-identification. Kept for ablations.
    """
    return (camera(fake) - capture).abs().mean()
