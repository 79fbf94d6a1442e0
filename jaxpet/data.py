"""Dataset loading for jaxpet: MNIST, CIFAR-10, AT&T faces and UTKFace as numpy arrays.

Sources are tried in order:

1. a local folder (``data_dir`` or ``$JAXPET_DATA_DIR``) holding the files in the
   layouts of the public releases (see ``../shared/data/README.md``); archives are
   read member by member into memory, never extracted;
2. for MNIST and CIFAR-10 only, TensorFlow Datasets through ``tfds.data_source``
   (array_record, works without TensorFlow); imported lazily, so this module
   imports on machines without ``tensorflow_datasets``;
3. otherwise a :class:`DataError` that lists the files expected and where.

Decoded arrays are cached as ``.npz`` files (never pickles) keyed by the dataset
name and a fingerprint of the source, so a second load takes well under a
second. Every bad input raises :class:`DataError` whose message states the
problem and how to fix it.

Exact example counts are checked against :data:`EXPECTED_COUNTS` so that a
half-copied folder is not silently used; tests with small fixtures monkeypatch
that table (an entry that is absent disables the check for that dataset/split).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import pathlib
import posixpath
import re
import stat
import struct
import tarfile
import tempfile
import time
import types
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from absl import logging
from PIL import Image

DATASETS = ("mnist", "cifar10", "att_faces", "utkface")

MNIST_CLASSES = tuple(str(d) for d in range(10))
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
UTKFACE_GENDERS = ("male", "female")
UTKFACE_RACES = ("White", "Black", "Asian", "Indian", "Others")
ATT_FACES_SHAPE = (112, 92, 1)

# Exact example counts of the official releases, checked after every load
# (source or cache). Tests monkeypatch entries to fit small fixtures; a missing
# dataset or split entry means "not checked".
EXPECTED_COUNTS: dict[str, dict[str, int]] = {
    "mnist": {"train": 60_000, "test": 10_000},
    "cifar10": {"train": 50_000, "test": 10_000},
    "att_faces": {"train": 400},
}
# Datasets whose checked splits must also be class-balanced (count / num_classes each).
BALANCED_DATASETS = frozenset({"cifar10", "att_faces"})

_TFDS_DATASETS = ("mnist", "cifar10")
_CACHE_FORMAT = 1
_IMAGE_EXTS = (".png", ".jpg", ".jpeg")
_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_CIFAR_BIN_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR_BIN_TEST = "test_batch.bin"
_CIFAR_BIN_META = "batches.meta.txt"
_CIFAR_RECORD = 1 + 32 * 32 * 3
_HINT = ("set --data_dir or JAXPET_DATA_DIR to a folder laid out like ../shared/data "
         "(see its README)")


# --------------------------------------------------------------------------- normalisation


@dataclasses.dataclass(frozen=True)
class Normalize:
    """uint8 images -> float32 ``(x / 255 - mean) / std`` per channel, done on the device."""

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 255.0

    def __call__(self, x):
        x = jnp.asarray(x, jnp.float32) / self.scale
        return (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)


IDENTITY = Normalize(mean=(0.0,), std=(1.0,), scale=1.0)

# The seed's per-dataset normalisation (mean and std of pixels scaled to [0, 1]).
NORMALIZATION = {
    "mnist": Normalize(mean=(0.1307,), std=(0.3081,)),
    "cifar10": Normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    "att_faces": Normalize(mean=(0.0,), std=(1.0,)),  # pixels in [0, 1], as mi_face expects
    "utkface": Normalize(mean=(152.13768243 / 255, 116.5061518 / 255, 99.7395918 / 255),
                         std=(65.71289385 / 255, 58.56545956 / 255, 57.4306078 / 255)),
}


def normalizer(name: str) -> Normalize:
    """The seed's on-device preprocessing for dataset ``name`` (uint8 -> normalised float32)."""
    if name not in NORMALIZATION:
        raise DataError(f"Unknown dataset {name!r}; known: {', '.join(DATASETS)}.")
    return NORMALIZATION[name]


class DataError(ValueError):
    """A dataset is missing, incomplete, corrupt or unsafe; the message says how to fix it."""


