"""Fixtures shared by the trainer tests: tiny CNNs and 8x8 images a CNN separates in a few
epochs."""

import jax
import numpy as np
import pytest

from jaxpet import models, splits, training


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


class Fitted:
    """One K=2 ensemble of tiny CNNs (dropout on) trained 4 epochs on 512 separable images,
    member sets of different sizes, with its parameters after every epoch.

    Shared by the trainer, inference, checkpoint and augmentation tests: the training
    and its compiled programs are paid once, and a test that retrains the same run
    (e.g. to resume it from a checkpoint) reuses the compiled epoch.
    """

    def __init__(self, separable_images, tiny_cnn, normalize):
        self.images, self.labels = separable_images(512)
        self.model = tiny_cnn(dropout_rate=0.1)
        self.sets = splits.MemberSets.from_lists([np.arange(0, 512), np.arange(40, 480)])
        self.config = training.TrainConfig(epochs=4, batch_size=32)
        self.normalize = normalize
        self.seed = 5
        self.keys = training.model_keys(self.seed, 2)
        self.params_after_epoch = []
        self.result = self.train(on_epoch_end=lambda e, state, m: self.params_after_epoch.append(
            jax.device_get(state.params)))

    def train(self, **kwargs):
        """The same run again (with checkpoints, callbacks...): the compiled programs are reused."""
        return training.train_ensemble(self.model, self.images, self.labels, self.sets,
                                       self.config, seed=self.seed, preprocess=self.normalize,
                                       **kwargs)


@pytest.fixture(scope="session")
def fitted(separable_images, tiny_cnn, normalize) -> Fitted:
    return Fitted(separable_images, tiny_cnn, normalize)
