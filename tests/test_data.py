"""Tests for jaxpet.data: fixtures in the real release formats, bad inputs, cache, TFDS, real data.

Fixture datasets are tiny, so tests that use them shrink ``data.EXPECTED_COUNTS``
(via the ``small_counts`` fixture) to the fixture sizes. Real-data tests run
only when $JAXPET_DATA_DIR names a folder laid out like ../shared/data.
"""

from __future__ import annotations

import gzip
import io
import os
import pathlib
import struct
import subprocess
import sys
import tarfile
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from jaxpet import data

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------- writers


def idx_bytes(arr: np.ndarray) -> bytes:
    """An unsigned-byte IDX file holding ``arr``."""
    return (b"\0\0\x08" + bytes([arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
            + arr.astype(np.uint8).tobytes())


def encode(arr: np.ndarray, fmt: str) -> bytes:
    """``arr`` [H, W, C] uint8 encoded as PNG / JPEG / PGM bytes."""
    im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    buf = io.BytesIO()
    if fmt == "JPEG":
        im.save(buf, format="JPEG", quality=95)
    else:
        im.save(buf, format=fmt)
    return buf.getvalue()


def write_tar(path: pathlib.Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w:gz") as tf:
        for name, blob in members:
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))


def write_zip(path: pathlib.Path, members: list[tuple[str, bytes]]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, blob in members:
            zf.writestr(zipfile.ZipInfo(name), blob)


def write_files(root: pathlib.Path, members: list[tuple[str, bytes]]) -> None:
    for name, blob in members:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)


def flat(value: int, shape=(32, 32, 3)) -> np.ndarray:
    """A flat-coloured image: survives JPEG almost exactly, so lossy decodes can be checked."""
    return np.full(shape, value, np.uint8)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def small_counts(monkeypatch):
    """Exact-count table shrunk to the fixture sizes (still checked, balance included)."""
    monkeypatch.setattr(data, "EXPECTED_COUNTS", {
        "mnist": {"train": 20, "test": 10},
        "cifar10": {"train": 20, "test": 10},
        "att_faces": {"train": 30},
    })


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


@pytest.fixture
def mnist_data(tmp_path, small_counts):
    """data_dir/mnist/ with the four gzip IDX files; returns (data_dir, arrays written)."""
    arrays = {
        "train_images": RNG.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "train_labels": np.arange(20) % 10,
        "test_images": RNG.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        "test_labels": RNG.integers(0, 10, 10),
    }
    folder = tmp_path / "data" / "mnist"
    folder.mkdir(parents=True)
    for key, base in data._MNIST_FILES.items():
        (folder / f"{base}.gz").write_bytes(gzip.compress(idx_bytes(arrays[key])))
    return tmp_path / "data", arrays


def cifar_binary_members():
    """Members of cifar-10-binary.tar.gz (5 x 4 train records, 10 test) and the expected arrays."""
    members, expected = [], {"train": ([], []), "test": ([], [])}
    for batch in [*data._CIFAR_BIN_TRAIN, data._CIFAR_BIN_TEST]:
        split = "test" if batch == data._CIFAR_BIN_TEST else "train"
        start = 0 if split == "test" else 4 * data._CIFAR_BIN_TRAIN.index(batch)
        labels = (np.arange(10) if split == "test" else np.arange(start, start + 4)) % 10
        chw = RNG.integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8)
        records = np.concatenate([labels[:, None].astype(np.uint8), chw.reshape(len(labels), -1)],
                                 axis=1)
        members.append((f"cifar-10-batches-bin/{batch}", records.tobytes()))
        expected[split][0].append(chw.transpose(0, 2, 3, 1))
        expected[split][1].append(labels)
    members.append(("cifar-10-batches-bin/batches.meta.txt",
                    ("\n".join(data.CIFAR10_CLASSES) + "\n\n").encode()))
    members.append(("cifar-10-batches-bin/readme.html", b"<html></html>"))
    return members, {s: (np.concatenate(i), np.concatenate(l)) for s, (i, l) in expected.items()}


