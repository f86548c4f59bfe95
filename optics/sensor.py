"""Sensor model: photo-electrons, Poisson-Gaussian noise, full-well saturation and ADC quantisation.

Signal chain for an irradiance image x in [0, 1] (1 = white):
    electrons   mu = x * photons_at_white * qe                  [e-]
    noise       e = mu + sqrt(mu + read_noise^2) * eps,  eps ~ N(0, 1)   (reparameterised, differentiable in mu)
                (or exact Poisson with a straight-through gradient)
    saturation  e = clamp(e, 0, full_well)
    ADC         digital = round(e / (photons_at_white * qe) * (2^bits - 1)) / (2^bits - 1), clamped to [0, 1]
                with a straight-through gradient (1 inside the range, 0 where clipped).

A colour sensor (the default) records each channel (the lens' wavelength bands R, G, B) in its own pixels: an
ideal colour filter array, one noise draw per channel. A monochrome sensor (``SensorConfig.mono_response``: one
relative response per band) has no colour filter: each pixel integrates every band, x = sum_c w_c x_c (weights
normalised to sum 1, so white stays 1), and the one noisy, quantised value is written to every output channel
(the capture keeps its (B, C, H, W) shape for every consumer). The light a colour filter would have absorbed is
not credited (same photons at white): conservative for privacy, since less noise only helps an attacker.
"""
from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import Optional, Sequence, Union

import torch
from torch import nn

aten = torch.ops.aten

NOISE_CHUNK = 1 << 18
"""Elements per independently seeded chunk of a large CPU noise draw (see :func:`standard_normal`)."""
_pool: ThreadPoolExecutor | None = None
_pool_key: tuple[int, int] | None = None
_pool_lock = threading.Lock()


def _noise_pool(threads: int) -> ThreadPoolExecutor:
    global _pool, _pool_key
    with _pool_lock:
        if _pool_key != (os.getpid(), threads):  # a forked child cannot use its parent's threads
            _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="noise")
            _pool_key = (os.getpid(), threads)
        return _pool


def _check_per_item(generators: Sequence, shape: Sequence[int]) -> None:
    if not shape or len(generators) != shape[0]:
        raise ValueError(f"one noise generator per item: got {len(generators)} generators for a batch of shape "
                         f"{tuple(shape)}")


Generators = Optional[Union[torch.Generator, Sequence[torch.Generator]]]
"""A noise generator for the whole batch, or one per item of the batch (see :func:`standard_normal`)."""


