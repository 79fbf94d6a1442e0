"""MNIST and CIFAR-10 from TensorFlow Datasets: the fallback when no local copy exists.

Read through ``tfds.data_source`` (array_record, works without TensorFlow).
``tensorflow_datasets`` is imported only here and only when this source is
used, so :mod:`jaxpet.data` imports on machines without it. When TFDS has no
prepared copy, the download hosts are probed with a short timeout first: with
no network the load fails in seconds, where TFDS itself retries for minutes.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import queue
import socket
import threading
import time
import urllib.parse
import urllib.request

import numpy as np

from jaxpet.data import sources
from jaxpet.data.cifar10 import CIFAR10_CLASSES
from jaxpet.data.containers import DataError, Dataset, Split
from jaxpet.data.mnist import MNIST_CLASSES

TFDS_DATASETS = ("mnist", "cifar10")
# Where a TFDS download starts: its mirror of prepared datasets, then the release's server.
DOWNLOAD_HOSTS = {
    "mnist": ("storage.googleapis.com",),
    "cifar10": ("storage.googleapis.com", "www.cs.toronto.edu"),
}
PROBE_TIMEOUT_S = 3.0
# Where TFDS lists its datasets (named in the unknown-name error instead of the list itself).
CATALOG = "https://www.tensorflow.org/datasets/catalog/overview"


def _targets(name: str) -> list[tuple[str, int]]:
    """(host, port) pairs to try: the download hosts on 443, or the HTTPS proxy if one is set."""
    hosts = [(host, 443) for host in DOWNLOAD_HOSTS[name]]
    proxy = urllib.request.getproxies().get("https")
    if proxy and not all(urllib.request.proxy_bypass(host) for host, _ in hosts):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if parts.hostname:
            return [(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))]
    return hosts


def _connect(host: str, port: int, timeout: float, results: queue.Queue) -> None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            results.put((host, port, None))
    except OSError as e:
        results.put((host, port, f"{type(e).__name__}: {e}"))


def probe_download(name: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when a TFDS download of ``name`` can start (a host answers), else why not.

    Hosts are tried at once, in daemon threads, so a hanging DNS lookup cannot
    hold the caller past ``timeout`` seconds.
    """
    targets = _targets(name)
    results: queue.Queue = queue.Queue()
    for host, port in targets:
        threading.Thread(target=_connect, args=(host, port, timeout, results),
                         daemon=True).start()
    deadline = time.monotonic() + timeout
    failures: list[str] = []
    while len(failures) < len(targets):
        try:
            host, port, why = results.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if why is None:
            return None
        failures.append(f"{host}:{port} ({why})")
    if len(failures) < len(targets):
        failures.append(f"{len(targets) - len(failures)} more not answering within {timeout:g}s")
    return "cannot connect to " + ", ".join(failures)


def _image_classification(builder, name: str, missing: str):
    """(image shape, class names) of a TFDS image-classification dataset, else a DataError."""
    if name in TFDS_DATASETS:
        return ((28, 28, 1), MNIST_CLASSES) if name == "mnist" else ((32, 32, 3), CIFAR10_CLASSES)
    try:
        features = builder.info.features
        shape, label = tuple(features["image"].shape), features["label"]
        classes = tuple(label.names) or tuple(str(i) for i in range(label.num_classes))
    except (KeyError, AttributeError, TypeError) as e:
        raise DataError(f"{missing} (TFDS {name} is not an image-classification dataset with "
                        f"'image' and 'label' features — export it to an .npz instead)") from e
    if None in shape:
        raise DataError(f"{missing} (TFDS {name} has images of varying size {shape} — resize "
                        "them and pass an .npz instead)")
    return shape, classes


