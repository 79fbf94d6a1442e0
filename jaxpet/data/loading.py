"""The entry point :func:`load_dataset`: find a copy, read it through the cache, check it.

Sources are tried in order: a local folder (the finder of each dataset's
module), then TFDS for MNIST and CIFAR-10, else a :class:`DataError` that lists
the files expected and where.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time

from absl import logging

from jaxpet.data import att_faces, cifar10, mnist, tfds, utkface
from jaxpet.data.cache import cache_file, read_cache, write_cache
from jaxpet.data.containers import DataError, Dataset, with_digest
from jaxpet.data.counts import check_counts

# The finder registry: dataset name -> its module, with ``find(root)`` and ``LAYOUT``.
_SOURCES = {"mnist": mnist, "cifar10": cifar10, "att_faces": att_faces, "utkface": utkface}
DATASETS = tuple(_SOURCES)

_HINT = ("set --data_dir or JAXPET_DATA_DIR to a folder laid out like ../shared/data "
         "(see its README)")


def default_data_dir() -> str | None:
    """The local data folder from ``$JAXPET_DATA_DIR``, or None when unset/empty."""
    return os.environ.get("JAXPET_DATA_DIR") or None


def default_cache_dir() -> pathlib.Path:
    """The array cache folder: ``$JAXPET_CACHE_DIR``, else ``~/.cache/jaxpet``."""
    return pathlib.Path(os.environ.get("JAXPET_CACHE_DIR") or "~/.cache/jaxpet").expanduser()


def missing_message(name: str, root: pathlib.Path | None, allow_download: bool) -> str:
    """What to do when ``name`` has no local copy: the expected layout, where, and the fix."""
    where = str(root) if root is not None else "<data_dir>"
    searched = (f"searched {root}" if root is not None
                else "no data folder was given (data_dir argument and JAXPET_DATA_DIR unset)")
    msg = f"{name}: no local copy found; expected {_SOURCES[name].LAYOUT.format(d=where)}; " \
          f"{searched}. Fix: {_HINT}"
    if name in tfds.TFDS_DATASETS:
        msg += (", or allow the TFDS download (allow_download=True; needs tensorflow-datasets "
                "and internet)" if not allow_download else
                ", or make the TFDS download work (needs tensorflow-datasets and internet)")
    else:
        msg += f" ({name} has no TFDS download)"
    return msg + "."


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *,
                 cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
                 allow_download: bool = True) -> Dataset:
    """Load ``name`` from a local copy, else TFDS (mnist/cifar10 only), via the .npz cache.

    The local folder is ``data_dir``, else ``$JAXPET_DATA_DIR``; the cache folder is
    ``cache_dir``, else :func:`default_cache_dir`. ``use_cache=False`` neither reads
    nor writes the cache; ``allow_download=False`` never contacts TFDS. Raises
    :class:`DataError` when no usable copy exists or the copy is bad. The result's
    ``info["digest"]`` (and :attr:`Dataset.digest`) is its content digest.
    """
    if name.startswith("tfds:"):  # any TFDS image-classification dataset, by its TFDS name
        tfds_name = name[len("tfds:"):]
        tfds_source = tfds.source(tfds_name, f"{name}: not available (TFDS name {tfds_name!r}); "
                                  "check the name, or pass your data as an .npz of images and "
                                  "labels")
        return _load(tfds_name, tfds_source, cache_dir, use_cache)
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}, or "
                        "tfds:<name> for a TensorFlow Datasets image-classification dataset.")
    root = data_dir if data_dir is not None else default_data_dir()
    root_path = None
    if root is not None and str(root) != "":
        root_path = pathlib.Path(root).expanduser()
        if not root_path.is_dir():
            raise DataError(f"data folder {str(root_path)!r} does not exist or is not a folder; "
                            f"{_HINT}, or pass data_dir=None to use only the TFDS download.")
    source = _SOURCES[name].find(root_path) if root_path is not None else None
    if source is None:
        missing = missing_message(name, root_path, allow_download)
        if name in tfds.TFDS_DATASETS and allow_download:
            source = tfds.source(name, missing)
        else:
            raise DataError(missing)
    return _load(name, source, cache_dir, use_cache)


def _load(name: str, source, cache_dir, use_cache: bool) -> Dataset:
    """``source`` through the .npz cache; decoded (and digested) only on a cache miss."""
    cache_path = None
    if use_cache:
        folder = pathlib.Path(cache_dir).expanduser() if cache_dir is not None \
            else default_cache_dir()
        cache_path = cache_file(folder, name, source)
        start = time.perf_counter()
        cached = read_cache(cache_path, name, source)
        if cached is not None:
            logging.info("Loaded %s from cache %s (source %s: %s) in %.2fs.", name, cache_path,
                         source.kind, source.path, time.perf_counter() - start)
            return cached

    start = time.perf_counter()
    dataset = source.load()
    digest = dataset.digest  # once, here; the cache keeps it for later loads
    info = dict(dataset.info, source=source.path, source_kind=source.kind, from_cache=False,
                fingerprint=source.fingerprint, digest=digest,
                cache_path=str(cache_path) if cache_path is not None else None)
    dataset = with_digest(dataclasses.replace(dataset, info=info), digest)
    check_counts(dataset, source.path)
    logging.info("Loaded %s from %s (%s) in %.2fs: %d train%s examples, digest %s.", name,
                 source.path, source.kind, time.perf_counter() - start, len(dataset.train),
                 f" + {len(dataset.test)} test" if dataset.test is not None else "", digest)
    if cache_path is not None:
        write_cache(cache_path, dataset)
    return dataset
