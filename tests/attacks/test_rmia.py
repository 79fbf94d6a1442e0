"""RMIA: a hand-counted toy, knob checks, and the population it needs."""

import numpy as np
import pytest

from jaxpet.attacks import lira, reference, rmia


def test_rmia_on_a_hand_built_toy():
    # Two candidates, two references (model 0 trained on x0, model 1 on x1), three population z.
    p_ref = np.array([[0.9, 0.4], [0.5, 0.8]])  # [model, x]
    keep = np.array([[True, False], [False, True]])
    p_target = np.array([0.84, 0.3])
    z_ref = np.array([[0.5, 0.2, 0.6], [0.5, 0.4, 0.8]])
    z_target = np.array([0.25, 0.3, 0.14])
    log = lambda a: np.log(a)[..., None]  # one query
    args = (log(p_target), log(p_ref), keep, log(z_target), log(z_ref))
    a = 0.5
    # Pr(z) = ((1 + a) mean + (1 - a)) / 2 over the references: 0.625, 0.475, 0.775.
    ratio_z = z_target / (0.5 * ((1 + a) * z_ref.mean(0) + (1 - a)))
    # Online: Pr(x0) = (0.9 + 0.5) / 2 = 0.7, Pr(x1) = (0.8 + 0.4) / 2 = 0.6.
    ratio_x = p_target / np.array([0.7, 0.6])
    expected = [(ratio_x[i] / ratio_z >= 2).mean() for i in range(2)]
    np.testing.assert_allclose(expected, [2 / 3, 1 / 3])  # the hand count
    np.testing.assert_allclose(rmia.rmia(*args, online=True, offline_a=a, gamma=2), expected)
    # Offline: Pr(x0) from OUT model 1 only: (1.5 * 0.5 + 0.5) / 2 = 0.625; Pr(x1) = 0.55.
    ratio_x = p_target / np.array([0.625, 0.55])
    expected = [(ratio_x[i] / ratio_z >= 2).mean() for i in range(2)]
    np.testing.assert_allclose(expected, [1, 1 / 3])
    np.testing.assert_allclose(rmia.rmia(*args, online=False, offline_a=a, gamma=2), expected)
    # gamma = 1: x0 dominates every z online; x1 all but z1 (ratio 0.5 / 0.63).
    np.testing.assert_allclose(rmia.rmia(*args, online=True, offline_a=a, gamma=1), [1, 2 / 3])


def test_bad_knobs_and_a_missing_population():
    with pytest.raises(ValueError, match="gamma"):
        rmia.check_rmia_knobs(0.0, 0.3)
    with pytest.raises(ValueError, match="offline a"):
        rmia.check_rmia_knobs(2.0, 1.5)
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(3, 4, 1, 5)), rng.integers(0, 5, 4)
    no_population = lira.Signals.from_logits(logits, labels)
    keep = np.array([[True, False, True, False], [False, True, False, True], [True, True, False, False]])
    with pytest.raises(ValueError, match="RMIA needs population signals"):
        reference.attack_scores(no_population, keep, 0, [1, 2], attacks=["rmia_online"])
