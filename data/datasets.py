"""Face image datasets: folder-per-domain (StarGAN-v2 / CelebA-HQ layout) and flat folders.

Layouts understood by :func:`scan`:

* folder per domain: ``root/<domain>/**/<image>`` (e.g. ``data/celeba_hq/train/{female,male}``); the domains
  are the sub-folders that contain images, sorted by name, label = index in that sorted list. Images lying
  directly in ``root`` next to domain folders are skipped and reported.
* flat: ``root/<image>`` only; one domain named :data:`FLAT_DOMAIN`, label 0.

Non-image files, corrupt images (truncated, empty, wrong content) are skipped and listed in the
:class:`ScanReport` (``.skipped``: ``[(path, reason)]``). Grayscale / RGBA / 16-bit images are converted to RGB by
:func:`data.images.read_image`. Splits are deterministic and stable: :func:`split_of` hashes the file name, so
adding or removing a file never moves another file to the other split.

Datasets:

* :class:`SourceDataset` -> ``(image (3, S, S) in [0, 1], label int, path str)``
* :class:`ReferenceDataset` -> ``(x_ref (3, S, S), x_ref2 (3, S, S), y_ref int)``, two images of one domain.
"""
from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from data.images import IMAGE_SUFFIXES, ImageReadError, read_image

log = logging.getLogger(__name__)

FLAT_DOMAIN = "all"
"""Domain name given to the images of a flat folder."""

VERIFY_MODES = ("decode", "header", "none")


# ----------------------------------------------------------------------------------------------------- scan
@dataclass
class ScanReport:
    """What :func:`scan` found in a folder.

    Attributes:
        root: the scanned folder.
        files: readable images, sorted by (domain, relative path).
        labels: domain label of each file (index into ``domains``).
        domains: domain names, sorted; ``[FLAT_DOMAIN]`` for a flat folder.
        skipped: ``[(path, reason)]`` of every file that is not used (non-image, unreadable, misplaced).
        layout: ``"domains"`` or ``"flat"``.
    """

    root: Path
    files: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    layout: str = "flat"

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def __len__(self) -> int:
        return len(self.files)

    def counts(self) -> dict[str, int]:
        """Number of usable images per domain name."""
        out = {d: 0 for d in self.domains}
        for lab in self.labels:
            out[self.domains[lab]] += 1
        return out

    def relative(self, path: Path) -> str:
        """``path`` relative to the root, as a POSIX string (the key used for splits and reports)."""
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return Path(path).name

    def to_dict(self) -> dict:
        """JSON-serialisable summary (counts + the skipped files with reasons)."""
        return {
            "root": str(self.root),
            "layout": self.layout,
            "domains": list(self.domains),
            "num_images": len(self.files),
            "per_domain": self.counts(),
            "num_skipped": self.num_skipped,
            "skipped": [{"file": self.relative(p), "reason": r} for p, r in self.skipped],
        }

    def summary(self) -> str:
        """One line for logs: images per domain and skipped files (names)."""
        text = f"{self.root}: {len(self.files)} images in {len(self.domains)} domain(s) {self.counts()}"
        if self.skipped:
            names = ", ".join(f"{self.relative(p)} ({r})" for p, r in self.skipped[:10])
            more = f" and {self.num_skipped - 10} more" if self.num_skipped > 10 else ""
            text += f"; skipped {self.num_skipped}: {names}{more}"
        return text

    def subset(self, keep: Sequence[bool]) -> "ScanReport":
        """A report with only the files where ``keep`` is true (same domains, same skipped list)."""
        if len(keep) != len(self.files):
            raise ValueError(f"subset mask has {len(keep)} entries for {len(self.files)} files")
        files = [f for f, k in zip(self.files, keep) if k]
        labels = [lab for lab, k in zip(self.labels, keep) if k]
        return ScanReport(self.root, files, labels, list(self.domains), list(self.skipped), self.layout)


