"""DP-SGD: the clipped, noised gradient (closed form and in training) and the privacy accountant."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxpet import config, dpsgd, models, splits, training
from jaxpet.errors import UserError

NORMALIZE = training.Normalize(mean=(0.5,), std=(0.25,))


def _images(n, seed=0):
    """8x8 uint8 images and 2-class labels (which half is brighter)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n).astype(np.int32)
    images = rng.integers(0, 120, (n, 8, 8, 1))
    images[labels == 1, :4] += 120
    return images.astype(np.uint8), labels


def _group_cnn(**kwargs):
    return models.SeedCNN(conv1=4, conv2=8, fc=16, num_classes=2, norm="group", **kwargs)


def _linear_loss(params, x, y, key):
    """loss = w . x, so the example's gradient is x itself."""
    del y, key
    return jnp.dot(params["w"], x), jnp.zeros(2)


def test_clipped_gradient_sum_matches_the_closed_form():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 5)).astype(np.float32) * rng.uniform(0.1, 3, (8, 1)).astype(np.float32)
    mask = np.arange(8) < 6  # two padded rows
    clip = 1.0
    scale = np.minimum(1.0, clip / np.linalg.norm(x, axis=1, keepdims=True))
    expected = (x * scale * mask[:, None]).sum(0)
    params = {"w": jnp.zeros(5)}
    keys = jax.random.split(jax.random.PRNGKey(0), 8)
    for micro in (0, 2, 4):
        summed, _, _ = dpsgd.clipped_gradient_sum(_linear_loss, params, jnp.asarray(x),
                                                  jnp.zeros(8, jnp.int32), jnp.asarray(mask), keys,
                                                  clip, micro)
        np.testing.assert_allclose(summed["w"], expected, rtol=1e-5, atol=1e-6)


def test_private_gradient_is_clipped_and_noised():
    images, labels = _images(32)
    model = _group_cnn()
    x = NORMALIZE(jnp.asarray(images))
    mask = jnp.arange(32) < 20  # 12 padded rows must add nothing
    params = jax.jit(lambda x1: model.init({"params": jax.random.PRNGKey(0)}, x1, train=False))(
        x[:1])["params"]

    def example_loss(p, x1, y1, key):
        logits = model.apply({"params": p}, x1[None], train=True, rngs={"dropout": key})[0]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y1), logits

    @functools.partial(jax.jit, static_argnames="micro")  # one program per microbatch size
    def gradient(clip, noise, micro=0):
        grads, losses, logits = dpsgd.private_gradient(
            example_loss, params, x, jnp.asarray(labels), mask, example_key=jax.random.PRNGKey(1),
            noise_key=jax.random.PRNGKey(2), clip_norm=clip, noise_multiplier=noise,
            batch_size=32, microbatch_size=micro)
        chex.assert_shape([losses, logits], [(32,), (32, 2)])
        return grads

    # On the host (float64): jnp here would compile a program per leaf and operation.
    leaves = lambda tree: [np.asarray(g, np.float64) for g in jax.tree.leaves(tree)]
    norm = lambda tree: float(np.sqrt(sum(np.sum(g**2) for g in leaves(tree))))
    # Forming per-example gradients 8 at a time changes the memory, not the gradient.
    chex.assert_trees_all_close(gradient(1e-3, 1e-12), gradient(1e-3, 1e-12, micro=8), atol=1e-9)
    with pytest.raises(ValueError, match="dp_microbatch_size"):
        training.TrainConfig(batch_size=32, dpsgd=True, dp_microbatch_size=5)
    # Each of the 20 real examples contributes at most `clip`; the sum is divided by 32.
    assert norm(gradient(1e-3, 1e-12)) <= 20 * 1e-3 / 32 * (1 + 1e-4)
    noisy = np.concatenate([g.ravel() for g in leaves(gradient(1e-3, 100.0))])
    np.testing.assert_allclose(float(np.std(noisy)), 100.0 * 1e-3 / 32, rtol=0.1)


def test_dpsgd_without_clipping_or_noise_is_plain_sgd():
    """Clip norm far above every gradient and ~0 noise: DP-SGD's step is the plain step."""
    images, labels = _images(128)
    sets = splits.MemberSets.from_lists([np.arange(0, 128), np.arange(0, 128)])
    base = training.TrainConfig(epochs=2, batch_size=32)
    dp = training.TrainConfig(epochs=2, batch_size=32, dpsgd=True, dp_clip_norm=1e3,
                              dp_noise_multiplier=1e-20)
    plain = training.train_ensemble(_group_cnn(), images, labels, sets, base, seed=1,
                                    preprocess=NORMALIZE)
    private = training.train_ensemble(_group_cnn(), images, labels, sets, dp, seed=1,
                                      preprocess=NORMALIZE)
    chex.assert_trees_all_close(plain.state.params, private.state.params, atol=1e-5, rtol=1e-4)


