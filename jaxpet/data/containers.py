"""The loaded-data containers: :class:`Split`, :class:`Dataset` and :class:`DataError`.

A :class:`Dataset` carries a content digest (:attr:`Dataset.digest`) so that
saved work can be keyed on the data actually loaded, not only on its name.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import functools
import types
from typing import Any

import numpy as np

from jaxpet import files
from jaxpet.errors import UserError


class DataError(UserError):
    """A dataset is missing, incomplete, corrupt or unsafe; the message says how to fix it."""


def describe(x) -> str:
    """A short description of ``x`` for error messages: dtype and shape, or the type."""
    if isinstance(x, np.ndarray):
        return f"{x.dtype} array of shape {x.shape}"
    return type(x).__name__


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
                            f"{describe(self.images)}; convert it with np.asarray(..., np.uint8).")
        n = self.images.shape[0]
        for what, arr in [("labels", self.labels), *(
                (f"attributes[{k!r}]", v) for k, v in self.attributes.items())]:
            if not isinstance(arr, np.ndarray) or arr.dtype != np.int32 or arr.shape != (n,):
                raise DataError(f"Split.{what} must be an int32 array of shape ({n},) to match "
                                f"the images, got {describe(arr)}; fix the array that builds it.")
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

    @functools.cached_property
    def digest(self) -> str:
        """Hex digest of the content: name, class and attribute names, every split's arrays.

        Two copies that differ in any pixel, label or attribute get different
        digests. Computed on first access (a dataset built in code), or set by
        :func:`~jaxpet.data.load_dataset` when it decodes or reads the cache.
        """
        return content_digest(self)


def content_digest(dataset: Dataset) -> str:
    """The content digest of ``dataset`` (see :attr:`Dataset.digest`), via :func:`files.digest`."""
    def split_parts(split: Split | None):
        if split is None:
            return None
        return {"images": split.images, "labels": split.labels,
                "attributes": dict(split.attributes)}

    return files.digest("dataset", dataset.name, dataset.class_names,
                       dict(dataset.attribute_names),
                       split_parts(dataset.train), split_parts(dataset.test))


def with_digest(dataset: Dataset, digest: str) -> Dataset:
    """``dataset`` with its digest set to a value computed before (no rehash); returns it."""
    dataset.__dict__["digest"] = digest  # what functools.cached_property stores
    return dataset
