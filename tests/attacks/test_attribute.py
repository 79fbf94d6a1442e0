"""Attribute inference's pure parts: the report against scikit-learn, standardising, aggregating."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from jaxpet import models, training
from jaxpet.attacks import attribute

RACES = ("White", "Black", "Asian", "Indian", "Others")


def test_attack_report_matches_sklearn_on_random_predictions():
    rng = np.random.default_rng(1)
    labels, preds = rng.integers(0, 5, 300), rng.integers(0, 4, 300)  # class 4 never predicted
    report = attribute.attack_report(labels, preds, np.r_[labels, [2] * 300], RACES)
    p, r, f, _ = skm.precision_recall_fscore_support(labels, preds, labels=range(5),
                                                     zero_division=0)
    assert [report["per_class"][n]["f1"] for n in RACES] == pytest.approx(f)
    assert [report["per_class"][n]["precision"] for n in RACES] == pytest.approx(p)
    np.testing.assert_array_equal(report["confusion"],
                                  skm.confusion_matrix(labels, preds, labels=range(5)))
    assert report["majority_class"] == "Asian"
    assert report["baseline_accuracy"] == pytest.approx(np.mean(labels == 2))


def test_standardize_uses_the_first_rows_statistics():
    features = np.array([[[1.0, 10.0], [3.0, 10.0], [5.0, 7.0]]])  # [K=1, N=3, D=2]
    z = attribute.standardize(features, num_fit=2)
    # Feature 0: mean 2, std 1 over the first two rows; feature 1: std 0, floored at 1e-6.
    np.testing.assert_allclose(z[0, :, 0], [-1.0, 1.0, 3.0])
    np.testing.assert_allclose(z[0, :, 1], [0.0, 0.0, -3e6])
    assert z.dtype == np.float32


def test_aggregate_means_numbers_sums_confusions_and_keeps_reports():
    a = {"accuracy": 0.5, "majority_class": "White", "confusion": [[1, 0], [0, 1]],
         "per_class": {"White": {"f1": 0.2}}}
    b = {"accuracy": 0.7, "majority_class": "White", "confusion": [[0, 1], [2, 0]],
         "per_class": {"White": {"f1": 0.4}}}
    out = attribute.aggregate([a, b])
    assert out["accuracy"] == pytest.approx(0.6) and out["majority_class"] == "White"
    assert out["confusion"] == [[1, 1], [2, 1]]
    assert out["per_class"]["White"]["f1"] == pytest.approx(0.3)
    assert out["std"]["accuracy"] == pytest.approx(0.1) and "majority_class" not in out["std"]
    assert out["per_target"] == [a, b]


def test_extract_representations_batches_equal_one_pass():
    model = models.LeNet(features=(4, 4, 4), hidden_sizes=(8, 6), num_classes=3)
    images = np.random.default_rng(0).random((7, 8, 8, 1)).astype(np.float32)
    init = jax.jit(lambda key: {"params": model.init(key, jnp.zeros((1, 8, 8, 1)))["params"]})
    stacked = jax.tree.map(lambda *v: jnp.stack(v), *[  # K = 2 models' parameters, stacked
        init(jax.random.PRNGKey(k)) for k in range(2)])
    whole = attribute.extract_representations(model, stacked, images, "fc2", batch_size=16)
    batched = attribute.extract_representations(model, stacked, images, "fc2", batch_size=3)
    assert whole.shape == (2, 7, 6) and whole.dtype == np.float32
    np.testing.assert_allclose(batched, whole, atol=1e-6)
    single = models.representation(model, jax.tree.map(lambda v: v[1], stacked), images, "fc2")
    np.testing.assert_allclose(whole[1], single, atol=1e-6)


def test_layer_features_are_representations_standardised_on_the_first_rows():
    model = models.LeNet(features=(4, 4, 4), hidden_sizes=(8, 6), num_classes=3)
    images = np.random.default_rng(1).random((9, 8, 8, 1)).astype(np.float32)
    variables = jax.tree.map(lambda v: v[None], {
        "params": model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))["params"]})
    features = attribute.layer_features(model, variables, images, "fc1", num_fit=5)
    raw = attribute.extract_representations(model, variables, images, "fc1")
    np.testing.assert_array_equal(features, attribute.standardize(raw, 5))
    fit = features[0, :5]
    np.testing.assert_allclose(fit.mean(0), 0, atol=1e-5)  # the attacker's rows: z-scores
    assert features.shape == (1, 9, 8)


def _blobs(n, informative, seed=0):
    """``n`` points of 3 classes in 4-D: well apart if ``informative``, else pure noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n).astype(np.int32)
    noise = rng.normal(size=(n, 4)).astype(np.float32)
    centres = 4.0 * np.eye(3, 4, dtype=np.float32)
    return (noise + centres[labels] if informative else noise), labels


CONFIG = training.TrainConfig(epochs=15, batch_size=32, learning_rate=1e-2)
MLP = models.MLP(hidden_sizes=(16,), num_classes=3)


def test_attack_features_trains_one_classifier_per_models_own_features():
    """Model 0's features carry the attribute, model 1's do not: only classifier 0 finds it,
    and each is scored on its own model's rows after the first ``num_train``."""
    good, labels = _blobs(400, informative=True)
    noise, _ = _blobs(400, informative=False, seed=1)
    out = attribute.attack_features(MLP, np.stack([good, noise]), labels, 300, CONFIG,
                                    class_names=("a", "b", "c"), seed=0)
    assert len(out.reports) == 2 and out.train_acc.shape == (2,) and out.seconds > 0
    informed, blind = out.reports
    assert informed["accuracy"] > 0.9 and blind["accuracy"] < 0.6
    assert sum(r["support"] for r in informed["per_class"].values()) == 100  # the last 100 rows
    np.testing.assert_array_equal(np.sum(informed["confusion"], 1),
                                  np.bincount(labels[300:], minlength=3))
    majority = int(np.argmax(np.bincount(labels[:300], minlength=3)))
    assert informed["baseline_accuracy"] == pytest.approx(np.mean(labels[300:] == majority))


def test_train_attacks_scores_each_classifier_on_its_own_rows():
    x, labels = _blobs(300, informative=True, seed=2)
    train_sets, test_sets = [np.arange(200), np.arange(100, 300)], [np.arange(200, 300),
                                                                     np.arange(100)]
    out = attribute.train_attacks(MLP, x, labels, train_sets, test_sets, CONFIG,
                                  class_names=("a", "b", "c"), seed=0)
    for report, test in zip(out.reports, test_sets, strict=True):
        np.testing.assert_array_equal(np.sum(report["confusion"], 1),
                                      np.bincount(labels[test], minlength=3))
        assert report["accuracy"] > 0.9
    with pytest.raises(ValueError, match="differ in length"):
        attribute.train_attacks(MLP, x, labels, train_sets, test_sets[:1], CONFIG,
                                class_names=("a", "b", "c"), seed=0)