def standard_normal(shape: Sequence[int], generator: Generators = None,
                    dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """N(0, 1) samples of ``shape``, like torch.randn, drawn in parallel on the CPU.

    torch's CPU Mersenne twister draws serially (one 8 x 3 x 256 x 256 draw costs about half a circular FFT
    convolution of the batch). A CPU draw of at least 4 * NOISE_CHUNK elements is split into NOISE_CHUNK-element
    chunks, each from its own generator seeded by one 63-bit draw of ``generator`` (the default generator when
    None), filled on min(torch.get_num_threads(), chunks) threads. The values depend on the seed only, never on
    the thread count. Smaller draws and other devices are torch.randn itself.

    ``generator`` may also be a sequence of one generator per item of the leading dim (shape[0]): item b is
    drawn from its own generator alone, so a batch split anywhere (worker threads, frame by frame) draws the same
    values as the whole batch.

    Returns:
        ``shape`` tensor of ``dtype`` on ``device``.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    if isinstance(generator, (list, tuple)):
        _check_per_item(generator, shape)
        out = torch.empty(tuple(shape), dtype=dtype, device=device)
        for b, g in enumerate(generator):
            out[b] = standard_normal(shape[1:], g, dtype, device)
        return out
    n = math.prod(shape)
    if device.type != "cpu" or n < 4 * NOISE_CHUNK or not dtype.is_floating_point:
        return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)
    chunks = -(-n // NOISE_CHUNK)
    seeds = torch.randint(0, 2 ** 63 - 1, (chunks,), generator=generator, dtype=torch.int64).tolist()
    out = torch.empty(n, dtype=dtype)

    def fill(i: int) -> None:
        out[i * NOISE_CHUNK:(i + 1) * NOISE_CHUNK].normal_(generator=torch.Generator().manual_seed(seeds[i]))

    threads = min(torch.get_num_threads(), chunks)
    if threads > 1:
        list(_noise_pool(threads).map(fill, range(chunks)))
    else:
        for i in range(chunks):
            fill(i)
    return out.view(tuple(shape))


@dataclass
class SensorConfig:
    """Sensor parameters.

    Attributes:
        photons_at_white: mean photons per pixel for input 1.0 [photons].
        qe: quantum efficiency in (0, 1] [e-/photon].
        full_well: full-well capacity [e-].
        read_noise: read-noise standard deviation [e-].
        bit_depth: ADC bits; None = no quantisation.
        exact_poisson: sample exact Poisson shot noise (straight-through gradient) instead of the Gaussian
            approximation.
        mono_response: None = colour sensor; a list of per-band relative responses (one per channel of the
            irradiance, e.g. MONO_RESPONSE for R, G, B) = monochrome sensor (see the module docstring).
    """
    photons_at_white: float = 20000.0
    qe: float = 0.5
    full_well: float = 20000.0
    read_noise: float = 5.0
    bit_depth: Optional[int] = 8
    exact_poisson: bool = False
    mono_response: Optional[list] = None

    def __post_init__(self) -> None:
        if self.mono_response is not None:
            w = self.mono_response
            if (not isinstance(w, (list, tuple)) or not w or
                    not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in w) or sum(w) <= 0):
                raise ValueError(f"sensor key 'mono_response' must be a list of finite responses >= 0 (one per "
                                 f"band, not all 0), got {w!r}")
            self.mono_response = [float(v) for v in w]
        for key in ("photons_at_white", "full_well"):
            if not getattr(self, key) > 0:
                raise ValueError(f"sensor key '{key}' must be > 0, got {getattr(self, key)!r}")
        if not 0 < self.qe <= 1:
            raise ValueError(f"sensor key 'qe' must be in (0, 1], got {self.qe!r}")
        if not self.read_noise >= 0:
            raise ValueError(f"sensor key 'read_noise' must be >= 0 [e-], got {self.read_noise!r}")
        if self.bit_depth is not None and not (isinstance(self.bit_depth, int) and 1 <= self.bit_depth <= 24):
            raise ValueError(f"sensor key 'bit_depth' must be an integer in [1, 24] or None, got "
                             f"{self.bit_depth!r}")

    @property
    def electrons_at_white(self) -> float:
        """Mean photo-electrons for input 1.0 [e-]; the ADC full scale."""
        return self.photons_at_white * self.qe

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict | None, source: str = "checkpoint") -> "SensorConfig":
        """The sensor a checkpoint records under its "sensor" key (older checkpoints, without one: the default
        colour sensor)."""
        entry = (state or {}).get("sensor")
        if entry is None:
            return cls()
        if not isinstance(entry, dict):
            raise ValueError(f"{source}: 'sensor' must be a dict of SensorConfig keys, got {type(entry).__name__}")
        unknown = sorted(set(entry) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"{source}: unknown sensor keys {unknown}")
        return cls(**entry)


def sensor_config(kind: str | None, base: "SensorConfig | None" = None) -> "SensorConfig":
    """``base`` (default SensorConfig()) as a colour (``kind`` "color") or monochrome ("mono": MONO_RESPONSE)
    sensor; ``kind`` None keeps ``base``."""
    base = base or SensorConfig()
    if kind is None:
        return base
    if kind not in ("color", "mono"):
        raise ValueError(f"sensor must be 'color' or 'mono', got {kind!r}")
    return replace(base, mono_response=list(MONO_RESPONSE) if kind == "mono" else None)


MONO_RESPONSE = [0.60, 0.75, 0.65]
"""Relative response of a generic monochrome silicon CMOS sensor (no colour filter, microlenses) at the presets'
bands 640 / 550 / 440 nm (R, G, B): quantum efficiency read off typical published curves of front- and
back-illuminated mono sensors, which peak near 500-550 nm. Normalised to sum 1 where used."""


def mono_mix(x: torch.Tensor, response: Sequence[float], dim: int) -> torch.Tensor:
    """What a monochrome pixel integrates: the bands of ``x`` along ``dim`` weighted by ``response`` normalised to
    sum 1 (white stays 1), that dim kept with size 1. Used for captures, PSFs and greyed photos alike."""
    w = torch.tensor(list(response), dtype=x.dtype, device=x.device) / sum(response)
    shape = [1] * x.ndim
    shape[dim] = len(w)
    return (x * w.view(shape)).sum(dim, keepdim=True)


def quantize_ste(x: torch.Tensor, bits: int) -> torch.Tensor:
    """ADC quantisation of x in [0, 1] to 2^bits levels with a straight-through gradient.

    Args:
        x: any shape, nominal range [0, 1]; values outside are clipped (zero gradient there).
        bits: ADC bit depth.

    Returns:
        same shape, values k / (2^bits - 1); d out / d x = 1 inside [0, 1].
    """
    levels = float(2 ** int(bits) - 1)
    xc = x.clamp(0.0, 1.0)
    q = torch.round(xc * levels) / levels
    return xc + (q - xc).detach()


def poisson_gaussian_noise(electrons: torch.Tensor, read_noise: float, generator: Generators = None,
                           exact: bool = False) -> torch.Tensor:
    """Add shot (Poisson) and read (Gaussian) noise to a mean electron count.

    Args:
        electrons: (...) mean photo-electrons [e-] (>= 0).
        read_noise: read-noise standard deviation [e-].
        generator: optional torch.Generator (reproducible noise), or one per item of the leading dim.
        exact: exact Poisson samples (straight-through gradient d/d mu = 1) instead of the reparameterised
            Gaussian approximation N(mu, mu + read_noise^2) (exact mean and variance, differentiable in mu).

    Returns:
        (...) noisy electron counts [e-] (mean mu, variance mu + read_noise^2).
    """
    mu = electrons.clamp_min(0)
    eps = standard_normal(mu.shape, generator, mu.dtype, mu.device)
    if exact:
        if isinstance(generator, (list, tuple)):
            _check_per_item(generator, mu.shape)
            shot = torch.stack([torch.poisson(m, generator=g) for m, g in zip(mu.detach(), generator)])
        else:
            shot = torch.poisson(mu.detach(), generator=generator)
        return mu + (shot - mu).detach() + read_noise * eps
    return mu + torch.sqrt((mu + read_noise ** 2).clamp_min(1e-12)) * eps


class _GaussianCapture(torch.autograd.Function):
    """The whole sensor chain with the Gaussian shot-noise approximation in one pass (forward and backward).

    Same values and first derivative as electrons -> poisson_gaussian_noise -> clamp -> quantize_ste written as
    separate ops, computed in units of the white level (x, not x * E_white): with s = max(x, 0),
    sigma = sqrt(s / E_white + (read_noise / E_white)^2), the capture is clamp(s + sigma eps, 0, L) (L =
    min(full_well, E_white) / E_white), rounded to the ADC levels, and
    d out / d x = [x >= 0] (1 + eps / (2 E_white sigma)) [0 <= s + sigma eps <= L]. One saved tensor (the
    slope, written over the noise draw), about a dozen passes over the image (the op-by-op chain takes ~25).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: torch.Tensor, white: float, read_noise: float, full_well: float,
                levels: float | None) -> torch.Tensor:
        # few fresh allocations (on CPU each costs page faults): eps is our own draw and becomes the slope
        var_e = read_noise ** 2  # [e-^2]
        limit = min(full_well, white) / white  # clamp(e, 0, full_well) / white, clamped to [0, 1]
        s = x.clamp_min(0)
        sigma = torch.add(s, var_e / white).mul_(1.0 / white)  # (mu + var_e) / E^2, mu = s E [e-]
        flat = None
        if var_e < 1e-12:  # (almost) no read noise: the chain clamps mu + var_e >= 1e-12 e-^2
            flat = s < (1e-12 - var_e) / white if ctx.needs_input_grad[0] else None
            sigma.clamp_min_(1e-12 / white ** 2)
        sigma.sqrt_()
        e = s.addcmul_(sigma, eps)  # s is free from here on: the noisy signal overwrites it
        if ctx.needs_input_grad[0]:
            # d e / d x = 1 + eps / (2 E sigma), written over the draw
            slope = torch.addcdiv(eps.new_ones(()), eps, sigma, value=0.5 / white, out=eps)
            if flat is not None:  # where sigma is clamped it does not depend on x
                slope.masked_fill_(flat, 1.0)
            # zero where x < 0 or e outside [0, limit]: the ReLU / hardtanh backward kernels do each mask in one
            # pass, in place (bool masks from comparisons measured ~4x slower on CPU)
            tiny = torch.finfo(x.dtype).tiny  # "> -tiny" is ">= 0" (negative subnormals aside)
            top = _upper_edge(limit, x.dtype)
            aten.threshold_backward.grad_input(slope, x, -tiny, grad_input=slope)
            aten.hardtanh_backward.grad_input(slope, e, -tiny, top, grad_input=slope)  # kept: -tiny < e < top
            ctx.save_for_backward(slope)
        return _quantize_(e.clamp_(0.0, limit), levels)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (slope,) = ctx.saved_tensors
        return grad * slope, None, None, None, None, None


