"""Shared fixtures for the jaxpet.data tests: tiny copies in the real release formats.

Fixture datasets are tiny, so tests that use them shrink ``data.EXPECTED_COUNTS``
(via ``small_counts``) to the fixture sizes. Writers and member builders are
reached through the ``make`` fixture, since test modules cannot import each
other under pytest's importlib mode.
"""

from __future__ import annotations

import gzip
import io
import pathlib
import struct
import tarfile
import types
import zipfile

import numpy as np
from PIL import Image
import pytest

from jaxpet import data
from jaxpet.data import cifar10, mnist

RNG = np.random.default_rng(0)


def idx_bytes(arr: np.ndarray) -> bytes:
    """An unsigned-byte IDX file holding ``arr``."""
    return (b"\0\0\x08" + bytes([arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
            + arr.astype(np.uint8).tobytes())


def encode(arr: np.ndarray, fmt: str) -> bytes:
    """``arr`` [H, W, C] uint8 encoded as PNG / JPEG / PGM bytes."""
    im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    buf = io.BytesIO()
    if fmt == "JPEG":
        im.save(buf, format="JPEG", quality=95)
    else:
        im.save(buf, format=fmt)
    return buf.getvalue()


def write_tar(path: pathlib.Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w:gz") as tf:
        for name, blob in members:
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))


def write_zip(path: pathlib.Path, members: list[tuple[str, bytes]]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, blob in members:
            zf.writestr(zipfile.ZipInfo(name), blob)


def write_files(root: pathlib.Path, members: list[tuple[str, bytes]]) -> None:
    for name, blob in members:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)


def flat(value: int, shape=(32, 32, 3)) -> np.ndarray:
    """A flat-coloured image: survives JPEG almost exactly, so lossy decodes can be checked."""
    return np.full(shape, value, np.uint8)


def write_mnist(folder: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    """The four gzip IDX files of ``arrays`` (keys as in ``mnist.FILES``) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for key, base in mnist.FILES.items():
        (folder / f"{base}.gz").write_bytes(gzip.compress(idx_bytes(arrays[key])))


def cifar_binary_members():
    """Members of cifar-10-binary.tar.gz (5 x 4 train records, 10 test) and the expected arrays."""
    members, expected = [], {"train": ([], []), "test": ([], [])}
    for batch in [*cifar10.BIN_TRAIN, cifar10.BIN_TEST]:
        split = "test" if batch == cifar10.BIN_TEST else "train"
        start = 0 if split == "test" else 4 * cifar10.BIN_TRAIN.index(batch)
        labels = (np.arange(10) if split == "test" else np.arange(start, start + 4)) % 10
        chw = RNG.integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8)
        records = np.concatenate([labels[:, None].astype(np.uint8), chw.reshape(len(labels), -1)],
                                 axis=1)
        members.append((f"cifar-10-batches-bin/{batch}", records.tobytes()))
        expected[split][0].append(chw.transpose(0, 2, 3, 1))
        expected[split][1].append(labels)
    members.append(("cifar-10-batches-bin/batches.meta.txt",
                    ("\n".join(data.CIFAR10_CLASSES) + "\n\n").encode()))
    members.append(("cifar-10-batches-bin/readme.html", b"<html></html>"))
    return members, {s: (np.concatenate(ims), np.concatenate(labs))
                     for s, (ims, labs) in expected.items()}


def cifar_image_members(size=(32, 32)):
    """train/<class>/NNNN.{png,jpg} (2 per class) and test/ (1 per class) plus expectations."""
    members, expected = [], {}
    for split, per_class in (("train", 2), ("test", 1)):
        images, labels, lossy = [], [], []
        for c, cls in enumerate(data.CIFAR10_CLASSES):
            for k in range(per_class):
                if (c + k) % 2:  # PNG: random pixels, must decode exactly
                    img = RNG.integers(0, 256, (*size, 3), dtype=np.uint8)
                    members.append((f"{split}/{cls}/{k:04d}.png", encode(img, "PNG")))
                else:  # JPEG: flat colour, decodes to within a couple of levels
                    img = flat(10 * c + 3 * k + 40, (*size, 3))
                    members.append((f"{split}/{cls}/{k:04d}.jpg", encode(img, "JPEG")))
                images.append(img)
                labels.append(c)
                lossy.append(not (c + k) % 2)
        expected[split] = (np.stack(images), np.array(labels), np.array(lossy))
    return members[::-1], expected  # reversed: the loader must sort


def att_members(prefix="att_faces/"):
    """10 subjects x images 1, 2, 10 as PGM (s10 and 10.pgm check numeric ordering)."""
    members, images, labels, index = [(f"{prefix}README", b"ORL faces")], [], [], []
    for s in range(1, 11):
        for i in (1, 2, 10):
            img = RNG.integers(0, 256, (112, 92, 1), dtype=np.uint8)
            members.append((f"{prefix}s{s}/{i}.pgm", encode(img, "PPM")))
            images.append(img)
            labels.append(s - 1)
            index.append(i)
    return members[::-1], (np.stack(images), np.array(labels), np.array(index))


UTK_GOOD = {  # name -> (age, gender, race)
    "1_0_0_20161219140623097.jpg.chip.jpg": (1, 0, 0),
    "26_1_2_20170116174525125.jpg.chip.jpg": (26, 1, 2),
    "39_1_20170116174525125.jpg.chip.jpg": (39, 1, -1),  # no race field
    "24_0_1_20170116220224657 .jpg.chip.jpg": (24, 0, 1),  # space before .jpg
    "55_0_0_20170116232725357jpg.chip.jpg": (55, 0, 0),  # no dot before jpg
    "100_1_4_20170112213500903.jpg.chip.jpg": (100, 1, 4),
}
UTK_BAD = ["x_0_1_20170116.jpg.chip.jpg", "30_2_0_20170116.jpg.chip.jpg",
           "30_0_7_20170116.jpg.chip.jpg", "30_0.jpg"]


def utk_members(sizes=None):
    members = []
    for k, name in enumerate(sorted([*UTK_GOOD, *UTK_BAD])):
        shape = (sizes or {}).get(name, (8, 8, 3))
        members.append((f"UTKFace/{name}", encode(flat(20 * k + 5, shape), "JPEG")))
    return members[::-1]


@pytest.fixture
def make():
    """The writers and release-member builders above, for test modules."""
    return types.SimpleNamespace(
        rng=RNG, idx_bytes=idx_bytes, encode=encode, write_tar=write_tar, write_zip=write_zip,
        write_files=write_files, flat=flat, write_mnist=write_mnist,
        cifar_binary_members=cifar_binary_members, cifar_image_members=cifar_image_members,
        att_members=att_members, utk_members=utk_members, UTK_GOOD=UTK_GOOD, UTK_BAD=UTK_BAD)


@pytest.fixture
def small_counts(monkeypatch):
    """Exact-count table shrunk to the fixture sizes (still checked, balance included)."""
    for name, counts in {"mnist": {"train": 20, "test": 10},
                         "cifar10": {"train": 20, "test": 10},
                         "att_faces": {"train": 30}}.items():
        monkeypatch.setitem(data.EXPECTED_COUNTS, name, counts)


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def mnist_arrays() -> dict[str, np.ndarray]:
    """Random MNIST-shaped arrays: 20 balanced train and 10 test examples."""
    return {
        "train_images": RNG.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "train_labels": np.arange(20) % 10,
        "test_images": RNG.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        "test_labels": RNG.integers(0, 10, 10),
    }


@pytest.fixture
def mnist_data(tmp_path, small_counts):
    """data_dir/mnist/ with the four gzip IDX files; returns (data_dir, arrays written)."""
    arrays = mnist_arrays()
    write_mnist(tmp_path / "data" / "mnist", arrays)
    return tmp_path / "data", arrays
