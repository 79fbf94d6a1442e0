"""Exact example counts of the official releases, checked after every load (source or cache).

A half-copied folder is refused instead of silently used. Tests with small
fixtures change entries of :data:`EXPECTED_COUNTS` in place (``monkeypatch.setitem``);
a missing dataset or split entry means "not checked".
"""

from __future__ import annotations

import numpy as np

from jaxpet.data.containers import DataError, Dataset

EXPECTED_COUNTS: dict[str, dict[str, int]] = {
    "mnist": {"train": 60_000, "test": 10_000},
    "cifar10": {"train": 50_000, "test": 10_000},
    "att_faces": {"train": 400},
}
# Datasets whose checked splits must also be class-balanced (count / num_classes each).
BALANCED_DATASETS = frozenset({"cifar10", "att_faces"})


def check_counts(dataset: Dataset, where: str) -> None:
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
