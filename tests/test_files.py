"""Files: content digests, atomic writes, disk-full detection and pytrees as arrays."""

from __future__ import annotations

import dataclasses
import errno
import json

import numpy as np
import pytest

from jaxpet import files
from jaxpet.errors import UserError


def test_digest_is_order_free_and_sees_array_content():
    a = {"x": 1, "arrays": [np.arange(4), 0.1]}
    assert files.digest(a) == files.digest({"arrays": [np.arange(4), 0.1], "x": 1})
    assert files.digest(a) != files.digest({"x": 1, "arrays": [np.arange(4) + 1, 0.1]})
    assert files.digest(np.zeros(4, np.float32)) != files.digest(np.zeros(4, np.float64))
    assert files.digest(np.zeros((2, 2))) != files.digest(np.zeros(4))

    @dataclasses.dataclass(frozen=True)
    class Knobs:
        rate: float

    assert files.digest(Knobs(0.1)) != files.digest(Knobs(0.2))


def test_atomic_write_leaves_no_half_file(tmp_path):
    path = tmp_path / "out.json"
    files.write_json(path, {"a": 1})

    def fail(f):
        f.write(b"partial")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        files.atomic_write(path, fail)
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left


def test_full_disk_is_one_user_error_naming_the_file(tmp_path):
    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError, match=r"no space left to write .*out\.npz .* free"):
        files.atomic_write(tmp_path / "out.npz", full)
    assert not list(tmp_path.iterdir())


def test_disk_full_errors_are_recognised():
    assert files.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert files.is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    # tensorstore's form, as orbax raises it
    tensorstore = ValueError('RESOURCE_EXHAUSTED: Error writing "w/0": Failed to write 2673027 '
                             "bytes to file 7: No space left on device [os_error_code='28']")
    assert files.is_disk_full(tensorstore)
    try:
        try:
            raise OSError(errno.ENOSPC, "full")
        except OSError as e:
            raise RuntimeError("save failed") from e
    except RuntimeError as chained:
        assert files.is_disk_full(chained)
    assert not files.is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not files.is_disk_full(ValueError("shapes differ"))


def test_trees_round_trip_through_stage_arrays():
    tree = {"params": {"Dense_0": {"kernel": np.ones((2, 3)), "bias": np.zeros(3)}},
            "batch_stats": {}}
    arrays = files.tree_to_arrays("target", tree)
    assert set(arrays) == {"target/params/Dense_0/kernel", "target/params/Dense_0/bias",
                           "target/batch_stats/__empty__"}
    back = files.arrays_to_tree("target", {**arrays, "other/x": np.ones(1)})
    assert back["batch_stats"] == {} and set(back) == {"params", "batch_stats"}
    assert np.array_equal(back["params"]["Dense_0"]["kernel"], tree["params"]["Dense_0"]["kernel"])
