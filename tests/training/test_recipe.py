"""A user's own recipe from Python (``TrainConfig.user_recipe``): any optax optimiser, its
schedule counted in steps, and any augmentation, in the ensemble trainer; the checks that refuse
what cannot train, and the recipe's identity. (test_recipes.py: the flags' menu.)"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxpet import models, splits, training
from jaxpet.benchmark import memory
from jaxpet.config import ConfigError
from jaxpet.errors import UserError
from jaxpet.training.state import AUGMENT_STREAM


def _features(n=48, seed=0, classes=2):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 8)).astype(np.float32),
            rng.integers(0, classes, n).astype(np.int32))


def _mlp():
    return models.MLP(hidden_sizes=(4,), num_classes=2)


class _ZeroLinear(nn.Module):
    """A linear classifier initialised at zero: every key gives the same initial model."""

    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(2, kernel_init=nn.initializers.zeros)(x)


class _Linear(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(2)(x)


def _sgd_by_hand(model, params, x, y, lr, steps, shifts=None):
    """The closed form of full-batch optax.sgd(lr): params - lr * grad of the mean
    cross-entropy, ``steps`` times (the batch shifted by ``shifts[t]`` at step t)."""
    def loss(p, xs):
        logits = model.apply({"params": p}, xs)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    for t in range(steps):
        xs = x if shifts is None else x + shifts[t]
        params = jax.tree.map(lambda p, g: p - lr * g, params, jax.grad(loss)(params, xs))
    return params


def _shift(key, x):
    """One random shift of the whole batch: the full batch's mean gradient does not depend on
    the order of its rows, so a hand-written loop reproduces it."""
    return x + 0.5 * jax.random.normal(key, (), x.dtype)


def _step_shifts(key, steps):
    """The shifts the trainer draws for a model: its key folded with AUGMENT_STREAM, then the
    step."""
    base = jax.random.fold_in(key, AUGMENT_STREAM)
    return [0.5 * jax.random.normal(jax.random.fold_in(base, t), ()) for t in range(steps)]


def test_an_ensemble_with_a_user_optax_chain_equals_its_models_trained_one_by_one():
    x, y = _features()
    recipe = training.Recipe(optax.chain(optax.clip_by_global_norm(1.0),
                                         optax.adamw(optax.cosine_decay_schedule(1e-2, 20))))
    config = training.TrainConfig(epochs=3, batch_size=8, user_recipe=recipe)
    members = splits.MemberSets.from_lists([np.arange(0, 24), np.arange(8, 48),
                                            np.arange(24, 48)])
    keys = training.model_keys(3, 3)
    together = training.train_ensemble(_mlp(), x, y, members, config, keys=keys,
                                        strategy="vmap")
    assert "learning_rate" not in together.history[0]  # the rate lives in the optimiser's state
    for k in range(3):
        alone = training.train_ensemble(_mlp(), x, y,
                                        splits.MemberSets.from_lists([members.member(k)]),
                                        config, keys=keys[k:k + 1], strategy="vmap")
        chex.assert_trees_all_close(training.take_model(together.state.params, k),
                                    training.take_model(alone.state.params, 0),
                                    rtol=1e-5, atol=1e-6)
    # Each model counted its own steps (3 batches an epoch, 5 for model 1's 40 members).
    np.testing.assert_array_equal(together.state.step, [9, 15, 9])
    for _, count in optax.tree_utils.tree_get_all_with_path(together.state.opt_state, "count"):
        np.testing.assert_array_equal(count, [9, 15, 9])  # Adam's and the schedule's


def test_the_users_schedule_runs_on_optimiser_steps_not_epochs():
    """A rate of 0.1 for 6 steps, then 0: with 4 steps an epoch the models stop changing in the
    middle of the second epoch, and epoch 3 leaves them as they were."""
    x, y = _features(16)
    recipe = training.Recipe(optax.sgd(optax.piecewise_constant_schedule(0.1, {6: 0.0})))
    config = training.TrainConfig(epochs=3, batch_size=4, user_recipe=recipe)
    seen = []
    result = training.train_ensemble(
        _mlp(), x, y, splits.MemberSets.from_lists([np.arange(16)]), config, seed=1,
        on_epoch_end=lambda epoch, state, metrics: seen.append(jax.device_get(state.params)))
    first, second, third = seen
    assert not np.allclose(first["Dense_0"]["kernel"], second["Dense_0"]["kernel"])
    chex.assert_trees_all_equal(second, third)
    assert int(result.state.step[0]) == 12
    assert [sorted(h) for h in result.history] == [["active", "loss", "seconds", "train_acc"]] * 3


@pytest.mark.parametrize("dpsgd", [False, True], ids=["plain", "dpsgd"])
def test_a_recipe_optimizer_trains_as_a_hand_written_optax_loop(dpsgd):
    """Full batch, optax.sgd(0.5), a linear model: three steps of params - 0.5 * grad. Under
    DP-SGD with a clip no gradient reaches and negligible noise, the same."""
    x, y = _features(16)
    members = splits.MemberSets.from_lists([np.arange(16)])
    dp = dict(dpsgd=True, dp_clip_norm=100.0, dp_noise_multiplier=1e-9) if dpsgd else {}
    config = training.TrainConfig(epochs=3, batch_size=16, **dp,
                                  user_recipe=training.Recipe(optax.sgd(0.5)))
    keys = training.model_keys(0, 1)
    start = training.init_ensemble(_Linear(), config, keys, x[:1]).params
    result = training.train_ensemble(_Linear(), x, y, members, config, keys=keys)
    expected = _sgd_by_hand(_Linear(), training.take_model(start, 0), x, y, 0.5, 3)
    chex.assert_trees_all_close(training.take_model(result.state.params, 0), expected,
                                rtol=1e-4 if dpsgd else 1e-5, atol=1e-6)
    if not dpsgd:  # the flags' optimiser (Adam, lr 1e-3 decayed) trains another model
        flags = training.train_ensemble(
            _Linear(), x, y, members, training.TrainConfig(epochs=3, batch_size=16), keys=keys)
        difference = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                                  flags.state.params, result.state.params)
        assert max(jax.tree.leaves(difference)) > 0.1


def test_augment_gets_a_key_per_model_and_step_and_a_model_trains_alone_as_in_the_ensemble():
    """Two zero-initialised models on the same members: without augmentation they train alike
    whatever their keys; with it, each follows its own keys' shifts (checked step by step
    against a hand-written loop) and equals itself trained alone."""
    x, y = _features(16)
    members = splits.MemberSets.from_lists([np.arange(16)] * 2)
    keys = training.model_keys(4, 2)
    plain = training.TrainConfig(epochs=3, batch_size=16,
                                 user_recipe=training.Recipe(optax.sgd(0.5)))
    augmented = training.TrainConfig(epochs=3, batch_size=16,
                                     user_recipe=training.Recipe(optax.sgd(0.5), _shift))
    same = training.train_ensemble(_ZeroLinear(), x, y, members, plain, keys=keys)
    chex.assert_trees_all_close(training.take_model(same.state.params, 0),
                                training.take_model(same.state.params, 1), rtol=1e-6, atol=1e-7)
    noisy = training.train_ensemble(_ZeroLinear(), x, y, members, augmented, keys=keys)
    start = training.take_model(training.init_ensemble(_ZeroLinear(), plain, keys, x[:1]).params,
                                0)
    for k in range(2):
        expected = _sgd_by_hand(_ZeroLinear(), start, x, y, 0.5, 3, _step_shifts(keys[k], 3))
        chex.assert_trees_all_close(training.take_model(noisy.state.params, k), expected,
                                    rtol=1e-5, atol=1e-6)
    kernel = noisy.state.params["Dense_0"]["kernel"]
    assert float(jnp.max(jnp.abs(kernel[0] - kernel[1]))) > 1e-3
    alone = training.train_ensemble(_ZeroLinear(), x, y, splits.MemberSets.from_lists(
        [np.arange(16)]), augmented, keys=keys[1:2])
    chex.assert_trees_all_close(training.take_model(alone.state.params, 0),
                                training.take_model(noisy.state.params, 1), rtol=1e-6,
                                atol=1e-7)


def _one_line(error, *parts):
    message = str(error.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, (part, message)


class _Unhashable:
    __hash__ = None  # type: ignore[assignment]

    def __call__(self, key, x):
        return x


@pytest.mark.parametrize("optimizer, named", [
    (optax.adam, "the function optax.adam"),  # the factory, not called
    ("adam", "the string 'adam'"),
    (lambda grads: grads, "<lambda>"),
    (1e-3, "an object of type float"),
    (optax.GradientTransformation(None, None), "init and update must be functions"),
    (optax.GradientTransformation, "the class optax.GradientTransformation"),
])
def test_what_is_no_optax_optimizer_is_refused_in_one_line_with_the_fix(optimizer, named):
    with pytest.raises(ConfigError) as error:
        training.Recipe(optimizer)
    _one_line(error, named, "pass optax.adam(1e-3), or optax.chain(...)")


def test_bad_augments_and_misplaced_recipes_are_refused_in_one_line():
    for kwargs, part in ((dict(augment="flip_crop"), "the string 'flip_crop'"),
                         (dict(augment=_Unhashable()), "must be hashable"),
                         ({}, "sets neither optimizer nor augment")):
        with pytest.raises(ConfigError) as error:
            training.Recipe(**kwargs)
        _one_line(error, part)
    with pytest.raises(ConfigError) as error:
        training.TrainConfig(user_recipe=optax.adam(1e-3))
    _one_line(error, "must be a jaxpet.training.Recipe", "Recipe(optimizer=optax.adam(1e-3))")
    with pytest.raises(ConfigError) as error:
        training.TrainConfig(augment="flip_crop", user_recipe=training.Recipe(augment=_shift))
    _one_line(error, "--augment=flip_crop", "use one of them")


def _params_and_batch(batch_size=8):
    x, _ = _features(batch_size)
    return _mlp().init(jax.random.PRNGKey(0), x[:1])["params"], x


def _changes_the_state():
    """An optimiser whose update returns a state of another structure than its init's."""
    return optax.GradientTransformation(
        lambda p: optax.EmptyState(), lambda u, s, p=None: (u, {"count": jnp.zeros(())}))


