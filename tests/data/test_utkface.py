"""UTKFace: labels from file names, skipped malformed names, one image size."""

from __future__ import annotations

import numpy as np
import pytest

from jaxpet import data
from jaxpet.data.archives import natural_key


@pytest.mark.parametrize("layout", ["folder", "tarball"])
def test_utkface_names_labels_and_skips(tmp_path, make, layout):
    members = make.utk_members()
    if layout == "folder":
        make.write_files(tmp_path, members)
    else:
        make.write_tar(tmp_path / "UTKFace.tar.gz", members)
    ds = data.load_dataset("utkface", tmp_path, use_cache=False)
    names = sorted(make.UTK_GOOD, key=natural_key)
    expected = np.array([make.UTK_GOOD[n] for n in names])
    assert ds.test is None and ds.class_names == ("male", "female") == data.UTKFACE_GENDERS
    assert ds.attribute_names["race"] == ("White", "Black", "Asian", "Indian", "Others")
    np.testing.assert_array_equal(ds.train.attributes["age"], expected[:, 0])
    np.testing.assert_array_equal(ds.train.attributes["gender"], expected[:, 1])
    np.testing.assert_array_equal(ds.train.attributes["race"], expected[:, 2])
    np.testing.assert_array_equal(ds.train.labels, expected[:, 1])
    assert ds.train.images.shape == (len(make.UTK_GOOD), 8, 8, 3)
    values = {n: 20 * k + 5 for k, n in enumerate(sorted([*make.UTK_GOOD, *make.UTK_BAD]))}
    want = np.array([values[n] for n in names])
    assert np.abs(ds.train.images.reshape(len(names), -1).mean(1) - want).max() < 2
    assert ds.info["skipped_names"] == len(make.UTK_BAD) and ds.info["missing_race"] == 1
    assert set(ds.info["skipped_examples"]) <= set(make.UTK_BAD)


def test_utkface_mixed_sizes_rejected(tmp_path, make):
    make.write_files(tmp_path,
                     make.utk_members({"26_1_2_20170116174525125.jpg.chip.jpg": (9, 8, 3)}))
    with pytest.raises(data.DataError, match=r"26_1_2_.* is 9x8x3 .*expected 8x8x3"):
        data.load_dataset("utkface", tmp_path, use_cache=False)


def test_parse_utkface_name():
    assert data.parse_utkface_name("UTKFace/61_1_20170109142408075.jpg.chip.jpg") == (61, 1, -1)
    assert data.parse_utkface_name("5_1_3_2017.jpg") == (5, 1, 3)
    assert data.parse_utkface_name("5_1_5_2017.jpg") is None
    assert data.parse_utkface_name("５_1_3_2017.jpg") is None  # non-ASCII digits
