"""Ensemble trainer: vmap == one-by-one, fitting, masking, early stopping, precision."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpet import models, splits, training

NORMALIZE = training.Normalize(mean=(0.5,), std=(0.25,))


def _tiny_cnn(**kwargs):
    return models.SeedCNN(conv1=4, conv2=8, fc=16, num_classes=2, **kwargs)


def _separable_images(n, seed=0):
    """8x8 uint8 images whose class is which half (top/bottom) is brighter."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n).astype(np.int32)
    images = rng.integers(0, 120, (n, 8, 8, 1))
    images[labels == 1, :4] += 120
    images[labels == 0, 4:] += 120
    return images.astype(np.uint8), labels


def _max_abs_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_vmapped_ensemble_equals_independent_runs():
    images, labels = _separable_images(300)
    model = _tiny_cnn(dropout_rate=0.2)
    config = training.TrainConfig(epochs=2, batch_size=32)
    # Different sizes: padding and masking must not change any model's training.
    sets = splits.MemberSets.from_lists([np.arange(0, 150), np.arange(60, 260), np.arange(40, 290)])
    keys = training.model_keys(7, 3)
    ensemble = training.train_ensemble(model, images, labels, sets, config, keys=keys, preprocess=NORMALIZE,
                                       strategy="vmap")
    ensemble_post = training.predict(model, ensemble.variables(), images, preprocess=NORMALIZE)
    chex.assert_shape(ensemble_post, (3, 300, 2))
    for k in range(3):
        single = training.train_ensemble(
            model, images, labels, splits.MemberSets.from_lists([sets.member(k)]), config,
            keys=keys[k : k + 1], preprocess=NORMALIZE,
        )
        chex.assert_trees_all_close(
            training.take_model(ensemble.state.params, k), training.take_model(single.state.params, 0),
            atol=1e-5, rtol=1e-5,
        )
        chex.assert_trees_all_close(
            training.take_model(ensemble.state.batch_stats, k),
            training.take_model(single.state.batch_stats, 0), atol=1e-5, rtol=1e-5,
        )
        single_post = training.predict(model, single.variables(), images, preprocess=NORMALIZE)
        np.testing.assert_allclose(ensemble_post[k], single_post[0], atol=1e-5)
    # The models really differ from each other (own keys and own data).
    assert _max_abs_diff(training.take_model(ensemble.state.params, 0),
                         training.take_model(ensemble.state.params, 1)) > 1e-3


def test_trainer_fits_separable_data():
    images, labels = _separable_images(512)
    sets = splits.MemberSets.replicate(np.arange(512), 2)
    result = training.train_ensemble(
        _tiny_cnn(), images, labels, sets, training.TrainConfig(epochs=4, batch_size=32),
        preprocess=NORMALIZE,
    )
    losses = np.stack([h["loss"] for h in result.history])  # [epochs, K]
    accs = np.stack([h["train_acc"] for h in result.history])
    assert np.all(losses[-1] < losses[0] * 0.5), losses
    assert np.all(accs[-1] > 0.95), accs
    evaluated = training.evaluate(_tiny_cnn(), result.variables(), images, labels, sets, preprocess=NORMALIZE)
    assert np.all(evaluated["accuracy"] > 0.95)


def test_padded_partial_batch_equals_exact_batch():
    """40 members in a batch of 64 (24 masked rows) must train exactly like a batch of 40."""
    images, labels = _separable_images(100)
    sets = splits.MemberSets.from_lists([np.arange(10, 50)])
    keys = training.model_keys(3, 1)
    runs = [
        training.train_ensemble(_tiny_cnn(), images, labels, sets,
                                training.TrainConfig(epochs=2, batch_size=b), keys=keys,
                                preprocess=NORMALIZE)
        for b in (40, 64)
    ]
    chex.assert_trees_all_close(runs[0].state.params, runs[1].state.params, atol=1e-6)
    chex.assert_trees_all_close(runs[0].state.batch_stats, runs[1].state.batch_stats, atol=1e-6)
    np.testing.assert_array_equal(runs[0].state.step, [2])


