"""RMIA: a hand-counted toy, knob checks, and the population it needs."""

import numpy as np
import pytest

from jaxpet import metrics
from jaxpet.attacks import lira, reference, rmia, signals


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
    keep = np.array([[True, False, True, False], [False, True, False, True],
                     [True, False, True, False]])  # every example IN one reference, OUT one
    with pytest.raises(ValueError, match="RMIA needs population signals"):
        reference.attack_scores(no_population, keep, 0, [1, 2], attacks=["rmia_online"])


def test_soft_margin_signal_by_hand():
    # Logits (2, 0, 0), label 0, temperature 2, margin 0.6: z = (1, 0, 0).
    logits = np.array([[2.0, 0.0, 0.0]])
    exact = signals.soft_margin_log_prob(logits, [0], taylor_order=None)
    np.testing.assert_allclose(exact, np.log(np.exp(0.4) / (np.exp(0.4) + 2)), rtol=1e-12)
    # Four Taylor terms of e^x: 1 + x + x^2/2 + x^3/6; at 0.4: 1.490666..., at 0: 1.
    t = 1 + 0.4 + 0.4 ** 2 / 2 + 0.4 ** 3 / 6
    taylor = signals.soft_margin_log_prob(logits, [0])
    np.testing.assert_allclose(taylor, np.log(t / (t + 2)), rtol=1e-12)
    # Zero margin and many terms: the plain softmax at temperature 2.
    plain = signals.soft_margin_log_prob(logits, [0], margin=0.0, taylor_order=40)
    np.testing.assert_allclose(plain, np.log(np.e / (np.e + 2)), rtol=1e-9)


def test_fitted_a_uses_the_references_only_and_picks_the_best_grid_value():
    rng = np.random.default_rng(0)
    m, n, z = 6, 200, 100
    keep = np.zeros((m, n), bool)
    for k in range(m):
        keep[k, rng.permutation(n)[: n // 2]] = True
    # Members get a higher log p; the population sits at the non-members' level.
    log_p = rng.normal(-1.0, 0.3, (m, n, 1)) + 0.8 * keep[:, :, None]
    population = rng.normal(-1.0, 0.3, (m, z, 1))
    a = rmia.fit_offline_a(log_p, keep, population)
    assert a in rmia.A_GRID
    # Its AUC over the pseudo-targets is the grid's best (recomputed by hand here).
    def mean_auc(value):
        aucs = []
        for t in range(2):
            others = [k for k in range(m) if k != t]
            s = rmia.rmia(log_p[t], log_p[others], keep[others], population[t],
                          population[others], online=False, offline_a=value)
            aucs.append(metrics.roc_auc(keep[t], s))
        return np.mean(aucs)
    assert mean_auc(a) >= max(mean_auc(v) for v in rmia.A_GRID) - 1e-12
