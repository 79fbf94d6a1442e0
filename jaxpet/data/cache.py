"""The array cache: decoded datasets as uncompressed ``.npz`` files (never pickles).

One file per dataset and source fingerprint; its ``__meta__`` entry (JSON)
holds the names, the source fingerprint and the dataset's info, content digest
included, so a cache hit neither decodes nor rehashes. A file that does not
load, or belongs to another source, is ignored with a warning and rebuilt.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from absl import logging
import numpy as np

from jaxpet import files
from jaxpet.data.containers import Dataset, Split, with_digest
from jaxpet.data.counts import check_counts
from jaxpet.data.sources import CACHE_FORMAT, Source
from jaxpet.errors import UserError


def cache_file(cache_dir: pathlib.Path, name: str, source: Source) -> pathlib.Path:
    """Where the cache entry of ``name`` read from ``source`` lives."""
    return cache_dir / f"{name}-{source.fingerprint[:24]}.npz"


def read_cache(path: pathlib.Path, name: str, source: Source) -> Dataset | None:
    """The cached dataset, or None when absent; an unreadable/stale file is logged and ignored."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["__meta__"].tobytes().decode("utf-8"))
            if meta.get("format") != CACHE_FORMAT or meta.get("name") != name \
                    or meta.get("fingerprint") != source.fingerprint:
                raise ValueError("cache entry belongs to another source or format")
            splits: dict[str, Any] = {}  # a Split, or None for a split the entry lacks
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
        check_counts(dataset, str(path))
        if isinstance(info.get("digest"), str):  # entries written before digests: lazy
            with_digest(dataset, info["digest"])
        return dataset
    except Exception as e:  # noqa: BLE001 - any unreadable cache is rebuilt, never fatal
        logging.warning("Ignoring unreadable cache file %s (%s: %s); rebuilding it from %s.",
                        path, type(e).__name__, e, source.path)
        return None


def write_cache(path: pathlib.Path, dataset: Dataset) -> None:
    """Write ``dataset`` as .npz atomically; a failed write is logged, never fatal."""
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
    meta = {"format": CACHE_FORMAT, "name": dataset.name,
            "fingerprint": dataset.info["fingerprint"], "splits": splits_meta,
            "class_names": list(dataset.class_names),
            "attribute_names": {k: list(v) for k, v in dataset.attribute_names.items()},
            "info": info}
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8)
    try:
        # Uncompressed: loading it back must stay well under a second.
        # (numpy's stub would match a key "allow_pickle" to savez's flag; the keys are names.)
        files.atomic_write(path, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]
        logging.info("Cached %s arrays at %s.", dataset.name, path)
    except (OSError, UserError) as e:  # UserError: the disk is full
        logging.warning("Could not write cache file %s (%s); continuing without it.", path, e)
