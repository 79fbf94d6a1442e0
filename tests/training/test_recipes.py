"""Training recipes beyond the seed's (SGD with momentum, constant and cosine schedules) and
ordinary Flax modules (no ``mask`` keyword; with BatchNorm or dropout) in the ensemble trainer."""

from __future__ import annotations

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxpet import splits, training
from jaxpet.errors import UserError


class PlainCNN(nn.Module):
    """A user's module: ``__call__(x, train)``, BatchNorm and dropout, no ``mask`` keyword."""

    num_classes: int = 3

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.relu(x).reshape((x.shape[0], -1))
        x = nn.Dropout(0.2, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


class PlainMLP(nn.Module):
    num_classes: int = 3

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Dense(16)(x.reshape((x.shape[0], -1))))
        return nn.Dense(self.num_classes)(nn.Dropout(0.1, deterministic=not train)(x))


# One recipe for every training here (plain SGD, cosine schedule), so
# the tests share their compiled programs: the K=1 runs on 30 members are the same program in
# the vmap-equals-one-by-one, cosine and full-batches tests.
CONFIG = training.TrainConfig(epochs=3, batch_size=8, optimizer="sgd", schedule="cosine",
                              learning_rate=0.05)


def _data(n=40, shape=(4, 4, 1), seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, *shape)).astype(np.float32),
            rng.integers(0, 3, n).astype(np.int32))


def test_schedules_give_the_stated_learning_rates():
    exp = training.TrainConfig(learning_rate=0.1, lr_decay=0.5)
    assert float(exp.learning_rate_at(2)) == pytest.approx(0.025)
    const = training.TrainConfig(learning_rate=0.1, schedule="constant")
    assert float(const.learning_rate_at(7)) == pytest.approx(0.1)
    cos = training.TrainConfig(learning_rate=0.1, schedule="cosine", epochs=4)
    expected = [0.1 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(5)]
    assert [float(cos.learning_rate_at(e)) for e in range(5)] == pytest.approx(expected, abs=1e-7)


def test_the_trainer_follows_the_cosine_schedule_across_epochs():
    images, labels = _data()
    result = training.train_ensemble(PlainMLP(), images, labels,
                                     splits.MemberSets.from_lists([np.arange(10, 40)]), CONFIG,
                                     strategy="vmap")
    rates = [float(h["learning_rate"][0]) for h in result.history]
    assert rates == pytest.approx([float(CONFIG.learning_rate_at(e)) for e in range(3)])
    assert rates[0] > rates[1] > rates[2] > 0
    np.testing.assert_allclose(result.state.opt_state.hyperparams["learning_rate"], rates[-1:])


def test_sgd_with_momentum_matches_optax_by_hand():
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.asarray([1.0, -2.0, 0.5])}
    config = training.TrainConfig(optimizer="sgd", momentum=0.9, learning_rate=0.1,
                                  weight_decay=0.01)
    opt = training.make_optimizer(config)
    state = opt.init(params)
    for _ in range(2):
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    # By hand: g' = g + wd * w; v = 0.9 v + g'; w -= lr * v.
    w, v = np.ones(3), np.zeros(3)
    for _ in range(2):
        g = np.asarray(grads["w"]) + 0.01 * w
        v = 0.9 * v + g
        w = w - 0.1 * v
    np.testing.assert_allclose(params["w"], w, rtol=1e-6)


def test_bad_recipes_are_refused():
    for kwargs, match in ((dict(optimizer="rmsprop"), "optimizer"),
                          (dict(schedule="step"), "schedule"),
                          (dict(momentum=1.0), "momentum"),
                          (dict(momentum=float("nan")), "momentum")):
        with pytest.raises(UserError, match=match):
            training.TrainConfig(**kwargs)


@pytest.mark.parametrize("model", [PlainCNN(), PlainMLP()], ids=["batchnorm", "dropout"])
def test_a_module_without_mask_trains_and_vmap_equals_one_by_one(model):
    assert not training.accepts_mask(model)
    images, labels = _data()
    members = splits.MemberSets.from_lists([np.arange(0, 24), np.arange(10, 40)])
    config = CONFIG
    keys = training.model_keys(0, 2)
    together = training.train_ensemble(model, images, labels, members, config, keys=keys,
                                       strategy="vmap")
    for k in range(2):
        alone = training.train_ensemble(
            model, images, labels, splits.MemberSets.from_lists([members.member(k)]), config,
            keys=keys[k:k + 1], strategy="vmap")
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[k], b[0], rtol=1e-5, atol=1e-6),  # noqa: B023 - called now
                     together.state.params, alone.state.params)


