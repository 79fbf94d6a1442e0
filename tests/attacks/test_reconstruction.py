"""Scoring model inversion: MSE/SSIM against the class means, identification by classifiers
and by the nearest mean, and one timed, scored MI-FACE run over the classes."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxpet.attacks import mi_face, reconstruction
from jaxpet.benchmark import inversion as inversion_timing
from jaxpet.metrics import mse, ssim

SHAPE = (12, 12, 1)  # SSIM needs 11 pixels a side


def _means(num_classes=3, seed=0):
    return np.random.default_rng(seed).random((num_classes, *SHAPE)).astype(np.float32)


def _nearest_mean_classifier(means):
    """(apply_fn, params): logits = minus the squared distance to each class mean."""
    def apply_fn(params, x):
        flat = x.reshape(x.shape[0], -1)
        return -jnp.sum((flat[:, None] - params[None]) ** 2, -1)

    return apply_fn, jnp.asarray(means.reshape(len(means), -1))


def test_score_against_the_class_means_and_by_each_judge():
    means = _means()
    images = means[[0, 1, 2]].copy()
    images[2] = means[0]  # class 2's reconstruction looks like class 0
    wrong = (lambda params, x: jnp.tile(jnp.asarray([[0.0, 0.0, 9.0]]), (x.shape[0], 1)), None)
    out = reconstruction.score(images, np.array([0, 1, 2]), means,
                               {"judge": _nearest_mean_classifier(means), "always_2": wrong})
    np.testing.assert_allclose(out["mse"], mse(images, means), atol=1e-7)
    np.testing.assert_allclose(out["ssim"], ssim(images, means), atol=1e-6)
    assert out["mse"][0] == 0 and out["mse"][2] > 0
    assert out["mse_mean"] == pytest.approx(float(np.mean(out["mse"])))
    np.testing.assert_array_equal(out["judge_predicted"], [0, 1, 0])
    assert out["judge_identified"] == pytest.approx(2 / 3)
    assert out["always_2_identified"] == pytest.approx(1 / 3)
    assert out["always_2_p_true"][2] > 0.99 and out["always_2_p_true"][0] < 0.01
    np.testing.assert_array_equal(out["nearest_mean_predicted"], [0, 1, 0])
    assert out["nearest_mean_identified"] == pytest.approx(2 / 3)


def _template_model(means):
    """Class c scores 8 <template_c, x> with zero-mean unit-norm templates: MI-FACE from grey
    climbs towards each template."""
    t = means.reshape(len(means), -1) - means.reshape(len(means), -1).mean(1, keepdims=True)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    return lambda params, x: 8.0 * (x.reshape(x.shape[0], -1) @ params.T), jnp.asarray(t)


def test_invert_and_score_runs_every_class_once_and_reports_it():
    means = _means(4)
    apply_fn, params = _template_model(means)
    attack = mi_face.MIFaceConfig(max_iterations=20, step_size=0.5, loss="cross_entropy")
    done = reconstruction.invert_and_score(
        apply_fn, params, attack, image_shape=SHAPE, init=np.full(SHAPE, 0.5, np.float32),
        class_means=means, classifiers={"target": (apply_fn, params)}, what="test")
    report = done.report
    assert done.images.shape == (4, *SHAPE) and done.seconds == report["seconds"] > 0
    np.testing.assert_array_equal(np.asarray(done.targets), np.arange(4))
    assert report["max_iterations"] == 20 and report["loss"] == "cross_entropy"
    assert report["iterations"].tolist() == [20] * 4
    assert report["stop_reasons"] == {"max_iterations": 4} and len(report["stop_reason"]) == 4
    assert report["target_identified"] == 1.0  # each reconstruction is its class's, to the model
    assert report["cost_mean"] == pytest.approx(float(np.mean(report["cost"])))
    np.testing.assert_allclose(report["mse"], mse(done.images, means), atol=1e-7)
    # The same run, timed against a loop without running the vmapped call again.
    speed = inversion_timing.time_vmap_vs_loop(apply_fn, params, attack, SHAPE, done.timing)
    assert speed["vmap_seconds"] == done.seconds and speed["max_abs_image_difference"] < 1e-5


def test_invert_and_score_checks_its_input_before_the_loop():
    means = _means()
    apply_fn, params = _template_model(means)
    with pytest.raises(ValueError, match="outside the model's 3 classes"):
        reconstruction.invert_and_score(apply_fn, params, mi_face.MIFaceConfig(), targets=[3],
                                        image_shape=SHAPE, init=None, class_means=means,
                                        classifiers={})
