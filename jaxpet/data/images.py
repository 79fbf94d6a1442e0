"""Image decoding (PNG, JPEG, PGM, ... via PIL) into uint8 arrays, and antialiased resizing."""

from __future__ import annotations

from collections.abc import Sequence
import io
from typing import Any

import numpy as np
from PIL import Image

from jaxpet.data.containers import DataError, describe


def jpeg_header(blob: bytes) -> tuple[int, int, int] | None:
    """(height, width, components) from a baseline/progressive JPEG's SOF segment, else None."""
    if blob[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(blob)
    while i + 4 <= n:
        if blob[i] != 0xFF:
            return None
        marker = blob[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length field
            i += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn
            if i + 10 > n:
                return None
            return ((blob[i + 5] << 8) | blob[i + 6], (blob[i + 7] << 8) | blob[i + 8],
                    blob[i + 9])
        if marker == 0xDA:  # scan data before any SOF: malformed
            return None
        i += 2 + ((blob[i + 2] << 8) | blob[i + 3])
    return None


def _decode_one(blob: bytes, name: str, where, channels: int | None) -> np.ndarray:
    """Decode any PIL-readable image to [H, W, C]; palette images become RGB (or L)."""
    try:
        with Image.open(io.BytesIO(blob)) as opened:
            im: Image.Image = opened
            if im.mode == "P" or (channels == 3 and im.mode == "CMYK"):
                im = im.convert("L" if channels == 1 else "RGB")
            arr = np.asarray(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"could not decode image {name!r} in {where} ({e}); the file is "
                        "corrupt: re-download or replace it.") from e
    return arr[:, :, None] if arr.ndim == 2 else arr


def decode_images(items: Sequence[tuple[Any, str, bytes]], where, shape=None,
                  what: str = "images") -> np.ndarray:
    """Decode (key, name, bytes) items to uint8 [N, H, W, C]; all must match ``shape``
    (else the first image's shape).

    JPEGs whose header already shows the expected size skip PIL's Python header
    parsing (``Image.frombytes`` with the jpeg decoder), which roughly halves
    the time for tens of thousands of tiny images; anything else, or any
    failure there, goes through ``Image.open`` and its error reporting.
    """
    out = None
    for i, (_, name, blob) in enumerate(items):
        arr = None
        if shape is not None and shape[2] in (1, 3) and jpeg_header(blob) == tuple(shape):
            mode = "RGB" if shape[2] == 3 else "L"
            try:
                im = Image.frombytes(mode, (shape[1], shape[0]), blob, "jpeg", mode, "")
                arr = np.asarray(im).reshape(shape)
            except (OSError, ValueError):
                arr = None
        if arr is None:
            arr = _decode_one(blob, name, where, None if shape is None else shape[2])
        if out is None:
            shape = tuple(shape) if shape is not None else arr.shape
            out = np.empty((len(items), *shape), np.uint8)
        if arr.shape != shape or arr.dtype != np.uint8:
            raise DataError(
                f"image {name!r} in {where} is {'x'.join(map(str, arr.shape))} {arr.dtype}, "
                f"expected {'x'.join(map(str, shape))} uint8 like the other {what}; replace "
                "it with a correctly sized copy from the official release.")
        out[i] = arr
    if out is None:
        out = np.empty((0, *(shape or (0, 0, 0))), np.uint8)
    return out


def resize_images(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 images [N, H, W, C] to ``size`` = (height, width), antialiased (PIL Lanczos)."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise DataError(f"resize_images expects a uint8 array [N, H, W, C], got "
                        f"{describe(images)}; add a channel axis / cast to uint8 first.")
    if (len(size) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in size)):
        raise DataError(f"resize_images size must be (height, width) positive ints, got {size!r}.")
    height, width = int(size[0]), int(size[1])
    n, _, _, channels = images.shape
    out = np.empty((n, height, width, channels), np.uint8)
    if images.shape[1:3] == (height, width):
        out[...] = images
        return out
    for i in range(n):
        if channels == 3:
            im = Image.fromarray(images[i], "RGB").resize((width, height), Image.Resampling.LANCZOS)
            out[i] = np.asarray(im)
        else:  # grey or any other channel count: resize each channel as an "L" image
            for c in range(channels):
                im = Image.fromarray(np.ascontiguousarray(images[i, :, :, c]), "L")
                out[i, :, :, c] = np.asarray(im.resize((width, height), Image.Resampling.LANCZOS))
    return out