def cifar_image_members(size=(32, 32)):
    """train/<class>/NNNN.{png,jpg} (2 per class) and test/ (1 per class) plus expectations."""
    members, expected = [], {}
    for split, per_class in (("train", 2), ("test", 1)):
        images, labels, lossy = [], [], []
        for c, cls in enumerate(data.CIFAR10_CLASSES):
            for k in range(per_class):
                if (c + k) % 2:  # PNG: random pixels, must decode exactly
                    img = RNG.integers(0, 256, (*size, 3), dtype=np.uint8)
                    members.append((f"{split}/{cls}/{k:04d}.png", encode(img, "PNG")))
                else:  # JPEG: flat colour, decodes to within a couple of levels
                    img = flat(10 * c + 3 * k + 40, (*size, 3))
                    members.append((f"{split}/{cls}/{k:04d}.jpg", encode(img, "JPEG")))
                images.append(img)
                labels.append(c)
                lossy.append(not (c + k) % 2)
        expected[split] = (np.stack(images), np.array(labels), np.array(lossy))
    return members[::-1], expected  # reversed: the loader must sort


def att_members(prefix="att_faces/"):
    """10 subjects x images 1, 2, 10 as PGM (s10 and 10.pgm check numeric ordering)."""
    members, images, labels, index = [(f"{prefix}README", b"ORL faces")], [], [], []
    for s in range(1, 11):
        for i in (1, 2, 10):
            img = RNG.integers(0, 256, (112, 92, 1), dtype=np.uint8)
            members.append((f"{prefix}s{s}/{i}.pgm", encode(img, "PPM")))
            images.append(img)
            labels.append(s - 1)
            index.append(i)
    return members[::-1], (np.stack(images), np.array(labels), np.array(index))


UTK_GOOD = {  # name -> (age, gender, race)
    "1_0_0_20161219140623097.jpg.chip.jpg": (1, 0, 0),
    "26_1_2_20170116174525125.jpg.chip.jpg": (26, 1, 2),
    "39_1_20170116174525125.jpg.chip.jpg": (39, 1, -1),  # no race field
    "24_0_1_20170116220224657 .jpg.chip.jpg": (24, 0, 1),  # space before .jpg
    "55_0_0_20170116232725357jpg.chip.jpg": (55, 0, 0),  # no dot before jpg
    "100_1_4_20170112213500903.jpg.chip.jpg": (100, 1, 4),
}
UTK_BAD = ["x_0_1_20170116.jpg.chip.jpg", "30_2_0_20170116.jpg.chip.jpg",
           "30_0_7_20170116.jpg.chip.jpg", "30_0.jpg"]


def utk_members(sizes=None):
    members = []
    for k, name in enumerate(sorted([*UTK_GOOD, *UTK_BAD])):
        shape = (sizes or {}).get(name, (8, 8, 3))
        members.append((f"UTKFace/{name}", encode(flat(20 * k + 5, shape), "JPEG")))
    return members[::-1]


# --------------------------------------------------------------------------- MNIST


def test_mnist_idx_gz_decodes_exactly(mnist_data, cache):
    root, arrays = mnist_data
    ds = data.load_dataset("mnist", root, cache_dir=cache)
    assert ds.class_names == tuple("0123456789")
    assert ds.info["source_kind"] == "local-idx" and ds.info["from_cache"] is False
    for split in ("train", "test"):
        got = getattr(ds, split)
        assert got.images.dtype == np.uint8 and got.images.shape[1:] == (28, 28, 1)
        assert got.labels.dtype == np.int32
        np.testing.assert_array_equal(got.images[..., 0], arrays[f"{split}_images"])
        np.testing.assert_array_equal(got.labels, arrays[f"{split}_labels"])
    assert dict(ds.train.attributes) == {} and len(ds.train) == 20


