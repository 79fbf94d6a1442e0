"""Label-only attack: the augmentation table, the shifts, the vmapped queries, the fitted attacks."""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpet import attacks
from jaxpet.attacks import label_only, registry


def test_the_query_table_is_flips_times_shifts_within_the_radius():
    table = label_only.Queries(max_shift=1).table()
    assert table.shape == (10, 3) and table[0].tolist() == [0, 0, 0]  # query 0: the image
    assert sorted(map(tuple, table[:5, 1:].tolist())) == [(-1, 0), (0, -1), (0, 0), (0, 1),
                                                          (1, 0)]
    assert (table[5:, 0] == 1).all() and (table[:5, 0] == 0).all()
    assert label_only.Queries(max_shift=2, flips=False).count == 13  # |dx| + |dy| <= 2
    with pytest.raises(ValueError, match="max_shift"):
        label_only.Queries(max_shift=-1)


def test_shifts_move_the_content_and_repeat_the_edge():
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    right = label_only.augment(x, 0, 1, 0, max_shift=1)[0, :, :, 0]
    np.testing.assert_array_equal(right[:, 1:], x[0, :, :-1, 0])  # moved one column right
    np.testing.assert_array_equal(right[:, 0], x[0, :, 0, 0])  # the edge column repeated
    down = label_only.augment(x, 0, 0, 1, max_shift=1)[0, :, :, 0]
    np.testing.assert_array_equal(down[1:], x[0, :-1, :, 0])
    flipped = label_only.augment(x, 1, 0, 0, max_shift=1)[0, :, :, 0]
    np.testing.assert_array_equal(flipped, x[0, :, ::-1, 0])


class _LeftRight(nn.Module):
    """Class 0 when the left half is brighter, times a learned sign (-1 flips every answer)."""

    @nn.compact
    def __call__(self, x, train=False):
        sign = self.param("sign", nn.initializers.ones, ())
        half = x.shape[2] // 2
        left, right = x[:, :, :half].mean((1, 2, 3)), x[:, :, half:].mean((1, 2, 3))
        return sign * jnp.stack([left, right], -1)


def test_queries_of_every_model_on_every_augmentation_by_hand():
    images = np.zeros((3, 6, 6, 1), np.float32)
    images[:, :, :3] = 1.0  # bright left half: class 0
    labels = np.zeros(3, np.int32)
    variables = {"params": {"sign": jnp.asarray([1.0, -1.0])}}  # K = 2 models
    correct = label_only.query_correct(_LeftRight(), variables, images, labels,
                                       label_only.Queries(max_shift=1), batch_size=2)
    assert correct.shape == (2, 3, 10)
    # Model 0: right on the 5 unflipped queries, wrong on the 5 flipped ones; model 1 the reverse.
    np.testing.assert_array_equal(correct[0], np.tile([True] * 5 + [False] * 5, (3, 1)))
    np.testing.assert_array_equal(correct[1], ~correct[0])


def test_threshold_variant_fits_the_fraction_correct_on_the_shadow():
    shadow = np.array([[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 1, 0], [0, 0, 1, 0]], bool)
    membership = np.array([1, 1, 0, 0])  # fractions 1, 0.75 (members) and 0.5, 0.25
    target = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
    out = label_only.threshold_attack(shadow, membership, target, np.array([1, 0, 0, 1]))
    assert out.report["threshold"] == 0.75
    np.testing.assert_array_equal(out.predictions, [True, False, False, True])
    assert out.report["accuracy"] == 1.0


def test_attacks_that_need_queries_are_skipped_without_them():
    observed = attacks.LabeledPosteriors(np.full((2, 2), 0.5), np.zeros(2, int), np.array([1, 0]))
    assert not registry.get_attack("label_only").runs_on(observed)
    assert registry.get_attack("loss").runs_on(observed)
    with pytest.raises(ValueError, match="label-only queries"):
        registry.get_attack("label_only_threshold").fn(observed, observed)