def test_learning_rate_decays_per_epoch():
    images, labels = _separable_images(64)
    result = training.train_ensemble(
        models.MLP(hidden_sizes=(8,), num_classes=2), images, labels,
        splits.MemberSets.from_lists([np.arange(64)]),
        training.TrainConfig(epochs=3, batch_size=32, learning_rate=0.01, lr_decay=0.5),
        preprocess=NORMALIZE,
    )
    np.testing.assert_allclose([h["learning_rate"][0] for h in result.history], [0.01, 0.005, 0.0025])
    np.testing.assert_allclose(result.state.opt_state.hyperparams["learning_rate"], [0.0025])


def test_early_stopping_keeps_each_models_best_weights():
    images, labels = _separable_images(400, seed=1)
    # Model 0 gets clean labels; model 1 gets noise, so their best epochs differ.
    noisy = labels.copy()
    noisy[200:300] = np.random.default_rng(0).integers(0, 2, 100)
    members = splits.MemberSets.from_lists([np.arange(0, 100), np.arange(200, 300)])
    validation = splits.MemberSets.from_lists([np.arange(100, 200), np.arange(300, 400)])
    config = training.TrainConfig(epochs=8, batch_size=16, learning_rate=3e-3, early_stopping=True, patience=2)
    saved = []
    result = training.train_ensemble(
        _tiny_cnn(), images, noisy, members, config, validation=validation, preprocess=NORMALIZE,
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


def test_bfloat16_compute_keeps_float32_params():
    images, labels = _separable_images(128)
    model = _tiny_cnn(dtype=jnp.bfloat16)
    result = training.train_ensemble(
        model, images, labels, splits.MemberSets.replicate(np.arange(128), 2),
        training.TrainConfig(epochs=3, batch_size=32), preprocess=NORMALIZE,
    )
    chex.assert_tree_all_finite(result.state.params)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(result.state.params))
    assert result.history[-1]["loss"].mean() < result.history[0]["loss"].mean()
    posteriors = training.predict(model, result.variables(), images, preprocess=NORMALIZE)
    assert posteriors.dtype == np.float32
    np.testing.assert_allclose(posteriors.sum(-1), 1.0, atol=1e-3)


def test_predict_matches_direct_apply_and_batches():
    images, labels = _separable_images(50)
    model = _tiny_cnn()
    result = training.train_ensemble(
        model, images, labels, splits.MemberSets.replicate(np.arange(50), 2),
        training.TrainConfig(epochs=1, batch_size=16), preprocess=NORMALIZE,
    )
    batched = training.predict(model, result.variables(), images, preprocess=NORMALIZE, batch_size=7)
    logits = model.apply(training.take_model(result.variables(), 1), NORMALIZE(images), train=False)
    np.testing.assert_allclose(batched[1], jax.nn.softmax(logits), atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(epochs=0), "epochs"),
        (dict(batch_size=0), "batch_size"),
        (dict(learning_rate=-1.0), "learning_rate"),
        (dict(lr_decay=1.5), "lr_decay"),
    ],
)
def test_bad_config_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        training.TrainConfig(**kwargs)


def test_bad_inputs_are_rejected_before_training():
    images, labels = _separable_images(20)
    model = _tiny_cnn()
    config = training.TrainConfig(epochs=1, early_stopping=True)
    with pytest.raises(ValueError, match="validation"):
        training.train_ensemble(model, images, labels, splits.MemberSets.from_lists([np.arange(10)]), config)
    with pytest.raises(ValueError, match="only 20"):
        training.train_ensemble(model, images, labels, splits.MemberSets.from_lists([np.arange(30)]),
                                training.TrainConfig(epochs=1))
    with pytest.raises(ValueError, match="differ in length"):
        training.train_ensemble(model, images, labels[:10], splits.MemberSets.from_lists([np.arange(5)]),
                                training.TrainConfig(epochs=1))


