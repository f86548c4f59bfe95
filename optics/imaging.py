"""Image formation: linear (zero-padded) FFT convolution of images with PSFs, and depth planes.

Circular convolution (an unpadded FFT product) wraps light from one edge onto the opposite edge; here the image
is zero-padded by exactly the PSF half-support needed to make the kept ('same') region equal to the linear
convolution, on a fast FFT size. The PSF is first cropped (symmetrically about its centre) to its support, so a
compact PSF in a large window costs little more than a circular convolution.

A PSF shared by the batch (C, h, w) takes the packed path: two real images a, b travel as one complex image
a + i b through one complex FFT (the PSF is real, so the real / imaginary parts of the product's inverse are a * k
and b * k), and the gradient with respect to the PSF, sum_b corr(image_b, grad_b), is the real part of
ifft2(sum conj(FFT(a + i b)) FFT(g_a + i g_b)) (the cross terms are purely imaginary). This halves the number
of FFTs against real transforms of single images and skips the copies of the c2r transform.
"""
from __future__ import annotations

import threading

import scipy.fft
import torch


def fast_size(n: int) -> int:
    """Smallest size >= n whose real FFT is fast (factors 2, 3, 5, ...)."""
    return int(scipy.fft.next_fast_len(int(n), real=True))


def psf_support_radius(psf: torch.Tensor, tol: float = 0.0) -> tuple[int, int]:
    """Half-size (ry, rx) [px] of the smallest window centred at (h//2, w//2) that holds every PSF value with
    |psf| > tol * max|psf| (over all leading dims).

    Args:
        psf: (..., h, w). tol: relative threshold (0 keeps every non-zero value: exact).
    """
    h, w = psf.shape[-2:]
    a = psf.detach().abs().reshape(-1, h, w).amax(dim=0)
    mask = a > tol * a.max() if tol > 0 else a > 0
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    if rows.numel() == 0:
        return 0, 0
    ry = int(torch.maximum((rows.min() - h // 2).abs(), (rows.max() - h // 2).abs()))
    rx = int(torch.maximum((cols.min() - w // 2).abs(), (cols.max() - w // 2).abs()))
    return ry, rx


def crop_psf(psf: torch.Tensor, tol: float = 0.0) -> torch.Tensor:
    """Crop (..., h, w) symmetrically about (h//2, w//2) to its support (see :func:`psf_support_radius`); the
    centre of the result is again at (h'//2, w'//2). Differentiable in the kept values."""
    h, w = psf.shape[-2:]
    ry, rx = psf_support_radius(psf, tol)
    cy, cx = h // 2, w // 2
    y0, y1 = max(cy - ry, 0), min(cy + ry + 1, h)
    x0, x1 = max(cx - rx, 0), min(cx + rx + 1, w)
    if (y1 - y0, x1 - x0) == (h, w):
        return psf
    out = psf[..., y0:y1, x0:x1]
    # keep the centre on (h'//2, w'//2) when the window was clipped on one side only (even-sized input)
    pad_t, pad_b = ry - (cy - y0), ry - (y1 - 1 - cy)
    pad_l, pad_r = rx - (cx - x0), rx - (x1 - 1 - cx)
    if pad_t or pad_b or pad_l or pad_r:
        out = torch.nn.functional.pad(out, (pad_l, pad_r, pad_t, pad_b))
    return out


def fft_convolve(image: torch.Tensor, psf: torch.Tensor, crop_tol: float = 0.0) -> torch.Tensor:
    """Linear 2-D convolution of each image channel with its PSF ('same' size), via real FFTs.

    out[b, c, i, j] = sum_{u, v} psf[c, u, v] * image[b, c, i - (u - h//2), j - (v - w//2)], zero outside the
    image. Differentiable in both arguments; device / dtype follow ``image``.

    Args:
        image: (B, C, H, W) (any real values, e.g. radiance in [0, 1]).
        psf: (C, h, w), (1, h, w) (shared by all channels) or (B, C, h, w); the PSF centre is (h//2, w//2).
        crop_tol: PSF values below crop_tol * max are treated as zero when cropping to the support (0: exact).

    Returns:
        (B, C, H, W) same dtype as ``image``.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be (B, C, H, W), got shape {tuple(image.shape)}")
    if psf.ndim not in (3, 4):
        raise ValueError(f"psf must be (C, h, w) or (B, C, h, w), got shape {tuple(psf.shape)}")
    B, C, H, W = image.shape
    if psf.shape[-3] not in (1, C) or (psf.ndim == 4 and psf.shape[0] not in (1, B)):
        raise ValueError(f"psf shape {tuple(psf.shape)} does not match image shape {tuple(image.shape)}")
    psf = crop_psf(psf.to(image.dtype), crop_tol)
    h, w = psf.shape[-2:]
    cy, cx = h // 2, w // 2
    mh = fast_size(H + max(h - 1 - cy, cy))
    mw = fast_size(W + max(w - 1 - cx, cx))
    if psf.ndim == 3 or psf.shape[0] == 1:
        return _PackedConvolution.apply(image, psf.reshape(psf.shape[-3:]), (mh, mw))
    fi = torch.fft.rfft2(image, s=(mh, mw))
    fk = torch.fft.rfft2(psf, s=(mh, mw))
    out = torch.fft.irfft2(fi * fk, s=(mh, mw))
    return out[..., cy:cy + H, cx:cx + W]


_COMPLEX = {torch.float64: torch.complex128, torch.float32: torch.complex64, torch.float16: torch.complex32}


class _Workspace(threading.local):
    """Per-thread CPU buffers for the FFT temporaries that never outlive one forward or one backward call.

    On the CPU a fresh image-sized buffer costs a page fault per 4 KiB on first touch (a 4 x 3 x 384 x 384
    complex frame: 3.5 k faults); the frames also keep their zero border, so only the image window is rewritten.
    At most ``MAX_KEYS`` buffers are kept, least recently used dropped first (the face-deid batch uses 3 of
    14 MB and one of 3.5 MB); clear() frees them.
    """

    MAX_KEYS = 8

    def __init__(self) -> None:
        self.buffers: dict[tuple, torch.Tensor] = {}

    def get(self, key: tuple, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A CPU tensor for (key, shape, dtype): zeros when first made, afterwards as its last user left it."""
        full = (key, shape, dtype)
        buf = self.buffers.pop(full, None)
        if buf is None:
            while len(self.buffers) >= self.MAX_KEYS:  # least recently used first
                self.buffers.pop(next(iter(self.buffers)))
            with torch.inference_mode(False):  # usable inside and outside inference mode
                buf = torch.zeros(shape, dtype=dtype)
        self.buffers[full] = buf  # (re)inserted last: the most recently used
        return buf

    def clear(self) -> None:
        self.buffers.clear()


workspace = _Workspace()
"""The packed convolution's reusable CPU buffers (this thread's); ``workspace.clear()`` releases them."""


def _packed_frame(x: torch.Tensor, size: tuple[int, int], oy: int, ox: int, swap: bool = False) -> torch.Tensor:
    """(B, C, H, W) real -> (ceil(B/2), C, mh, mw) complex, zero except the window [oy, oy + H) x [ox, ox + W),
    which holds image b as the real and image b + ceil(B/2) as the imaginary part (zero for an odd batch's last);
    ``swap``: the other way round (b + ceil(B/2) real, b imaginary).

    The image pairs go straight into the window (no intermediate complex image, no separate pad). On the CPU the
    frame is a workspace buffer (valid until the next frame of the same geometry is asked for).
    """
    B, C, H, W = x.shape
    half = (B + 1) // 2
    shape = (half, C) + tuple(size)
    if x.device.type == "cpu":  # the border was zeroed once, and only this window is ever written
        z = workspace.get(("frame", oy, ox, H, W), shape, _COMPLEX[x.dtype])
    else:
        z = torch.zeros(shape, dtype=_COMPLEX[x.dtype], device=x.device)
    win = z[..., oy:oy + H, ox:ox + W]
    pairs = B - half
    first, second = (x[half:], x[:pairs]) if swap else (x[:pairs], x[half:])
    torch.complex(first, second, out=win[:pairs])  # one pass, straight into the strided window
    if pairs < half and swap:
        torch.complex(torch.zeros_like(x[pairs:half]), x[pairs:half], out=win[pairs:])
    elif pairs < half:
        win[pairs:].copy_(x[pairs:half])  # a real source: imaginary part zero
    return z


def _scratch(like: torch.Tensor, name: str) -> torch.Tensor:
    """A buffer shaped like ``like`` for a temporary: the CPU workspace's, else a fresh one."""
    if like.device.type == "cpu":
        return workspace.get((name,), tuple(like.shape), like.dtype)
    return torch.empty_like(like)


def _unpack_window(z: torch.Tensor, batch: int, oy: int, ox: int, h: int, w: int,
                   swap: bool = False) -> torch.Tensor:
    """The real / imaginary parts of z[..., oy:oy + h, ox:ox + w] as images 0..half-1 / half..batch-1
    (``swap``: imaginary / real): (batch, C, h, w) real, contiguous (one strided copy per half)."""
    half = z.shape[0]
    win = z[..., oy:oy + h, ox:ox + w]
    first, second = (win.imag, win.real) if swap else (win.real, win.imag)
    out = torch.empty((batch,) + tuple(win.shape[1:]), dtype=win.real.dtype, device=z.device)
    out[:half] = first
    out[half:] = second[:batch - half]
    return out


def _otf(psf: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, h, w) real PSF -> its (C, mh, mw) spectrum scaled by 1 / (mh mw) (norm="forward"), the PSF at the
    frame origin. On the CPU the PSF is copied into a workspace frame (zero border kept) instead of being padded
    and converted to complex on every call."""
    h, w = psf.shape[-2:]
    if psf.device.type != "cpu" or h > size[0] or w > size[1]:  # a PSF taller than the grid: fft2 crops it
        return torch.fft.fft2(psf, s=size, norm="forward")
    frame = workspace.get(("psf", h, w), (psf.shape[0],) + tuple(size), _COMPLEX[psf.dtype])
    frame[..., :h, :w].copy_(psf)  # a real source: imaginary part zero
    return torch.fft.fft2(frame, norm="forward")


class _PackedConvolution(torch.autograd.Function):
    """Linear 'same' convolution of (B, C, H, W) images with one real (C or 1, h, w) PSF on an (mh, mw) FFT
    grid, two images per complex FFT (see the module docstring); exact first derivatives in both inputs.

    Cost: three image-sized complex FFTs per forward + backward (the padded images, the product's inverse, the
    padded output gradient), the OTF once per call; the OTF carries the 1 / (mh mw) of the inverse transform
    (norm="forward"), so the image-sized inverse needs no scaling pass. On the CPU the zero-padded frames and the
    spectrum products reuse workspace buffers (the FFT outputs stay fresh: torch's FFT with out= computes into a
    temporary and copies).
    """

    @staticmethod
    def forward(ctx, image: torch.Tensor, psf: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        B, C, H, W = image.shape
        h, w = psf.shape[-2:]
        cy, cx = h // 2, w // 2
        fz = torch.fft.fft2(_packed_frame(image, size, 0, 0))
        otf = _otf(psf, size)
        prod = torch.mul(fz, otf, out=_scratch(fz, "product"))
        out = torch.fft.ifft2(prod, norm="forward")  # unscaled: the exact product (an FFT out= only adds a copy)
        ctx.save_for_backward(fz if ctx.needs_input_grad[1] else None,
                              otf if ctx.needs_input_grad[0] else None)
        ctx.geometry = (B, C, H, W, h, w, size)
        ctx.psf_channels = psf.shape[0]
        return _unpack_window(out, B, cy, cx, H, W)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        fz, otf = ctx.saved_tensors
        B, C, H, W, h, w, size = ctx.geometry
        cy, cx = h // 2, w // 2
        # conj(G) without a conjugate: for g = a + i b (the packed gradient pairs), conj(g) = -i (b + i a) and
        # conj(FFT(g)) = IFFT_unscaled(conj(g)), so conj(G) = -i Q with Q = IFFT_unscaled(b + i a)
        q = torch.fft.ifft2(_packed_frame(grad.contiguous(), size, cy, cx, swap=True), norm="forward")
        grad_image = grad_psf = None
        if otf is not None:  # corr(g, k) = IFFT(G conj(K)) = conj(FFT(conj(G) K)) / N = i conj(FFT(Q otf)):
            # real part Im FFT(Q otf), imaginary part Re FFT(Q otf), on the window [0, H) x [0, W)
            spec = torch.mul(q, otf, out=_scratch(q, "product"))
            grad_image = _unpack_window(torch.fft.fft2(spec), B, 0, 0, H, W, swap=True)
        if fz is not None:  # sum_b corr(image_b, g_b) = Re IFFT(sum conj(Z) G) = Re FFT(sum Z conj(G)) / N
            # = Im FFT(sum Z Q) / N: a plain complex product-sum (with conj(Z) it took ~1.6x as long)
            spec = fz[0] * q[0]
            for i in range(1, fz.shape[0]):
                spec.addcmul_(fz[i], q[i])
            grad_psf = torch.fft.fft2(spec, norm="forward").imag[..., :h, :w]
            if grad_psf.shape[-2:] != (h, w):  # PSF larger than the FFT grid: its outer rows only meet zeros
                grad_psf = torch.nn.functional.pad(grad_psf, (0, w - grad_psf.shape[-1], 0, h - grad_psf.shape[-2]))
            grad_psf = grad_psf.sum(dim=0, keepdim=True) if ctx.psf_channels == 1 else grad_psf
        return grad_image, grad_psf, None


def image_depth_planes(planes: torch.Tensor, psfs: torch.Tensor, masks: torch.Tensor | None = None,
                       crop_tol: float = 0.0) -> torch.Tensor:
    """Layered-depth image formation: each depth plane is blurred by its own PSF and the results add up.

    Args:
        planes: (B, D, C, H, W) radiance of each depth layer (e.g. the same image for every layer).
        psfs: (D, C, h, w) PSF of each depth (Lens.psf_stack).
        masks: optional (B, D, 1, H, W) in [0, 1] selecting where each layer is (e.g. from a depth map; the
            masks of one pixel should sum to 1). Occlusion at layer boundaries is not modelled.

    Returns:
        (B, C, H, W) sum over d of fft_convolve(planes[:, d] * masks[:, d], psfs[d]).
    """
    if planes.ndim != 5:
        raise ValueError(f"planes must be (B, D, C, H, W), got shape {tuple(planes.shape)}")
    B, D, C, H, W = planes.shape
    if psfs.ndim != 4 or psfs.shape[0] != D:
        raise ValueError(f"psfs must be (D={D}, C, h, w), got shape {tuple(psfs.shape)}")
    if masks is not None:
        planes = planes * masks
    if psfs.shape[1] == 1 and C > 1:
        psfs = psfs.expand(D, C, *psfs.shape[-2:])
    out = fft_convolve(planes.reshape(B, D * C, H, W), psfs.reshape(D * C, *psfs.shape[-2:]), crop_tol)
    return out.reshape(B, D, C, H, W).sum(dim=1)


def depth_masks(depth: torch.Tensor, plane_depths: list[float]) -> torch.Tensor:
    """Soft layer masks from a depth map by linear interpolation in inverse depth (diopters).

    Args:
        depth: (B, 1, H, W) object distance per pixel [m] (> 0, inf allowed).
        plane_depths: D plane distances [m], sorted in either direction.

    Returns:
        (B, D, 1, H, W) in [0, 1], summing to 1 over D.
    """
    inv = 1.0 / depth
    planes = torch.tensor([1.0 / d for d in plane_depths], dtype=depth.dtype, device=depth.device)
    order = torch.argsort(planes)
    ps = planes[order]
    x = inv.clamp(ps[0], ps[-1])
    weights = torch.zeros(depth.shape[0], len(plane_depths), *depth.shape[1:], dtype=depth.dtype,
                          device=depth.device)
    if len(plane_depths) == 1:
        return weights + 1
    for i in range(len(ps) - 1):
        lo, hi = ps[i], ps[i + 1]
        t = ((x - lo) / (hi - lo)).clamp(0, 1)
        inside = (x >= lo) & ((x < hi) | (i == len(ps) - 2))
        weights[:, order[i]] += torch.where(inside, 1 - t, torch.zeros_like(t))
        weights[:, order[i + 1]] += torch.where(inside, t, torch.zeros_like(t))
    return weights