# --------------------------------------------------------------------------- containers


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """One split: uint8 images [N, H, W, C], int32 labels [N] and int32 per-example attributes."""

    images: np.ndarray
    labels: np.ndarray
    attributes: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.images, np.ndarray) or self.images.dtype != np.uint8 \
                or self.images.ndim != 4:
            raise DataError(f"Split.images must be a uint8 array [N, H, W, C], got "
                            f"{_describe(self.images)}; convert it with np.asarray(..., np.uint8).")
        n = self.images.shape[0]
        for what, arr in [("labels", self.labels), *(
                (f"attributes[{k!r}]", v) for k, v in self.attributes.items())]:
            if not isinstance(arr, np.ndarray) or arr.dtype != np.int32 or arr.shape != (n,):
                raise DataError(f"Split.{what} must be an int32 array of shape ({n},) to match "
                                f"the images, got {_describe(arr)}; fix the array that builds it.")
        object.__setattr__(self, "attributes", types.MappingProxyType(dict(self.attributes)))

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded dataset; ``test`` is None for single-pool datasets (att_faces, utkface)."""

    name: str
    train: Split
    test: Split | None
    class_names: tuple[str, ...]
    attribute_names: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "class_names", tuple(self.class_names))
        for split_name, split in (("train", self.train), ("test", self.test)):
            if split is None or len(split) == 0:
                continue
            lo, hi = int(split.labels.min()), int(split.labels.max())
            if lo < 0 or hi >= len(self.class_names):
                raise DataError(f"{self.name} {split_name}: labels span {lo}..{hi} but there are "
                                f"{len(self.class_names)} classes; the source files are corrupt, "
                                "re-download or replace them.")
        object.__setattr__(self, "attribute_names", types.MappingProxyType(
            {k: tuple(v) for k, v in self.attribute_names.items()}))
        object.__setattr__(self, "info", types.MappingProxyType(dict(self.info)))


def _describe(x) -> str:
    if isinstance(x, np.ndarray):
        return f"{x.dtype} array of shape {x.shape}"
    return type(x).__name__


# --------------------------------------------------------------------------- public helpers


def default_data_dir() -> str | None:
    """The local data folder from ``$JAXPET_DATA_DIR``, or None when unset/empty."""
    return os.environ.get("JAXPET_DATA_DIR") or None


def default_cache_dir() -> pathlib.Path:
    """The array cache folder: ``$JAXPET_CACHE_DIR``, else ``~/.cache/jaxpet``."""
    return pathlib.Path(os.environ.get("JAXPET_CACHE_DIR") or "~/.cache/jaxpet").expanduser()


def resize_images(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 images [N, H, W, C] to ``size`` = (height, width), antialiased (PIL Lanczos)."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise DataError(f"resize_images expects a uint8 array [N, H, W, C], got "
                        f"{_describe(images)}; add a channel axis / cast to uint8 first.")
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


# --------------------------------------------------------------------------- entry point


@dataclasses.dataclass
class _Source:
    """A located source: what it is, a fingerprint for the cache key, and how to decode it."""

    kind: str
    path: str
    fingerprint: str
    load: Callable[[], Dataset]


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *,
                 cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
                 allow_download: bool = True) -> Dataset:
    """Load ``name`` from a local copy, else TFDS (mnist/cifar10 only), via the .npz cache.

    The local folder is ``data_dir``, else ``$JAXPET_DATA_DIR``; the cache folder is
    ``cache_dir``, else :func:`default_cache_dir`. ``use_cache=False`` neither reads
    nor writes the cache; ``allow_download=False`` never contacts TFDS. Raises
    :class:`DataError` when no usable copy exists or the copy is bad.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.")
    root = data_dir if data_dir is not None else default_data_dir()
    root_path = None
    if root is not None and str(root) != "":
        root_path = pathlib.Path(root).expanduser()
        if not root_path.is_dir():
            raise DataError(f"data folder {str(root_path)!r} does not exist or is not a folder; "
                            f"{_HINT}, or pass data_dir=None to use only the TFDS download.")
    source = _FINDERS[name](root_path) if root_path is not None else None
    if source is None:
        missing = _missing_message(name, root_path, allow_download)
        if name in _TFDS_DATASETS and allow_download:
            source = _tfds_source(name, missing)
        else:
            raise DataError(missing)

    cache_path = None
    if use_cache:
        cache_path = pathlib.Path(cache_dir).expanduser() if cache_dir is not None \
            else default_cache_dir()
        cache_path = cache_path / f"{name}-{source.fingerprint[:24]}.npz"
        start = time.perf_counter()
        cached = _read_cache(cache_path, name, source)
        if cached is not None:
            logging.info("Loaded %s from cache %s (source %s: %s) in %.2fs.", name, cache_path,
                         source.kind, source.path, time.perf_counter() - start)
            return cached

    start = time.perf_counter()
    dataset = source.load()
    info = dict(dataset.info, source=source.path, source_kind=source.kind, from_cache=False,
                fingerprint=source.fingerprint,
                cache_path=str(cache_path) if cache_path is not None else None)
    dataset = dataclasses.replace(dataset, info=info)
    _check_counts(dataset, source.path)
    logging.info("Loaded %s from %s (%s) in %.2fs: %d train%s examples.", name, source.path,
                 source.kind, time.perf_counter() - start, len(dataset.train),
                 f" + {len(dataset.test)} test" if dataset.test is not None else "")
    if cache_path is not None:
        _write_cache(cache_path, dataset)
    return dataset


