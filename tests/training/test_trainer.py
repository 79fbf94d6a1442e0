"""Ensemble trainer: vmap == one-by-one, strategies agree, fitting, early stopping, precision."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpet import splits, training


def _max_abs_diff(a, b):
    """On the host: jnp would compile a program per leaf shape for a subtraction."""
    a, b = jax.device_get((a, b))
    return max(float(np.max(np.abs(x - y)))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


class Trio:
    """Three tiny CNNs (dropout on) of different member-set sizes, trained together with early
    stopping: model 1's members carry noisy labels, so the models' best epochs differ.

    One ensemble run (vmap, parameters saved after every epoch) serves the independent-runs,
    early-stopping and strategy tests, and they share its compiled programs: the K=3 epoch
    under vmap and lax.map, and the K=1 epochs the one-by-one runs and the loop strategy use.
    """

    def __init__(self, separable_images, tiny_cnn, normalize):
        self.images, labels = separable_images(400, seed=1)
        self.labels = labels.copy()
        self.labels[200:300] = np.random.default_rng(0).integers(0, 2, 100)  # model 1's members
        self.model = tiny_cnn(dropout_rate=0.2)
        self.normalize = normalize
        # Different sizes: padding and masking must not change any model's training.
        self.members = splits.MemberSets.from_lists(
            [np.arange(0, 100), np.arange(200, 300), np.arange(0, 250)])
        self.validation = splits.MemberSets.from_lists(
            [np.arange(100, 200), np.arange(300, 400), np.arange(250, 350)])
        self.config = training.TrainConfig(epochs=8, batch_size=16, learning_rate=3e-3,
                                           early_stopping=True, patience=2)
        self.keys = training.model_keys(7, 3)
        self.saved = []  # every epoch's parameters
        self.vmap = self.train(strategy="vmap", on_epoch_end=lambda e, s, m: self.saved.append(
            jax.device_get(s.params)))

    def train(self, members=None, validation=None, keys=None, **kwargs):
        return training.train_ensemble(
            self.model, self.images, self.labels, self.members if members is None else members,
            self.config,
            keys=self.keys if keys is None else keys,
            validation=self.validation if validation is None else validation,
            preprocess=self.normalize, **kwargs)


@pytest.fixture(scope="module")
def trio(separable_images, tiny_cnn, normalize):
    return Trio(separable_images, tiny_cnn, normalize)


def test_vmapped_ensemble_equals_independent_runs(trio):
    ensemble = trio.vmap
    ensemble_post = training.predict(trio.model, ensemble.variables(), trio.images,
                                     preprocess=trio.normalize)
    chex.assert_shape(ensemble_post, (3, 400, 2))
    # Compared on the host: slicing device arrays leaf by leaf would compile a program per shape.
    state = jax.device_get(ensemble.state)
    for k in range(3):
        single = trio.train(splits.MemberSets.from_lists([trio.members.member(k)]),
                            splits.MemberSets.from_lists([trio.validation.member(k)]),
                            trio.keys[k : k + 1], strategy="vmap")
        single_state = jax.device_get(single.state)
        chex.assert_trees_all_close(
            training.take_model(state.params, k),
            training.take_model(single_state.params, 0),
            atol=1e-5, rtol=1e-5,
        )
        chex.assert_trees_all_close(
            training.take_model(state.batch_stats, k),
            training.take_model(single_state.batch_stats, 0), atol=1e-5, rtol=1e-5,
        )
        single_post = training.predict(trio.model, single.variables(), trio.images,
                                       preprocess=trio.normalize)
        np.testing.assert_allclose(ensemble_post[k], single_post[0], atol=1e-5)
    # The models really differ from each other (own keys and own data).
    assert _max_abs_diff(training.take_model(state.params, 0),
                         training.take_model(state.params, 1)) > 1e-3


def test_trainer_fits_separable_data(fitted):
    result = fitted.result
    losses = np.stack([h["loss"] for h in result.history])  # [epochs, K]
    accs = np.stack([h["train_acc"] for h in result.history])
    assert np.all(losses[-1] < losses[0] * 0.5), losses
    assert np.all(accs[-1] > 0.95), accs
    evaluated = training.evaluate(fitted.model, result.variables(), fitted.images, fitted.labels,
                                  fitted.sets, preprocess=fitted.normalize)
    assert np.all(evaluated["accuracy"] > 0.95)


def test_early_stopping_keeps_each_models_best_weights(trio):
    result, saved = trio.vmap, trio.saved
    # On the host: slicing device arrays leaf by leaf would compile a program per shape.
    state, final = jax.device_get((result.state, result.variables()["params"]))
    val_acc = np.stack([h["val_acc"] for h in result.history])  # [epochs, K]
    active = np.stack([h["active"] for h in result.history])
    for k in range(3):
        seen = val_acc[active[:, k], k]  # epochs the model actually trained
        best = int(np.argmax(seen))  # first epoch reaching the max, as the strict `>` keeps
        assert int(state.best_epoch[k]) == best
        np.testing.assert_allclose(state.best_val_acc[k], seen.max())
        chex.assert_trees_all_close(
            training.take_model(state.best_params, k), training.take_model(saved[best], k)
        )
        # Final variables are the best ones, and a stopped model stops changing.
        chex.assert_trees_all_close(training.take_model(final, k),
                                    training.take_model(saved[best], k))
        stopped = np.flatnonzero(~active[:, k])
        if stopped.size:
            chex.assert_trees_all_close(training.take_model(saved[stopped[0]], k),
                                        training.take_model(saved[-1], k))


def test_bfloat16_compute_keeps_float32_params(separable_images, tiny_cnn, normalize):
    images, labels = separable_images(128)
    model = tiny_cnn(dtype=jnp.bfloat16)
    result = training.train_ensemble(
        model, images, labels, splits.MemberSets.replicate(np.arange(128), 2),
        training.TrainConfig(epochs=3, batch_size=32), preprocess=normalize,
    )
    chex.assert_tree_all_finite(result.state.params)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(result.state.params))
    assert result.history[-1]["loss"].mean() < result.history[0]["loss"].mean()
    posteriors = training.predict(model, result.variables(), images, preprocess=normalize)
    assert posteriors.dtype == np.float32
    np.testing.assert_allclose(posteriors.sum(-1), 1.0, atol=1e-3)


def test_bad_inputs_are_rejected_before_training(separable_images, tiny_cnn):
    images, labels = separable_images(20)
    model = tiny_cnn()
    config = training.TrainConfig(epochs=1, early_stopping=True)
    with pytest.raises(ValueError, match="validation"):
        training.train_ensemble(model, images, labels,
                                splits.MemberSets.from_lists([np.arange(10)]), config)
    with pytest.raises(ValueError, match="only 20"):
        training.train_ensemble(model, images, labels,
                                splits.MemberSets.from_lists([np.arange(30)]),
                                training.TrainConfig(epochs=1))
    with pytest.raises(ValueError, match="differ in length"):
        training.train_ensemble(model, images, labels[:10],
                                splits.MemberSets.from_lists([np.arange(5)]),
                                training.TrainConfig(epochs=1))
    with pytest.raises(ValueError, match="checkpoint_every"):
        training.train_ensemble(model, images, labels, splits.MemberSets.from_lists([np.arange(5)]),
                                training.TrainConfig(epochs=1), checkpoint_every=0)


@pytest.mark.parametrize("strategy", ["map", "loop"])
def test_strategies_equal_vmap(strategy, trio):
    """lax.map over models and a host loop over K=1 programs train exactly as vmap does."""
    runs = {"vmap": trio.vmap, strategy: trio.train(strategy=strategy)}
    chex.assert_trees_all_close(runs["vmap"].state.params, runs[strategy].state.params,
                                atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(runs["vmap"].state.best_batch_stats,
                                runs[strategy].state.best_batch_stats, atol=1e-5, rtol=1e-5)
    assert len(runs["vmap"].history) == len(runs[strategy].history)
    for a, b in zip(runs["vmap"].history, runs[strategy].history, strict=True):
        np.testing.assert_allclose(a["val_acc"], b["val_acc"], atol=1e-6)
        np.testing.assert_array_equal(a["active"], b["active"])


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="strategy must be one of"):
        training.resolve_strategy("pmap")
    assert training.resolve_strategy("auto", "gpu") in training.STRATEGIES
    with pytest.raises(ValueError, match="--strategy"):
        training.check_run_flags("pmap", 1)
    with pytest.raises(ValueError, match="--checkpoint_every"):
        training.check_run_flags("auto", 0)


def test_augmented_ensemble_still_equals_independent_runs(fitted):
    config = training.TrainConfig(epochs=1, batch_size=32, augment="flip_crop")
    train = lambda sets, keys, **kw: training.train_ensemble(
        fitted.model, fitted.images, fitted.labels, sets, config, keys=keys,
        preprocess=fitted.normalize, **kw)
    both = train(fitted.sets, fitted.keys, strategy="vmap")
    one = train(splits.MemberSets.from_lists([fitted.sets.member(1)]), fitted.keys[1:])
    both_params, one_params = jax.device_get((both.state.params, one.state.params))  # host
    chex.assert_trees_all_close(training.take_model(both_params, 1),
                                training.take_model(one_params, 0), atol=1e-5, rtol=1e-5)
    # The same run's first epoch without augmentation (same keys, sets and rate schedule).
    plain = fitted.params_after_epoch[0]
    assert _max_abs_diff(plain, both_params) > 1e-4  # augmentation did something
