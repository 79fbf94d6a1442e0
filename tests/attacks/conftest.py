"""Fixtures shared by the attack tests: models that overfit their members, synthetic LiRA
signals."""

import numpy as np
import pytest

from jaxpet import attacks, models, splits, training
from jaxpet.attacks import lira


class Overfit:
    """Posteriors of a target (model 0) and a shadow (model 1) MLP on 1600 random points.

    Each memorised random labels of its own 200 members; ``unseen_a``/``unseen_b``
    are 400 points neither model trained on.
    """

    def __init__(self):
        rng = np.random.default_rng(0)
        n = 1600
        x = rng.normal(size=(n, 32)).astype(np.float32)
        self.y = rng.integers(0, 10, n).astype(np.int32)
        order = rng.permutation(n)
        self.target_in, self.target_out, self.shadow_in, self.shadow_out = np.split(order[:800], 4)
        self.unseen_a, self.unseen_b = np.split(order[800:], 2)
        model = models.MLP(hidden_sizes=(256,), num_classes=10)
        sets = splits.MemberSets.from_lists([self.target_in, self.shadow_in])
        config = training.TrainConfig(epochs=60, batch_size=32, learning_rate=3e-3)
        result = training.train_ensemble(model, x, self.y, sets, config, seed=1)
        self.post = training.predict(model, result.variables(), x)

    def sets(self, model: int, ins, outs) -> attacks.LabeledPosteriors:
        """Model ``model``'s posteriors on ``ins`` (labelled members) then ``outs``
        (non-members)."""
        idx = np.r_[ins, outs]
        membership = np.r_[np.ones(len(ins)), np.zeros(len(outs))].astype(int)
        return attacks.LabeledPosteriors(self.post[model][idx], self.y[idx], membership)

    def shadow(self):
        return self.sets(1, self.shadow_in, self.shadow_out)

    def target(self):
        return self.sets(0, self.target_in, self.target_out)

    def unseen(self):
        """Target posteriors on "members" the target never trained on."""
        return self.sets(0, self.unseen_a, self.unseen_b)


@pytest.fixture(scope="session")
def overfit() -> Overfit:
    return Overfit()


def synthetic_signals(effect, num_models=8, n=600, z=300, seed=0, classes=10):
    """(Signals, keep) of logits whose true-class margin is a per-example difficulty + ``effect``
    if a member, on a balanced keep mask, with an RMIA population no model trained on."""
    rng = np.random.default_rng(seed)
    keep = splits.balanced_keep_mask(n, num_models, seed)

    def logits(count, labels, member):
        out = rng.normal(0, 1, (num_models, count, 2, classes))
        margin = rng.normal(2, 2, count)[None, :, None] + effect * member[:, :, None] \
            + rng.normal(0, 0.5, (num_models, count, 2))
        out[:, np.arange(count), :, labels] += np.moveaxis(margin, 1, 0)
        return out

    labels, pop_labels = rng.integers(0, classes, n), rng.integers(0, classes, z)
    signals = lira.Signals.from_logits(logits(n, labels, keep), labels,
                                       logits(z, pop_labels, np.zeros((num_models, z))), pop_labels)
    return signals, keep


@pytest.fixture(scope="session")
def make_signals():
    """:func:`synthetic_signals`, for tests to call with their own sizes."""
    return synthetic_signals