def test_mnist_uncompressed_files_directly_in_data_dir(tmp_path, small_counts, cache):
    images = RNG.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    for base, arr in [("train-images-idx3-ubyte", images), ("t10k-images-idx3-ubyte", images[:10]),
                      ("train-labels-idx1-ubyte", np.arange(20) % 10),
                      ("t10k-labels-idx1-ubyte", np.arange(10))]:
        (tmp_path / base).write_bytes(idx_bytes(arr))
    ds = data.load_dataset("mnist", tmp_path, use_cache=False)
    np.testing.assert_array_equal(ds.test.images[..., 0], images[:10])
    assert ds.info["cache_path"] is None and not cache.exists()


def test_mnist_truncated_gzip_names_file(mnist_data):
    root, _ = mnist_data
    path = root / "mnist" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(data.DataError, match=r"train-images-idx3-ubyte\.gz.*re-download"):
        data.load_dataset("mnist", root, use_cache=False)


def test_mnist_truncated_idx_and_bad_magic(mnist_data):
    root, arrays = mnist_data
    path = root / "mnist" / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(arrays["test_images"])[:-5]))
    with pytest.raises(data.DataError, match=r"t10k-images-idx3-ubyte\.gz holds .* bytes"):
        data.load_dataset("mnist", root, use_cache=False)
    path.write_bytes(gzip.compress(b"\0\0\x0d\x03" + idx_bytes(arrays["test_images"])[4:]))
    with pytest.raises(data.DataError, match="not an unsigned-byte IDX"):
        data.load_dataset("mnist", root, use_cache=False)


def test_mnist_wrong_dims_and_labels(mnist_data):
    root, arrays = mnist_data
    folder = root / "mnist"
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.zeros((10, 28, 27), np.uint8))))
    with pytest.raises(data.DataError, match="expected 28x28"):
        data.load_dataset("mnist", root, use_cache=False)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(arrays["test_images"])))
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.full(10, 12))))
    with pytest.raises(data.DataError, match="label 12"):
        data.load_dataset("mnist", root, use_cache=False)


def test_mnist_label_image_count_mismatch(mnist_data):
    root, _ = mnist_data
    (root / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.arange(19) % 10)))
    with pytest.raises(data.DataError, match="20 images but .* 19 labels"):
        data.load_dataset("mnist", root, use_cache=False)


def test_expected_counts_reject_incomplete_copy(mnist_data, monkeypatch):
    root, _ = mnist_data
    monkeypatch.setitem(data.EXPECTED_COUNTS, "mnist", {"train": 60_000, "test": 10_000})
    with pytest.raises(data.DataError, match="found 20 examples .* expected 60000"):
        data.load_dataset("mnist", root, use_cache=False)


