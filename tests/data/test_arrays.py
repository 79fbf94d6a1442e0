"""A user's .npz (or a dataset by name) as labelled model inputs: every route, every refusal."""

from __future__ import annotations

import numpy as np
import pytest

from jaxpet import data
from jaxpet.data import arrays


def _save(path, **values):
    np.savez(path, **values)
    return str(path)


def test_feature_vectors_with_a_held_out_part(tmp_path):
    rng = np.random.default_rng(0)
    path = _save(tmp_path / "f.npz", features=rng.normal(size=(20, 3)), labels=np.arange(20) % 4,
                 test_features=rng.normal(size=(6, 3)), test_labels=np.arange(6) % 2)
    loaded = arrays.load_arrays(path)
    assert loaded.kind == "features" and loaded.num_classes == 4 and loaded.source == path
    assert loaded.x.dtype == np.float32 and loaded.y.dtype == np.int32
    assert loaded.test_x is not None and loaded.test_x.shape == (6, 3)
    assert loaded.test_y is not None and loaded.test_y.dtype == np.int32
    # Floats are fed as stored; the digest is of the content, not the path.
    assert float(loaded.preprocess(np.ones((1, 3), np.float32))[0, 0]) == 1.0
    (tmp_path / "copy.npz").write_bytes((tmp_path / "f.npz").read_bytes())
    assert arrays.load_arrays(str(tmp_path / "copy.npz")).digest == loaded.digest


def test_images_without_a_held_out_part_and_a_stated_class_count(tmp_path):
    images = np.arange(5 * 4 * 4 * 1, dtype=np.int64).reshape(5, 4, 4, 1) % 256
    path = _save(tmp_path / "i.npz", images=images, labels=np.arange(5) % 2, num_classes=3)
    loaded = arrays.load_arrays(path, preprocess="unit")
    assert loaded.kind == "images" and loaded.num_classes == 3 and loaded.x.dtype == np.uint8
    assert loaded.test_x is None and loaded.test_y is None
    assert float(loaded.preprocess(np.full((1, 4, 4, 1), 255, np.uint8)).max()) == 1.0
    raw = arrays.load_arrays(path, preprocess="raw")
    assert float(raw.preprocess(np.full((1, 4, 4, 1), 255, np.uint8)).max()) == 255.0
    held = loaded.holding_out(np.array([1, 3]))
    assert held.test_y is not None and held.test_y.tolist() == [1, 1]
    assert held.test_x is not None and np.array_equal(held.test_x, loaded.x[[1, 3]])
    assert len(held.x) == 5  # the training part keeps them; the caller draws around them


@pytest.mark.parametrize("values, expected", [
    (dict(features=np.zeros((4, 2))), "needs 'images' or 'features', and 'labels'"),
    (dict(features=np.zeros((4, 2)), labels=np.zeros(3, int)), "holds 4 examples but labels 3"),
    (dict(features=np.zeros((4, 2)), labels=np.arange(4) % 2, test_labels=np.zeros(2, int)),
     "has 'test_labels' but no 'test_features'"),
    (dict(features=np.zeros((4, 2)), labels=np.array([0, 1, 2, 3]), num_classes=3),
     "outside [0, 3) of its num_classes=3"),
    (dict(features=np.zeros((4, 2)), labels=np.array([0.0, 1, 0, 1])),
     "labels must be non-negative integers"),
    (dict(features=np.full((4, 2), np.nan), labels=np.arange(4) % 2), "holds NaN or infinity"),
    (dict(images=np.zeros((4, 8, 8)), labels=np.arange(4) % 2), "must be NHWC"),
    (dict(images=np.full((4, 2, 2, 1), 300), labels=np.arange(4) % 2), "pixels in 0..255"),
])
def test_inconsistent_files_are_refused(tmp_path, values, expected):
    with pytest.raises(data.DataError) as error:
        arrays.load_arrays(_save(tmp_path / "bad.npz", **values))
    assert expected in str(error.value)


def test_neither_a_dataset_nor_an_npz(tmp_path):
    with pytest.raises(ValueError, match="is neither a jaxpet dataset"):
        arrays.load_arrays(str(tmp_path / "data.csv"))
    with pytest.raises(data.DataError, match="missing.npz does not exist"):
        arrays.load_arrays(str(tmp_path / "missing.npz"))
    with pytest.raises(ValueError, match="--preprocess must be one of"):
        arrays.load_arrays(str(tmp_path / "missing.npz"), preprocess="scaled")


def test_read_indices(tmp_path):
    np.save(tmp_path / "m.npy", np.array([5, 1, 3]))
    assert arrays.read_indices(tmp_path / "m.npy", 6).tolist() == [1, 3, 5]
    (tmp_path / "m.txt").write_text("4\n0\n2\n")
    assert arrays.read_indices(tmp_path / "m.txt", 5).tolist() == [0, 2, 4]
    for values, expected in (([0, 6], "indices must be in [0, 6)"), ([1, 1], "repeats indices"),
                             ([0.5], "not a whole number")):
        np.save(tmp_path / "bad.npy", np.asarray(values))
        with pytest.raises(data.DataError, match=expected.replace("[", r"\[").replace(")", r"\)")):
            arrays.read_indices(tmp_path / "bad.npy", 6, flag="--members")
    with pytest.raises(data.DataError, match="none.npy does not exist"):
        arrays.read_indices(tmp_path / "none.npy", 6)
