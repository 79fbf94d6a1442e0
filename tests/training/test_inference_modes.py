"""Query modes: LiRA's training-mode queries (BatchNorm on each query batch's own statistics,
raw weights, dropout off) against a closed form, per model of the ensemble, padding masked."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpet import training

EPS = 1e-5
# float32 against float64: BatchNorm's variance is E[h^2] - E[h]^2, which loses digits.
CLOSE = dict(rtol=1e-3, atol=1e-4)
TRAIN = "train_batch_stats"


def _dense_bn(x, train, mask):
    """Dense(3), dropout 0.5 (must stay off in every query mode), BatchNorm."""
    h = nn.Dense(3)(x.reshape((x.shape[0], -1)))
    h = nn.Dropout(0.5, deterministic=not train)(h)
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=EPS)(
        h, mask=None if mask is None else mask[:, None])


class DenseBN(nn.Module):
    """One Dense + BatchNorm layer that takes jaxpet's row mask."""

    @nn.compact
    def __call__(self, x, train: bool = False, *, mask=None):
        return _dense_bn(x, train, mask)


class DenseBNNoMask(nn.Module):
    """The same layers, without a mask argument (a padded batch cannot hide its padding)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        return _dense_bn(x, train, None)


K = 3


def _variables(model, x, seed=0):
    """K models with random weights, affine BatchNorm and running statistics far from the data's."""
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    v = jax.vmap(lambda k: model.init(k, x[:2]))(jax.random.split(keys[0], K))
    normal = lambda key, shape: jax.random.normal(key, shape, jnp.float32)
    v["params"]["BatchNorm_0"]["scale"] = 1 + 0.5 * normal(keys[1], (K, 3))
    v["params"]["BatchNorm_0"]["bias"] = normal(keys[2], (K, 3))
    v["batch_stats"]["BatchNorm_0"] = {"mean": normal(keys[3], (K, 3)),
                                       "var": jnp.full((K, 3), 4.0)}
    return v


def _closed_form(v, k, x, running=False):
    """Model k's logits on the batch ``x``: BatchNorm with the batch's mean and biased variance
    (or the running ones), in float64."""
    p = jax.tree.map(lambda a: np.asarray(a[k], np.float64), v["params"])
    h = x.reshape(len(x), -1).astype(np.float64) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
    if running:
        mean = np.asarray(v["batch_stats"]["BatchNorm_0"]["mean"][k], np.float64)
        var = np.asarray(v["batch_stats"]["BatchNorm_0"]["var"][k], np.float64)
    else:
        mean, var = h.mean(0), h.var(0)
    bn = p["BatchNorm_0"]
    return bn["scale"] * (h - mean) / np.sqrt(var + EPS) + bn["bias"]


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return (1.0 + rng.normal(size=(10, 2, 2, 1))).astype(np.float32)  # 10 images of 4 features


@pytest.mark.parametrize("model_cls", [DenseBN, DenseBNNoMask])
@pytest.mark.parametrize("batch_size", [None, 4])
def test_train_batch_stats_is_the_closed_form_on_each_query_batch(images, model_cls, batch_size):
    model = model_cls()
    v = _variables(model, images)
    logits = training.query_logits(model, v, images, mode=TRAIN, batch_size=batch_size)
    assert logits.shape == (K, 10, 2, 3)
    # Default: LiRA's 5,000, so all 10 images form one batch; 4: batches of 4, 3, 3 (the
    # padded ones mask their padding, or run unpadded without a mask argument).
    batches = training.query_batches(10, batch_size or 10, TRAIN)
    assert batches == ([(0, 10)] if batch_size is None else [(0, 4), (4, 7), (7, 10)])
    flipped = images[:, :, ::-1, :]
    for k in range(K):
        for a, b in batches:
            np.testing.assert_allclose(logits[k, a:b, 0], _closed_form(v, k, images[a:b]),
                                       **CLOSE)
            np.testing.assert_allclose(logits[k, a:b, 1], _closed_form(v, k, flipped[a:b]),
                                       **CLOSE)


def test_train_batch_stats_differs_from_eval(images):
    model = DenseBN()
    v = _variables(model, images)
    train = training.query_logits(model, v, images, mode=TRAIN, flips=False)[:, :, 0]
    evaluated = training.query_logits(model, v, images, flips=False)[:, :, 0]
    for k in range(K):
        np.testing.assert_allclose(evaluated[k], _closed_form(v, k, images, running=True),
                                   **CLOSE)
    assert np.abs(train - evaluated).mean() > 0.1


def test_batch_statistics_are_per_model(images):
    """Model 1's logits do not depend on which other models share the vmap."""
    model = DenseBN()
    v = _variables(model, images)
    query = lambda variables: training.query_logits(model, variables, images, mode=TRAIN,
                                                    batch_size=4)
    together = query(v)
    alone = query(jax.tree.map(lambda a: a[1:2], v))
    swapped = query(jax.tree.map(lambda a: a[np.array([2, 1])], v))
    np.testing.assert_allclose(together[1], alone[0], atol=1e-5)
    np.testing.assert_allclose(together[1], swapped[1], atol=1e-5)
    assert np.abs(together[0] - together[1]).max() > 1e-2  # the models do differ
    for per_call in (1, 2):  # groups of 1, 1, 1 and of 2, 1: the same logits
        grouped = training.query_logits(model, v, images, mode=TRAIN, batch_size=4,
                                        models_per_call=per_call)
        np.testing.assert_allclose(grouped, together, atol=1e-5)
    with pytest.raises(ValueError, match="models_per_call"):
        training.predict(model, v, images, models_per_call=0)


