"""A user's .npz and members file under hostile input (issue 23): every bad array or file is one
line naming it and the fix, at load time; the good variants of each still load."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from jaxpet import data
from jaxpet.data import arrays, containers

RNG = np.random.default_rng(0)
F, TF = RNG.normal(size=(12, 3)).astype(np.float32), RNG.normal(size=(6, 3)).astype(np.float32)
IMG = RNG.integers(0, 256, (12, 4, 4, 1), dtype=np.uint8)
TIMG = RNG.integers(0, 256, (6, 4, 4, 1), dtype=np.uint8)
L, TL = np.arange(12) % 3, np.arange(6) % 3
FEATURES = dict(features=F, labels=L, test_features=TF, test_labels=TL)
IMAGES = dict(images=IMG, labels=L, test_images=TIMG, test_labels=TL)


def _with(base, **changes):
    """``base`` with ``changes`` applied; a value None removes the array."""
    values = {**base, **changes}
    return {k: v for k, v in values.items() if v is not None}


def _refused(path, expected: tuple[str, ...]) -> str:
    with pytest.raises(data.DataError) as error:
        arrays.load_arrays(str(path))
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    for needle in expected:
        assert needle in message, message
    return message


BAD_ARRAYS = {  # case: (arrays, what the one line must say)
    "string labels": (_with(FEATURES, labels=L.astype(str)),
                      ("labels are strings", "return_inverse")),
    "one-hot labels": (_with(FEATURES, labels=np.eye(3)[L]), ("labels has shape (12, 3)",
                                                              "argmax")),
    "column labels": (_with(FEATURES, labels=L[:, None]), ("labels.ravel()",)),
    "bool labels": (_with(FEATURES, labels=L > 0, test_labels=TL > 0), ("labels are booleans",)),
    "negative labels": (_with(FEATURES, labels=L - 1), ("holds -1", "start at 0")),
    "test labels of another length": (_with(FEATURES, test_labels=TL[:4]),
                                      ("test_features holds 6 examples but test_labels 4",)),
    "string test labels": (_with(FEATURES, test_labels=TL.astype(str)),
                           ("test_labels are strings",)),
    "vector num_classes": (_with(FEATURES, num_classes=np.array([3, 4])),
                           ("num_classes must be one integer", "shape (2,)")),
    "float num_classes": (_with(FEATURES, num_classes=np.array(3.5)),
                          ("num_classes must be one integer", "float64")),
    "string num_classes": (_with(FEATURES, num_classes=np.array("3")),
                           ("num_classes must be one integer", "<U1")),
    "num_classes of one": (_with(FEATURES, num_classes=np.array(1)),
                           ("num_classes=1 must be in [2,",)),
    "num_classes of zero": (_with(FEATURES, num_classes=np.array(0)),
                            ("num_classes=0 must be in [2,",)),
    "num_classes beyond int32": (_with(FEATURES, num_classes=np.array(10 ** 12)),
                                 ("num_classes=1000000000000 must be in [2,",)),
    "test label above num_classes": (_with(FEATURES, test_labels=TL + 5, num_classes=np.array(3)),
                                     ("test_labels go up to 7, outside [0, 3)",)),
    "sparse labels": (_with(FEATURES, labels=np.where(L == 2, 10 ** 9, L)),
                      ("labels go up to 1000000000 with only 18 examples", "num_classes")),
    "one class": (_with(FEATURES, labels=L * 0, test_labels=TL * 0),
                  ("every training label is 0", "at least two classes")),
    "one class with a stated count": (_with(FEATURES, labels=L * 0 + 2, num_classes=np.array(3)),
                                      ("every training label is 2",)),
    "complex features": (_with(FEATURES, features=F.astype(np.complex64)),
                         ("features holds complex64 values", ".real")),
    "bool features": (_with(FEATURES, features=F > 0), ("features holds bool values",
                                                        "features.astype(np.float32)")),
    "string features": (_with(FEATURES, features=F.astype(str)), ("features holds <U",
                                                                  "store numbers")),
    "date features": (_with(FEATURES, features=np.zeros((12, 3), "datetime64[s]")),
                      ("features holds datetime64[s] values",)),
    "structured features": (_with(FEATURES, features=np.zeros(12, [("a", "f4"), ("b", "f4")])),
                            ("structured_to_unstructured",)),
    "complex images": (_with(IMAGES, images=IMG.astype(np.complex64)), ("images holds complex64",)),
    "bool test images": (_with(IMAGES, test_images=TIMG > 0), ("test_images holds bool values",)),
    "infinite test features": (_with(FEATURES, test_features=np.full_like(TF, np.inf)),
                               ("test_features holds NaN or infinity (6 examples",)),
    "NaN float images": (_with(IMAGES, images=np.full(IMG.shape, np.nan)),
                         ("images holds NaN or infinity",)),
    "features beyond float32": (_with(FEATURES, features=F.astype(np.float64) * 1e300),
                                ("beyond float32's range",)),
    "images and features": (_with(FEATURES, images=IMG), ("both 'images' and 'features'",)),
    "0 examples": (dict(features=F[:0], labels=L[:0]), ("holds 0 training examples",)),
    "0 held-out examples": (_with(FEATURES, test_features=TF[:0], test_labels=TL[:0]),
                            ("test_features", "examples")),
    "features of no width": (_with(FEATURES, features=F[:, :0], test_features=TF[:, :0]),
                             ("its examples hold no values",)),
    "images of no height": (_with(IMAGES, images=IMG[:, :0], test_images=TIMG[:, :0]),
                            ("its examples hold no values",)),
    "one feature as a vector": (_with(FEATURES, features=F[:, 0], test_features=TF[:, 0]),
                                ("must be [N, D]", "features[:, None]")),
    "greyscale NHW images": (_with(IMAGES, images=IMG[..., 0], test_images=TIMG[..., 0]),
                             ("must be NHWC", "images[..., None]", "(12, 4, 4, 1)")),
    "5-D images": (_with(IMAGES, images=IMG[..., None]), ("must be NHWC",)),
    "held-out features of another width": (_with(FEATURES, test_features=TF[:, :2]),
                                           ("test_features has one example of shape (2,)",
                                            "features (3,)")),
    "held-out images of another size": (_with(IMAGES, test_images=TIMG[:, :3, :3]),
                                        ("test_images has one image of shape (3, 3, 1)",
                                         "images (4, 4, 1)")),
    "held-out images of other channels": (_with(IMAGES, test_images=np.repeat(TIMG, 3, -1)),
                                          ("shape (4, 4, 3)",)),
    "held-out images stored otherwise": (_with(IMAGES, test_images=TIMG / 255.0),
                                         ("images are stored as uint8 but test_images as "
                                          "float32",)),
    "held-out integer images out of range": (_with(IMAGES, images=IMG.astype(np.int16),
                                                   test_images=TIMG.astype(np.int16) - 300),
                                             ("test_images (int16) goes from -300",)),
    "held-out data without labels": (_with(FEATURES, test_labels=None),
                                     ("has 'test_features' but no 'test_labels'",)),
    "held-out labels without data": (_with(FEATURES, test_features=None),
                                     ("has 'test_labels' but no 'test_features'",)),
    "features with held-out images": (_with(FEATURES, test_features=None, test_images=TIMG),
                                      ("holds 'features' but 'test_images'",
                                       "save it as 'test_features'")),
    "images with held-out features": (_with(IMAGES, test_images=None, test_features=TF),
                                      ("holds 'images' but 'test_features'",)),
    "a misspelt array": (_with(FEATURES, tset_labels=TL),
                         ("arrays jaxpet does not read: tset_labels",)),
}


@pytest.mark.parametrize("case", BAD_ARRAYS)
def test_a_bad_array_is_one_line_naming_it(tmp_path, case):
    values, expected = BAD_ARRAYS[case]
    path = tmp_path / "bad.npz"
    np.savez(path, **values)
    _refused(path, expected)


def _write_text(path):
    path.write_text("1\n2\n")


def _write_npy(path):
    with open(path, "wb") as f:
        np.save(f, F)


def _write_pickle(path):
    path.write_bytes(pickle.dumps({"features": [1, 2]}))


def _write_truncated(path):
    np.savez(tmp := path.with_name("whole.npz"), **FEATURES)
    path.write_bytes(tmp.read_bytes()[:200])


def _write_object_array(path):
    np.savez(path, features=np.array([object()] * 3), labels=np.zeros(3, int))


BAD_FILES = {  # case: (writer, what the one line must say)
    "empty": (lambda p: p.write_bytes(b""), "is empty (0 bytes), not an .npz archive"),
    "text": (_write_text, "is a text file, not an .npz archive"),
    ".npy under an .npz name": (_write_npy, "is a single .npy array, not an .npz archive"),
    "pickle": (_write_pickle, "is a Python pickle, which jaxpet never loads"),
    "folder": (lambda p: p.mkdir(), "is a folder — give the path of your .npz file"),
    "truncated archive": (_write_truncated, "is a damaged .npz archive"),
    "object array": (_write_object_array, "'features' is an object array"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_file_that_is_not_an_npz_is_named_for_what_it_is(tmp_path, case):
    write, expected = BAD_FILES[case]
    path = tmp_path / "data.npz"
    write(path)
    message = _refused(path, (expected,) if case == "folder" else (expected, "numpy.savez"))
    assert "pickled (object) data" not in message  # numpy's word for any unknown file


def test_the_good_variants_still_load(tmp_path):
    good = {
        "features": FEATURES,
        "images": IMAGES,
        "integer features, uint64 labels, one-element num_classes": _with(
            FEATURES, features=(F * 10).astype(np.int64), labels=L.astype(np.uint64),
            test_labels=TL.astype(np.uint64), num_classes=np.array([5])),
        "float16 features": _with(FEATURES, features=F.astype(np.float16),
                                  test_features=TF.astype(np.float16)),
        "features [N, A, B]": _with(FEATURES, features=F.reshape(12, 3, 1),
                                    test_features=TF.reshape(6, 3, 1)),
        "int16 images in 0..255": _with(IMAGES, images=IMG.astype(np.int16),
                                        test_images=TIMG.astype(np.int16)),
        "float images": _with(IMAGES, images=IMG / 255.0, test_images=TIMG / 255.0),
        "no held-out part": dict(images=IMG, labels=L),
    }
    for case, values in good.items():
        np.savez(tmp_path / "good.npz", **values)
        loaded = arrays.load_arrays(str(tmp_path / "good.npz"))
        assert loaded.y.dtype == np.int32 and len(loaded.x) == 12, case
        assert loaded.x.dtype in (np.uint8, np.float32), case
        assert (loaded.test_x is None) == ("test_labels" not in values), case
        assert loaded.num_classes == (5 if "num_classes" in values else 3), case


def test_a_named_dataset_of_one_class_is_refused(monkeypatch):
    split = containers.Split(np.zeros((4, 2, 2, 1), np.uint8), np.zeros(4, np.int32))
    monkeypatch.setattr(arrays, "load_dataset", lambda name, data_dir: containers.Dataset(
        "x", split, split, ("a", "b")))
    with pytest.raises(data.DataError, match="--data=mnist: every training label is 0"):
        arrays.load_arrays("mnist")


# --------------------------------------------------------------------------- --target_members

def _npy(values, **kwargs):
    def write(path):
        with open(path, "wb") as f:  # np.save would add .npy to a .txt name
            np.save(f, np.asarray(values, **kwargs), allow_pickle=True)
    return write


def _npz(path):
    with open(path, "wb") as f:
        np.savez(f, members=np.arange(3))


BAD_MEMBERS = {  # case: (writer, what the one line must say)
    "zero bytes": (lambda p: p.write_bytes(b""), "is empty (0 bytes), not a list of indices"),
    "2-D array": (_npy(np.arange(6).reshape(3, 2)), "is a 2-D array of shape (3, 2)"),
    "non-integer floats": (_npy([1.0, 2.5]), "holds 2.5, not a whole number"),
    "NaN": (_npy([1.0, np.nan]), "holds NaN or infinity"),
    "a mask": (_npy([True, False, True]), "np.flatnonzero(mask)"),
    "strings": (_npy(["1", "2"]), "must hold integer indices; it holds <U1"),
    "no index": (_npy([], dtype=np.int64), "holds no index"),
    "negative": (_npy([3, -1]), "indices must be in [0, 10) (the training part of the data); "
                                "it holds -1"),
    "out of range": (_npy([3, 10, 11]), "it holds 10 and 1 more outside"),
    "huge float": (_npy([1e300]), "too large for an index"),
    "duplicates": (_npy([1, 2, 2]), "repeats indices (2 appears 2 times)"),
    "pickled objects": (_npy([1, None], dtype=object), "is an object array (pickled Python"),
    "truncated": (lambda p: (_npy(np.arange(5))(p), p.write_bytes(p.read_bytes()[:70])),
                  "is a damaged .npy file"),
    "an .npz": (_npz,
                "is an .npz archive (several named arrays), not a list of indices"),
    "a pickle": (lambda p: p.write_bytes(pickle.dumps([1, 2])), "is a Python pickle"),
    "binary junk": (lambda p: p.write_bytes(bytes(range(256))), "is neither a numpy file nor text"),
    "text with junk": (lambda p: p.write_text("1\nfoo\n3\n"), "line 2 is 'foo', not one integer"),
    "text of fractions": (lambda p: p.write_text("1.5\n"), "line 1 is '1.5'"),
    "text of comma-separated indices": (lambda p: p.write_text("1,2,3\n"), "line 1 is '1,2,3'"),
    "text of several a line": (lambda p: p.write_text("1 2\n3\n"), "write one integer a line"),
    "text of a huge number": (lambda p: p.write_text(f"{2 ** 70}\n"), "too large for an index"),
    "text duplicates": (lambda p: p.write_text("4\n4\n"), "repeats indices"),
    "empty text": (lambda p: p.write_text("\n# nothing\n"), "holds no index"),
}


@pytest.mark.parametrize("suffix", [".npy", ".txt"])
@pytest.mark.parametrize("case", BAD_MEMBERS)
def test_a_bad_members_file_is_one_line_whatever_its_name(tmp_path, case, suffix):
    write, expected = BAD_MEMBERS[case]
    path = tmp_path / f"members{suffix}"
    write(path)
    with pytest.raises(data.DataError) as error:
        arrays.read_indices(path, 10)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"--target_members={path}")
    assert expected in message, message
    assert "pickled (object) data" not in message


@pytest.mark.parametrize("write", [
    _npy([7, 0, 3]),
    _npy([7.0, 0.0, 3.0]),  # whole floats
    _npy(np.array([7, 0, 3], np.uint16)),
    lambda p: p.write_text("7\n0\n3\n"),
    lambda p: p.write_text("\ufeff# members\n7\r\n\n0  # first\n3\n"),  # BOM, CRLF, comments
    lambda p: np.savetxt(p, [7, 0, 3]),  # numpy.savetxt's default: 7.000000000000000000e+00
], ids=["int", "whole floats", "uint16", "text", "text with comments", "savetxt"])
@pytest.mark.parametrize("suffix", [".npy", ".txt"])
def test_good_members_files_load_whatever_their_name(tmp_path, write, suffix):
    path = tmp_path / f"members{suffix}"
    write(path)
    indices = arrays.read_indices(path, 10)
    assert indices.tolist() == [0, 3, 7] and indices.dtype == np.int64