def test_mnist_partial_folder_names_missing_file(mnist_data):
    root, _ = mnist_data
    (root / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(data.DataError, match=r"missing t10k-labels-idx1-ubyte\.gz"):
        data.load_dataset("mnist", root, allow_download=False)


# --------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("as_folder", [False, True])
def test_cifar_binary_release(tmp_path, small_counts, as_folder):
    members, expected = cifar_binary_members()
    if as_folder:
        write_files(tmp_path, members)
    else:
        write_tar(tmp_path / "cifar-10-binary.tar.gz", members)
    ds = data.load_dataset("cifar10", tmp_path, use_cache=False)
    assert ds.info["source_kind"] == "local-cifar-binary"
    assert ds.class_names == data.CIFAR10_CLASSES
    for split in ("train", "test"):
        np.testing.assert_array_equal(getattr(ds, split).images, expected[split][0])
        np.testing.assert_array_equal(getattr(ds, split).labels, expected[split][1])


def test_cifar_binary_truncated_batch(tmp_path, small_counts):
    members, _ = cifar_binary_members()
    members = [(n, b[:-7] if n.endswith("data_batch_3.bin") else b) for n, b in members]
    write_files(tmp_path, members)
    with pytest.raises(data.DataError, match=r"data_batch_3\.bin .*not a multiple"):
        data.load_dataset("cifar10", tmp_path, use_cache=False)


def test_cifar_image_tree_folder_and_tarball_agree(tmp_path, small_counts):
    members, expected = cifar_image_members()
    write_files(tmp_path / "folder" / "cifar10", members)
    write_tar(tmp_path / "cifar10-jpeg.tar.gz", members)
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


def test_cifar_image_wrong_size_names_file(tmp_path, small_counts):
    members, _ = cifar_image_members()
    bad = encode(RNG.integers(0, 256, (31, 32, 3), dtype=np.uint8), "PNG")
    members = [(n, bad if n == "train/cat/0000.png" else b) for n, b in members]
    write_tar(tmp_path / "cifar10.tar.gz", members)
    with pytest.raises(data.DataError,
                       match=r"train/cat/0000\.png.* is 31x32x3 .*expected 32x32x3"):
        data.load_dataset("cifar10", tmp_path, use_cache=False)


def test_cifar_image_unknown_class_and_corrupt_image(tmp_path, small_counts):
    members, _ = cifar_image_members()
    write_files(tmp_path / "cifar10", members + [("train/kitten/0000.png", members[0][1])])
    with pytest.raises(data.DataError, match="unknown: \\['kitten'\\]"):
        data.load_dataset("cifar10", tmp_path, use_cache=False)
    (tmp_path / "cifar10" / "train" / "kitten" / "0000.png").unlink()
    (tmp_path / "cifar10" / "test" / "dog" / "0000.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.raises(data.DataError, match=r"could not decode image .*dog.*0000\.jpg"):
        data.load_dataset("cifar10", tmp_path, use_cache=False)


def test_cifar_pickle_release_refused(tmp_path, monkeypatch):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"\x80\x04 never unpickled")
    monkeypatch.setattr(data, "_tfds_source", lambda *a: pytest.fail("TFDS must not be tried"))
    with pytest.raises(data.DataError, match=r"pickles are not read.*cifar-10-binary\.tar\.gz"):
        data.load_dataset("cifar10", tmp_path)


# --------------------------------------------------------------------------- AT&T faces


@pytest.mark.parametrize("layout", ["folder", "tar.gz", "zip"])
def test_att_faces_layouts(tmp_path, small_counts, layout):
    if layout == "folder":
        members, expected = att_members()
        write_files(tmp_path, members)
    elif layout == "tar.gz":
        members, expected = att_members()
        write_tar(tmp_path / "att_faces.tar.gz", members)
    else:  # the official zip keeps s1..s40 at the top level
        members, expected = att_members(prefix="")
        write_zip(tmp_path / "att_faces.zip", members)
    ds = data.load_dataset("att_faces", tmp_path, use_cache=False)
    images, labels, index = expected
    assert ds.test is None
    assert ds.class_names == tuple(f"s{s}" for s in range(1, 11))
    np.testing.assert_array_equal(ds.train.images, images)
    np.testing.assert_array_equal(ds.train.labels, labels)
    np.testing.assert_array_equal(ds.train.attributes["image_index"], index)
    assert ds.train.attributes["image_index"][:3].tolist() == [1, 2, 10]


def test_att_faces_wrong_size_and_gap(tmp_path, small_counts):
    members, _ = att_members()
    small = encode(np.zeros((112, 90, 1), np.uint8), "PPM")
    write_files(tmp_path, [(n, small if n == "att_faces/s4/2.pgm" else b) for n, b in members])
    with pytest.raises(data.DataError, match=r"s4/2\.pgm.* is 112x90x1 .*expected 112x92x1"):
        data.load_dataset("att_faces", tmp_path, use_cache=False)
    (tmp_path / "att_faces" / "s4" / "2.pgm").write_bytes(members[-1][1])
    for f in (tmp_path / "att_faces" / "s3").iterdir():
        f.unlink()
    with pytest.raises(data.DataError, match="missing s3"):
        data.load_dataset("att_faces", tmp_path, use_cache=False)


def test_corrupt_and_truncated_tarball(tmp_path, small_counts):
    (tmp_path / "att_faces.tar.gz").write_bytes(os.urandom(4096))
    with pytest.raises(data.DataError,
                       match=r"att_faces\.tar\.gz .*corrupt or truncated.*re-download"):
        data.load_dataset("att_faces", tmp_path, use_cache=False)
    members, _ = att_members()
    write_tar(tmp_path / "att_faces.tar.gz", members)
    blob = (tmp_path / "att_faces.tar.gz").read_bytes()
    (tmp_path / "att_faces.tar.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(data.DataError, match=r"att_faces\.tar\.gz .*corrupt or truncated"):
        data.load_dataset("att_faces", tmp_path, use_cache=False)


@pytest.mark.parametrize("bad", ["../evil.pgm", "att_faces/s1/../../evil.pgm", "/tmp/evil.pgm"])
@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_unsafe_archive_member_refused(tmp_path, small_counts, bad, kind):
    members, _ = att_members()
    members.append((bad, b"P5 evil"))
    if kind == "zip":
        write_zip(tmp_path / "att_faces.zip", members)
    else:
        write_tar(tmp_path / "att_faces.tar.gz", members)
    with pytest.raises(data.DataError, match="refusing archive member .*outside the target folder"):
        data.load_dataset("att_faces", tmp_path, use_cache=False)


@pytest.mark.parametrize("link_type,target,safe", [
    (tarfile.SYMTYPE, "../../../etc/passwd", False), (tarfile.SYMTYPE, "/etc/passwd", False),
    (tarfile.LNKTYPE, "../outside.pgm", False), (tarfile.SYMTYPE, "1.pgm", True)])
def test_links_in_archive(tmp_path, small_counts, link_type, target, safe):
    """Links that leave the archive are refused; a link inside it is skipped (never followed)."""
    members, _ = att_members()
    write_tar(tmp_path / "att_faces.tar.gz", members)
    with tarfile.open(tmp_path / "att_faces.tar.gz") as tf:  # rewrite with an extra link
        entries = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    with tarfile.open(tmp_path / "att_faces.tar.gz", "w:gz") as tf:
        for m, blob in entries:
            tf.addfile(m, io.BytesIO(blob))
        link = tarfile.TarInfo("att_faces/s1/11.pgm")
        link.type, link.linkname = link_type, target
        tf.addfile(link)
    if safe:
        assert len(data.load_dataset("att_faces", tmp_path, use_cache=False).train) == 30
        return
    with pytest.raises(data.DataError, match="refusing archive member 'att_faces/s1/11.pgm'"):
        data.load_dataset("att_faces", tmp_path, use_cache=False)


# --------------------------------------------------------------------------- UTKFace


@pytest.mark.parametrize("layout", ["folder", "tarball"])
def test_utkface_names_labels_and_skips(tmp_path, layout):
    members = utk_members()
    if layout == "folder":
        write_files(tmp_path, members)
    else:
        write_tar(tmp_path / "UTKFace.tar.gz", members)
    ds = data.load_dataset("utkface", tmp_path, use_cache=False)
    names = sorted(UTK_GOOD, key=data._natural_key)
    expected = np.array([UTK_GOOD[n] for n in names])
    assert ds.test is None and ds.class_names == ("male", "female")
    assert ds.attribute_names["race"] == ("White", "Black", "Asian", "Indian", "Others")
    np.testing.assert_array_equal(ds.train.attributes["age"], expected[:, 0])
    np.testing.assert_array_equal(ds.train.attributes["gender"], expected[:, 1])
    np.testing.assert_array_equal(ds.train.attributes["race"], expected[:, 2])
    np.testing.assert_array_equal(ds.train.labels, expected[:, 1])
    assert ds.train.images.shape == (len(UTK_GOOD), 8, 8, 3)
    values = {n: 20 * k + 5 for k, n in enumerate(sorted([*UTK_GOOD, *UTK_BAD]))}
    want = np.array([values[n] for n in names])
    assert np.abs(ds.train.images.reshape(len(names), -1).mean(1) - want).max() < 2
    assert ds.info["skipped_names"] == len(UTK_BAD) and ds.info["missing_race"] == 1
    assert set(ds.info["skipped_examples"]) <= set(UTK_BAD)


def test_utkface_mixed_sizes_rejected(tmp_path):
    write_files(tmp_path, utk_members({"26_1_2_20170116174525125.jpg.chip.jpg": (9, 8, 3)}))
    with pytest.raises(data.DataError, match=r"26_1_2_.* is 9x8x3 .*expected 8x8x3"):
        data.load_dataset("utkface", tmp_path, use_cache=False)


def test_jpeg_fast_path_matches_pil_and_reports_truncation():
    images = RNG.integers(0, 256, (5, 24, 16, 3), dtype=np.uint8)
    blobs = [encode(img, "JPEG") for img in images]
    grey = encode(images[0][:, :, :1], "JPEG")
    assert data._jpeg_header(blobs[0]) == (24, 16, 3) and data._jpeg_header(grey) == (24, 16, 1)
    assert data._jpeg_header(encode(images[0], "PNG")) is None
    items = [((i,), f"img{i}.jpg", b) for i, b in enumerate(blobs)]
    decoded = data._decode_images(items, "test", (24, 16, 3))
    pil = np.stack([np.asarray(Image.open(io.BytesIO(b))) for b in blobs])
    np.testing.assert_array_equal(decoded, pil)
    np.testing.assert_array_equal(data._decode_images([((0,), "g.jpg", grey)], "test", (24, 16, 1)),
                                  np.asarray(Image.open(io.BytesIO(grey)))[None, :, :, None])
    with pytest.raises(data.DataError, match="could not decode image 'cut.jpg'"):
        data._decode_images([((0,), "cut.jpg", blobs[1][: len(blobs[1]) // 2])], "t", (24, 16, 3))


def test_parse_utkface_name():
    assert data.parse_utkface_name("UTKFace/61_1_20170109142408075.jpg.chip.jpg") == (61, 1, -1)
    assert data.parse_utkface_name("5_1_3_2017.jpg") == (5, 1, 3)
    assert data.parse_utkface_name("5_1_5_2017.jpg") is None
    assert data.parse_utkface_name("５_1_3_2017.jpg") is None  # non-ASCII digits


# --------------------------------------------------------------------------- missing / misuse


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


def test_containers_validate():
    with pytest.raises(data.DataError, match="uint8"):
        data.Split(np.zeros((2, 4, 4, 1), np.float32), np.zeros(2, np.int32))
    with pytest.raises(data.DataError, match=r"shape \(2,\)"):
        data.Split(np.zeros((2, 4, 4, 1), np.uint8), np.zeros(3, np.int32))
    split = data.Split(np.zeros((2, 4, 4, 1), np.uint8), np.array([0, 5], np.int32))
    with pytest.raises(data.DataError, match="labels span 0..5"):
        data.Dataset("x", split, None, ("a", "b"))


def test_default_dirs(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXPET_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("JAXPET_CACHE_DIR", str(tmp_path / "c"))
    assert data.default_data_dir() == str(tmp_path)
    assert data.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("JAXPET_DATA_DIR")
    monkeypatch.delenv("JAXPET_CACHE_DIR")
    assert data.default_data_dir() is None
    assert data.default_cache_dir() == pathlib.Path.home() / ".cache" / "jaxpet"


def test_resize_images():
    images = np.stack([flat(7, (64, 64, 3)), RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)])
    out = data.resize_images(images, (50, 40))
    assert out.shape == (2, 50, 40, 3) and out.dtype == np.uint8
    assert (out[0] == 7).all()
    grey = data.resize_images(images[:, :, :, :1], (32, 32))
    assert grey.shape == (2, 32, 32, 1) and (grey[0] == 7).all()
    # antialiased: a 1-pixel checkerboard averages to mid-grey instead of aliasing
    checker = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)[None, :, :, None]
    assert abs(float(data.resize_images(checker, (16, 16)).mean()) - 127.5) < 8
    with pytest.raises(data.DataError, match="uint8"):
        data.resize_images(images.astype(np.float32), (8, 8))


# --------------------------------------------------------------------------- cache


def test_cache_hit_rebuild_and_invalidation(mnist_data, cache):
    root, arrays = mnist_data
    first = data.load_dataset("mnist", root, cache_dir=cache)
    files = list(cache.iterdir())
    assert [f.suffix for f in files] == [".npz"]  # no temp files left behind
    with np.load(files[0], allow_pickle=False) as z:  # readable without pickles
        assert z["train__images"].dtype == np.uint8
    start = time.perf_counter()
    second = data.load_dataset("mnist", root, cache_dir=cache)
    assert time.perf_counter() - start < 2.0
    assert second.info["from_cache"] is True and first.info["from_cache"] is False
    assert second.info["source"] == first.info["source"]
    np.testing.assert_array_equal(second.train.images, first.train.images)
    np.testing.assert_array_equal(second.test.labels, first.test.labels)

    files[0].write_bytes(b"PK\x03\x04 corrupt")  # corrupt cache: ignored and rebuilt
    rebuilt = data.load_dataset("mnist", root, cache_dir=cache)
    assert rebuilt.info["from_cache"] is False
    np.testing.assert_array_equal(rebuilt.train.images, first.train.images)
    assert data.load_dataset("mnist", root, cache_dir=cache).info["from_cache"] is True

    # a changed source file gives a new fingerprint, so the stale cache is not used
    new_labels = (arrays["test_labels"] + 1) % 10
    path = root / "mnist" / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(new_labels)))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    changed = data.load_dataset("mnist", root, cache_dir=cache)
    assert changed.info["from_cache"] is False
    np.testing.assert_array_equal(changed.test.labels, new_labels)


def test_cache_keeps_utkface_attributes_and_info(tmp_path, cache):
    write_files(tmp_path, utk_members())
    first = data.load_dataset("utkface", tmp_path, cache_dir=cache)
    second = data.load_dataset("utkface", tmp_path, cache_dir=cache)
    assert second.info["from_cache"] is True
    assert second.info["missing_race"] == 1 and second.info["skipped_names"] == len(UTK_BAD)
    assert dict(second.attribute_names) == dict(first.attribute_names)
    for key in ("age", "gender", "race"):
        np.testing.assert_array_equal(second.train.attributes[key], first.train.attributes[key])


# --------------------------------------------------------------------------- TFDS


def test_module_import_does_not_import_tfds():
    code = "import sys, jaxpet.data; print('tensorflow_datasets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_data_source_path(tmp_path, monkeypatch, cache, name, shape):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.delitem(data.EXPECTED_COUNTS, name)  # 7 random mock examples: no count check
    with tfds.testing.mock_data(num_examples=7):
        ds = data.load_dataset(name, tmp_path, cache_dir=cache)
        source = tfds.data_source(name, split="test")
        want_images = np.stack([np.asarray(source[i]["image"]) for i in range(7)])
        want_labels = np.array([source[i]["label"] for i in range(7)])
        again = data.load_dataset(name, tmp_path, cache_dir=cache)
    assert ds.info["source_kind"] == "tfds" and ds.info["tfds_name"] == name
    assert ds.info["tfds_version"] and ds.info["from_cache"] is False
    assert ds.train.images.shape == (7, *shape) and ds.train.images.dtype == np.uint8
    assert ds.train.labels.dtype == np.int32
    np.testing.assert_array_equal(ds.test.images, want_images)
    np.testing.assert_array_equal(ds.test.labels, want_labels)
    assert again.info["from_cache"] is True
    np.testing.assert_array_equal(again.train.images, ds.train.images)


def test_tfds_unavailable_or_disallowed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import now fails
    with pytest.raises(data.DataError, match="tensorflow-datasets is not installed"):
        data.load_dataset("cifar10", tmp_path)
    with pytest.raises(data.DataError, match="allow the TFDS download"):
        data.load_dataset("cifar10", tmp_path, allow_download=False)


# --------------------------------------------------------------------------- real data

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
    print(f"{name}: cold {cold:.2f}s, warm {time.perf_counter() - start:.2f}s")
    assert ds.info["from_cache"] is False and warm.info["from_cache"] is True
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