def test_dpsgd_refuses_batchnorm_and_bad_noise():
    images, labels = _images(64)
    sets = splits.MemberSets.from_lists([np.arange(64)])
    with pytest.raises(ValueError, match="norm='group'"):
        training.train_ensemble(models.SeedCNN(conv1=4, conv2=8, fc=16, num_classes=2), images,
                                labels, sets,
                                training.TrainConfig(epochs=1, batch_size=32, dpsgd=True),
                                preprocess=NORMALIZE)
    with pytest.raises(ValueError, match="dp_noise_multiplier"):
        training.TrainConfig(dpsgd=True, dp_noise_multiplier=0.0)


# ----------------------------------------------------------------------------- accountant


def test_epsilon_moves_the_right_way():
    base = dpsgd.dpsgd_epsilon(1.0, 0.01, 1000, 1e-5)
    assert dpsgd.dpsgd_epsilon(2.0, 0.01, 1000, 1e-5) < base  # more noise
    assert dpsgd.dpsgd_epsilon(1.0, 0.01, 4000, 1e-5) > base  # more steps
    assert dpsgd.dpsgd_epsilon(1.0, 0.05, 1000, 1e-5) > base  # larger batches
    assert dpsgd.dpsgd_epsilon(1.0, 0.01, 1000, 1e-3) < base  # looser delta


def test_single_gaussian_release_matches_the_analytic_bound():
    # One full-batch step is the Gaussian mechanism with sensitivity 1 and std sigma:
    # the classical bound sigma >= sqrt(2 ln(1.25/delta)) / eps (Dwork & Roth, Thm A.1)
    # gives an epsilon that the tight PLD accountant must not exceed.
    sigma, delta = 5.0, 1e-5
    classical = math.sqrt(2 * math.log(1.25 / delta)) / sigma
    pld = dpsgd.dpsgd_epsilon(sigma, 1.0, 1, delta, accountant="pld")
    rdp = dpsgd.dpsgd_epsilon(sigma, 1.0, 1, delta, accountant="rdp")
    assert 0 < pld <= classical
    assert pld <= rdp * 1.001  # RDP is an upper bound, PLD (nearly) tight


def test_training_epsilon_counts_steps():
    out = dpsgd.training_epsilon(1.0, batch_size=128, dataset_size=1000, epochs=3, delta=1e-5)
    assert out["steps"] == 3 * 8
    assert out["sampling_rate"] == pytest.approx(0.128)
    assert out["epsilon"] > 0


@pytest.mark.parametrize("args, match", [
    ((0.0, 0.1, 10, 1e-5), "noise multiplier"),
    ((math.nan, 0.1, 10, 1e-5), "noise multiplier"),
    ((1.0, 0.0, 10, 1e-5), "sampling rate"),
    ((1.0, math.nan, 10, 1e-5), "sampling rate"),
    ((1.0, 0.1, 0, 1e-5), "steps"),
    ((1.0, 0.1, math.nan, 1e-5), "steps"),
    ((1.0, 0.1, 10, 1.0), "delta"),
    ((1.0, 0.1, 10, math.nan), "delta"),
])
def test_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        dpsgd.dpsgd_epsilon(*args)


@pytest.mark.parametrize("values, flag", [
    (dict(noise_multiplier=0.0), "--noise_multiplier"),
    (dict(noise_multiplier=math.inf), "--noise_multiplier"),
    (dict(noise_multiplier=math.nan), "--noise_multiplier"),
    (dict(clip_norm=-1.0), "--clip_norm"),
    (dict(clip_norm=math.inf), "--clip_norm"),
    (dict(delta=0.0), "--delta"),
    (dict(delta=math.nan), "--delta"),
    (dict(microbatch_size=-1), "--microbatch_size"),
])
def test_bad_dpsgd_settings_are_user_errors_where_they_are_written_once(values, flag):
    """DP-SGD's ranges live in DPConfig; TrainConfig and every experiment take them from it."""
    with pytest.raises(UserError, match=flag):
        config.check(dpsgd.DPConfig(**values))
    config.check(dpsgd.DPConfig())
    from jaxpet.experiments import lira

    for name in ("clip_norm", "noise_multiplier"):
        assert config.spec(training.TrainConfig, f"dp_{name}").origin == f"DPConfig.{name}"
    assert config.spec(lira.Config, "dp_delta").origin == "DPConfig.delta"
    with pytest.raises(UserError, match="--dp_clip_norm"):
        training.TrainConfig(dp_clip_norm=math.inf)
