"""The real releases, when $JAXPET_DATA_DIR names a folder laid out like ../shared/data.

Decoding a release (60,000 CIFAR-10 JPEGs, 23,708 UTKFace ones) is single-threaded Python and
PIL, tens of seconds for the largest. Each dataset's check (:func:`check_release`, unchanged:
a cold load that decodes the release and writes the cache, a warm load from the cache, and the
release's exact counts) therefore runs in a child process of its own, all started together when
the first of them is needed, so that they share the machine's cores; each test waits for its own.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
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

# Runs check_release(name, cache_dir) of this file in a child process.
_CHILD = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("real_data_checks", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module.check_release(sys.argv[2], sys.argv[3])
"""


def check_release(name: str, cache_dir: str) -> None:
    """Loads ``name`` from $JAXPET_DATA_DIR twice through an empty cache folder (decoded, then
    from the cache) and checks both loads against the release's known contents."""
    start = time.perf_counter()
    ds = data.load_dataset(name, cache_dir=cache_dir, allow_download=False)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    warm = data.load_dataset(name, cache_dir=cache_dir, allow_download=False)
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


def _skip_reason(name: str) -> str | None:
    root = data.default_data_dir()
    if root is None:
        return "JAXPET_DATA_DIR is unset; point it at a folder like ../shared/data"
    if not (pathlib.Path(root) / REAL_FILES[name]).exists():
        return f"{REAL_FILES[name]} not in JAXPET_DATA_DIR={root}"
    return None


@pytest.fixture(scope="session")
def real_checks(request, tmp_path_factory):
    """``wait(name)`` -> (exit code, output) of :func:`check_release` for ``name``. The checks
    of every dataset this session runs (and has the files of) start together on first use,
    each in its own process with its own empty cache folder."""
    selected = [item.callspec.params["name"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_real_data"]
    children = {}
    for name in dict.fromkeys(selected):
        if _skip_reason(name) is None:
            folder = tmp_path_factory.mktemp(f"real_{name}")
            log = open(folder / "output.txt", "w+")  # closed at the end of the session
            process = subprocess.Popen(
                [sys.executable, "-c", _CHILD, __file__, name, str(folder / "cache")],
                stdout=log, stderr=subprocess.STDOUT, text=True)
            children[name] = (process, log)

    def wait(name):
        process, log = children[name]
        process.wait(timeout=900)
        log.seek(0)
        return process.returncode, log.read()

    yield wait
    for process, log in children.values():
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


@pytest.mark.parametrize("name", data.DATASETS)
def test_real_data(name, real_checks):
    reason = _skip_reason(name)
    if reason is not None:
        pytest.skip(reason)
    returncode, output = real_checks(name)
    print(output)
    assert returncode == 0, output[-4000:]
