"""Ensemble trainer: vmap == one-by-one, strategies agree, fitting, early stopping, precision."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpet import splits, training


def _max_abs_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_vmapped_ensemble_equals_independent_runs(separable_images, tiny_cnn, normalize):
    images, labels = separable_images(300)
    model = tiny_cnn(dropout_rate=0.2)
    config = training.TrainConfig(epochs=2, batch_size=32)
    # Different sizes: padding and masking must not change any model's training.
    sets = splits.MemberSets.from_lists([np.arange(0, 150), np.arange(60, 260), np.arange(40, 290)])
    keys = training.model_keys(7, 3)
    ensemble = training.train_ensemble(model, images, labels, sets, config, keys=keys,
                                       preprocess=normalize, strategy="vmap")
    ensemble_post = training.predict(model, ensemble.variables(), images, preprocess=normalize)
    chex.assert_shape(ensemble_post, (3, 300, 2))
    for k in range(3):
        single = training.train_ensemble(
            model, images, labels, splits.MemberSets.from_lists([sets.member(k)]), config,
            keys=keys[k : k + 1], preprocess=normalize,
        )
        chex.assert_trees_all_close(
            training.take_model(ensemble.state.params, k), training.take_model(single.state.params, 0),
            atol=1e-5, rtol=1e-5,
        )
        chex.assert_trees_all_close(
            training.take_model(ensemble.state.batch_stats, k),
            training.take_model(single.state.batch_stats, 0), atol=1e-5, rtol=1e-5,
        )
        single_post = training.predict(model, single.variables(), images, preprocess=normalize)
        np.testing.assert_allclose(ensemble_post[k], single_post[0], atol=1e-5)
    # The models really differ from each other (own keys and own data).
    assert _max_abs_diff(training.take_model(ensemble.state.params, 0),
                         training.take_model(ensemble.state.params, 1)) > 1e-3


def test_trainer_fits_separable_data(separable_images, tiny_cnn, normalize):
    images, labels = separable_images(512)
    sets = splits.MemberSets.replicate(np.arange(512), 2)
    result = training.train_ensemble(
        tiny_cnn(), images, labels, sets, training.TrainConfig(epochs=4, batch_size=32),
        preprocess=normalize,
    )
    losses = np.stack([h["loss"] for h in result.history])  # [epochs, K]
    accs = np.stack([h["train_acc"] for h in result.history])
    assert np.all(losses[-1] < losses[0] * 0.5), losses
    assert np.all(accs[-1] > 0.95), accs
    evaluated = training.evaluate(tiny_cnn(), result.variables(), images, labels, sets,
                                  preprocess=normalize)
    assert np.all(evaluated["accuracy"] > 0.95)


def test_early_stopping_keeps_each_models_best_weights(separable_images, tiny_cnn, normalize):
    images, labels = separable_images(400, seed=1)
    # Model 0 gets clean labels; model 1 gets noise, so their best epochs differ.
    noisy = labels.copy()
    noisy[200:300] = np.random.default_rng(0).integers(0, 2, 100)
    members = splits.MemberSets.from_lists([np.arange(0, 100), np.arange(200, 300)])
    validation = splits.MemberSets.from_lists([np.arange(100, 200), np.arange(300, 400)])
    config = training.TrainConfig(epochs=8, batch_size=16, learning_rate=3e-3, early_stopping=True,
                                  patience=2)
    saved = []
    result = training.train_ensemble(
        tiny_cnn(), images, noisy, members, config, validation=validation, preprocess=normalize,
        on_epoch_end=lambda e, s, m: saved.append(jax.device_get(s.params)),
    )
    val_acc = np.stack([h["val_acc"] for h in result.history])  # [epochs, K]
    active = np.stack([h["active"] for h in result.history])
    for k in range(2):
        seen = val_acc[active[:, k], k]  # epochs the model actually trained
        best = int(np.argmax(seen))  # first epoch reaching the max, as the strict `>` keeps
        assert int(result.state.best_epoch[k]) == best
        np.testing.assert_allclose(result.state.best_val_acc[k], seen.max())
        chex.assert_trees_all_close(
            training.take_model(result.state.best_params, k), training.take_model(saved[best], k)
        )
        # Final variables are the best ones, and a stopped model stops changing.
        chex.assert_trees_all_close(training.take_model(result.variables()["params"], k),
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
        training.train_ensemble(model, images, labels, splits.MemberSets.from_lists([np.arange(10)]), config)
    with pytest.raises(ValueError, match="only 20"):
        training.train_ensemble(model, images, labels, splits.MemberSets.from_lists([np.arange(30)]),
                                training.TrainConfig(epochs=1))
    with pytest.raises(ValueError, match="differ in length"):
        training.train_ensemble(model, images, labels[:10], splits.MemberSets.from_lists([np.arange(5)]),
                                training.TrainConfig(epochs=1))
    with pytest.raises(ValueError, match="checkpoint_every"):
        training.train_ensemble(model, images, labels, splits.MemberSets.from_lists([np.arange(5)]),
                                training.TrainConfig(epochs=1), checkpoint_every=0)


@pytest.mark.parametrize("strategy", ["map", "loop"])
def test_strategies_equal_vmap(strategy, separable_images, tiny_cnn, normalize):
    """lax.map over models and a host loop over K=1 programs train exactly as vmap does."""
    images, labels = separable_images(200)
    model = tiny_cnn(dropout_rate=0.2)
    config = training.TrainConfig(epochs=2, batch_size=32, early_stopping=True, patience=1)
    sets = splits.MemberSets.from_lists([np.arange(0, 100), np.arange(30, 160)])
    val = splits.MemberSets.from_lists([np.arange(160, 200), np.arange(0, 30)])
    runs = {s: training.train_ensemble(model, images, labels, sets, config, seed=3,
                                       validation=val, preprocess=normalize, strategy=s)
            for s in ("vmap", strategy)}
    chex.assert_trees_all_close(runs["vmap"].state.params, runs[strategy].state.params,
                                atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(runs["vmap"].state.best_batch_stats,
                                runs[strategy].state.best_batch_stats, atol=1e-5, rtol=1e-5)
    for a, b in zip(runs["vmap"].history, runs[strategy].history):
        np.testing.assert_allclose(a["val_acc"], b["val_acc"], atol=1e-6)


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="strategy must be one of"):
        training.resolve_strategy("pmap")
    assert training.resolve_strategy("auto", "gpu") in training.STRATEGIES
    with pytest.raises(ValueError, match="--strategy"):
        training.check_run_flags("pmap", 1)
    with pytest.raises(ValueError, match="--checkpoint_every"):
        training.check_run_flags("auto", 0)


def test_augmented_ensemble_still_equals_independent_runs(separable_images, tiny_cnn, normalize):
    images, labels = separable_images(96)
    config = training.TrainConfig(epochs=1, batch_size=32, augment="flip_crop")
    sets = splits.MemberSets.from_lists([np.arange(0, 64), np.arange(32, 96)])
    keys = training.model_keys(2, 2)
    both = training.train_ensemble(tiny_cnn(), images, labels, sets, config, keys=keys,
                                   preprocess=normalize, strategy="vmap")
    one = training.train_ensemble(tiny_cnn(), images, labels,
                                  splits.MemberSets.from_lists([sets.member(1)]), config,
                                  keys=keys[1:], preprocess=normalize)
    chex.assert_trees_all_close(training.take_model(both.state.params, 1),
                                training.take_model(one.state.params, 0), atol=1e-5, rtol=1e-5)
    plain = training.train_ensemble(tiny_cnn(), images, labels, sets,
                                    training.TrainConfig(epochs=1, batch_size=32), keys=keys,
                                    preprocess=normalize)
    assert _max_abs_diff(plain.state.params, both.state.params) > 1e-4  # augmentation did something
