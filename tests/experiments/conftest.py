"""Tiny synthetic datasets for the experiment tests (seconds on a CPU, never the real data)."""

from __future__ import annotations

import numpy as np
import pytest

from jaxpet import data


def tiny_dataset(n_train=800, n_test=200, seed=0, name="mnist", shape=(8, 8, 1)):
    """Random images and labels: a model memorises them, so membership leaks on purpose."""
    rng = np.random.default_rng(seed)

    def split(n):
        labels = rng.integers(0, 10, n).astype(np.int32)
        images = rng.integers(0, 256, (n, *shape)).astype(np.uint8)
        return data.Split(images=images, labels=labels)

    return data.Dataset(name=name, train=split(n_train), test=split(n_test),
                        class_names=tuple(str(i) for i in range(10)), info={"source": "synthetic"})


@pytest.fixture(scope="session")
def make_dataset():
    """``make_dataset(seed=..., n_train=...)``: a tiny synthetic dataset (see tiny_dataset)."""
    return tiny_dataset
