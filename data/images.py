"""Reading face images from disk with one clear error per bad file."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageReadError(ValueError):
    """A file that is not a readable image. The message names the file and the problem."""


def list_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Image files (by suffix) in ``folder``, sorted by name. Raises if the folder does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a directory")
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as RGB float32 in [0, 1].

    Grayscale is replicated to 3 channels; RGBA / LA are composited on white (compositing on black would
    darken faces at transparent edges); 16-bit images keep their precision (scaled by 65535).

    Returns:
        (H, W, 3) float32 in [0, 1].

    Raises:
        ImageReadError: missing, empty, corrupt or non-image file (message names the file).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: file does not exist")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: file is empty")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float64)
                maxv = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
                arr = np.repeat((arr / maxv)[..., None], 3, axis=2)
            elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
                rgba = np.asarray(img.convert("RGBA"), dtype=np.float64) / 255.0
                alpha = rgba[..., 3:4]
                arr = rgba[..., :3] * alpha + (1.0 - alpha)
            else:
                arr = np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"{path}: not a readable image ({type(err).__name__}: {err})") from err
    if arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 1:
        raise ImageReadError(f"{path}: unexpected image shape {arr.shape}")
    return np.clip(arr, 0.0, 1.0).astype(np.float32)


def to_tensor(image: np.ndarray):
    """(H, W, 3) float array -> (1, 3, H, W) float32 torch tensor."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].float()


def to_numpy(image) -> np.ndarray:
    """(3, H, W) or (1, 3, H, W) tensor in [0, 1] -> (H, W, 3) float32 array."""
    t = image.detach().float().cpu()
    if t.ndim == 4:
        if t.shape[0] != 1:
            raise ValueError(f"expected a single image, got batch of {t.shape[0]}")
        t = t[0]
    return t.permute(1, 2, 0).numpy()