def _check_counts(dataset: Dataset, where: str) -> None:
    """Raise when a split's size (or class balance) differs from EXPECTED_COUNTS."""
    expected = EXPECTED_COUNTS.get(dataset.name, {})
    for split_name, split in (("train", dataset.train), ("test", dataset.test)):
        want = expected.get(split_name)
        if want is None or split is None:
            continue
        if len(split) != want:
            raise DataError(
                f"{dataset.name} {split_name}: found {len(split)} examples in {where}, expected "
                f"{want}; the copy is incomplete or not the official release. Re-download or "
                "replace it (see ../shared/data/README.md).")
        if dataset.name in BALANCED_DATASETS and want % len(dataset.class_names) == 0:
            counts = np.bincount(split.labels, minlength=len(dataset.class_names))
            per_class = want // len(dataset.class_names)
            bad = [dataset.class_names[i] for i, c in enumerate(counts) if c != per_class]
            if bad:
                raise DataError(
                    f"{dataset.name} {split_name}: classes {bad[:5]} do not hold {per_class} "
                    f"examples each in {where} (counts {counts.tolist()}); the copy is "
                    "incomplete. Re-download or replace it.")


# --------------------------------------------------------------------------- cache


def _hash(parts) -> str:
    return hashlib.sha256(json.dumps([_CACHE_FORMAT, parts], sort_keys=True).encode()).hexdigest()


