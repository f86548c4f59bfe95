"""Atomic output writing: every file the project writes goes to a temp file first, then ``os.replace``."""
from __future__ import annotations

import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np


def atomic_write(path: str | os.PathLike, writer: Callable[[io.BufferedWriter], None]) -> Path:
    """Write ``path`` atomically: ``writer(fh)`` fills a temp file in the same folder, then it replaces ``path``.

    A crash mid-write leaves the previous file (or nothing), never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            writer(fh)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; outputs get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))


def plain(obj: Any, for_json: bool = True) -> Any:
    """The one sanitiser: a copy of ``obj`` made of dicts, lists, bools, ints, floats, strings and None.

    Tuples become lists, numpy scalars / arrays and tensors Python numbers / lists, paths and any other object
    its ``str``. With ``for_json`` (JSON output) dict keys become strings and inf / -inf / nan the strings
    "inf" / "-inf" / "nan" (JSON has no such numbers; ``LensConfig`` reads "inf" back); without it (checkpoint
    payloads, loadable with ``weights_only=True``) int keys and non-finite floats are kept.
    """
    if isinstance(obj, dict):
        return {(str(k) if for_json or not isinstance(k, int) else k): plain(v, for_json) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v, for_json) for v in obj]
    if isinstance(obj, np.ndarray) or type(obj).__name__ == "Tensor":
        return plain(obj.tolist(), for_json)
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        obj = obj.item()
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        if for_json and not math.isfinite(obj):
            return "inf" if obj > 0 else ("-inf" if obj < 0 else "nan")
        return obj
    return str(obj)


def save_json(path: str | os.PathLike, obj: Any) -> Path:
    """JSON (through :func:`plain`) with sorted keys and 2-space indent."""
    text = json.dumps(plain(obj), indent=2, sort_keys=True, allow_nan=False)
    return save_bytes(path, (text + "\n").encode())


def save_text(path: str | os.PathLike, text: str) -> Path:
    return save_bytes(path, text.encode())


def save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    return atomic_write(path, lambda fh: np.save(fh, np.asarray(array), allow_pickle=False))


def save_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Save an image atomically; format from the suffix (PNG/JPEG/TIFF).

    Args:
        image: (H, W) or (H, W, C); float in [0, 1] (stored as 8-bit) or uint8 / uint16 (stored as is).
    """
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{path}: image contains NaN or inf")
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    suffix = Path(path).suffix.lower()
    if arr.dtype == np.uint16:
        import tifffile  # noqa: F401  (PIL cannot write 16-bit RGB; gray 16-bit PNG works with mode I;16)
        if suffix in (".tif", ".tiff"):
            return atomic_write(path, lambda fh: tifffile.imwrite(fh, arr))
        if arr.ndim != 2:
            raise ValueError(f"{path}: 16-bit PNG output supports gray images only; use .tif for RGB")
        img = Image.fromarray(arr.astype(np.uint16))
    else:
        img = Image.fromarray(arr)
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}.get(suffix)
    if fmt is None:
        raise ValueError(f"{path}: unsupported image suffix {suffix!r}")
    return atomic_write(path, lambda fh: img.save(fh, format=fmt))


def save_figure(path: str | os.PathLike, fig: Any, dpi: int = 120) -> Path:
    """Save a matplotlib figure atomically (PNG) and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return save_bytes(path, buf.getvalue())
