"""Stage II networks: a StarGAN-v2-style generator that turns a camera capture + face heatmap + style into a face.

Architecture facts follow StarGAN-v2 (Choi et al., CVPR 2020): residual down-sampling encoder with instance
norm, AdaIN residual decoder driven by a style code, a mapping network (latent -> per-domain style), a style
encoder (image -> per-domain style) and a multi-task discriminator (one real/fake logit per domain).

Differences for the privacy-preserving setting (Stage II of the paper):

* The generator never sees the clean face: its input is the capture ``y`` of the privacy lens, concatenated with
  the heatmap ``h`` that the Stage I regressor predicts from ``y`` (heatmap *conditioning*).
* The high-resolution skip paths (encoder features at img_size/8, /4 and /2 added to the decoder through a
  Laplacian high-pass filter, weight ``w_hpf``) are *gated* by heatmap masks, as in the reference: the coarsest
  skip uses mask 0 (jaw + brows), the finer ones mask 1 (eyes + nose + mouth). Heatmaps with a channel count
  other than 2 are reduced to these two masks by :func:`heatmap_masks`.

All images are (B, 3, H, W) in [0, 1] (the camera's range); the networks map to [-1, 1] internally.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ResBlk", "AdaIN", "AdainResBlk", "HighPass", "Generator", "MappingNetwork", "StyleEncoder",
    "Discriminator", "Nets", "build_model", "heatmap_masks", "default_base_dim", "count_parameters",
    "MODEL_KEYS",
]

# kwargs of build_model that define the architecture (stored in checkpoints)
MODEL_KEYS = ("img_size", "num_domains", "latent_dim", "style_dim", "hidden_dim", "w_hpf", "base_dim",
              "max_conv_dim", "heatmap_channels", "reference_input")

# iBUG 68-point groups: jaw 0-16, brows 17-26 (outline); nose 27-35, eyes 36-47, mouth 48-67 (inner features)
_IBUG_OUTLINE = list(range(0, 27))
_IBUG_INNER = list(range(27, 68))


def default_base_dim(img_size: int) -> int:
    """StarGAN-v2's first conv width: 2**14 // img_size (64 at 256 px)."""
    return 2 ** 14 // img_size


def _check_img_size(img_size: int) -> None:
    if img_size < 32 or img_size & (img_size - 1):
        raise ValueError(f"img_size: must be a power of two >= 32 (64 / 128 / 256), got {img_size}")


def avg_pool2x(x: torch.Tensor) -> torch.Tensor:
    """``F.avg_pool2d(x, 2)`` for even H, W as four strided adds: equal within float rounding, 3x faster on the
    CPU in the forward pass (torch's CPU average pool is the generator's slowest non-conv op), the same
    forward + backward cost."""
    if x.shape[-1] % 2 or x.shape[-2] % 2:
        return F.avg_pool2d(x, 2)
    return x[..., ::2, ::2].add(x[..., 1::2, ::2]).add_(x[..., ::2, 1::2]).add_(x[..., 1::2, 1::2]).mul_(0.25)