def _file_stamp(path: pathlib.Path) -> list:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def _read_cache(path: pathlib.Path, name: str, source: _Source) -> Dataset | None:
    """The cached dataset, or None when absent; an unreadable/stale file is logged and ignored."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["__meta__"].tobytes().decode("utf-8"))
            if meta.get("format") != _CACHE_FORMAT or meta.get("name") != name \
                    or meta.get("fingerprint") != source.fingerprint:
                raise ValueError("cache entry belongs to another source or format")
            splits = {}
            for split_name in ("train", "test"):
                if split_name not in meta["splits"]:
                    splits[split_name] = None
                    continue
                attrs = {a: z[f"{split_name}__attr__{a}"] for a in meta["splits"][split_name]}
                splits[split_name] = Split(z[f"{split_name}__images"],
                                           z[f"{split_name}__labels"], attrs)
        info = dict(meta["info"], from_cache=True, cache_path=str(path))
        dataset = Dataset(name, splits["train"], splits["test"], tuple(meta["class_names"]),
                          meta["attribute_names"], info)
        _check_counts(dataset, str(path))
        return dataset
    except Exception as e:  # noqa: BLE001 - any unreadable cache is rebuilt, never fatal
        logging.warning("Ignoring unreadable cache file %s (%s: %s); rebuilding it from %s.",
                        path, type(e).__name__, e, source.path)
        return None


def _write_cache(path: pathlib.Path, dataset: Dataset) -> None:
    """Write ``dataset`` as .npz atomically (temp file in the same folder, then os.replace)."""
    arrays = {}
    splits_meta = {}
    for split_name, split in (("train", dataset.train), ("test", dataset.test)):
        if split is None:
            continue
        arrays[f"{split_name}__images"] = split.images
        arrays[f"{split_name}__labels"] = split.labels
        for a, v in split.attributes.items():
            arrays[f"{split_name}__attr__{a}"] = v
        splits_meta[split_name] = sorted(split.attributes)
    info = {k: v for k, v in dataset.info.items() if k not in ("from_cache", "cache_path")}
    meta = {"format": _CACHE_FORMAT, "name": dataset.name,
            "fingerprint": dataset.info["fingerprint"], "splits": splits_meta,
            "class_names": list(dataset.class_names),
            "attribute_names": {k: list(v) for k, v in dataset.attribute_names.items()},
            "info": info}
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        logging.info("Cached %s arrays at %s.", dataset.name, path)
    except OSError as e:
        logging.warning("Could not write cache file %s (%s); continuing without it.", path, e)
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


# --------------------------------------------------------------------------- file access


def _natural_key(text: str) -> tuple:
    """Sort key that orders embedded numbers numerically ("s2" < "s10")."""
    parts = re.split(r"(\d+)", text)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


_CORRUPT = "it is corrupt or truncated; re-download it or replace it with a good copy"


def _check_member(archive, name: str, linkname: str | None = None,
                  is_symlink: bool = False) -> None:
    """Refuse archive members that are absolute, climb out with '..', or link outside."""
    def refuse(why):
        raise DataError(f"refusing archive member {name!r} of {archive}: it points outside the "
                        f"target folder ({why}). The archive is unsafe; replace it with a clean "
                        "copy of the official release.")

    def escapes(p: str) -> bool:
        p = p.replace("\\", "/")
        if p.startswith("/") or (len(p) > 1 and p[1] == ":" and p[0].isalpha()):
            return True
        return ".." in p.split("/")

    if escapes(name):
        refuse("absolute path or '..' component")
    if linkname is not None:
        link = linkname.replace("\\", "/")
        if link.startswith("/") or (len(link) > 1 and link[1] == ":" and link[0].isalpha()):
            refuse(f"link to absolute path {linkname!r}")
        base = posixpath.dirname(name.replace("\\", "/")) if is_symlink else ""
        target = posixpath.normpath(posixpath.join(base, link))
        if target == ".." or target.startswith("../"):
            refuse(f"link to {linkname!r}")


Want = Callable[[tuple[str, ...]], Any]  # member path parts -> sort key, or None to skip


def _hidden(parts: Sequence[str]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _read_archive(path: pathlib.Path, want: Want) -> list[tuple[Any, str, bytes]]:
    """(key, member name, bytes) of wanted regular members, sorted by key; checks every member."""
    items = []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    mode = info.external_attr >> 16
                    is_link = stat.S_ISLNK(mode)
                    link = zf.read(info).decode("utf-8", "replace") if is_link else None
                    _check_member(path, info.filename, link, is_symlink=True)
                    parts = tuple(p for p in info.filename.split("/") if p)
                    if info.is_dir() or is_link or not parts or _hidden(parts):
                        continue
                    key = want(parts)
                    if key is not None:
                        items.append((key, info.filename, zf.read(info)))
        else:
            with tarfile.open(path, "r|*") as tf:
                for member in tf:
                    link = member.linkname if (member.issym() or member.islnk()) else None
                    _check_member(path, member.name, link, is_symlink=member.issym())
                    parts = tuple(p for p in member.name.split("/") if p not in ("", "."))
                    if not member.isfile() or not parts or _hidden(parts):
                        continue
                    key = want(parts)
                    if key is not None:
                        f = tf.extractfile(member)
                        items.append((key, member.name, f.read()))
    except DataError:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError,
            ValueError) as e:
        raise DataError(f"could not read archive {path} ({type(e).__name__}: {e}): "
                        f"{_CORRUPT}.") from e
    items.sort(key=lambda item: item[0])
    return items


def _scan_folder(root: pathlib.Path, want: Want) -> list[tuple[Any, pathlib.Path, list]]:
    """(key, path, stamp) of wanted files under ``root``, sorted by key."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not _hidden((d,))]
        rel = pathlib.Path(dirpath).relative_to(root).parts
        for fname in filenames:
            parts = (*rel, fname)
            if _hidden((fname,)):
                continue
            key = want(parts)
            if key is not None:
                p = pathlib.Path(dirpath, fname)
                st = p.stat()
                found.append((key, p, ["/".join(parts), st.st_size, st.st_mtime_ns]))
    found.sort(key=lambda item: item[0])
    return found