def _check_image(path: Path, verify: str) -> str | None:
    """None if ``path`` is usable, else the reason it is not."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return f"not an image file (suffix {path.suffix or 'none'!r})"
    try:
        size = path.stat().st_size
    except OSError as err:
        return f"cannot stat ({err})"
    if size == 0:
        return "file is empty"
    if verify == "none":
        return None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if verify == "header":
                img.verify()
            else:
                # Full decode detects truncated files; JPEG draft mode decodes at reduced scale (fast) but still
                # reads the whole entropy-coded stream.
                if img.format == "JPEG":
                    img.draft("RGB", (64, 64))
                img.load()
                if min(img.size) < 1:
                    return f"empty image {img.size}"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        return f"not a readable image ({type(err).__name__}: {err})"
    return None


def find_domains(root: str | os.PathLike) -> list[str]:
    """Sorted names of the sub-folders of ``root`` that contain at least one image file (at any depth)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset folder does not exist")
    out = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if any(f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES for f in sub.rglob("*")):
            out.append(sub.name)
    return out


def scan(root: str | os.PathLike, verify: str = "decode", domains: Sequence[str] | None = None,
         num_threads: int = 2) -> ScanReport:
    """List the usable images of a flat or folder-per-domain dataset; report the others.

    Args:
        root: dataset folder.
        verify: ``"decode"`` decodes every image (detects truncated files; default), ``"header"`` checks the
            header only (fast, for very large sets), ``"none"`` trusts the suffix.
        domains: expected domain names (e.g. the training set's, so that validation labels match); a missing
            domain folder raises. ``None``: the sub-folders found.
        num_threads: threads used to verify files (PIL decodes without the GIL).

    Returns:
        :class:`ScanReport`.

    Raises:
        FileNotFoundError: ``root`` (or a requested domain folder) does not exist.
        ValueError: no usable image at all (the message names the folder and the skipped files).
    """
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset folder does not exist")
    found = find_domains(root)
    report = ScanReport(root=root)
    candidates: list[tuple[Path, int]] = []
    if domains is not None or found:
        names = sorted(domains) if domains is not None else found
        for name in names:
            if not (root / name).is_dir():
                raise FileNotFoundError(f"{root / name}: domain folder {name!r} does not exist")
        report.layout, report.domains = "domains", list(names)
        for lab, name in enumerate(names):
            files = sorted((p for p in (root / name).rglob("*") if p.is_file() and not p.name.startswith(".")),
                           key=lambda p: p.relative_to(root).as_posix())
            candidates += [(p, lab) for p in files]
        for p in sorted(root.iterdir()):
            if p.is_file() and not p.name.startswith("."):
                report.skipped.append((p, "outside the domain folders"))
    else:
        report.layout, report.domains = "flat", [FLAT_DOMAIN]
        files = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
        candidates = [(p, 0) for p in files]

    def check(item: tuple[Path, int]) -> str | None:
        return _check_image(item[0], verify)

    if len(candidates) > 64 and num_threads > 1 and verify != "none":
        from tqdm import tqdm

        with ThreadPoolExecutor(num_threads) as pool:
            reasons = list(tqdm(pool.map(check, candidates), total=len(candidates), desc=f"scan {root.name}",
                                leave=False, disable=len(candidates) < 1000))
    else:
        reasons = [check(c) for c in candidates]
    for (path, lab), reason in zip(candidates, reasons):
        if reason is None:
            report.files.append(path)
            report.labels.append(lab)
        else:
            report.skipped.append((path, reason))
    if report.skipped:
        log.warning("%s", report.summary())
    if not report.files:
        raise ValueError(f"{root}: no readable image found" +
                         (f" (skipped {report.num_skipped}: " +
                          ", ".join(report.relative(p) for p, _ in report.skipped[:10]) + ")"
                          if report.skipped else ""))
    return report