class ResBlk(nn.Module):
    """Pre-activation residual block with optional instance norm and 2x average-pool down-sampling."""

    def __init__(self, dim_in: int, dim_out: int, normalize: bool = False, downsample: bool = False):
        super().__init__()
        self.normalize = normalize
        self.downsample = downsample
        self.conv1 = nn.Conv2d(dim_in, dim_in, 3, 1, 1)
        self.conv2 = nn.Conv2d(dim_in, dim_out, 3, 1, 1)
        if normalize:
            self.norm1 = nn.InstanceNorm2d(dim_in, affine=True)
            self.norm2 = nn.InstanceNorm2d(dim_in, affine=True)
        self.conv1x1 = nn.Conv2d(dim_in, dim_out, 1, 1, 0, bias=False) if dim_in != dim_out else None

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv1x1 is not None:
            x = self.conv1x1(x)
        return avg_pool2x(x) if self.downsample else x

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            x = self.norm1(x)
        x = self.conv1(F.leaky_relu(x, 0.2))
        if self.downsample:
            x = avg_pool2x(x)
        if self.normalize:
            x = self.norm2(x)
        return self.conv2(F.leaky_relu(x, 0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, dim_in, H, W) -> (B, dim_out, H', W') with H' = H/2 when down-sampling."""
        return (self._shortcut(x) + self._residual(x)) / math.sqrt(2.0)


class AdaIN(nn.Module):
    """Adaptive instance norm: ``(1 + gamma(s)) * IN(x) + beta(s)``."""

    def __init__(self, style_dim: int, num_features: int):
        super().__init__()
        self.norm = nn.InstanceNorm2d(num_features, affine=False)
        self.fc = nn.Linear(style_dim, num_features * 2)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W); s: (B, style_dim) -> (B, C, H, W)."""
        gamma, beta = self.fc(s)[:, :, None, None].chunk(2, dim=1)
        return (1 + gamma) * self.norm(x) + beta


class AdainResBlk(nn.Module):
    """Residual block with AdaIN style injection and optional 2x nearest up-sampling.

    With ``w_hpf > 0`` the identity shortcut is dropped (the heatmap-gated skip path takes its role), as in
    StarGAN-v2.
    """

    def __init__(self, dim_in: int, dim_out: int, style_dim: int, w_hpf: float = 0.0, upsample: bool = False):
        super().__init__()
        self.w_hpf = w_hpf
        self.upsample = upsample
        self.conv1 = nn.Conv2d(dim_in, dim_out, 3, 1, 1)
        self.conv2 = nn.Conv2d(dim_out, dim_out, 3, 1, 1)
        self.norm1 = AdaIN(style_dim, dim_in)
        self.norm2 = AdaIN(style_dim, dim_out)
        # the shortcut is only used without skip paths; no unused (DDP-breaking) weights otherwise
        learned = dim_in != dim_out and self.w_hpf == 0
        self.conv1x1 = nn.Conv2d(dim_in, dim_out, 1, 1, 0, bias=False) if learned else None

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv1x1(x) if self.conv1x1 is not None else x

    def _residual(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.norm1(x, s), 0.2)
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.conv1(x)
        return self.conv2(F.leaky_relu(self.norm2(x, s), 0.2))

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """x: (B, dim_in, H, W); s: (B, style_dim) -> (B, dim_out, H', W')."""
        out = self._residual(x, s)
        if self.w_hpf == 0:
            out = (out + self._shortcut(x)) / math.sqrt(2.0)
        return out


class HighPass(nn.Module):
    """Depth-wise 3x3 Laplacian high-pass filter scaled by 1 / w_hpf (fixed buffer)."""

    def __init__(self, w_hpf: float):
        super().__init__()
        kernel = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, 8.0, -1.0], [-1.0, -1.0, -1.0]]) / w_hpf
        self.register_buffer("kernel", kernel, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        c = x.shape[1]
        k = self.kernel.to(dtype=x.dtype)[None, None].expand(c, 1, 3, 3)
        return F.conv2d(x, k, padding=1, groups=c)


def heatmap_masks(heatmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduce a heatmap stack to the reference's two skip-gating masks.

    Args:
        heatmap: (B, K, H, W) in [0, 1]. K = 2: the reference's grouped masks (0: jaw + brows, 1: eyes + nose +
            mouth); K = 68: iBUG landmarks (grouped by index); any other K: both masks are the channel maximum.

    Returns:
        (outline, inner): each (B, 1, H, W) in [0, 1].
    """
    if heatmap.ndim != 4:
        raise ValueError(f"heatmap: expected (B, K, H, W), got shape {tuple(heatmap.shape)}")
    k = heatmap.shape[1]
    if k == 2:
        return heatmap[:, 0:1], heatmap[:, 1:2]
    if k == 68:
        return (heatmap[:, _IBUG_OUTLINE].amax(1, keepdim=True), heatmap[:, _IBUG_INNER].amax(1, keepdim=True))
    m = heatmap.amax(1, keepdim=True)
    return m, m


