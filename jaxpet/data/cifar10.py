"""CIFAR-10 from the binary release (tarball or folder) or an image tree train|test/<class>/.

The Python pickle release is refused: unpickling can run arbitrary code.
"""

from __future__ import annotations

from collections.abc import Mapping
import pathlib

import numpy as np

from jaxpet.data import sources
from jaxpet.data.archives import CORRUPT, natural_key
from jaxpet.data.containers import DataError, Dataset, Split
from jaxpet.data.images import decode_images

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
BIN_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
BIN_TEST = "test_batch.bin"
BIN_META = "batches.meta.txt"
RECORD = 1 + 32 * 32 * 3  # label byte + 3 x 32 x 32 channel-major pixels
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
LAYOUT = ("the binary release cifar-10-binary.tar.gz or its folder cifar-10-batches-bin/ "
          "in {d} or {d}/cifar10, or an image tree train/<class>/*.png|jpg + "
          "test/<class>/... as folder {d}/cifar10 or {d}/cifar10-jpeg or as "
          "{d}/cifar10-jpeg.tar.gz or {d}/cifar10.tar.gz")


def parse_binary(name, blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(images [N, 32, 32, 3], labels [N]) of one binary batch file."""
    if len(blob) == 0 or len(blob) % RECORD:
        raise DataError(f"CIFAR-10 batch {name} has {len(blob)} bytes, not a multiple of the "
                        f"{RECORD}-byte record: {CORRUPT}.")
    records = np.frombuffer(blob, np.uint8).reshape(-1, RECORD)
    labels = records[:, 0].astype(np.int32)
    if labels.max() > 9:
        raise DataError(f"CIFAR-10 batch {name} holds label {labels.max()}, expected 0..9; "
                        f"{CORRUPT}.")
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _from_binary(blobs: Mapping[str, tuple[str, bytes]], where) -> Dataset:
    missing = [n for n in (*BIN_TRAIN, BIN_TEST) if n not in blobs]
    if missing:
        raise DataError(f"cifar10: {where} lacks {', '.join(missing)} of the binary release; "
                        "re-download cifar-10-binary.tar.gz.")
    if BIN_META in blobs:
        names = tuple(line.strip() for line in
                      blobs[BIN_META][1].decode("utf-8", "replace").splitlines()
                      if line.strip())
        if names != CIFAR10_CLASSES:
            raise DataError(f"cifar10: {blobs[BIN_META][0]} lists classes {names}, "
                            f"expected {CIFAR10_CLASSES}; this is not the CIFAR-10 release.")
    parts = [parse_binary(*blobs[n]) for n in BIN_TRAIN]
    train = Split(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    test = Split(*parse_binary(*blobs[BIN_TEST]))
    return Dataset("cifar10", train, test, CIFAR10_CLASSES)


def _binary_items(items, where) -> Dataset:
    return _from_binary({it[0]: (it[1], it[2]) for it in items}, where)


def _want_binary(parts):
    return parts[-1] if parts[-1] in (*BIN_TRAIN, BIN_TEST, BIN_META) else None


def _want_image(parts):
    if len(parts) < 3 or parts[-3] not in ("train", "test") \
            or not parts[-1].lower().endswith(IMAGE_EXTS):
        return None
    return (parts[-3], parts[-2], natural_key(parts[-1]))


def _from_images(items, where) -> Dataset:
    splits = {}
    for split in ("train", "test"):
        sub = [it for it in items if it[0][0] == split]
        classes = {it[0][1] for it in sub}
        unknown = sorted(classes - set(CIFAR10_CLASSES))
        missing = [c for c in CIFAR10_CLASSES if c not in classes]
        if unknown or missing:
            raise DataError(
                f"cifar10: {where} {split}/ has class folders {sorted(classes)}; expected exactly "
                f"the 10 canonical classes {', '.join(CIFAR10_CLASSES)}"
                f"{f' (unknown: {unknown})' if unknown else ''}"
                f"{f' (missing: {missing})' if missing else ''}; fix or re-download the tree.")
        sub.sort(key=lambda it: (CIFAR10_CLASSES.index(it[0][1]), it[0][2]))
        images = decode_images(sub, where, (32, 32, 3), "CIFAR-10 images")
        labels = np.array([CIFAR10_CLASSES.index(it[0][1]) for it in sub], np.int32)
        splits[split] = Split(images, labels)
    return Dataset("cifar10", splits["train"], splits["test"], CIFAR10_CLASSES)


def find(root: pathlib.Path) -> sources.Source | None:
    """The binary release, else an image tree (folder or tarball) under ``root``, else None."""
    for base in (root, root / "cifar10"):
        folder = base / "cifar-10-batches-bin"
        if folder.is_dir():
            return sources.folder_source("cifar10", "local-cifar-binary", folder, _want_binary,
                                         _binary_items)
        tarball = base / "cifar-10-binary.tar.gz"
        if tarball.is_file():
            return sources.archive_source("cifar10", "local-cifar-binary", tarball,
                                          _want_binary, _binary_items)
    for folder in (root / "cifar10", root / "cifar10-jpeg"):
        if (folder / "train").is_dir() and (folder / "test").is_dir():
            return sources.folder_source("cifar10", "local-image-folder", folder, _want_image,
                                         _from_images)
    for base in (root, root / "cifar10"):
        for fname in ("cifar10-jpeg.tar.gz", "cifar10.tar.gz"):
            if (base / fname).is_file():
                return sources.archive_source("cifar10", "local-image-archive", base / fname,
                                              _want_image, _from_images)
    for base in (root, root / "cifar10"):
        for pickled in (base / "cifar-10-python.tar.gz", base / "cifar-10-batches-py"):
            if pickled.exists():
                raise DataError(
                    f"cifar10: found only the Python pickle release {pickled}; pickles are not "
                    "read (unpickling can run arbitrary code). Put the binary release "
                    "cifar-10-binary.tar.gz (or its cifar-10-batches-bin/ folder) or an image "
                    "tree train/<class>/*.png|jpg + test/<class>/... (folder cifar10/ or "
                    f"cifar10-jpeg.tar.gz, as in ../shared/data) in {root}.")
    return None
