"""One model's state and step: config checks, learning-rate decay, masking, augmentation."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpet import models, splits, training
from jaxpet.errors import UserError


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(epochs=0), "epochs"),
        (dict(epochs=2.5), "epochs"),
        (dict(epochs=math.nan), "epochs"),
        (dict(batch_size=0), "batch_size"),
        (dict(patience=0), "patience"),
        (dict(eval_batch_size=-1), "eval_batch_size"),
        (dict(learning_rate=-1.0), "learning_rate"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(learning_rate=math.nan), "learning_rate"),
        (dict(learning_rate=math.inf), "learning_rate"),
        (dict(learning_rate="0.1"), "learning_rate"),
        (dict(lr_decay=1.5), "lr_decay"),
        (dict(lr_decay=math.nan), "lr_decay"),
        (dict(weight_decay=-1e-4), "weight_decay"),
        (dict(weight_decay=math.inf), "weight_decay"),
        (dict(weight_decay=math.nan), "weight_decay"),
        (dict(early_stopping=1), "early_stopping"),
        (dict(augment="mixup"), "augment"),
        (dict(dp_clip_norm=math.nan), "dp_clip_norm"),
        (dict(dp_noise_multiplier=-math.inf), "dp_noise_multiplier"),
        (dict(dpsgd=True, dp_clip_norm=0.0), "dp_clip_norm"),
        (dict(dpsgd=True, dp_clip_norm=math.inf), "dp_clip_norm"),
        (dict(dpsgd=True, dp_noise_multiplier=0.0), "dp_noise_multiplier"),
        (dict(dpsgd=True, dp_noise_multiplier=math.nan), "dp_noise_multiplier"),
        (dict(batch_size=32, dp_microbatch_size=5), "dp_microbatch_size"),
        (dict(dp_microbatch_size=-1), "dp_microbatch_size"),
        (dict(dp_noise_multiplier=0.0), "dp_noise_multiplier"),  # checked with or without DP
        (dict(ema=0.5, early_stopping=True), "ema"),
        (dict(epochs=np.float64(3.0)), "epochs"),
    ],
)
def test_bad_config_is_rejected(kwargs, match):
    with pytest.raises(UserError, match=match):
        training.TrainConfig(**kwargs)


def test_good_config_edges_are_accepted():
    training.TrainConfig(lr_decay=1.0, weight_decay=0.0, learning_rate=np.float32(1e-3),
                         epochs=np.int64(3), early_stopping=np.bool_(True))
    training.TrainConfig(batch_size=32, dpsgd=True, dp_microbatch_size=8)


def test_model_keys_depend_only_on_seed_and_index():
    np.testing.assert_array_equal(training.model_keys(3, 5)[2], training.model_keys(3, 3)[2])
    assert not np.array_equal(training.model_keys(3, 2)[1], training.model_keys(4, 2)[1])
    with pytest.raises(ValueError, match="num_models"):
        training.model_keys(0, 0)


def test_learning_rate_decays_per_epoch(separable_images, normalize):
    images, labels = separable_images(64)
    result = training.train_ensemble(
        models.MLP(hidden_sizes=(8,), num_classes=2), images, labels,
        splits.MemberSets.from_lists([np.arange(64)]),
        training.TrainConfig(epochs=3, batch_size=32, learning_rate=0.01, lr_decay=0.5),
        preprocess=normalize,
    )
    np.testing.assert_allclose([h["learning_rate"][0] for h in result.history],
                               [0.01, 0.005, 0.0025])
    np.testing.assert_allclose(result.state.opt_state.hyperparams["learning_rate"], [0.0025])


def test_padded_partial_batch_equals_exact_batch(separable_images, tiny_cnn, normalize):
    """40 members in a batch of 64 (24 masked rows) must train exactly like a batch of 40."""
    images, labels = separable_images(100)
    sets = splits.MemberSets.from_lists([np.arange(10, 50)])
    keys = training.model_keys(3, 1)
    runs = [
        training.train_ensemble(tiny_cnn(), images, labels, sets,
                                training.TrainConfig(epochs=2, batch_size=b), keys=keys,
                                preprocess=normalize)
        for b in (40, 64)
    ]
    chex.assert_trees_all_close(runs[0].state.params, runs[1].state.params, atol=1e-6)
    chex.assert_trees_all_close(runs[0].state.batch_stats, runs[1].state.batch_stats, atol=1e-6)
    np.testing.assert_array_equal(runs[0].state.step, [2])


def test_batch_without_real_rows_leaves_the_model_untouched(tiny_cnn, normalize):
    model = tiny_cnn()
    config = training.TrainConfig(batch_size=4)
    x = normalize(jnp.ones((4, 8, 8, 1), jnp.uint8))
    init = jax.jit(training.init_model_state, static_argnums=(0, 1))  # one compile, not per op
    state = init(model, config, jax.random.PRNGKey(0), x[:1])
    step = jax.jit(training.train_step, static_argnums=(0, 1))
    after, sums = step(model, config, state, x, jnp.zeros(4, jnp.int32), jnp.zeros(4, bool), 1e-2)
    chex.assert_trees_all_equal(after, state)
    assert int(sums["count"]) == 0


def test_augment_batch_flips_and_crops_each_image():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(16, 8, 8, 2)), jnp.float32)
    out = np.asarray(training.augment_batch(jax.random.PRNGKey(3), x, pad=2))
    chex.assert_shape(out, x.shape)
    padded = lambda im: np.pad(im, ((2, 2), (2, 2), (0, 0)), mode="reflect")
    flips = 0
    for original, augmented in zip(np.asarray(x), out, strict=True):
        candidates = {(f, i, j): padded(original[:, ::-1] if f else original)[i:i + 8, j:j + 8]
                      for f in (0, 1) for i in range(5) for j in range(5)}
        matches = [k for k, c in candidates.items() if np.allclose(c, augmented)]
        assert matches, "not a flipped/cropped view of its own image"
        flips += matches[0][0]
    assert 0 < flips < 16  # both flipped and unflipped images occur