def _quantize_(t: torch.Tensor, levels: float | None) -> torch.Tensor:
    """In place: round ``t`` (white = 1) to ``levels`` ADC steps (no-op when levels is None)."""
    return t if levels is None else t.mul_(levels).round_().div_(levels)


def _upper_edge(limit: float, dtype: torch.dtype) -> float:
    """The next value above ``limit`` in ``dtype``: "< edge" is "<= limit"."""
    return float(torch.nextafter(torch.tensor(limit, dtype=dtype), torch.tensor(math.inf, dtype=dtype)))


class _CleanCapture(torch.autograd.Function):
    """The noise-free chain (full well, ADC with straight-through gradient) in one pass: out = q(clamp(x, 0, L)),
    d out / d x = [0 <= x <= L], L = min(full_well, E_white) / E_white; saves only the input (no mask tensor)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, limit: float, levels: float | None) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.limit = limit
        return _quantize_(x.clamp(0.0, limit), levels)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        tiny = torch.finfo(x.dtype).tiny
        return aten.hardtanh_backward(grad, x, -tiny, _upper_edge(ctx.limit, x.dtype)), None, None


class Sensor(nn.Module):
    """Differentiable sensor: irradiance in [0, 1] -> digital image in [0, 1] (see module docstring)."""

    def __init__(self, config: SensorConfig | None = None):
        super().__init__()
        self.config = config or SensorConfig()

    def electrons(self, irradiance: torch.Tensor) -> torch.Tensor:
        """Mean photo-electrons [e-] of an irradiance image (1 = white)."""
        return irradiance * self.config.electrons_at_white

    def forward(self, irradiance: torch.Tensor, noise: bool = True,
                generator: Generators = None) -> torch.Tensor:
        """Capture.

        Args:
            irradiance: (B, C, H, W) in [0, 1] (1 = white level).
            noise: add Poisson-Gaussian noise.
            generator: optional torch.Generator for the noise, or one per image (:func:`standard_normal`).

        Returns:
            (B, C, H, W) digital values in [0, 1].
        """
        w = self.config.mono_response
        if w is None:
            return self._chain(irradiance, noise, generator)
        if irradiance.ndim != 4 or irradiance.shape[1] != len(w):
            raise ValueError(f"a monochrome sensor with {len(w)} band responses needs (B, {len(w)}, H, W) "
                             f"irradiance, got shape {tuple(irradiance.shape)}")
        # one pixel integrates every band: one channel through the chain, written to every channel (a view)
        return self._chain(mono_mix(irradiance, w, dim=1), noise, generator).expand_as(irradiance)

    def _chain(self, irradiance: torch.Tensor, noise: bool, generator: Generators) -> torch.Tensor:
        """The per-channel signal chain of the module docstring (each channel its own pixels)."""
        cfg = self.config
        levels = None if cfg.bit_depth is None else float(2 ** int(cfg.bit_depth) - 1)
        if noise and not cfg.exact_poisson:
            eps = standard_normal(irradiance.shape, generator, irradiance.dtype, irradiance.device)
            return _GaussianCapture.apply(irradiance, eps, cfg.electrons_at_white, float(cfg.read_noise),
                                          float(cfg.full_well), levels)
        if not noise:
            return _CleanCapture.apply(irradiance, min(cfg.full_well, cfg.electrons_at_white) / cfg.electrons_at_white,
                                       levels)
        e = self.electrons(irradiance)
        if noise:
            e = poisson_gaussian_noise(e, cfg.read_noise, generator, cfg.exact_poisson)
        e = torch.clamp(e, 0.0, cfg.full_well)
        x = e / cfg.electrons_at_white
        if cfg.bit_depth is None:
            return x.clamp(0.0, 1.0)
        return quantize_ste(x, cfg.bit_depth)