@pytest.mark.parametrize("strategy", ["map", "loop"])
def test_strategies_equal_vmap(strategy):
    """lax.map over models and a host loop over K=1 programs train exactly as vmap does."""
    images, labels = _separable_images(200)
    model = _tiny_cnn(dropout_rate=0.2)
    config = training.TrainConfig(epochs=2, batch_size=32, early_stopping=True, patience=1)
    sets = splits.MemberSets.from_lists([np.arange(0, 100), np.arange(30, 160)])
    val = splits.MemberSets.from_lists([np.arange(160, 200), np.arange(0, 30)])
    runs = {s: training.train_ensemble(model, images, labels, sets, config, seed=3,
                                       validation=val, preprocess=NORMALIZE, strategy=s)
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


def _group_cnn(**kwargs):
    return models.SeedCNN(conv1=4, conv2=8, fc=16, num_classes=2, norm="group", **kwargs)


def test_dpsgd_without_clipping_or_noise_is_plain_sgd():
    """Clip norm far above every gradient and ~0 noise: DP-SGD's step is the plain step."""
    images, labels = _separable_images(128)
    sets = splits.MemberSets.from_lists([np.arange(0, 128), np.arange(0, 128)])
    base = training.TrainConfig(epochs=2, batch_size=32)
    dp = training.TrainConfig(epochs=2, batch_size=32, dpsgd=True, dp_clip_norm=1e3,
                              dp_noise_multiplier=1e-20)
    plain = training.train_ensemble(_group_cnn(), images, labels, sets, base, seed=1, preprocess=NORMALIZE)
    private = training.train_ensemble(_group_cnn(), images, labels, sets, dp, seed=1, preprocess=NORMALIZE)
    chex.assert_trees_all_close(plain.state.params, private.state.params, atol=1e-5, rtol=1e-4)


def test_dpsgd_gradient_is_clipped_and_noised():
    images, labels = _separable_images(32)
    model = _group_cnn()
    x = NORMALIZE(jnp.asarray(images))
    mask = jnp.arange(32) < 20  # 12 padded rows must add nothing

    def gradient(clip, noise, micro=0):
        config = training.TrainConfig(batch_size=32, dpsgd=True, dp_clip_norm=clip,
                                      dp_noise_multiplier=noise, dp_microbatch_size=micro)
        state = training.init_model_state(model, config, jax.random.PRNGKey(0), x[:1])
        return training._private_gradient(model, config, state, x, jnp.asarray(labels), mask,
                                          jax.random.PRNGKey(1))[3]

    norm = lambda tree: float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(tree))))
    # Forming per-example gradients 8 at a time changes the memory, not the gradient.
    chex.assert_trees_all_close(gradient(1e-3, 1e-12), gradient(1e-3, 1e-12, micro=8), atol=1e-9)
    with pytest.raises(ValueError, match="dp_microbatch_size"):
        training.TrainConfig(batch_size=32, dpsgd=True, dp_microbatch_size=5)
    # Each of the 20 real examples contributes at most `clip`; the sum is divided by 32.
    assert norm(gradient(1e-3, 1e-12)) <= 20 * 1e-3 / 32 * (1 + 1e-4)
    noisy = jnp.concatenate([g.ravel() for g in jax.tree.leaves(gradient(1e-3, 100.0))])
    np.testing.assert_allclose(float(jnp.std(noisy)), 100.0 * 1e-3 / 32, rtol=0.1)


def test_dpsgd_refuses_batchnorm_and_bad_noise():
    images, labels = _separable_images(64)
    sets = splits.MemberSets.from_lists([np.arange(64)])
    with pytest.raises(ValueError, match="norm='group'"):
        training.train_ensemble(_tiny_cnn(), images, labels, sets,
                                training.TrainConfig(epochs=1, batch_size=32, dpsgd=True),
                                preprocess=NORMALIZE)
    with pytest.raises(ValueError, match="dp_noise_multiplier"):
        training.TrainConfig(dpsgd=True, dp_noise_multiplier=0.0)


