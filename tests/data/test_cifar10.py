"""CIFAR-10: the binary release (tarball or folder), image trees, and the refused pickles."""

from __future__ import annotations

import numpy as np
import pytest

from jaxpet import data
from jaxpet.data import tfds as tfds_source


@pytest.mark.parametrize("as_folder", [False, True])
def test_cifar_binary_release(tmp_path, small_counts, make, as_folder):
    members, expected = make.cifar_binary_members()
    if as_folder:
        make.write_files(tmp_path, members)
    else:
        make.write_tar(tmp_path / "cifar-10-binary.tar.gz", members)
    ds = data.load_dataset("cifar10", tmp_path, use_cache=False)
    assert ds.info["source_kind"] == "local-cifar-binary"
    assert ds.class_names == data.CIFAR10_CLASSES
    for split in ("train", "test"):
        np.testing.assert_array_equal(getattr(ds, split).images, expected[split][0])
        np.testing.assert_array_equal(getattr(ds, split).labels, expected[split][1])


def test_cifar_binary_truncated_batch(tmp_path, small_counts, make):
    members, _ = make.cifar_binary_members()
    members = [(n, b[:-7] if n.endswith("data_batch_3.bin") else b) for n, b in members]
    make.write_files(tmp_path, members)
    with pytest.raises(data.DataError, match=r"data_batch_3\.bin .*not a multiple"):
        data.load_dataset("cifar10", tmp_path, use_cache=False)


def test_cifar_image_tree_folder_and_tarball_agree(tmp_path, small_counts, make):
    members, expected = make.cifar_image_members()
    make.write_files(tmp_path / "folder" / "cifar10", members)
    make.write_tar(tmp_path / "cifar10-jpeg.tar.gz", members)
    from_folder = data.load_dataset("cifar10", tmp_path / "folder", use_cache=False)
    from_tar = data.load_dataset("cifar10", tmp_path, use_cache=False)
    assert from_folder.info["source_kind"] == "local-image-folder"
    assert from_tar.info["source_kind"] == "local-image-archive"
    for split in ("train", "test"):
        images, labels, lossy = expected[split]
        got = getattr(from_tar, split)
        np.testing.assert_array_equal(got.labels, labels)
        np.testing.assert_array_equal(got.images[~lossy], images[~lossy])  # PNG: exact
        diff = np.abs(got.images[lossy].astype(int) - images[lossy].astype(int))
        assert diff.max() <= 3  # JPEG: flat colours come back nearly exact
        np.testing.assert_array_equal(getattr(from_folder, split).images, got.images)
    assert from_folder.digest == from_tar.digest  # same content, two containers


def test_cifar_image_wrong_size_names_file(tmp_path, small_counts, make):
    members, _ = make.cifar_image_members()
    bad = make.encode(make.rng.integers(0, 256, (31, 32, 3), dtype=np.uint8), "PNG")
    members = [(n, bad if n == "train/cat/0000.png" else b) for n, b in members]
    make.write_tar(tmp_path / "cifar10.tar.gz", members)
    with pytest.raises(data.DataError,
                       match=r"train/cat/0000\.png.* is 31x32x3 .*expected 32x32x3"):
        data.load_dataset("cifar10", tmp_path, use_cache=False)


def test_cifar_image_unknown_class_and_corrupt_image(tmp_path, small_counts, make):
    members, _ = make.cifar_image_members()
    make.write_files(tmp_path / "cifar10", members + [("train/kitten/0000.png", members[0][1])])
    with pytest.raises(data.DataError, match="unknown: \\['kitten'\\]"):
        data.load_dataset("cifar10", tmp_path, use_cache=False)
    (tmp_path / "cifar10" / "train" / "kitten" / "0000.png").unlink()
    (tmp_path / "cifar10" / "test" / "dog" / "0000.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.raises(data.DataError, match=r"could not decode image .*dog.*0000\.jpg"):
        data.load_dataset("cifar10", tmp_path, use_cache=False)


def test_cifar_pickle_release_refused(tmp_path, monkeypatch):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"\x80\x04 never unpickled")
    monkeypatch.setattr(tfds_source, "source", lambda *a: pytest.fail("TFDS must not be tried"))
    with pytest.raises(data.DataError, match=r"pickles are not read.*cifar-10-binary\.tar\.gz"):
        data.load_dataset("cifar10", tmp_path)
