"""MNIST from IDX files: exact decode, both file layouts, every kind of broken file."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from jaxpet import data


def test_mnist_idx_gz_decodes_exactly(mnist_data, cache):
    root, arrays = mnist_data
    ds = data.load_dataset("mnist", root, cache_dir=cache)
    assert ds.class_names == tuple("0123456789") == data.MNIST_CLASSES
    assert ds.info["source_kind"] == "local-idx" and ds.info["from_cache"] is False
    for split in ("train", "test"):
        got = getattr(ds, split)
        assert got.images.dtype == np.uint8 and got.images.shape[1:] == (28, 28, 1)
        assert got.labels.dtype == np.int32
        np.testing.assert_array_equal(got.images[..., 0], arrays[f"{split}_images"])
        np.testing.assert_array_equal(got.labels, arrays[f"{split}_labels"])
    assert dict(ds.train.attributes) == {} and len(ds.train) == 20


def test_mnist_uncompressed_files_directly_in_data_dir(tmp_path, small_counts, cache, make):
    images = make.rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    for base, arr in [("train-images-idx3-ubyte", images), ("t10k-images-idx3-ubyte", images[:10]),
                      ("train-labels-idx1-ubyte", np.arange(20) % 10),
                      ("t10k-labels-idx1-ubyte", np.arange(10))]:
        (tmp_path / base).write_bytes(make.idx_bytes(arr))
    ds = data.load_dataset("mnist", tmp_path, use_cache=False)
    np.testing.assert_array_equal(ds.test.images[..., 0], images[:10])
    assert ds.info["cache_path"] is None and not cache.exists()


def test_mnist_truncated_gzip_names_file(mnist_data):
    root, _ = mnist_data
    path = root / "mnist" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(data.DataError, match=r"train-images-idx3-ubyte\.gz.*re-download"):
        data.load_dataset("mnist", root, use_cache=False)


def test_mnist_truncated_idx_and_bad_magic(mnist_data, make):
    root, arrays = mnist_data
    path = root / "mnist" / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(make.idx_bytes(arrays["test_images"])[:-5]))
    with pytest.raises(data.DataError, match=r"t10k-images-idx3-ubyte\.gz holds .* bytes"):
        data.load_dataset("mnist", root, use_cache=False)
    path.write_bytes(gzip.compress(b"\0\0\x0d\x03" + make.idx_bytes(arrays["test_images"])[4:]))
    with pytest.raises(data.DataError, match="not an unsigned-byte IDX"):
        data.load_dataset("mnist", root, use_cache=False)


def test_mnist_wrong_dims_and_labels(mnist_data, make):
    root, arrays = mnist_data
    folder = root / "mnist"
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(make.idx_bytes(np.zeros((10, 28, 27), np.uint8))))
    with pytest.raises(data.DataError, match="expected 28x28"):
        data.load_dataset("mnist", root, use_cache=False)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(make.idx_bytes(arrays["test_images"])))
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(make.idx_bytes(np.full(10, 12))))
    with pytest.raises(data.DataError, match="label 12"):
        data.load_dataset("mnist", root, use_cache=False)


def test_mnist_label_image_count_mismatch(mnist_data, make):
    root, _ = mnist_data
    (root / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(make.idx_bytes(np.arange(19) % 10)))
    with pytest.raises(data.DataError, match="20 images but .* 19 labels"):
        data.load_dataset("mnist", root, use_cache=False)


def test_mnist_partial_folder_names_missing_file(mnist_data):
    root, _ = mnist_data
    (root / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(data.DataError, match=r"missing t10k-labels-idx1-ubyte\.gz"):
        data.load_dataset("mnist", root, allow_download=False)


def test_same_format_and_counts_different_pixels_different_digest(mnist_data, tmp_path, make,
                                                                  cache):
    """Two MNIST copies alike in every way but one pixel are told apart; a byte-equal copy
    elsewhere is not (the digest is of the content, not the path)."""
    root, arrays = mnist_data
    make.write_mnist(tmp_path / "same" / "mnist", arrays)
    changed = dict(arrays, train_images=arrays["train_images"].copy())
    changed["train_images"][7, 3, 5] ^= 1
    make.write_mnist(tmp_path / "other" / "mnist", changed)
    first = data.load_dataset("mnist", root, cache_dir=cache)
    same = data.load_dataset("mnist", tmp_path / "same", cache_dir=cache)
    other = data.load_dataset("mnist", tmp_path / "other", cache_dir=cache)
    assert len(other.train) == len(first.train) and len(other.test) == len(first.test)
    assert other.digest != first.digest
    assert same.digest == first.digest and same.info["source"] != first.info["source"]
    assert first.info["digest"] == first.digest and other.info["digest"] == other.digest
