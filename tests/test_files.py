"""Files: content digests, atomic writes, disk-full detection, pytrees as arrays, and .npz
files that are damaged, cut or not .npz at all."""

from __future__ import annotations

import dataclasses
import errno
import json
import struct
import zipfile
import zlib

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


def _npz(path):
    rng = np.random.default_rng(0)
    files.write_npz(path, a=rng.integers(0, 9, 3000).astype(np.float32), b=np.arange(10))
    return path


def _flip_in_member_data(path):
    """Flips a byte of member a's deflate stream (found with zipfile), trying one byte after
    another, until zlib itself fails (not only the CRC check): the error that escaped."""
    original = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("a.npy")
    name_len, extra_len = struct.unpack("<HH", original[info.header_offset + 26:
                                                          info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    for pos in range(start, start + info.compress_size):
        damaged = bytearray(original)
        damaged[pos] ^= 0xFF
        path.write_bytes(bytes(damaged))
        try:
            with zipfile.ZipFile(path) as archive:
                archive.read("a.npy")
        except zlib.error:
            return
        except zipfile.BadZipFile:
            continue
    raise AssertionError("no flip made zlib fail")


def _zip_of_text(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.txt", "not an array")


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:p.stat().st_size // 2]), "cut short or damaged"),
    (lambda p: p.write_bytes(p.read_bytes()[:-30]), "damaged"),
    (_flip_in_member_data, r"is damaged \(error: Error -3"),
    (lambda p: p.write_text("a,b\n1,2\n"), r"not an \.npz archive \(not a zip file\)"),
    (lambda p: np.save(open(p, "wb"), np.arange(3)), r"not an \.npz archive \(not a zip"),
    (_zip_of_text, "its member a.txt is not an array"),
    (lambda p: np.savez(p, a=np.array([{}], dtype=object)), "not an .npz of plain numpy"),
    (lambda p: p.write_bytes(b""), "not an .npz archive"),
])
def test_a_damaged_npz_is_one_value_error_naming_it(tmp_path, damage, message):
    path = _npz(tmp_path / "data.npz")
    assert set(files.read_npz(path)) == {"a", "b"}
    damage(path)
    with pytest.raises(ValueError, match=message) as raised:
        files.read_npz(path)
    assert "data.npz" in str(raised.value)


def test_a_flip_that_numpy_would_read_as_other_values_is_found_by_the_checksum(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, a=np.arange(1000, dtype=np.int32))  # stored, not compressed: no zlib check
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="fails its checksum"):
        files.read_npz(path)