@pytest.mark.parametrize("recipe, part", [
    (training.Recipe(optax.masked(optax.sgd(0.1), {"wrong": True})), "init fails"),
    (training.Recipe(optax.sgd(lambda count: "fast")), "update fails"),
    (training.Recipe(_changes_the_state()), "returns a state whose structure"),
    (training.Recipe(augment=lambda key, x: x[:, :4]), "into (8, 4) float32"),
    (training.Recipe(augment=lambda key, x: x.astype(jnp.float16)), "into (8, 8) float16"),
    (training.Recipe(augment=lambda key, x: np.asarray(x) + 1), "Recipe.augment fails"),
], ids=["bad_mask", "bad_schedule", "state_changes", "shape", "dtype", "not_traceable"])
def test_a_recipe_that_cannot_train_the_model_is_refused_before_training(recipe, part):
    params, batch = _params_and_batch()
    with pytest.raises(ConfigError) as error:
        training.check_recipe(recipe, params, batch)
    _one_line(error, part)
    x, y = _features(16)  # and by the trainer, before it compiles anything
    with pytest.raises(ConfigError, match="Recipe"):
        training.train_ensemble(_mlp(), x, y, splits.MemberSets.from_lists([np.arange(16)]),
                                training.TrainConfig(epochs=1, batch_size=8, user_recipe=recipe))


