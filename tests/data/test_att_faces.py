"""AT&T faces: folder, tarball and the official zip; wrong sizes and missing subjects."""

from __future__ import annotations

import numpy as np
import pytest

from jaxpet import data


@pytest.mark.parametrize("layout", ["folder", "tar.gz", "zip"])
def test_att_faces_layouts(tmp_path, small_counts, make, layout):
    if layout == "folder":
        members, expected = make.att_members()
        make.write_files(tmp_path, members)
    elif layout == "tar.gz":
        members, expected = make.att_members()
        make.write_tar(tmp_path / "att_faces.tar.gz", members)
    else:  # the official zip keeps s1..s40 at the top level
        members, expected = make.att_members(prefix="")
        make.write_zip(tmp_path / "att_faces.zip", members)
    ds = data.load_dataset("att_faces", tmp_path, use_cache=False)
    images, labels, index = expected
    assert ds.test is None
    assert ds.class_names == tuple(f"s{s}" for s in range(1, 11))
    assert ds.train.images.shape[1:] == data.ATT_FACES_SHAPE
    np.testing.assert_array_equal(ds.train.images, images)
    np.testing.assert_array_equal(ds.train.labels, labels)
    np.testing.assert_array_equal(ds.train.attributes["image_index"], index)
    assert ds.train.attributes["image_index"][:3].tolist() == [1, 2, 10]


def test_att_faces_wrong_size_and_gap(tmp_path, small_counts, make):
    members, _ = make.att_members()
    small = make.encode(np.zeros((112, 90, 1), np.uint8), "PPM")
    make.write_files(tmp_path, [(n, small if n == "att_faces/s4/2.pgm" else b)
                                for n, b in members])
    with pytest.raises(data.DataError, match=r"s4/2\.pgm.* is 112x90x1 .*expected 112x92x1"):
        data.load_dataset("att_faces", tmp_path, use_cache=False)
    (tmp_path / "att_faces" / "s4" / "2.pgm").write_bytes(members[-1][1])
    for f in (tmp_path / "att_faces" / "s3").iterdir():
        f.unlink()
    with pytest.raises(data.DataError, match="missing s3"):
        data.load_dataset("att_faces", tmp_path, use_cache=False)