def test_querying_leaves_the_running_statistics_unchanged(images):
    model = DenseBN()
    v = _variables(model, images)
    before = jax.tree.map(np.array, v)
    evaluated = training.query_logits(model, v, images)
    training.query_logits(model, v, images, mode=TRAIN)
    jax.tree.map(np.testing.assert_array_equal, v, before)
    np.testing.assert_array_equal(training.query_logits(model, v, images), evaluated)


def test_a_layer_drawing_dropout_randomness_outside_nn_dropout_fails_loudly(images):
    class Noisy(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.Dense(2)(x.reshape((x.shape[0], -1)))
            return x + jax.random.normal(self.make_rng("dropout"), x.shape) if train else x

    model = Noisy()
    v = jax.vmap(lambda k: model.init(k, images[:2]))(jax.random.split(jax.random.PRNGKey(0), 2))
    training.query_logits(model, v, images)  # eval mode draws nothing
    with pytest.raises(Exception, match="dropout"):
        training.query_logits(model, v, images, mode=TRAIN)


def test_seed_cnn_train_mode_matches_its_training_forward_without_dropout(fitted):
    """The trained tiny SeedCNNs (dropout 0.1, row mask): each query batch, padding included,
    normalised as a training step normalises a batch, with dropout off."""
    variables = fitted.result.variables()
    images = fitted.images[:250]
    logits = training.query_logits(fitted.model, variables, images, preprocess=fitted.normalize,
                                   batch_size=100, flips=False, mode=TRAIN)[:, :, 0]
    batches = training.query_batches(250, 100, TRAIN)
    assert batches == [(0, 84), (84, 167), (167, 250)]
    no_dropout = fitted.model.clone(dropout_rate=0.0)
    forward = jax.jit(lambda v, x: no_dropout.apply(v, fitted.normalize(x), train=True,
                                                    mutable=["batch_stats"])[0])
    for k in range(2):
        for a, b in batches:
            np.testing.assert_allclose(
                logits[k, a:b], forward(training.take_model(variables, k), images[a:b]),
                atol=1e-4)


def test_query_variables_picks_raw_or_trained_weights(tiny_cnn):
    model = tiny_cnn()
    sample = jnp.zeros((2, 8, 8, 1))
    keys = training.model_keys(0, 2)
    plain = training.init_ensemble(model, training.TrainConfig(), keys, sample)
    for mode in training.QUERY_MODES:  # without a moving average both are the last weights
        jax.tree.map(np.testing.assert_array_equal, training.query_variables(plain, mode),
                     plain.variables())
    state = training.init_ensemble(model, training.TrainConfig(ema=0.9), keys, sample)
    state = state.replace(ema_params=jax.tree.map(lambda p: p + 1.0, state.params),
                          ema_batch_stats=jax.tree.map(lambda s: s + 2.0, state.batch_stats),
                          ema_norm=jnp.full((2,), 0.5))
    raw = {"params": state.params, "batch_stats": state.batch_stats}
    averaged = state.variables(use_best=True)
    jax.tree.map(lambda a, p: np.testing.assert_allclose(a, (p + 1.0) / 0.5),
                 averaged["params"], state.params)
    jax.tree.map(np.testing.assert_array_equal, training.query_variables(state, TRAIN), raw)
    jax.tree.map(np.testing.assert_array_equal, training.query_variables(state), averaged)
    jax.tree.map(np.testing.assert_array_equal,
                 training.query_variables(state, TRAIN, weights="trained"), averaged)
    jax.tree.map(np.testing.assert_array_equal,
                 training.query_variables(state, "eval", weights="raw"), raw)
    with pytest.raises(ValueError, match="query mode"):
        training.query_variables(state, "train")
    with pytest.raises(ValueError, match="weights"):
        training.query_variables(state, weights="ema")


def test_query_batches_and_bad_modes(images):
    assert training.query_batches(10, 4) == [(0, 4), (4, 8), (8, 10)]  # eval: as before
    assert training.query_batches(50_000, 5000, TRAIN) == [
        (i, i + 5000) for i in range(0, 50_000, 5000)]  # LiRA's ten batches exactly
    assert [b - a for a, b in training.query_batches(10_001, 5000, TRAIN)] == [3334, 3334, 3333]
    assert training.QUERY_BATCH_SIZES == {"eval": 1024, TRAIN: 5000}
    model = DenseBN()
    v = _variables(model, images)
    with pytest.raises(ValueError, match="query mode"):
        training.query_logits(model, v, images, mode="train")
    with pytest.raises(ValueError, match="batch_size"):
        training.predict(model, v, images, mode=TRAIN, batch_size=0)
