"""The seed's per-dataset normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from jaxpet import data


def test_normalizer_for_every_dataset():
    assert set(data.NORMALIZATION) == set(data.DATASETS)
    for name in data.DATASETS:
        assert isinstance(data.normalizer(name), data.Normalize)
    with pytest.raises(data.DataError, match="Unknown dataset 'svhn'"):
        data.normalizer("svhn")


def test_normalize_values():
    x = np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8)  # [1, 2, RGB]
    np.testing.assert_allclose(data.normalizer("cifar10")(x), [[[-1.0] * 3, [1.0] * 3]])
    np.testing.assert_allclose(data.IDENTITY(np.array([0.25], np.float32)), [0.25])
