"""Fixtures shared by the trainer tests: tiny CNNs and 8x8 images a CNN separates in a few epochs."""

import numpy as np
import pytest

from jaxpet import models, training


def _separable_images(n, seed=0):
    """8x8 uint8 images whose class is which half (top/bottom) is brighter."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n).astype(np.int32)
    images = rng.integers(0, 120, (n, 8, 8, 1))
    images[labels == 1, :4] += 120
    images[labels == 0, 4:] += 120
    return images.astype(np.uint8), labels


def _tiny_cnn(**kwargs):
    return models.SeedCNN(conv1=4, conv2=8, fc=16, num_classes=2, **kwargs)


@pytest.fixture(scope="session")
def separable_images():
    """``separable_images(n, seed=0)`` -> (uint8 [n, 8, 8, 1] images, int32 [n] labels)."""
    return _separable_images


@pytest.fixture(scope="session")
def tiny_cnn():
    """``tiny_cnn(**kwargs)``: a 2-class SeedCNN small enough to train in seconds on a CPU."""
    return _tiny_cnn


@pytest.fixture(scope="session")
def normalize():
    return training.Normalize(mean=(0.5,), std=(0.25,))