def _read_folder_files(found) -> list[tuple[Any, str, bytes]]:
    items = []
    for key, p, _ in found:
        try:
            items.append((key, str(p), p.read_bytes()))
        except OSError as e:
            raise DataError(f"could not read {p} ({e}); check its permissions or replace "
                            "it.") from e
    return items


def _jpeg_header(blob: bytes) -> tuple[int, int, int] | None:
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
        with Image.open(io.BytesIO(blob)) as im:
            if im.mode == "P" or (channels == 3 and im.mode == "CMYK"):
                im = im.convert("L" if channels == 1 else "RGB")
            arr = np.asarray(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"could not decode image {name!r} in {where} ({e}); the file is "
                        "corrupt: re-download or replace it.") from e
    return arr[:, :, None] if arr.ndim == 2 else arr


def _decode_images(items: Sequence[tuple[Any, str, bytes]], where, shape=None,
                   what: str = "images") -> np.ndarray:
    """Decode encoded images to uint8 [N, H, W, C]; all must match ``shape`` (else the first one's).

    JPEGs whose header already shows the expected size skip PIL's Python header
    parsing (``Image.frombytes`` with the jpeg decoder), which roughly halves
    the time for tens of thousands of tiny images; anything else, or any
    failure there, goes through ``Image.open`` and its error reporting.
    """
    out = None
    for i, (_, name, blob) in enumerate(items):
        arr = None
        if shape is not None and shape[2] in (1, 3) and _jpeg_header(blob) == tuple(shape):
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


# --------------------------------------------------------------------------- MNIST


def _decompress(path: pathlib.Path) -> bytes:
    try:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"could not read {path} ({type(e).__name__}: {e}): {_CORRUPT}.") from e
    return data


def _parse_idx(path: pathlib.Path, ndim: int) -> np.ndarray:
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
                        f"{expected}: {_CORRUPT}.")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims).copy()


def _find_mnist(root: pathlib.Path) -> _Source | None:
    for folder in (root / "mnist", root):
        files = {}
        for key, base in _MNIST_FILES.items():
            for candidate in (folder / f"{base}.gz", folder / base):
                if candidate.is_file():
                    files[key] = candidate
                    break
        if not files:
            continue
        if len(files) < len(_MNIST_FILES):
            missing = [f"{b}.gz" for k, b in _MNIST_FILES.items() if k not in files]
            raise DataError(f"mnist: {folder} holds only part of the IDX files (missing "
                            f"{', '.join(missing)}); copy the missing files there.")
        fingerprint = _hash(["mnist", "local-idx", [_file_stamp(files[k]) for k in sorted(files)]])

        def load(files=files, folder=folder):
            splits = {}
            for split in ("train", "test"):
                images = _parse_idx(files[f"{split}_images"], 3)
                labels = _parse_idx(files[f"{split}_labels"], 1)
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

        return _Source("local-idx", str(folder), fingerprint, load)
    return None


# --------------------------------------------------------------------------- CIFAR-10


