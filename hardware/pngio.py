"""Lossless PNG reading/writing for 16-bit colour images (Pillow truncates 48/64-bit PNGs to 8 bit).

Only what measured PSF captures need: non-interlaced PNGs of colour type gray (0), RGB (2), gray+alpha (4) and
RGBA (6) at 8 or 16 bit per sample. Alpha is dropped. Pure numpy + zlib.
"""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SAMPLES = {0: 1, 2: 3, 4: 2, 6: 4}


class PNGError(ValueError):
    """A PNG this reader cannot decode; the message names the file."""


def png_header(path: str | os.PathLike) -> tuple[int, int, int, int, int]:
    """(width, height, bit_depth, colour_type, interlace) of a PNG file."""
    with open(path, "rb") as fh:
        head = fh.read(33)
    if len(head) < 33 or head[:8] != _SIGNATURE or head[12:16] != b"IHDR":
        raise PNGError(f"{path}: not a PNG file")
    width, height, depth, ctype, _comp, _filt, interlace = struct.unpack(">IIBBBBB", head[16:29])
    return width, height, depth, ctype, interlace


def read_png(path: str | os.PathLike) -> np.ndarray:
    """Decode a PNG keeping every bit.

    Returns:
        (H, W) or (H, W, C) uint8 / uint16 array, C = 3 for RGB(A) (alpha dropped).
    """
    path = Path(path)
    data = path.read_bytes()
    if data[:8] != _SIGNATURE:
        raise PNGError(f"{path}: not a PNG file")
    pos, idat, header = 8, [], None
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body[:13])
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None or not idat:
        raise PNGError(f"{path}: truncated PNG (no IHDR or IDAT)")
    width, height, depth, ctype, _comp, _filt, interlace = header
    if ctype not in _SAMPLES or depth not in (8, 16):
        raise PNGError(f"{path}: unsupported PNG (colour type {ctype}, {depth} bit); use 8/16-bit gray or RGB")
    if interlace:
        raise PNGError(f"{path}: interlaced PNG is not supported; save it non-interlaced")
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as err:
        raise PNGError(f"{path}: corrupt PNG data ({err})") from err
    bpp = _SAMPLES[ctype] * depth // 8
    stride = width * bpp
    if len(raw) < height * (stride + 1):
        raise PNGError(f"{path}: truncated PNG data")
    rows = np.frombuffer(raw, dtype=np.uint8, count=height * (stride + 1)).reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        ftype, line = int(rows[y, 0]), rows[y, 1:]
        if ftype == 0:
            cur = line.copy()
        elif ftype == 1:  # Sub: running sum per byte lane, modulo 256
            cur = np.cumsum(line.reshape(width, bpp).astype(np.int64), axis=0).astype(np.uint8).reshape(-1)
        elif ftype == 2:  # Up
            cur = (line.astype(np.int64) + prev).astype(np.uint8)
        elif ftype in (3, 4):
            cur = _unfilter_sequential(ftype, line, prev, bpp)
        else:
            raise PNGError(f"{path}: bad PNG filter type {ftype} in row {y}")
        out[y] = cur
        prev = cur
    samples = _SAMPLES[ctype]
    if depth == 16:
        img = out.view(">u2").astype(np.uint16).reshape(height, width, samples)
    else:
        img = out.reshape(height, width, samples)
    if ctype == 0:
        return img[..., 0]
    if ctype == 4:
        return img[..., 0]
    return img[..., :3]


def _unfilter_sequential(ftype: int, line: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    """Average (3) and Paeth (4) filters depend on the reconstructed left neighbour: one pixel at a time."""
    cur = np.zeros(line.shape[0], dtype=np.int64)
    line = line.astype(np.int64)
    up = prev.astype(np.int64)
    left = np.zeros(bpp, dtype=np.int64)
    upleft = np.zeros(bpp, dtype=np.int64)
    for x in range(0, line.shape[0], bpp):
        b = up[x:x + bpp]
        if ftype == 3:
            val = (line[x:x + bpp] + (left + b) // 2) % 256
        else:
            p = left + b - upleft
            pa, pb, pc = np.abs(p - left), np.abs(p - b), np.abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, b, upleft))
            val = (line[x:x + bpp] + pred) % 256
        cur[x:x + bpp] = val
        left, upleft = val, b
    return cur.astype(np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    """Encode a (H, W) or (H, W, 3) uint8 / uint16 array as PNG bytes (filter 0, lossless)."""
    arr = np.asarray(image)
    if arr.dtype not in (np.uint8, np.uint16) or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"encode_png: need (H, W) or (H, W, 3) uint8/uint16, got {arr.dtype} {arr.shape}")
    height, width = arr.shape[:2]
    depth = 16 if arr.dtype == np.uint16 else 8
    ctype = 0 if arr.ndim == 2 else 2
    body = arr.astype(">u2" if depth == 16 else np.uint8).reshape(height, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), body], axis=1).tobytes()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, ctype, 0, 0, 0)
    return _SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
