"""Per-example signals: closed forms from posteriors and logits, stability, one loss definition."""

import math

import numpy as np
import pytest

from jaxpet.attacks import lira, reference, signals


def test_posterior_scores_closed_form():
    p = np.array([[0.7, 0.2, 0.1]])
    y = np.array([0])
    np.testing.assert_allclose(signals.true_class_prob(p, y), 0.7)
    np.testing.assert_allclose(signals.loss_score(p, y), np.log(0.7))
    np.testing.assert_allclose(signals.confidence_score(p), 0.7)
    np.testing.assert_allclose(signals.entropy_score(p), np.sum(p * np.log(p)))
    mentr = -(0.3) * np.log(0.7) - (0.2 * np.log(0.8) + 0.1 * np.log(0.9))
    np.testing.assert_allclose(signals.modified_entropy_score(p, y), -mentr)
    # Modified entropy ranks a confidently wrong prediction as a non-member, unlike entropy.
    wrong = np.array([[0.05, 0.9, 0.05]])
    assert signals.modified_entropy_score(wrong, y) < signals.modified_entropy_score(p, y)
    assert signals.entropy_score(wrong) > signals.entropy_score(p)


def test_a_zero_posterior_gives_a_finite_floored_log_prob():
    p = np.array([[0.0, 1.0], [0.5, 0.5]], np.float32)
    log_p = signals.posterior_log_prob(p, np.array([0, 1]))
    assert log_p.dtype == np.float32  # the posteriors' dtype is kept
    np.testing.assert_allclose(log_p, [np.log(np.float32(1e-30)), np.log(0.5)], rtol=1e-6)


def test_the_loss_attack_is_one_definition_for_posteriors_and_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (1, 6, 2, 5))
    labels = rng.integers(0, 5, 6)
    s = lira.Signals.from_logits(logits, labels)
    # LiRA's baseline: the queries' mean of log p_y, exactly negative_loss.
    got = reference.global_loss(s, 0, None, None, None, None)
    np.testing.assert_array_equal(got, signals.negative_loss(s.log_p[0]))
    np.testing.assert_allclose(got, s.log_p[0].mean(-1))
    # The threshold attack on posteriors: the same score, with one query.
    p = np.exp(logits[0, :, 0]) / np.exp(logits[0, :, 0]).sum(-1, keepdims=True)
    np.testing.assert_allclose(signals.loss_score(p, labels), s.log_p[0, :, 0], rtol=1e-12)
    with pytest.raises(ValueError, match=r"\[examples, queries\]"):
        signals.negative_loss(np.zeros(3))


def test_phi_matches_known_probabilities():
    p = np.array([0.7, 0.2, 0.1])
    logits = np.log(p)[None] + np.array([[0.0], [3.0]])  # a constant shift changes nothing
    phi = signals.logit_scaled_confidence(logits, np.array([0, 2]))
    np.testing.assert_allclose(phi, [math.log(0.7 / 0.3), math.log(0.1 / 0.9)], rtol=1e-12)
    log_p = signals.true_class_log_prob(logits, np.array([0, 2]))
    np.testing.assert_allclose(log_p, np.log([0.7, 0.1]), rtol=1e-12)


def test_phi_is_stable_where_the_probability_rounds_to_one():
    logits = np.array([[60.0, 0.0, 0.0], [-60.0, 0.0, 0.0]], np.float32)
    phi = signals.logit_scaled_confidence(logits, np.array([0, 0]))
    # p_y = 1 - 2e^-60 in exact arithmetic: phi = 60 - log 2, and -60 - log 2 for the second row.
    np.testing.assert_allclose(phi, [60 - math.log(2), -60 - math.log(2)], rtol=1e-12)


def test_phi_equals_the_naive_formula_on_random_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (3, 5, 2, 7))
    labels = rng.integers(0, 7, 5)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    py = np.take_along_axis(p, np.broadcast_to(labels[None, :, None, None], (3, 5, 2, 1)),
                            -1)[..., 0]
    phi = signals.logit_scaled_confidence(logits, labels[:, None])
    np.testing.assert_allclose(phi, np.log(py) - np.log(1 - py), rtol=1e-9)


def test_bad_labels_raise():
    with pytest.raises(ValueError, match="labels must be in"):
        signals.true_class_log_prob(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="do not broadcast"):
        signals.logit_scaled_confidence(np.zeros((2, 3)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="class axis"):
        signals.true_class_log_prob(np.zeros((2, 1)), np.array([0, 0]))
