"""The real releases, when $JAXPET_DATA_DIR names a folder laid out like ../shared/data."""

from __future__ import annotations

import pathlib
import time

import numpy as np
import pytest

from jaxpet import data

REAL_FILES = {
    "mnist": "mnist/train-images-idx3-ubyte.gz",
    "cifar10": "cifar10-jpeg.tar.gz",
    "att_faces": "att_faces.tar.gz",
    "utkface": "UTKFace-64px.tar.gz",
}
MNIST_TRAIN = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("real_cache")


@pytest.mark.parametrize("name", data.DATASETS)
def test_real_data(name, real_cache):
    root = data.default_data_dir()
    if root is None:
        pytest.skip("JAXPET_DATA_DIR is unset; point it at a folder like ../shared/data")
    if not (pathlib.Path(root) / REAL_FILES[name]).exists():
        pytest.skip(f"{REAL_FILES[name]} not in JAXPET_DATA_DIR={root}")
    start = time.perf_counter()
    ds = data.load_dataset(name, cache_dir=real_cache, allow_download=False)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    warm = data.load_dataset(name, cache_dir=real_cache, allow_download=False)
    print(f"{name}: cold {cold:.2f}s, warm {time.perf_counter() - start:.2f}s, "
          f"digest {ds.digest}")
    assert ds.info["from_cache"] is False and warm.info["from_cache"] is True
    assert warm.digest == ds.digest == ds.info["digest"]
    np.testing.assert_array_equal(warm.train.images, ds.train.images)
    np.testing.assert_array_equal(warm.train.labels, ds.train.labels)
    train_counts = np.bincount(ds.train.labels).tolist()
    if name == "mnist":
        assert ds.train.images.shape == (60_000, 28, 28, 1)
        assert train_counts == MNIST_TRAIN
        assert np.bincount(ds.test.labels).tolist() == MNIST_TEST
    elif name == "cifar10":
        assert ds.train.images.shape == (50_000, 32, 32, 3)
        assert train_counts == [5000] * 10
        assert np.bincount(ds.test.labels).tolist() == [1000] * 10
    elif name == "att_faces":
        assert ds.train.images.shape == (400, 112, 92, 1) and train_counts == [10] * 40
        assert ds.train.attributes["image_index"][:10].tolist() == list(range(1, 11))
    else:
        assert ds.train.images.shape == (23_708, 64, 64, 3)
        assert train_counts == [12_391, 11_317]
        race = ds.train.attributes["race"]
        assert np.bincount(race[race >= 0]).tolist() == [10_078, 4_526, 3_434, 3_975, 1_692]
        assert int((race == -1).sum()) == 3 == ds.info["missing_race"]
        assert ds.info["skipped_names"] == 0