def test_batchnorm_without_mask_trains_on_full_batches_only():
    """30 members in batches of 8: each epoch three full batches train, the partial fourth is
    skipped (3 epochs: 9 steps)."""
    images, labels = _data()
    sets = splits.MemberSets.from_lists([np.arange(10, 40)])
    result = training.train_ensemble(PlainCNN(), images, labels, sets, CONFIG, strategy="vmap")
    assert int(result.state.step[0]) == 9
    # A module that masks (or has no BatchNorm) also learns from the partial batch.
    result = training.train_ensemble(PlainMLP(), images, labels, sets, CONFIG, strategy="vmap")
    assert int(result.state.step[0]) == 12


def test_batchnorm_without_mask_and_fewer_members_than_a_batch_is_refused():
    images, labels = _data()
    with pytest.raises(UserError, match="holds 6 examples, fewer than one batch of 8"):
        training.train_ensemble(PlainCNN(), images, labels,
                                splits.MemberSets.from_lists([np.arange(6), np.arange(20)]),
                                CONFIG)


def test_lira_cosine_schedule_by_hand():
    config = training.TrainConfig(epochs=100, learning_rate=0.1, schedule="lira_cosine",
                                  optimizer="sgd")
    # Epoch 0's midpoint: t = 0.005, warm-up factor 0.5; epoch 50: t = 0.505; the last: 0.995.
    for epoch, t, warm in ((0, 0.005, 0.5), (50, 0.505, 1.0), (99, 0.995, 1.0)):
        expected = 0.1 * np.cos(7 * np.pi * t / 16) * warm
        np.testing.assert_allclose(float(config.learning_rate_at(epoch)), expected, rtol=1e-6)


def test_weight_decay_on_kernels_only_leaves_biases_and_scales_alone():
    params = {"conv": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
              "norm": {"scale": jnp.ones(2)}}
    zero = jax.tree.map(jnp.zeros_like, params)
    for decayed, decays in (("kernels", {"kernel"}), ("all", {"kernel", "bias", "scale"})):
        config = training.TrainConfig(optimizer="sgd", momentum=0.0, learning_rate=1.0,
                                      weight_decay=0.5, decayed=decayed)
        optimizer = training.make_optimizer(config)
        updates, _ = optimizer.update(zero, optimizer.init(params), params)
        for path, leaf in jax.tree_util.tree_leaves_with_path(updates):
            name = path[-1].key
            # A zero gradient plus 0.5 * w, times -lr: -0.5 where decayed, 0 elsewhere.
            np.testing.assert_allclose(leaf, -0.5 if name in decays else 0.0, err_msg=name)


class _Linear(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(2)(x)


def test_the_moving_average_of_the_weights_is_what_the_model_predicts_with():
    """ema = m: after steps with weights w_1..w_t the model predicts with
    sum_i (1 - m) m^(t - i) w_i / (1 - m^t) (LiRA's debiased EMA); one step per epoch here."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(16, 3)).astype(np.float32)
    labels = rng.integers(0, 2, 16).astype(np.int32)
    members = splits.MemberSets.from_lists([np.arange(16)])
    config = training.TrainConfig(epochs=3, batch_size=16, optimizer="sgd", learning_rate=0.5,
                                  ema=0.5)
    seen = []
    result = training.train_ensemble(
        _Linear(), images, labels, members, config, seed=0,
        on_epoch_end=lambda epoch, state, metrics: seen.append(jax.device_get(state.params)))
    m, t = 0.5, 3
    expected = jax.tree.map(
        lambda *ws: sum((1 - m) * m ** (t - 1 - i) * w for i, w in enumerate(ws)) / (1 - m ** t),
        *seen)
    chex.assert_trees_all_close(result.variables()["params"], expected, rtol=1e-6)
    # The last weights differ from their average (the test would pass trivially otherwise).
    assert not np.allclose(seen[-1]["Dense_0"]["kernel"], expected["Dense_0"]["kernel"])
    with pytest.raises(UserError, match="--ema and --early_stopping"):
        training.TrainConfig(ema=0.9, early_stopping=True)
