"""load_dataset: the missing-data message, misuse, default folders, the count checks."""

from __future__ import annotations

import pathlib

import pytest

from jaxpet import data
from jaxpet.data import counts


def test_missing_dataset_message(tmp_path, monkeypatch):
    with pytest.raises(data.DataError) as err:
        data.load_dataset("mnist", tmp_path, allow_download=False)
    msg = str(err.value)
    for needle in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", str(tmp_path),
                   "JAXPET_DATA_DIR", "--data_dir", "TFDS"):
        assert needle in msg
    monkeypatch.delenv("JAXPET_DATA_DIR", raising=False)
    with pytest.raises(data.DataError, match=r"att_faces\.tar\.gz.*JAXPET_DATA_DIR unset"):
        data.load_dataset("att_faces")
    with pytest.raises(data.DataError, match="UTKFace.*no TFDS download"):
        data.load_dataset("utkface", tmp_path)


def test_bad_name_and_missing_folder(tmp_path):
    with pytest.raises(data.DataError, match="unknown dataset 'imagenet'.*mnist"):
        data.load_dataset("imagenet", tmp_path)
    with pytest.raises(data.DataError, match="does not exist"):
        data.load_dataset("mnist", tmp_path / "nope")


def test_default_dirs(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXPET_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("JAXPET_CACHE_DIR", str(tmp_path / "c"))
    assert data.default_data_dir() == str(tmp_path)
    assert data.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("JAXPET_DATA_DIR")
    monkeypatch.delenv("JAXPET_CACHE_DIR")
    assert data.default_data_dir() is None
    assert data.default_cache_dir() == pathlib.Path.home() / ".cache" / "jaxpet"


def test_expected_counts_reject_incomplete_copy(mnist_data, monkeypatch):
    root, _ = mnist_data
    assert data.EXPECTED_COUNTS is counts.EXPECTED_COUNTS  # one table, patched in place
    monkeypatch.setitem(data.EXPECTED_COUNTS, "mnist", {"train": 60_000, "test": 10_000})
    with pytest.raises(data.DataError, match="found 20 examples .* expected 60000"):
        data.load_dataset("mnist", root, use_cache=False)


def test_expected_counts_checked_on_cache_hits_and_balance(mnist_data, cache, monkeypatch):
    root, _ = mnist_data
    data.load_dataset("mnist", root, cache_dir=cache)
    monkeypatch.setitem(data.EXPECTED_COUNTS, "mnist", {"train": 21})
    with pytest.raises(data.DataError, match="found 20 examples .* expected 21"):
        data.load_dataset("mnist", root, cache_dir=cache)
    assert "cifar10" in data.BALANCED_DATASETS and "mnist" not in data.BALANCED_DATASETS


def test_public_names():
    for name in ("DATASETS", "DataError", "Dataset", "Split", "Normalize", "IDENTITY",
                 "NORMALIZATION", "normalizer", "load_dataset", "resize_images",
                 "parse_utkface_name", "EXPECTED_COUNTS", "BALANCED_DATASETS",
                 "default_data_dir", "default_cache_dir", "MNIST_CLASSES", "CIFAR10_CLASSES",
                 "UTKFACE_GENDERS", "UTKFACE_RACES", "ATT_FACES_SHAPE"):
        assert name in data.__all__ and hasattr(data, name)
    assert data.DATASETS == ("mnist", "cifar10", "att_faces", "utkface")