def test_the_identity_of_a_recipe_is_what_it_computes():
    params, batch = _params_and_batch()
    ident = lambda *args, **kwargs: training.recipe_identity(training.Recipe(*args, **kwargs),
                                                             params, batch)
    adam = ident(optax.adam(1e-3))
    assert adam == ident(optax.adam(1e-3)) and adam["augment"] is None
    assert adam["optimizer"] != ident(optax.adam(2e-3))["optimizer"]
    cosine = lambda steps: optax.adamw(optax.cosine_decay_schedule(1e-2, steps))
    assert ident(cosine(20)) == ident(cosine(20)) != ident(cosine(30))
    shifted = ident(augment=_shift)
    assert shifted["optimizer"] is None
    assert shifted == ident(augment=lambda key, x: x + 0.5 * jax.random.normal(key, (), x.dtype))
    assert shifted != ident(augment=lambda key, x: x + 0.6 * jax.random.normal(key, (), x.dtype))


def test_the_memory_check_counts_the_users_optimiser_state():
    model, sample = _mlp(), _features(1)[0]
    sizes = lambda optimizer: memory.state_bytes(
        model, training.TrainConfig(user_recipe=training.Recipe(optimizer)), sample)
    params = sizes(optax.sgd(0.1))["parameter_bytes"]
    assert sizes(optax.sgd(0.1))["optimizer_state_bytes"] == 0
    assert sizes(optax.adam(1e-3))["optimizer_state_bytes"] == 2 * params + 4  # mu, nu, count


def test_a_run_with_a_recipe_resumes_when_the_same_recipe_is_built_again(tmp_path):
    """The checkpoint's fingerprint holds the recipe by what it computes: rebuilt, the run
    resumes (nothing retrained); with another learning rate it is another run's directory."""
    x, y = _features(16)
    members = splits.MemberSets.from_lists([np.arange(16)])
    config = lambda lr: training.TrainConfig(epochs=2, batch_size=8, user_recipe=training.Recipe(
        optax.adam(lr)))
    first = training.train_ensemble(_mlp(), x, y, members, config(1e-2), checkpoint_dir=tmp_path)
    epochs = []
    again = training.train_ensemble(_mlp(), x, y, members, config(1e-2), checkpoint_dir=tmp_path,
                                    on_epoch_end=lambda epoch, state, m: epochs.append(epoch))
    assert epochs == []
    chex.assert_trees_all_equal(again.state.params, first.state.params)
    with pytest.raises(UserError, match="different run"):
        training.train_ensemble(_mlp(), x, y, members, config(2e-2), checkpoint_dir=tmp_path)