def test_checkpointed_run_resumes_to_the_uninterrupted_result(tmp_path):
    images, labels = _separable_images(128)
    model = _tiny_cnn(dropout_rate=0.1)
    sets = splits.MemberSets.from_lists([np.arange(0, 100), np.arange(20, 128)])
    config = training.TrainConfig(epochs=4, batch_size=32)
    whole = training.train_ensemble(model, images, labels, sets, config, seed=5, preprocess=NORMALIZE)

    class Interrupted(Exception):
        pass

    def stop_after_two(epoch, state, metrics):
        if epoch == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        training.train_ensemble(model, images, labels, sets, config, seed=5, preprocess=NORMALIZE,
                                checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=1,
                                on_epoch_end=stop_after_two)
    resumed = training.train_ensemble(model, images, labels, sets, config, seed=5,
                                      preprocess=NORMALIZE, checkpoint_dir=str(tmp_path / "ckpt"))
    assert len(resumed.history) == 4
    chex.assert_trees_all_close(whole.state.params, resumed.state.params, atol=1e-6)
    chex.assert_trees_all_close(whole.state.opt_state, resumed.state.opt_state, atol=1e-6)
    np.testing.assert_allclose(whole.history[0]["loss"], resumed.history[0]["loss"])
    # Another run's directory is refused, not silently resumed.
    with pytest.raises(ValueError, match="different run"):
        training.train_ensemble(model, images, labels, sets, config, seed=6, preprocess=NORMALIZE,
                                checkpoint_dir=str(tmp_path / "ckpt"))


def test_augment_batch_flips_and_crops_each_image():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(16, 8, 8, 2)), jnp.float32)
    out = np.asarray(training.augment_batch(jax.random.PRNGKey(3), x, pad=2))
    chex.assert_shape(out, x.shape)
    padded = lambda im: np.pad(im, ((2, 2), (2, 2), (0, 0)), mode="reflect")
    flips = 0
    for original, augmented in zip(np.asarray(x), out):
        candidates = {(f, i, j): padded(original[:, ::-1] if f else original)[i:i + 8, j:j + 8]
                      for f in (0, 1) for i in range(5) for j in range(5)}
        matches = [k for k, c in candidates.items() if np.allclose(c, augmented)]
        assert matches, "not a flipped/cropped view of its own image"
        flips += matches[0][0]
    assert 0 < flips < 16  # both flipped and unflipped images occur


def test_augmented_ensemble_still_equals_independent_runs():
    images, labels = _separable_images(96)
    config = training.TrainConfig(epochs=1, batch_size=32, augment="flip_crop")
    sets = splits.MemberSets.from_lists([np.arange(0, 64), np.arange(32, 96)])
    keys = training.model_keys(2, 2)
    both = training.train_ensemble(_tiny_cnn(), images, labels, sets, config, keys=keys, preprocess=NORMALIZE,
                                   strategy="vmap")
    one = training.train_ensemble(_tiny_cnn(), images, labels, splits.MemberSets.from_lists([sets.member(1)]),
                                  config, keys=keys[1:], preprocess=NORMALIZE)
    chex.assert_trees_all_close(training.take_model(both.state.params, 1),
                                training.take_model(one.state.params, 0), atol=1e-5, rtol=1e-5)
    plain = training.train_ensemble(_tiny_cnn(), images, labels, sets, training.TrainConfig(epochs=1, batch_size=32),
                                    keys=keys, preprocess=NORMALIZE)
    assert _max_abs_diff(plain.state.params, both.state.params) > 1e-4  # augmentation did something
    with pytest.raises(ValueError, match="augment"):
        training.TrainConfig(augment="mixup")
