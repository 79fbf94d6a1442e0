"""RMIA's two conventions: the paper's (plain means, queries averaged) and the released
code's (20% trimmed means, LR > gamma, majority vote over queries per (x, z) pair)."""

import numpy as np
import pytest
from scipy import stats

from jaxpet.attacks import lira, reference, rmia

# The hand-worked toy: 3 references (none trained on anything), 3 candidates x, 4 population
# z, 3 queries; offline with a = 1, so Pr(.) is the references' centre itself.
# Every candidate has reference probabilities {0.2, 0.4, 0.9} on every query: mean 0.5,
# median 0.4. Every z has {0.1, 0.5, 0.6}: mean 0.4, median 0.5.
_REF_X, _REF_Z = np.array([0.2, 0.4, 0.9]), np.array([0.1, 0.5, 0.6])
_TARGET_X = np.array([[0.36, 0.12, 0.2],   # x0 on queries 0, 1, 2
                      [0.52, 0.7, 0.1],    # x1
                      [0.8, 0.9, 0.68]])   # x2
_TARGET_Z = np.array([0.1, 0.2, 0.4, 0.8])  # z0..z3, the same on every query


def _toy_args():
    n, z, a = _TARGET_X.shape[0], len(_TARGET_Z), _TARGET_X.shape[1]
    ref = np.broadcast_to(_REF_X[:, None, None], (3, n, a))
    pop_ref = np.broadcast_to(_REF_Z[:, None, None], (3, z, a))
    pop_target = np.broadcast_to(_TARGET_Z[:, None], (z, a))
    return (np.log(_TARGET_X), np.log(ref), np.zeros((3, n), bool), np.log(pop_target),
            np.log(pop_ref))


def _toy(conv):
    return rmia.rmia(*_toy_args(), online=False, offline_a=1.0, gamma=2.0, conv=conv)


def test_trimmed_mean_and_majority_vote_by_hand():
    # Trimming 0.4 of 3 scores cuts int(1.2) = 1 at each end: the median. Pr(x) = 0.4, Pr(z) =
    # 0.5, so ratio_z = 0.2, 0.4, 0.8, 1.6 and x dominates z_j when ratio_x > 2 ratio_z_j,
    # i.e. ratio_x = p(x|theta) / 0.4 above 0.4, 0.8, 1.6, 3.2.
    #   x0: ratios 0.9, 0.3, 0.5 -> dominates {z0, z1}, {}, {z0}: z0 on 2 of 3 queries -> 1/4
    #   x1: ratios 1.3, 1.75, 0.25 -> {z0, z1}, {z0, z1, z2}, {}: z0, z1 on 2 of 3 -> 2/4
    #   x2: ratios 2.0, 2.25, 1.7 -> {z0, z1, z2} on all three queries -> 3/4
    median_vote = rmia.Convention(trim=0.4, vote="majority", strict=True)
    np.testing.assert_allclose(_toy(median_vote), [1 / 4, 1 / 2, 3 / 4], rtol=1e-12)
    # The same medians with the paper's average of per-query fractions:
    #   x0: (2 + 0 + 1) / 12 = 1/4; x1: (2 + 3 + 0) / 12 = 5/12; x2: (3 + 3 + 3) / 12 = 3/4.
    median_average = rmia.Convention(trim=0.4)
    np.testing.assert_allclose(_toy(median_average), [1 / 4, 5 / 12, 3 / 4], rtol=1e-12)
    # Plain means (the paper): Pr(x) = 0.5, Pr(z) = 0.4, ratio_z = 0.25, 0.5, 1, 2, so the
    # thresholds on ratio_x = p(x|theta) / 0.5 are 0.5, 1, 2, 4.
    #   x0: ratios 0.72, 0.24, 0.4 -> {z0}, {}, {} -> (1 + 0 + 0) / 12 = 1/12
    #   x1: ratios 1.04, 1.4, 0.2 -> {z0, z1}, {z0, z1}, {} -> 4/12 = 1/3
    #   x2: ratios 1.6, 1.8, 1.36 -> {z0, z1} on each -> 6/12 = 1/2
    np.testing.assert_allclose(_toy("paper"), [1 / 12, 1 / 3, 1 / 2], rtol=1e-12)
    # The released code's 20% cuts int(0.6) = 0 of 3 scores: plain means, majority vote.
    #   x0: z0 on 1 of 3 queries -> 0; x1: z0, z1 on 2 of 3 -> 1/2; x2: z0, z1 on 3 -> 1/2.
    np.testing.assert_allclose(_toy("code"), [0, 1 / 2, 1 / 2], atol=1e-12)