@contextlib.contextmanager
def _quiet():
    """Only warnings from absl loggers meanwhile: TFDS logs every failed lookup of a name at
    INFO ("Failed to load ... from files: ... make sure you have the correct permissions"),
    which would precede and contradict jaxpet's own one-line error."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _one_line(error: Exception) -> str:
    """``type: first line of the message``: TFDS's messages run to hundreds of lines. A line
    that announces a list ("... closely match:") ends at the sentence before."""
    line = (str(error).strip().splitlines() or [""])[0]
    if line.endswith(":") and ". " in line:
        line = line[:line.rindex(". ") + 1]
    return f"{type(error).__name__}: {line}"


def _tfds_failure(tfds, name: str, error: Exception) -> str:
    """Why ``tfds.builder(name)`` failed, in one line: for an unknown name, the closest known
    names and where the list is, never TFDS's list of every dataset."""
    not_found = getattr(getattr(tfds.core, "registered", None), "DatasetNotFoundError", ())
    if isinstance(error, not_found):
        base = name.split("/", 1)[0].split(":", 1)[0]
        try:
            known = tfds.list_builders(with_community_datasets=False)
        except Exception:  # noqa: BLE001 - the suggestion is optional
            known = []
        close = difflib.get_close_matches(base, known, n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        return (f"TFDS has no dataset {base!r}{hint} — its names are listed at {CATALOG} and "
                "by tensorflow_datasets.list_builders()")
    return f"TFDS failed: {_one_line(error)}"


def source(name: str, missing: str) -> sources.Source:
    """A TF-free TFDS source (``tfds.data_source``); ``missing`` starts every error message,
    which is one line whatever TFDS says (its unknown-name error lists every dataset)."""
    if not name.strip():
        raise DataError(f"{missing} (no dataset name after 'tfds:'; write e.g. "
                        "tfds:fashion_mnist)")
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError(f"{missing} (TFDS download unavailable: tensorflow-datasets is not "
                        "installed; pip install tensorflow-datasets)") from e
    try:
        with _quiet():
            builder = tfds.builder(name)
        version = str(builder.info.version)
    except Exception as e:  # any TFDS failure becomes a one-line DataError
        raise DataError(f"{missing} ({_tfds_failure(tfds, name, e)})") from e
    shape, classes = _image_classification(builder, name, missing)

    def load() -> Dataset:
        try:
            prepared = builder.is_prepared()
        except Exception:  # noqa: BLE001 - unknown state: let the probe decide
            prepared = False
        if not prepared:
            why = probe_download(name if name in DOWNLOAD_HOSTS else "mnist")
            if why is not None:
                raise DataError(f"{missing} (TFDS has no prepared {name}/{version} in "
                                f"{builder.data_dir} and cannot download it: {why})")
        splits = {}
        for split in ("train", "test"):
            try:
                data_source = tfds.data_source(name, split=split, download=True)
                n = len(data_source)
                images = np.empty((n, *shape), np.uint8)
                labels = np.empty((n,), np.int64)
                for i in range(n):  # per item: the mocked source has no working batch read
                    example = data_source[i]
                    image = np.asarray(example["image"])
                    if image.shape != shape:
                        raise DataError(f"TFDS {name}/{version} {split} example {i} has shape "
                                        f"{image.shape}, expected {shape}; clear the TFDS "
                                        "data folder and re-download.")
                    images[i] = image
                    labels[i] = example["label"]
            except DataError:
                raise
            except Exception as e:  # offline/missing download -> DataError
                raise DataError(f"{missing} (TFDS could not provide {name}/{version} {split}: "
                                f"{_one_line(e)})") from e
            if n and (labels.min() < 0 or labels.max() >= len(classes)):
                raise DataError(f"TFDS {name} {split} has labels outside 0..{len(classes) - 1}; "
                                "clear the TFDS data folder and re-download.")
            splits[split] = Split(images, labels.astype(np.int32))
        return Dataset(name, splits["train"], splits["test"], classes,
                       info={"tfds_name": name, "tfds_version": version})

    return sources.Source("tfds", f"tfds:{name}/{version}",
                          sources.fingerprint(name, "tfds", name, version), load)