def _parse_cifar_binary(name, blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    if len(blob) == 0 or len(blob) % _CIFAR_RECORD:
        raise DataError(f"CIFAR-10 batch {name} has {len(blob)} bytes, not a multiple of the "
                        f"{_CIFAR_RECORD}-byte record: {_CORRUPT}.")
    records = np.frombuffer(blob, np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0].astype(np.int32)
    if labels.max() > 9:
        raise DataError(f"CIFAR-10 batch {name} holds label {labels.max()}, expected 0..9; "
                        f"{_CORRUPT}.")
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _cifar_from_binary(blobs: Mapping[str, tuple[str, bytes]], where) -> Dataset:
    missing = [n for n in (*_CIFAR_BIN_TRAIN, _CIFAR_BIN_TEST) if n not in blobs]
    if missing:
        raise DataError(f"cifar10: {where} lacks {', '.join(missing)} of the binary release; "
                        "re-download cifar-10-binary.tar.gz.")
    if _CIFAR_BIN_META in blobs:
        names = tuple(line.strip() for line in
                      blobs[_CIFAR_BIN_META][1].decode("utf-8", "replace").splitlines()
                      if line.strip())
        if names != CIFAR10_CLASSES:
            raise DataError(f"cifar10: {blobs[_CIFAR_BIN_META][0]} lists classes {names}, "
                            f"expected {CIFAR10_CLASSES}; this is not the CIFAR-10 release.")
    parts = [_parse_cifar_binary(*blobs[n]) for n in _CIFAR_BIN_TRAIN]
    train = Split(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    test = Split(*_parse_cifar_binary(*blobs[_CIFAR_BIN_TEST]))
    return Dataset("cifar10", train, test, CIFAR10_CLASSES)


def _want_cifar_binary(parts):
    return parts[-1] if parts[-1] in (*_CIFAR_BIN_TRAIN, _CIFAR_BIN_TEST, _CIFAR_BIN_META) \
        else None


def _want_cifar_image(parts):
    if len(parts) < 3 or parts[-3] not in ("train", "test") \
            or not parts[-1].lower().endswith(_IMAGE_EXTS):
        return None
    return (parts[-3], parts[-2], _natural_key(parts[-1]))


def _cifar_from_images(items, where) -> Dataset:
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
        images = _decode_images(sub, where, (32, 32, 3), "CIFAR-10 images")
        labels = np.array([CIFAR10_CLASSES.index(it[0][1]) for it in sub], np.int32)
        splits[split] = Split(images, labels)
    return Dataset("cifar10", splits["train"], splits["test"], CIFAR10_CLASSES)


def _archive_source(name, kind, path: pathlib.Path, want, build) -> _Source:
    fingerprint = _hash([name, kind, _file_stamp(path)])
    return _Source(kind, str(path), fingerprint,
                   lambda: build(_read_archive(path, want), path))


def _folder_source(name, kind, path: pathlib.Path, want, build) -> _Source:
    found = _scan_folder(path, want)
    fingerprint = _hash([name, kind, str(path.resolve()), [f[2] for f in found]])
    return _Source(kind, str(path), fingerprint,
                   lambda: build(_read_folder_files(found), path))


def _find_cifar10(root: pathlib.Path) -> _Source | None:
    def binary(items, where):
        return _cifar_from_binary({it[0]: (it[1], it[2]) for it in items}, where)

    for base in (root, root / "cifar10"):
        folder = base / "cifar-10-batches-bin"
        if folder.is_dir():
            return _folder_source("cifar10", "local-cifar-binary", folder, _want_cifar_binary,
                                  binary)
        tarball = base / "cifar-10-binary.tar.gz"
        if tarball.is_file():
            return _archive_source("cifar10", "local-cifar-binary", tarball, _want_cifar_binary,
                                   binary)
    for folder in (root / "cifar10", root / "cifar10-jpeg"):
        if (folder / "train").is_dir() and (folder / "test").is_dir():
            return _folder_source("cifar10", "local-image-folder", folder, _want_cifar_image,
                                  _cifar_from_images)
    for base in (root, root / "cifar10"):
        for fname in ("cifar10-jpeg.tar.gz", "cifar10.tar.gz"):
            if (base / fname).is_file():
                return _archive_source("cifar10", "local-image-archive", base / fname,
                                       _want_cifar_image, _cifar_from_images)
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


# --------------------------------------------------------------------------- AT&T faces


def _want_att(parts):
    if len(parts) < 2:
        return None
    subject = re.fullmatch(r"s(\d+)", parts[-2])
    index = re.fullmatch(r"(\d+)\.pgm", parts[-1], re.IGNORECASE)
    if subject is None or index is None:
        return None
    return (int(subject.group(1)), int(index.group(1)))


def _att_from_items(items, where) -> Dataset:
    subjects = sorted({it[0][0] for it in items})
    if not subjects:
        raise DataError(f"att_faces: {where} holds no s<N>/<M>.pgm images; "
                        "re-download att_faces.tar.gz.")
    if subjects != list(range(1, len(subjects) + 1)):
        missing = sorted(set(range(1, max(subjects) + 1)) - set(subjects))
        raise DataError(f"att_faces: {where} has subject folders s{subjects[0]}..s{subjects[-1]} "
                        f"with gaps (missing {', '.join(f's{m}' for m in missing[:10])}) or not "
                        "starting at s1; the copy is incomplete, re-download it.")
    images = _decode_images(items, where, ATT_FACES_SHAPE, "AT&T faces (92 wide x 112 high grey)")
    labels = np.array([it[0][0] - 1 for it in items], np.int32)
    index = np.array([it[0][1] for it in items], np.int32)
    train = Split(images, labels, {"image_index": index})
    return Dataset("att_faces", train, None, tuple(f"s{s}" for s in subjects))


def _find_att_faces(root: pathlib.Path) -> _Source | None:
    folder = root / "att_faces"
    if folder.is_dir():
        return _folder_source("att_faces", "local-image-folder", folder, _want_att,
                              _att_from_items)
    for fname in ("att_faces.tar.gz", "att_faces.zip"):
        if (root / fname).is_file():
            return _archive_source("att_faces", "local-image-archive", root / fname, _want_att,
                                   _att_from_items)
    return None


# --------------------------------------------------------------------------- UTKFace


def _want_utk(parts):
    if not parts[-1].lower().endswith(".jpg"):
        return None
    return (_natural_key(parts[-1]), parts)


def parse_utkface_name(filename: str) -> tuple[int, int, int] | None:
    """(age, gender, race) parsed from ``<age>_<gender>_<race>_<time>...jpg``.

    A name with only three fields has no race (-1, kept); a name whose fields are
    not ASCII integers, or with gender not 0/1 or race not 0..4, is malformed (None).
    """
    fields = pathlib.PurePosixPath(filename).name.split("_")
    if len(fields) < 3:
        return None
    wanted = fields[:3] if len(fields) >= 4 else fields[:2]
    if not all(re.fullmatch(r"[0-9]{1,3}", f) for f in wanted):
        return None
    age, gender = int(wanted[0]), int(wanted[1])
    race = int(wanted[2]) if len(wanted) == 3 else -1
    if age > 150 or gender not in (0, 1) or race not in (-1, *range(len(UTKFACE_RACES))):
        return None
    return age, gender, race


def _utk_from_items(items, where) -> Dataset:
    kept, attrs, skipped = [], [], []
    for item in items:
        parsed = parse_utkface_name(item[1])
        if parsed is None:
            skipped.append(pathlib.PurePosixPath(item[1]).name)
        else:
            kept.append(item)
            attrs.append(parsed)
    if not kept:
        raise DataError(f"utkface: {where} holds no <age>_<gender>_<race>_<time>.jpg images "
                        f"({len(skipped)} unparsable names); re-download UTKFace.tar.gz.")
    if skipped:
        logging.warning("utkface: skipped %d files whose names do not parse, e.g. %s.",
                        len(skipped), skipped[:3])
    images = _decode_images(kept, where, None, "UTKFace images (all must share one size)")
    age, gender, race = (np.array(col, np.int32) for col in zip(*attrs))
    train = Split(images, gender.copy(), {"age": age, "gender": gender, "race": race})
    info = {"skipped_names": len(skipped), "skipped_examples": skipped[:5],
            "missing_race": int((race == -1).sum())}
    return Dataset("utkface", train, None, UTKFACE_GENDERS,
                   {"race": UTKFACE_RACES, "gender": UTKFACE_GENDERS}, info)


def _find_utkface(root: pathlib.Path) -> _Source | None:
    for folder in (root / "UTKFace", root / "utkface" / "UTKFace", root / "utkface"):
        if folder.is_dir() and any(p.suffix.lower() == ".jpg" for p in folder.iterdir()):
            return _folder_source("utkface", "local-image-folder", folder, _want_utk,
                                  _utk_from_items)
    for base in (root, root / "utkface"):
        tarballs = sorted(base.glob("UTKFace*.tar.gz")) if base.is_dir() else []
        if tarballs:
            return _archive_source("utkface", "local-image-archive", tarballs[0], _want_utk,
                                   _utk_from_items)
    return None


_FINDERS: dict[str, Callable[[pathlib.Path], _Source | None]] = {
    "mnist": _find_mnist, "cifar10": _find_cifar10,
    "att_faces": _find_att_faces, "utkface": _find_utkface,
}

_EXPECTED_LAYOUT = {
    "mnist": ("train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
              "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (or uncompressed) "
              "in {d}/mnist or {d}"),
    "cifar10": ("the binary release cifar-10-binary.tar.gz or its folder cifar-10-batches-bin/ "
                "in {d} or {d}/cifar10, or an image tree train/<class>/*.png|jpg + "
                "test/<class>/... as folder {d}/cifar10 or {d}/cifar10-jpeg or as "
                "{d}/cifar10-jpeg.tar.gz or {d}/cifar10.tar.gz"),
    "att_faces": "att_faces/s1..s40/1..10.pgm as folder {d}/att_faces, {d}/att_faces.tar.gz "
                 "or {d}/att_faces.zip",
    "utkface": ("UTKFace/<age>_<gender>_<race>_<time>.jpg.chip.jpg as folder {d}/UTKFace or "
                "an archive {d}/UTKFace*.tar.gz (e.g. UTKFace-64px.tar.gz, UTKFace.tar.gz)"),
}


def _missing_message(name: str, root: pathlib.Path | None, allow_download: bool) -> str:
    where = str(root) if root is not None else "<data_dir>"
    searched = (f"searched {root}" if root is not None
                else "no data folder was given (data_dir argument and JAXPET_DATA_DIR unset)")
    msg = f"{name}: no local copy found; expected {_EXPECTED_LAYOUT[name].format(d=where)}; " \
          f"{searched}. Fix: {_HINT}"
    if name in _TFDS_DATASETS:
        msg += (", or allow the TFDS download (allow_download=True; needs tensorflow-datasets "
                "and internet)" if not allow_download else
                ", or make the TFDS download work (needs tensorflow-datasets and internet)")
    else:
        msg += f" ({name} has no TFDS download)"
    return msg + "."


# --------------------------------------------------------------------------- TFDS


def _tfds_source(name: str, missing: str) -> _Source:
    """A TF-free TFDS source (``tfds.data_source``); tensorflow_datasets is imported only here."""
    try:
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise DataError(f"{missing} (TFDS download unavailable: tensorflow-datasets is not "
                        "installed; pip install tensorflow-datasets)") from e
    try:
        version = str(tfds.builder(name).info.version)
    except Exception as e:  # noqa: BLE001 - any TFDS failure becomes a DataError
        raise DataError(f"{missing} (TFDS failed: {type(e).__name__}: {e})") from e
    shape = (28, 28, 1) if name == "mnist" else (32, 32, 3)
    classes = MNIST_CLASSES if name == "mnist" else CIFAR10_CLASSES

    def load() -> Dataset:
        splits = {}
        for split in ("train", "test"):
            try:
                source = tfds.data_source(name, split=split, download=True)
                n = len(source)
                images = np.empty((n, *shape), np.uint8)
                labels = np.empty((n,), np.int64)
                for i in range(n):  # per item: the mocked source has no working batch read
                    example = source[i]
                    image = np.asarray(example["image"])
                    if image.shape != shape:
                        raise DataError(f"TFDS {name}/{version} {split} example {i} has shape "
                                        f"{image.shape}, expected {shape}; clear the TFDS "
                                        "data folder and re-download.")
                    images[i] = image
                    labels[i] = example["label"]
            except DataError:
                raise
            except Exception as e:  # noqa: BLE001 - offline/missing download -> DataError
                raise DataError(f"{missing} (TFDS could not provide {name}/{version} {split}: "
                                f"{type(e).__name__}: {e})") from e
            if n and (labels.min() < 0 or labels.max() >= len(classes)):
                raise DataError(f"TFDS {name} {split} has labels outside 0..{len(classes) - 1}; "
                                "clear the TFDS data folder and re-download.")
            splits[split] = Split(images, labels.astype(np.int32))
        return Dataset(name, splits["train"], splits["test"], classes,
                       info={"tfds_name": name, "tfds_version": version})

    return _Source("tfds", f"tfds:{name}/{version}", _hash([name, "tfds", name, version]), load)