def test_trimmed_group_mean_by_hand_and_against_scipy():
    # Five scores, 20%: int(1.0) = 1 cut at each end -> (0.2 + 0.3 + 0.4) / 3 = 0.3. With the
    # 5.0 masked out, four scores: int(0.8) = 0 cut -> (0.1 + 0.2 + 0.3 + 0.4) / 4 = 0.25.
    values = np.array([0.3, 5.0, 0.1, 0.4, 0.2])[:, None, None]
    full = np.ones((5, 1), bool)
    np.testing.assert_allclose(rmia.trimmed_group_mean(values, full, 0.2), [[0.3]], rtol=1e-12)
    four = full.copy()
    four[1] = False
    np.testing.assert_allclose(rmia.trimmed_group_mean(values, four, 0.2), [[0.25]], rtol=1e-12)

    rng = np.random.default_rng(0)
    m, n, a = 13, 40, 2
    values = rng.random((m, n, a))
    mask = rng.random((m, n)) < rng.random(n)  # from empty to full groups
    mask[:, 0] = False
    for proportion in (0.0, 0.1, 0.2, 0.3, 0.45):
        got = rmia.trimmed_group_mean(values, mask, proportion)
        assert np.isnan(got[0]).all()
        for i in range(1, n):
            if mask[:, i].any():
                np.testing.assert_allclose(
                    got[i], stats.trim_mean(values[mask[:, i], i], proportion, axis=0), rtol=1e-12)
    # No trimming is the plain mean.
    _, mean, _ = lira.group_moments(values, mask)
    np.testing.assert_allclose(rmia.trimmed_group_mean(values, mask, 0.0), mean, rtol=1e-12)
    np.testing.assert_allclose(rmia.trimmed_group_mean(values, np.ones((m, n), bool), 0.0),
                               values.mean(0), rtol=1e-12)
    with pytest.raises(ValueError, match="trimmed proportion"):
        rmia.trimmed_group_mean(values, mask, 0.5)


def _brute_force(log_ratio_x, log_ratio_z, gamma, strict, vote):
    """The [N, Z, A] table of per-query tests, then the vote: the definition, all at once."""
    threshold = log_ratio_x - np.log(gamma)
    passed = (log_ratio_z[None, :, :] < threshold[:, None, :]) if strict else \
        (log_ratio_z[None, :, :] <= threshold[:, None, :])
    if vote == "average":
        return passed.mean(1).mean(1)
    return (passed.sum(2) > passed.shape[2] / 2).mean(1)


@pytest.mark.parametrize("num_queries", [1, 2, 3, 4, 5])
def test_chunked_vote_equals_the_brute_force(num_queries):
    rng = np.random.default_rng(num_queries)
    n, z = 57, 23
    # Half-integers: many exact ties between x and z, and with gamma = 1 on the threshold.
    x = rng.integers(-4, 5, (n, num_queries)) / 2
    zs = rng.integers(-4, 5, (z, num_queries)) / 2
    for gamma in (1.0, 2.0):
        for strict in (False, True):
            for vote in rmia.VOTES:
                conv = rmia.Convention(vote=vote, strict=strict)
                want = _brute_force(x, zs, gamma, strict, vote)
                for max_pairs in (1, 50, 10 * z, rmia.MAX_PAIRS):  # 1 x per chunk ... all at once
                    got = rmia.dominated_fraction(x, zs, gamma, conv, max_pairs=max_pairs)
                    np.testing.assert_array_equal(got, want)
    # Continuous values too, with the released convention itself.
    x, zs = rng.normal(size=(n, num_queries)), rng.normal(size=(z, num_queries))
    np.testing.assert_array_equal(rmia.dominated_fraction(x, zs, 1.5, "code", max_pairs=100),
                                  _brute_force(x, zs, 1.5, True, "majority"))


def test_an_even_split_of_queries_is_not_dominance():
    # Two queries: x passes against z on one and fails on the other. torch.mode's tie goes to
    # False (the smaller value) on the CPU, so the released code does not count z; the paper
    # counts half of it.
    x = np.array([[1.0, -1.0]])
    z = np.array([[0.0, 0.0]])
    assert rmia.dominated_fraction(x, z, 1.5, "code")[0] == 0.0
    assert rmia.dominated_fraction(x, z, 1.5, "paper")[0] == 0.5


def test_the_code_is_strict_at_gamma():
    # LR(x, z0) = 1 = gamma exactly: the paper's >= counts it, the code's > does not.
    x, z = np.array([[0.0]]), np.array([[0.0], [-1.0]])
    assert rmia.dominated_fraction(x, z, 1.0, "paper")[0] == 1.0
    assert rmia.dominated_fraction(x, z, 1.0, "code")[0] == 0.5


