"""mi_face: recovers known class templates, stopping rules, NaN handling, bad input, vmap ==
loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpet import data, models
from jaxpet.attacks import mi_face

SHAPE = (8, 8, 1)
NUM_CLASSES = 4


def _templates(num_classes=NUM_CLASSES, seed=0):
    """Zero-mean, unit-norm random templates: a blank grey image scores every class equally."""
    t = np.random.default_rng(seed).normal(size=(num_classes, int(np.prod(SHAPE))))
    t -= t.mean(1, keepdims=True)
    return t / np.linalg.norm(t, axis=1, keepdims=True)


def linear_apply(params, x):
    """A softmax-regression model whose class c scores ``scale * <template_c, x>``."""
    return params["scale"] * (x.reshape(x.shape[0], -1) @ params["w"].T)


def _linear_params(scale=8.0, **kwargs):
    return {"w": jnp.asarray(_templates(**kwargs), jnp.float32), "scale": jnp.float32(scale)}


GREY = np.full(SHAPE, 0.5, np.float32)


def _pearson(a, b):
    a, b = np.ravel(a) - np.mean(a), np.ravel(b) - np.mean(b)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("loss", mi_face.LOSSES)
def test_recovers_each_class_template(loss):
    params = _linear_params()
    config = mi_face.MIFaceConfig(step_size=0.5, max_iterations=60, loss=loss)
    result = mi_face.mi_face(linear_apply, params, init=GREY, config=config)
    templates = _templates()
    corr = np.array([[_pearson(result.image[c], templates[k]) for k in range(NUM_CLASSES)]
                     for c in range(NUM_CLASSES)])
    own = np.diag(corr)
    others = corr[~np.eye(NUM_CLASSES, dtype=bool)].reshape(NUM_CLASSES, -1)
    assert own.min() > 0.8, corr
    assert (own[:, None] - others).min() > 0.6, corr
    # The attack made each class far more likely than at the start (1/4).
    assert np.all(np.asarray(result.cost) < 0.2)
    assert np.all(np.asarray(result.image) >= 0) and np.all(np.asarray(result.image) <= 1)
    assert result.stop_reasons == ["max_iterations"] * NUM_CLASSES


def test_fixed_budget_runs_exactly_max_iterations():
    config = mi_face.MIFaceConfig(step_size=0.1, max_iterations=7)
    result = mi_face.mi_face(linear_apply, _linear_params(), init=GREY, config=config)
    np.testing.assert_array_equal(result.iterations, 7)
    assert result.stop_reasons == ["max_iterations"] * NUM_CLASSES
    trace = np.asarray(result.trace)
    assert trace.shape == (NUM_CLASSES, 8) and np.all(np.isfinite(trace))
    # The cost falls step by step here, so the best image is the last one.
    assert np.all(np.diff(trace, axis=1) < 0)
    np.testing.assert_array_equal(result.best_iteration, 7)
    np.testing.assert_allclose(result.cost, trace[:, -1], rtol=1e-6)


def test_cost_threshold_stops_early_with_reason():
    config = mi_face.MIFaceConfig(step_size=0.5, max_iterations=500, cost_threshold=0.5)
    result = mi_face.mi_face(linear_apply, _linear_params(), init=GREY, config=config)
    assert result.stop_reasons == ["threshold"] * NUM_CLASSES
    its = np.asarray(result.iterations)
    assert np.all(its < 500) and np.all(its > 0)
    assert np.all(np.asarray(result.cost) <= 0.5)
    trace = np.asarray(result.trace)
    for c, n in enumerate(its):  # above the threshold until the last evaluated step
        assert (np.all(trace[c, :n] > 0.5) and trace[c, n] <= 0.5
                and np.all(np.isnan(trace[c, n + 1:])))


@pytest.mark.parametrize("rule, steps", [("window", 1), ("no_new_best", 3)])
def test_patience_stops_when_the_cost_does_not_improve(rule, steps):
    def flat(params, x):  # the cost never changes, whatever the image
        return jnp.zeros((x.shape[0], 3)) + 0.0 * jnp.sum(x) + params

    # Window: c(x_1) = c(x_0) >= max(c(x_0)) stops at once; no new best: after 3 evaluations.
    config = mi_face.MIFaceConfig(max_iterations=100, patience=3, stopping=rule)
    result = mi_face.mi_face(flat, jnp.float32(0.0), image_shape=SHAPE, config=config)
    assert result.stop_reasons == ["patience"] * 3
    np.testing.assert_array_equal(result.iterations, steps)
    np.testing.assert_array_equal(result.best_iteration, 0)
    np.testing.assert_allclose(result.cost, 2 / 3, rtol=1e-6)


def test_non_finite_cost_stops_that_class_only():
    # Class 0 brightens the image, class 1 darkens it, class 2 is a checkerboard (mean kept);
    # the model returns NaN once the mean pixel exceeds 0.6.
    w = np.stack([np.ones(64), -np.ones(64), np.indices((8, 8)).sum(0).ravel() % 2 * 2 - 1.0]) / 64

    def fragile(params, x):
        logits = 20.0 * (x.reshape(x.shape[0], -1) - 0.5) @ params.T
        return jnp.where(jnp.mean(x) > 0.6, jnp.nan, logits)

    config = mi_face.MIFaceConfig(step_size=1.0, max_iterations=40)
    result = mi_face.mi_face(fragile, jnp.asarray(w, jnp.float32), init=GREY, config=config)
    assert result.stop_reasons == ["non_finite", "max_iterations", "max_iterations"]
    its = np.asarray(result.iterations)
    assert 0 < its[0] < 40 and its[1] == its[2] == 40
    assert np.isnan(result.trace[0, its[0]])
    # The best image kept is the last finite one, not the NaN one.
    assert np.isfinite(result.cost[0]) and float(np.mean(result.image[0])) <= 0.6
    assert result.best_iteration[0] == its[0] - 1


def test_nan_from_the_first_step_is_reported_not_hidden():
    params = _linear_params(scale=float("nan"))
    result = mi_face.mi_face(linear_apply, params, init=GREY,
                               config=mi_face.MIFaceConfig(max_iterations=10))
    assert result.stop_reasons == ["non_finite"] * NUM_CLASSES
    np.testing.assert_array_equal(result.iterations, 0)
    assert np.all(np.isneginf(result.log_p)) and np.all(np.asarray(result.cost) == 1.0)
    np.testing.assert_array_equal(result.image, np.broadcast_to(GREY, (NUM_CLASSES, *SHAPE)))


def test_vmapped_call_equals_one_class_at_a_time():
    params = _linear_params(scale=6.0, seed=3)
    # Thresholds make the classes stop after different numbers of steps.
    config = mi_face.MIFaceConfig(step_size=0.3, max_iterations=200, cost_threshold=0.3,
                                    patience=50, process="denoise_sharpen")
    batched = mi_face.mi_face(linear_apply, params, init=GREY, config=config)
    for c in range(NUM_CLASSES):
        single = mi_face.invert_class(linear_apply, config, params, jnp.int32(c),
                                        jnp.asarray(GREY))
        np.testing.assert_allclose(batched.image[c], single.image, atol=1e-6)
        np.testing.assert_allclose(batched.trace[c], single.trace, atol=1e-6)
        assert int(batched.iterations[c]) == int(single.iterations)
        assert int(batched.stop_code[c]) == int(single.stop_code)


def test_inverts_a_flax_model_through_flax_apply():
    model = models.MLP(hidden_sizes=(16,), num_classes=3, activation="sigmoid")
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, *SHAPE)))
    fn = mi_face.flax_apply(model, data.Normalize(mean=(0.5,), std=(0.5,), scale=1.0))
    start = jax.nn.softmax(fn(variables, jnp.asarray(GREY)[None]))[0]
    result = mi_face.mi_face(fn, variables, [0, 2], init=GREY,
                               config=mi_face.MIFaceConfig(step_size=1.0, max_iterations=20,
                                                             loss="cross_entropy"))
    assert result.image.shape == (2, *SHAPE)
    assert float(result.cost[0]) < 1 - float(start[0])
    assert float(result.cost[1]) < 1 - float(start[2])


@pytest.fixture
def no_loop(monkeypatch):
    """Fails the test if the attack loop is ever started."""
    def fail(*args, **kwargs):
        raise AssertionError("the loop started despite bad input")

    monkeypatch.setattr(mi_face, "invert_classes", fail)


@pytest.mark.parametrize("targets", [[4], [0, -1], [0.5]])
def test_bad_class_index_errors_before_the_loop(no_loop, targets):
    with pytest.raises(ValueError, match="outside|class indices"):
        mi_face.mi_face(linear_apply, _linear_params(), targets, init=GREY)


@pytest.mark.parametrize("kwargs", [dict(step_size=0.0), dict(step_size=-0.1),
                                    dict(step_size=float("nan")), dict(max_iterations=0),
                                    dict(max_iterations=-3), dict(patience=0),
                                    dict(cost_threshold=float("inf")), dict(process="blur"),
                                    dict(loss="hinge"), dict(pixel_range=(1.0, 0.0))])
def test_bad_config_errors(kwargs):
    with pytest.raises(ValueError):
        mi_face.MIFaceConfig(**kwargs)


def test_image_shape_must_fit_the_model(no_loop):
    with pytest.raises(ValueError, match="does not fit"):
        mi_face.mi_face(linear_apply, _linear_params(), image_shape=(7, 7, 1))
    model = models.MLP(hidden_sizes=(8,), num_classes=3)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, *SHAPE)))
    with pytest.raises(ValueError, match="does not fit"):
        mi_face.mi_face(mi_face.flax_apply(model), variables, image_shape=(9, 8, 1))
    with pytest.raises(ValueError, match="init has shape"):
        mi_face.mi_face(linear_apply, _linear_params(), image_shape=SHAPE,
                          init=np.zeros((3, *SHAPE), np.float32))
    with pytest.raises(ValueError, match="outside pixel_range"):
        mi_face.mi_face(linear_apply, _linear_params(), init=GREY + 1.0)
    with pytest.raises(ValueError, match="NaN"):
        mi_face.mi_face(linear_apply, _linear_params(), init=GREY * np.nan)


def test_process_step():
    flat = jnp.full((6, 5, 1), 0.3)
    for process in mi_face.PROCESSES:
        np.testing.assert_allclose(mi_face.process_image(flat, process), flat, atol=1e-6)
    noise = jnp.asarray(np.random.default_rng(0).random((16, 16, 1)), jnp.float32)
    assert float(jnp.std(mi_face.process_image(noise, "denoise"))) < 0.6 * float(jnp.std(noise))
    assert float(jnp.std(mi_face.process_image(noise, "sharpen"))) > float(jnp.std(noise))


def _first_stop(rule, costs, beta):
    """The step at which rule beta stops on this cost sequence (None: never), run through the
    loop's own helpers."""
    window = jnp.full((beta,), jnp.inf, jnp.float32)
    best, since = np.inf, 0
    for step, cost in enumerate(costs):
        log_p = jnp.log1p(-jnp.float32(cost))
        since = 0 if cost < best else since + 1
        best = min(best, cost)
        if bool(mi_face.beta_stops(rule, step, log_p, since, window, beta)):
            return step
        window = mi_face.push_window(window, step, log_p)
    return None


@pytest.mark.parametrize("costs, window_stop, no_new_best_stop", [
    # Slowly falling after a bump: never >= the max of the last 2, but no new best after 0.8.
    ([0.9, 0.8, 0.85, 0.84, 0.83, 0.82], None, 3),
    # A jump above everything in the window stops the window rule at once.
    ([0.9, 0.5, 0.95, 0.4], 2, None),
    # c_5 = 0.76 >= max(c_4, c_3) = max(0.75, 0.7): Algorithm 1's test, hand-checked.
    ([0.9, 0.8, 0.85, 0.7, 0.75, 0.76], 5, 5),
])
def test_the_window_rule_of_algorithm_1_on_hand_built_costs(costs, window_stop,
                                                            no_new_best_stop):
    assert _first_stop("window", costs, beta=2) == window_stop
    assert _first_stop("no_new_best", costs, beta=2) == no_new_best_stop