class Generator(nn.Module):
    """G(capture, heatmap, style[, warped reference, mask]) -> face.

    With ``reference_input`` (the default of :func:`build_model`) the reference face, warped onto the source
    landmarks by :func:`anonymizer.stage2.warp.piecewise_affine_warp`, and its validity mask enter as 4 more input
    channels, and the output is a blend that a small network learns quickly::

        rgb   = capture + residual                     (the decoder's first 3 output channels / 2)
        alpha = sigmoid(4th channel + 2) * mask         (starts at 0.88 where the warp is valid)
        out   = alpha * warped + (1 - alpha) * rgb

    so the reference's appearance reaches the output spatially, aligned to the source geometry, from the first
    step; the network learns the blending, the face border, hair / background and what the warp cannot fill
    (mouth interior, folds). The style (AdaIN, from the StyleEncoder on the reference) and the heatmap-gated
    skips are kept as in StarGAN-v2.

    Args:
        img_size: 64 / 128 / 256 (any power of two >= 32).
        style_dim: length of the style code.
        base_dim: width of the first conv (StarGAN-v2: 2**14 // img_size).
        max_conv_dim: cap on the widths.
        w_hpf: weight of the heatmap-gated high-pass skip paths (0 disables them and the gating).
        heatmap_channels: K, channels of the Stage I heatmap concatenated to the capture.
        reference_input: take the warped reference + mask (see above); False: the plain StarGAN-v2 output.
    """

    def __init__(self, img_size: int = 256, style_dim: int = 64, base_dim: int | None = None,
                 max_conv_dim: int = 512, w_hpf: float = 1.0, heatmap_channels: int = 2,
                 reference_input: bool = False):
        super().__init__()
        _check_img_size(img_size)
        dim_in = base_dim or default_base_dim(img_size)
        self.img_size = img_size
        self.w_hpf = float(w_hpf)
        self.heatmap_channels = heatmap_channels
        self.reference_input = bool(reference_input)
        extra = 4 if self.reference_input else 0
        self.from_rgb = nn.Conv2d(3 + heatmap_channels + extra, dim_in, 3, 1, 1)
        self.encode = nn.ModuleList()
        self.decode = nn.ModuleList()
        self.to_rgb = nn.Sequential(nn.InstanceNorm2d(dim_in, affine=True), nn.LeakyReLU(0.2),
                                    nn.Conv2d(dim_in, 3 + (1 if self.reference_input else 0), 1, 1, 0))
        repeat = int(math.log2(img_size)) - 4 + (1 if self.w_hpf > 0 else 0)
        dim_out = dim_in
        for _ in range(repeat):
            dim_out = min(dim_in * 2, max_conv_dim)
            self.encode.append(ResBlk(dim_in, dim_out, normalize=True, downsample=True))
            self.decode.insert(0, AdainResBlk(dim_out, dim_in, style_dim, w_hpf=self.w_hpf, upsample=True))
            dim_in = dim_out
        for _ in range(2):
            self.encode.append(ResBlk(dim_out, dim_out, normalize=True))
            self.decode.insert(0, AdainResBlk(dim_out, dim_out, style_dim, w_hpf=self.w_hpf))
        # skip resolutions: img_size/8, /4, /2 where above the bottleneck; the coarsest uses the outline mask
        bottleneck = img_size // 2 ** repeat
        self.skip_sizes = tuple(s for s in (img_size // 8, img_size // 4, img_size // 2) if s > bottleneck)
        self.hpf = HighPass(self.w_hpf) if self.w_hpf > 0 else None
        if self.reference_input:  # start as "warped reference blended into the capture": zero residual and alpha
            nn.init.zeros_(self.to_rgb[-1].weight)
            nn.init.zeros_(self.to_rgb[-1].bias)

    def forward(self, capture: torch.Tensor, heatmap: torch.Tensor, style: torch.Tensor,
                warped: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Synthesise a face.

        Args:
            capture: (B, 3, H, W) in [0, 1], the privacy camera's image, H = W = img_size.
            heatmap: (B, K, H', W') in [0, 1], resized to H x W if needed.
            style: (B, style_dim).
            warped: (B, 3, H, W) in [0, 1], the reference warped onto the source landmarks (0 outside ``mask``);
                only with ``reference_input`` (None: no reference, all-zero mask).
            mask: (B, 1, H, W) in [0, 1], where ``warped`` is valid.

        Returns:
            (B, 3, H, W), approximately in [0, 1] (not clamped, so gradients never vanish).
        """
        b, c, h, w = capture.shape
        if c != 3 or h != self.img_size or w != self.img_size:
            raise ValueError(f"capture: expected (B, 3, {self.img_size}, {self.img_size}), got {tuple(capture.shape)}")
        if heatmap.shape[1] != self.heatmap_channels:
            raise ValueError(f"heatmap: expected {self.heatmap_channels} channels, got {heatmap.shape[1]}")
        if heatmap.shape[-2:] != capture.shape[-2:]:
            heatmap = F.interpolate(heatmap, size=(h, w), mode="bilinear", align_corners=False)
        heatmap = heatmap.to(capture.dtype)
        inputs = [capture * 2 - 1, heatmap]
        if self.reference_input:
            if warped is None:
                warped = torch.zeros_like(capture)
                mask = torch.zeros_like(capture[:, :1])
            elif mask is None or warped.shape != capture.shape or mask.shape != (b, 1, h, w):
                raise ValueError(f"warped / mask: expected {tuple(capture.shape)} and ({b}, 1, {h}, {w})")
            warped, mask = warped.to(capture.dtype), mask.to(capture.dtype)
            inputs += [warped * 2 - 1, mask]
        elif warped is not None:
            raise ValueError("this generator was built without reference_input: it takes no warped reference")
        x = self.from_rgb(torch.cat(inputs, dim=1))
        cache: dict[int, torch.Tensor] = {}
        for block in self.encode:
            if self.hpf is not None and block.downsample and x.shape[-1] in self.skip_sizes:
                cache[x.shape[-1]] = x
            x = block(x)
        if self.hpf is not None:
            outline, inner = heatmap_masks(heatmap)
        for block in self.decode:
            x = block(x, style)
            size = x.shape[-1]
            if self.hpf is not None and block.upsample and size in cache:
                gate_mask = outline if size == self.skip_sizes[0] else inner
                gate = F.interpolate(gate_mask, size=(size, size), mode="bilinear", align_corners=False)
                x = x + self.hpf(gate * cache[size])
        out = self.to_rgb(x)
        if not self.reference_input:
            return (out + 1) / 2
        rgb = capture + out[:, :3] / 2
        alpha = torch.sigmoid(out[:, 3:4] + 2.0) * mask
        return alpha * warped + (1 - alpha) * rgb


class MappingNetwork(nn.Module):
    """F(z, y): latent (B, latent_dim) + domain (B,) -> style (B, style_dim); one output head per domain."""

    def __init__(self, latent_dim: int = 16, style_dim: int = 64, num_domains: int = 2, hidden_dim: int = 512):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(latent_dim, hidden_dim), nn.ReLU()]
        for _ in range(3):
            layers += [nn.Linear(hidden_dim, hidden_dim), nn.ReLU()]
        self.shared = nn.Sequential(*layers)
        self.unshared = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim),
                          nn.ReLU(), nn.Linear(hidden_dim, hidden_dim), nn.ReLU(),
                          nn.Linear(hidden_dim, style_dim))
            for _ in range(num_domains))

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """z: (B, latent_dim); y: (B,) int64 in [0, num_domains) -> (B, style_dim)."""
        h = self.shared(z)
        out = torch.stack([head(h) for head in self.unshared], dim=1)  # (B, D, style_dim)
        return out[torch.arange(len(y), device=y.device), y]


def _trunk(img_size: int, base_dim: int, max_conv_dim: int) -> tuple[nn.Sequential, int]:
    """Shared conv trunk of StyleEncoder and Discriminator: (B, 3, S, S) -> (B, dim, 1, 1)."""
    _check_img_size(img_size)
    dim_in = base_dim
    blocks: list[nn.Module] = [nn.Conv2d(3, dim_in, 3, 1, 1)]
    dim_out = dim_in
    for _ in range(int(math.log2(img_size)) - 2):  # down to 4 x 4
        dim_out = min(dim_in * 2, max_conv_dim)
        blocks.append(ResBlk(dim_in, dim_out, downsample=True))
        dim_in = dim_out
    blocks += [nn.LeakyReLU(0.2), nn.Conv2d(dim_out, dim_out, 4, 1, 0), nn.LeakyReLU(0.2)]
    return nn.Sequential(*blocks), dim_out


class StyleEncoder(nn.Module):
    """E(x, y): reference image (B, 3, S, S) in [0, 1] + domain (B,) -> style (B, style_dim)."""

    def __init__(self, img_size: int = 256, style_dim: int = 64, num_domains: int = 2, base_dim: int | None = None,
                 max_conv_dim: int = 512):
        super().__init__()
        self.shared, dim = _trunk(img_size, base_dim or default_base_dim(img_size), max_conv_dim)
        self.unshared = nn.ModuleList(nn.Linear(dim, style_dim) for _ in range(num_domains))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.shared(x * 2 - 1).flatten(1)
        out = torch.stack([head(h) for head in self.unshared], dim=1)
        return out[torch.arange(len(y), device=y.device), y]


class Discriminator(nn.Module):
    """D(x, y): image (B, 3, S, S) in [0, 1] + domain (B,) -> real/fake logit (B,) of that domain."""

    def __init__(self, img_size: int = 256, num_domains: int = 2, base_dim: int | None = None,
                 max_conv_dim: int = 512):
        super().__init__()
        trunk, dim = _trunk(img_size, base_dim or default_base_dim(img_size), max_conv_dim)
        self.main = nn.Sequential(*trunk, nn.Conv2d(dim, num_domains, 1, 1, 0))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.main(x * 2 - 1).flatten(1)  # (B, num_domains)
        return out[torch.arange(len(y), device=y.device), y]


@dataclass
class Nets:
    """The Stage II networks (``discriminator`` is None in the EMA copy)."""

    generator: Generator
    mapping_network: MappingNetwork
    style_encoder: StyleEncoder
    discriminator: Discriminator | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def items(self) -> list[tuple[str, nn.Module]]:
        """(name, module) pairs of the networks that exist."""
        names = ("generator", "mapping_network", "style_encoder", "discriminator")
        return [(n, getattr(self, n)) for n in names if getattr(self, n) is not None]

    def to(self, *args: Any, **kwargs: Any) -> "Nets":
        for _, m in self.items():
            m.to(*args, **kwargs)
        return self

    def train(self, mode: bool = True) -> "Nets":
        for _, m in self.items():
            m.train(mode)
        return self

    def eval(self) -> "Nets":
        return self.train(False)

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {n: m.state_dict() for n, m in self.items()}

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        """Load every network present here; a missing entry raises KeyError naming it."""
        for n, m in self.items():
            if n not in state:
                raise KeyError(f"checkpoint has no weights for '{n}'")
            m.load_state_dict(state[n])


def build_model(img_size: int = 256, num_domains: int = 2, latent_dim: int = 16, style_dim: int = 64,
                hidden_dim: int = 512, w_hpf: float = 1.0, base_dim: int | None = None, max_conv_dim: int = 512,
                heatmap_channels: int = 2, reference_input: bool = False, **_: Any) -> tuple[Nets, Nets]:
    """Build the networks and their EMA copies (G, F, E; no D).

    Extra keyword arguments are ignored, so ``build_model(**vars(args))`` works.

    Returns:
        (nets, nets_ema): ``nets_ema`` holds independent deep copies of G, F and E.
    """
    if num_domains < 1:
        raise ValueError(f"num_domains: must be >= 1, got {num_domains}")
    base_dim = base_dim or default_base_dim(img_size)
    config = dict(img_size=img_size, num_domains=num_domains, latent_dim=latent_dim, style_dim=style_dim,
                  hidden_dim=hidden_dim, w_hpf=float(w_hpf), base_dim=base_dim, max_conv_dim=max_conv_dim,
                  heatmap_channels=heatmap_channels, reference_input=bool(reference_input))
    generator = Generator(img_size, style_dim, base_dim, max_conv_dim, w_hpf, heatmap_channels, reference_input)
    mapping = MappingNetwork(latent_dim, style_dim, num_domains, hidden_dim)
    style_encoder = StyleEncoder(img_size, style_dim, num_domains, base_dim, max_conv_dim)
    discriminator = Discriminator(img_size, num_domains, base_dim, max_conv_dim)
    nets = Nets(generator, mapping, style_encoder, discriminator, config)
    nets_ema = Nets(copy.deepcopy(generator), copy.deepcopy(mapping), copy.deepcopy(style_encoder), None,
                    dict(config))
    for _, m in nets_ema.items():
        m.requires_grad_(False)
    return nets, nets_ema


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in module.parameters())