def test_online_code_pools_in_and_out_before_trimming():
    # Online Pr(x) under "code" is scipy's 20% trimmed mean of the IN and OUT scores pooled;
    # Pr(z) the a formula on the trimmed mean over all references (never trained on z).
    rng = np.random.default_rng(3)
    m, n, z, a = 10, 30, 20, 2
    keep = np.zeros((m, n), bool)
    for i in range(n):
        keep[rng.permutation(m)[: m // 2], i] = True
    ref, target = np.log(rng.uniform(0.05, 1, (m, n, a))), np.log(rng.uniform(0.05, 1, (n, a)))
    pop_ref = np.log(rng.uniform(0.05, 1, (m, z, a)))
    pop_target = np.log(rng.uniform(0.05, 1, (z, a)))
    offline_a, gamma = 0.3, 1.2
    got = rmia.rmia(target, ref, keep, pop_target, pop_ref, online=True, offline_a=offline_a,
                    gamma=gamma, conv="code")
    px = stats.trim_mean(np.exp(ref), 0.2, axis=0)  # 10 scores: 2 cut at each end
    pz = 0.5 * ((1 + offline_a) * stats.trim_mean(np.exp(pop_ref), 0.2, axis=0) + 1 - offline_a)
    lr = (np.exp(target) / px)[:, None, :] / (np.exp(pop_target) / pz)[None, :, :]
    np.testing.assert_allclose(got, ((lr > gamma).sum(2) > a / 2).mean(1), rtol=1e-12)
    # Offline: the trimmed mean of the OUT scores only, then the a formula.
    got = rmia.rmia(target, ref, keep, pop_target, pop_ref, online=False, offline_a=offline_a,
                    gamma=gamma, conv="code")
    out = np.stack([stats.trim_mean(np.exp(ref[~keep[:, i], i]), 0.2, axis=0) for i in range(n)])
    lr = (np.exp(target) / (0.5 * ((1 + offline_a) * out + 1 - offline_a)))[:, None, :] / \
        (np.exp(pop_target) / pz)[None, :, :]
    np.testing.assert_allclose(got, ((lr > gamma).sum(2) > a / 2).mean(1), rtol=1e-12)


def test_registered_attacks_read_the_convention_from_the_config():
    rng = np.random.default_rng(1)
    k, n, z, c = 8, 40, 30, 5
    labels, pop_labels = rng.integers(0, c, n), rng.integers(0, c, z)
    keep = np.zeros((k, n), bool)
    for i in range(n):
        keep[rng.permutation(k)[: k // 2], i] = True
    logits = (rng.normal(size=(k, n, 2, c))
              + 2.0 * keep[:, :, None, None] * np.eye(c)[labels][None, :, None])
    signals = lira.Signals.from_logits(logits, labels, rng.normal(size=(k, z, 2, c)), pop_labels)
    refs = list(range(1, k))
    names = ["rmia_online", "rmia_offline", "rmia_offline_fitted_a"]
    code = reference.attack_scores(signals, keep, 0, refs,
                                   reference.AttackConfig(rmia_convention="code"), attacks=names)
    paper = reference.attack_scores(signals, keep, 0, refs, reference.AttackConfig(), attacks=names)
    x, pop = signals.log_p, signals.population_log_p
    args = (x[0], x[1:], keep[1:], pop[0], pop[1:])
    np.testing.assert_array_equal(code["rmia_online"], rmia.rmia(*args, conv="code"))
    np.testing.assert_array_equal(code["rmia_offline"], rmia.rmia(*args, online=False, conv="code"))
    a = rmia.fit_offline_a(x[1:], keep[1:], pop[1:], conv="code")
    np.testing.assert_array_equal(code["rmia_offline_fitted_a"],
                                  rmia.rmia(*args, online=False, offline_a=a, conv="code"))
    np.testing.assert_array_equal(paper["rmia_online"], rmia.rmia(*args))
    assert not np.array_equal(code["rmia_online"], paper["rmia_online"])


def test_conventions_are_checked():
    with pytest.raises(ValueError, match="--rmia_convention must be one of paper, code"):
        reference.AttackConfig(rmia_convention="mine")
    with pytest.raises(ValueError, match="RMIA convention must be one of"):
        rmia.rmia(*_toy_args(), conv="mine")
    with pytest.raises(ValueError, match="vote must be one of"):
        rmia.Convention(vote="median")
    with pytest.raises(ValueError, match="trim must be in"):
        rmia.Convention(trim=0.5)
    assert rmia.convention("code") == rmia.Convention(trim=0.2, vote="majority", strict=True)


def test_the_lira_experiment_passes_the_convention_on():
    from jaxpet import config as config_lib
    from jaxpet.experiments import lira as lira_experiment

    assert lira_experiment.Config().attack_config().rmia_convention == "paper"
    assert lira_experiment.Config(rmia_convention="code").attack_config().rmia_convention == "code"
    with pytest.raises(config_lib.ConfigError, match="rmia_convention"):
        lira_experiment.Config(rmia_convention="mine")
