"""The .npz cache: hit, rebuild of a corrupt file, invalidation, and the stored digest."""

from __future__ import annotations

import gzip
import json
import os
import time

import numpy as np
import pytest

from jaxpet import data
from jaxpet.data import containers


def test_cache_hit_rebuild_and_invalidation(mnist_data, cache, make):
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
    path.write_bytes(gzip.compress(make.idx_bytes(new_labels)))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    changed = data.load_dataset("mnist", root, cache_dir=cache)
    assert changed.info["from_cache"] is False
    np.testing.assert_array_equal(changed.test.labels, new_labels)
    assert changed.digest != first.digest


def test_cache_keeps_utkface_attributes_and_info(tmp_path, cache, make):
    make.write_files(tmp_path, make.utk_members())
    first = data.load_dataset("utkface", tmp_path, cache_dir=cache)
    second = data.load_dataset("utkface", tmp_path, cache_dir=cache)
    assert second.info["from_cache"] is True
    assert second.info["missing_race"] == 1 and second.info["skipped_names"] == len(make.UTK_BAD)
    assert dict(second.attribute_names) == dict(first.attribute_names)
    for key in ("age", "gender", "race"):
        np.testing.assert_array_equal(second.train.attributes[key], first.train.attributes[key])
    assert second.digest == first.digest


def test_digest_stored_in_cache_and_not_recomputed(mnist_data, cache, monkeypatch):
    root, _ = mnist_data
    first = data.load_dataset("mnist", root, cache_dir=cache)
    assert first.digest == first.info["digest"] == containers.content_digest(first)
    (path,) = cache.iterdir()
    with np.load(path, allow_pickle=False) as z:
        assert json.loads(z["__meta__"].tobytes())["info"]["digest"] == first.digest

    def no_hashing(dataset):
        raise AssertionError("a cache hit must not rehash the arrays")

    monkeypatch.setattr(containers, "content_digest", no_hashing)
    second = data.load_dataset("mnist", root, cache_dir=cache)
    assert second.info["from_cache"] is True
    assert second.digest == second.info["digest"] == first.digest
    with pytest.raises(AssertionError, match="must not rehash"):  # the patch did bite
        data.load_dataset("mnist", root, use_cache=False)


def test_cache_entry_without_digest_is_hashed_lazily(mnist_data, cache):
    """Entries written before digests existed still load; their digest is computed on use."""
    root, _ = mnist_data
    first = data.load_dataset("mnist", root, cache_dir=cache)
    (path,) = cache.iterdir()
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["__meta__"].tobytes())
    del meta["info"]["digest"]
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)
    old = data.load_dataset("mnist", root, cache_dir=cache)
    assert old.info["from_cache"] is True and "digest" not in old.info
    assert old.digest == first.digest


def test_unwritable_cache_is_not_fatal(mnist_data, tmp_path):
    root, _ = mnist_data
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    ds = data.load_dataset("mnist", root, cache_dir=blocker / "cache")
    assert ds.info["from_cache"] is False and len(ds.train) == 20
