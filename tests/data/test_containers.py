"""Split and Dataset: validation, the error type, and the content digest."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from jaxpet import data
from jaxpet.data import containers
from jaxpet.errors import UserError


def small_dataset(pixels=0, label=1, attr=3, class_names=("a", "b"), name="x"):
    images = np.zeros((2, 4, 4, 1), np.uint8)
    images[1, 2, 3, 0] = pixels
    split = data.Split(images, np.array([0, label], np.int32),
                       {"k": np.array([attr, 0], np.int32)})
    return data.Dataset(name, split, None, class_names)


def test_containers_validate():
    with pytest.raises(data.DataError, match="uint8"):
        data.Split(np.zeros((2, 4, 4, 1), np.float32), np.zeros(2, np.int32))
    with pytest.raises(data.DataError, match=r"shape \(2,\)"):
        data.Split(np.zeros((2, 4, 4, 1), np.uint8), np.zeros(3, np.int32))
    split = data.Split(np.zeros((2, 4, 4, 1), np.uint8), np.array([0, 5], np.int32))
    with pytest.raises(data.DataError, match="labels span 0..5"):
        data.Dataset("x", split, None, ("a", "b"))


def test_data_error_is_a_user_error():
    assert issubclass(data.DataError, UserError) and issubclass(data.DataError, ValueError)


def test_digest_of_a_dataset_built_in_code_is_lazy_and_content_based(monkeypatch):
    calls = []
    real = containers.content_digest
    monkeypatch.setattr(containers, "content_digest", lambda ds: calls.append(1) or real(ds))
    ds = small_dataset()
    assert calls == []  # nothing hashed at construction
    first = ds.digest
    assert ds.digest == first and calls == [1]  # computed once, then kept
    assert re.fullmatch(r"[0-9a-f]{16}", first), first  # 16 lowercase hex digits
    assert small_dataset().digest == first  # equal content, equal digest
    for other in (small_dataset(pixels=1), small_dataset(label=0), small_dataset(attr=4),
                  small_dataset(class_names=("a", "c")), small_dataset(name="y")):
        assert other.digest != first


def test_replaced_dataset_gets_its_own_digest():
    ds = small_dataset()
    digest = ds.digest
    other = dataclasses.replace(ds, train=small_dataset(pixels=9).train)
    assert other.digest != digest and ds.digest == digest
