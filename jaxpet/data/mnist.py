"""MNIST from the four IDX files of the official release (gzip-compressed or raw)."""

from __future__ import annotations

import functools
import gzip
import pathlib
import struct
import zlib

import numpy as np

from jaxpet.data import sources
from jaxpet.data.archives import CORRUPT
from jaxpet.data.containers import DataError, Dataset, Split

MNIST_CLASSES = tuple(str(d) for d in range(10))
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
LAYOUT = ("train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
          "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (or uncompressed) "
          "in {d}/mnist or {d}")


def _decompress(path: pathlib.Path) -> bytes:
    try:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"could not read {path} ({type(e).__name__}: {e}): {CORRUPT}.") from e
    return data


def parse_idx(path: pathlib.Path, ndim: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file (gzip or raw) with ``ndim`` dimensions."""
    data = _decompress(path)
    header = 4 + 4 * ndim
    if len(data) < header or data[:2] != b"\0\0" or data[2] != 0x08 or data[3] != ndim:
        raise DataError(f"{path} is not an unsigned-byte IDX file with {ndim} dimensions "
                        f"(magic {data[:4].hex() or 'missing'}, expected 0000080{ndim}); "
                        "replace it with the official MNIST file.")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise DataError(f"{path} holds {len(data)} bytes but its IDX header {dims} needs "
                        f"{expected}: {CORRUPT}.")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims).copy()


def _load(files: dict[str, pathlib.Path]) -> Dataset:
    splits = {}
    for split in ("train", "test"):
        images = parse_idx(files[f"{split}_images"], 3)
        labels = parse_idx(files[f"{split}_labels"], 1)
        if images.shape[1:] != (28, 28):
            raise DataError(f"{files[f'{split}_images']} holds {images.shape[1]}x"
                            f"{images.shape[2]} images, expected 28x28; replace it "
                            "with the official MNIST file.")
        if len(images) != len(labels):
            raise DataError(f"mnist {split}: {files[f'{split}_images']} holds "
                            f"{len(images)} images but {files[f'{split}_labels']} holds "
                            f"{len(labels)} labels; one file is from another release or "
                            "truncated, replace both with the official files.")
        if len(labels) and labels.max() > 9:
            raise DataError(f"{files[f'{split}_labels']} holds label {labels.max()}, "
                            "expected 0..9; replace it with the official MNIST file.")
        splits[split] = Split(images[..., None], labels.astype(np.int32))
    return Dataset("mnist", splits["train"], splits["test"], MNIST_CLASSES)


def find(root: pathlib.Path) -> sources.Source | None:
    """The IDX files in ``root/mnist`` or ``root``; a partial set is an error, none is None."""
    for folder in (root / "mnist", root):
        files = {}
        for key, base in FILES.items():
            for candidate in (folder / f"{base}.gz", folder / base):
                if candidate.is_file():
                    files[key] = candidate
                    break
        if not files:
            continue
        if len(files) < len(FILES):
            missing = [f"{b}.gz" for k, b in FILES.items() if k not in files]
            raise DataError(f"mnist: {folder} holds only part of the IDX files (missing "
                            f"{', '.join(missing)}); copy the missing files there.")
        key = sources.fingerprint("mnist", "local-idx",
                                  [sources.file_stamp(files[k]) for k in sorted(files)])
        return sources.Source("local-idx", str(folder), key, functools.partial(_load, files))
    return None