# --------------------------------------------------------------------------------------------------- splits
def split_key(name: str, salt: str = "") -> float:
    """Deterministic pseudo-uniform number in [0, 1) from a file name (SHA-1; independent of other files)."""
    digest = hashlib.sha1(f"{salt}{name}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def split_of(name: str, val_fraction: float = 0.1, salt: str = "") -> str:
    """``"val"`` if the hashed name falls below ``val_fraction``, else ``"train"``."""
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    return "val" if split_key(name, salt) < val_fraction else "train"


def split_files(names: Iterable[str | os.PathLike], val_fraction: float = 0.1,
                salt: str = "") -> tuple[list, list]:
    """Split file names / paths into (train, val) by hashed file name (the base name, not the folder).

    The decision for one file depends only on its name, so adding files never moves others. Input order is kept.
    """
    train, val = [], []
    for n in names:
        (val if split_of(Path(n).name, val_fraction, salt) == "val" else train).append(n)
    return train, val


def split_report(report: ScanReport, which: str, val_fraction: float = 0.1, salt: str = "") -> ScanReport:
    """The ``"train"`` or ``"val"`` part of a scanned folder (see :func:`split_files`)."""
    if which not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {which!r}")
    keep = [split_of(p.name, val_fraction, salt) == which for p in report.files]
    return report.subset(keep)


# ------------------------------------------------------------------------------------------------- transforms
def resize_center_crop(image: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """Resize so the shorter side is ``size`` (bilinear, antialiased), then crop the centre square.

    Args:
        image: (H, W, 3) array or (3, H, W) tensor in [0, 1].
        size: output side [px].

    Returns:
        (3, size, size) float32 in [0, 1].
    """
    if isinstance(image, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    else:
        t = image
    t = t.float()[None]
    h, w = t.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        if (nh, nw) != (h, w):
            t = F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        top, left = (nh - size) // 2, (nw - size) // 2
        t = t[..., top:top + size, left:left + size]
    return t[0].clamp(0.0, 1.0).contiguous()


def load_image(path: str | os.PathLike, size: int) -> torch.Tensor:
    """Read an image file (any mode, see :func:`data.images.read_image`) as (3, size, size) float32 in [0, 1]."""
    return resize_center_crop(read_image(path), size)


def random_augment(image: torch.Tensor, generator: torch.Generator | None = None, crop_prob: float = 0.5,
                   flip_prob: float = 0.5) -> torch.Tensor:
    """StarGAN-v2-style training augmentation: random resized crop (scale 0.8-1, ratio 0.9-1.1) + h-flip.

    Args:
        image: (3, S, S) in [0, 1].

    Returns:
        (3, S, S) in [0, 1].
    """
    size = image.shape[-1]
    u = torch.rand(5, generator=generator).tolist()
    if u[0] < crop_prob:
        area = (0.8 + 0.2 * u[1]) * size * size
        ratio = float(np.exp(np.log(0.9) + u[2] * np.log(1.1 / 0.9)))
        cw = int(min(size, round((area * ratio) ** 0.5)))
        ch = int(min(size, round((area / ratio) ** 0.5)))
        top = int(u[3] * (size - ch + 1)) if ch < size else 0
        left = int(u[4] * (size - cw + 1)) if cw < size else 0
        crop = image[:, top:top + ch, left:left + cw][None]
        image = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=True)[0].clamp(0.0, 1.0)
    if torch.rand(1, generator=generator) < flip_prob:
        image = image.flip(-1)
    return image


# --------------------------------------------------------------------------------------------------- datasets
class _ImageStore:
    """Loads (and optionally caches, as uint8) images at one size."""

    def __init__(self, files: Sequence[Path], labels: Sequence[int], img_size: int, cache: bool):
        self.files = list(files)
        self.labels = list(labels)
        self.img_size = int(img_size)
        self.cache = cache
        self._cache: dict[int, torch.Tensor] = {}
        self.failed: dict[int, str] = {}

    def get(self, index: int) -> tuple[torch.Tensor, int]:
        """``(image, j)``: image ``index`` (j = index), or, when that file fails to decode now (scanned with
        ``verify="header"`` / ``"none"``, or changed since), the next readable file j of the same domain; the
        failure is logged and recorded in ``failed``."""
        n = len(self.files)
        for k in range(n):
            j = (index + k) % n
            if self.labels[j] != self.labels[index] or j in self.failed:
                continue
            try:
                return self._get(j), j
            except ImageReadError as err:
                self.failed[j] = str(err)
                log.warning("skipping unreadable image (replaced by the next one of its domain): %s", err)
        raise ValueError(f"{self.files[index]}: no readable image left in its domain")

    def _get(self, index: int) -> torch.Tensor:
        if index in self._cache:
            return self._cache[index].float() / 255.0
        image = load_image(self.files[index], self.img_size)
        if self.cache:
            self._cache[index] = (image * 255.0 + 0.5).to(torch.uint8)
            return self._cache[index].float() / 255.0
        return image


def _as_report(root: str | os.PathLike | ScanReport, verify: str, domains: Sequence[str] | None) -> ScanReport:
    return root if isinstance(root, ScanReport) else scan(root, verify=verify, domains=domains)


class SourceDataset(Dataset):
    """Images of a flat or folder-per-domain dataset.

    Args:
        root: dataset folder or a :class:`ScanReport` (e.g. a split of one).
        img_size: output side S [px]; images are resized (shorter side) and centre-cropped.
        augment: random resized crop + horizontal flip (training).
        cache: keep decoded images in memory (uint8); useful for small sets such as the embedded one.
        verify: see :func:`scan`.
        domains: expected domain names (see :func:`scan`).

    Items:
        ``(image (3, S, S) float32 in [0, 1], label int, path str)``.

    Attributes:
        report: the :class:`ScanReport` (skipped files); ``domains``: sorted domain names;
        ``targets``: label per item; ``files``: paths.
    """

    def __init__(self, root: str | os.PathLike | ScanReport, img_size: int = 256, augment: bool = False,
                 cache: bool = False, verify: str = "decode", domains: Sequence[str] | None = None):
        self.report = _as_report(root, verify, domains)
        self.files = list(self.report.files)
        self.targets = list(self.report.labels)
        self.domains = list(self.report.domains)
        self.img_size = int(img_size)
        self.augment = augment
        self._store = _ImageStore(self.files, self.targets, img_size, cache)

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> torch.Tensor:
        """(3, S, S) in [0, 1], without augmentation (see :meth:`load_item` for unreadable files)."""
        return self._store.get(index)[0]

    def load_item(self, index: int) -> tuple[torch.Tensor, int]:
        """``(image (3, S, S) in [0, 1], j)``: j = index, or the same-domain file that replaced an unreadable one."""
        return self._store.get(index)

    @property
    def failed(self) -> list[tuple[Path, str]]:
        """Files that passed the scan but failed to decode when loaded (replaced by the next file); per worker."""
        return [(self.files[i], r) for i, r in sorted(self._store.failed.items())]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        image, j = self.load_item(index)
        if self.augment:
            image = random_augment(image)
        return image, self.targets[j], str(self.files[j])


class ReferenceDataset(Dataset):
    """Pairs of images of the same domain (StarGAN-v2 reference loader).

    Item i is file i with a second file of its domain chosen at construction from ``seed`` (another file when
    the domain has more than one).

    Args:
        root, img_size, augment, cache, verify, domains: as :class:`SourceDataset`.
        seed: seed of the pairing.

    Items:
        ``(x_ref (3, S, S), x_ref2 (3, S, S), y_ref int)``, images float32 in [0, 1].
    """

    def __init__(self, root: str | os.PathLike | ScanReport, img_size: int = 256, augment: bool = False,
                 cache: bool = False, verify: str = "decode", domains: Sequence[str] | None = None,
                 seed: int = 0):
        self.source = SourceDataset(root, img_size, augment=False, cache=cache, verify=verify, domains=domains)
        self.report, self.domains = self.source.report, self.source.domains
        self.targets, self.files = self.source.targets, self.source.files
        self.augment = augment
        rng = np.random.default_rng(seed)
        labels = np.asarray(self.targets)
        self.partner = np.arange(len(labels))
        for lab in np.unique(labels):
            idx = np.flatnonzero(labels == lab)
            if len(idx) > 1:
                # another member of the domain: shift by a random non-zero offset within the domain's list
                offsets = rng.integers(1, len(idx), size=len(idx))
                self.partner[idx] = idx[(np.arange(len(idx)) + offsets) % len(idx)]

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        x1 = self.source.load(index)
        x2 = self.source.load(int(self.partner[index]))
        if self.augment:
            x1, x2 = random_augment(x1), random_augment(x2)
        return x1, x2, self.targets[index]


def balanced_sampler(dataset: SourceDataset | ReferenceDataset, num_samples: int | None = None,
                     seed: int | None = None) -> torch.utils.data.WeightedRandomSampler:
    """Sampler drawing each domain equally often (weights 1 / domain count), as StarGAN-v2's train loader."""
    labels = np.asarray(dataset.targets)
    counts = np.bincount(labels, minlength=len(dataset.domains)).astype(np.float64)
    weights = 1.0 / counts[labels]
    gen = None
    if seed is not None:
        gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double),
                                                  num_samples or len(labels), replacement=True, generator=gen)
