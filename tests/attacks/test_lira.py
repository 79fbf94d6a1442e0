"""LiRA: closed-form Gaussian oracles, the equalized reference use, signals and input checks."""

import math

import numpy as np
import pytest
from scipy import stats

from jaxpet import splits
from jaxpet.attacks import lira


def test_lira_online_is_the_gaussian_log_likelihood_ratio():
    # One example, two queries; references 0, 1 are IN, 2, 3 OUT.
    ref = np.array([[[2.0, 1.0]], [[4.0, 3.0]], [[-1.0, -1.0]], [[1.0, 1.0]]])
    keep = np.array([[True], [True], [False], [False]])
    target = np.array([[2.5, 2.0]])
    # Query 0: IN mean 3, var 2; OUT mean 0, var 2 -> ((2.5 - 0)^2 - (2.5 - 3)^2) / (2 * 2) = 1.5.
    # Query 1: IN mean 2, var 2; OUT mean 0, var 2 -> (2^2 - 0^2) / 4 = 1. Queries are averaged.
    np.testing.assert_allclose(lira.lira_online(target, ref, keep), [1.25], rtol=1e-12)
    q0 = stats.norm.logpdf(2.5, 3, math.sqrt(2)) - stats.norm.logpdf(2.5, 0, math.sqrt(2))
    np.testing.assert_allclose(lira.lira_online(target[:, :1], ref[:, :, :1], keep), [q0],
                               rtol=1e-12)


def test_lira_online_three_reference_toy_falls_back_to_the_pooled_std():
    # IN {1, 3}, OUT {0}: one OUT score has no variance of its own, so it takes the pooled
    # within-group one, (1 + 1) / 1 dof = 2, equal to the IN variance here.
    ref = np.array([[[1.0]], [[3.0]], [[0.0]]])
    keep = np.array([[True], [True], [False]])
    expected = stats.norm.logpdf(2, 2, math.sqrt(2)) - stats.norm.logpdf(2, 0, math.sqrt(2))
    assert expected == pytest.approx(1.0)
    np.testing.assert_allclose(lira.lira_online(np.array([[2.0]]), ref, keep), [expected],
                               rtol=1e-12)


def test_lira_online_fixed_variance_pools_within_example_deviations():
    # Two examples, one query. Example 0: IN {1, 3}, OUT {0, 0}; example 1: IN {5, 5}, OUT {2, 4}.
    ref = np.array([[[1.0], [5.0]], [[3.0], [2.0]], [[0.0], [5.0]], [[0.0], [4.0]]])
    keep = np.array([[True, True], [True, False], [False, True], [False, False]])
    target = np.array([[2.0], [4.0]])
    var = (1 + 1 + 0 + 0 + 0 + 0 + 1 + 1) / 4  # pooled over four groups of two (1 dof each)
    expected = [stats.norm.logpdf(2, 2, 1) - stats.norm.logpdf(2, 0, 1),
                stats.norm.logpdf(4, 5, 1) - stats.norm.logpdf(4, 3, 1)]
    assert var == 1.0
    np.testing.assert_allclose(lira.lira_online(target, ref, keep, fixed_variance=True), expected,
                               rtol=1e-12)


def test_lira_offline_is_one_sided():
    ref = np.array([[[-1.0]], [[1.0]], [[9.0]]])  # the IN reference (9) is ignored offline
    keep = np.array([[False], [False], [True]])
    targets = np.array([[1.0], [-3.0], [0.0]])
    refs = np.repeat(ref, 3, axis=1)
    keeps = np.repeat(keep, 3, axis=1)
    score = lira.lira_offline(targets, refs, keeps)
    np.testing.assert_allclose(score, stats.norm.logcdf(targets[:, 0], 0, math.sqrt(2)), rtol=1e-12)
    # One-sided: far below the OUT mean is the least member-like, not (as two-sided) the most.
    assert score[1] < score[2] < score[0]


def test_equalized_use_gives_every_example_the_same_counts():
    keep = splits.balanced_keep_mask(300, 8, seed=1)
    others = keep[1:]
    use = lira.equalized_use(others, seed=0)
    assert np.all((others & use).sum(0) == 3) and np.all((~others & use).sum(0) == 3)
    assert not np.array_equal(use, lira.equalized_use(others, seed=1))  # the drop is random


def test_signals_from_logits_and_queries():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(3, 4, 2, 5)), rng.integers(0, 5, 4)
    s = lira.Signals.from_logits(logits, labels, logits[:, :2], labels[:2])
    assert s.num_models == 3 and s.phi.shape == s.log_p.shape == (3, 4, 2)
    np.testing.assert_array_equal(s.population_log_p, s.log_p[:, :2])
    one = s.queries(1)
    np.testing.assert_array_equal(one.phi, s.phi[:, :, :1])
    assert one.population_log_p.shape == (3, 2, 1)
    with pytest.raises(ValueError, match="num queries"):
        s.queries(3)


def test_bad_inputs_raise_clear_value_errors():
    with pytest.raises(ValueError, match="labels"):
        lira.Signals.from_logits(np.zeros((2, 5, 1, 3)), np.zeros(4, int))
    with pytest.raises(ValueError, match=r"\[models, examples, queries, classes\]"):
        lira.Signals.from_logits(np.zeros((2, 5, 3)), np.zeros(5, int))
    with pytest.raises(ValueError, match="reference scores"):
        lira.lira_online(np.zeros((5, 1)), np.zeros((3, 4, 1)), np.zeros((3, 4), bool))
    with pytest.raises(ValueError, match="keep mask"):
        lira.lira_offline(np.zeros((5, 1)), np.zeros((3, 5, 1)), np.zeros((3, 4), bool))
    with pytest.raises(ValueError, match="both IN and OUT"):
        lira.lira_online(np.zeros((5, 1)), np.zeros((3, 5, 1)), np.zeros((3, 5), bool))
    with pytest.raises(ValueError, match="needs OUT"):
        lira.lira_offline(np.zeros((5, 1)), np.zeros((3, 5, 1)), np.ones((3, 5), bool))


# Two examples, one query, six references: 0-2 IN and 3-5 OUT on both examples.
#   example 0: IN {1, 2, 6} (mean 3, median 2, squared deviations 14), OUT {-4, -2, 3}
#              (mean -1, median -2, squared deviations 26);
#   example 1: the same shifted by +10.
_CONV_REF = np.array([[[1.0], [11.0]], [[2.0], [12.0]], [[6.0], [16.0]],
                      [[-4.0], [6.0]], [[-2.0], [8.0]], [[3.0], [13.0]]])
_CONV_KEEP = np.array([[True, True]] * 3 + [[False, False]] * 3)
_CONV_TARGET = np.array([[2.0], [12.0]])


def test_lira_code_convention_uses_medians_and_population_variances():
    paper = lira.lira_online(_CONV_TARGET, _CONV_REF, _CONV_KEEP)
    code = lira.lira_online(_CONV_TARGET, _CONV_REF, _CONV_KEEP, conv="code")
    norm = stats.norm.logpdf
    expected_paper = norm(2, 3, math.sqrt(14 / 2)) - norm(2, -1, math.sqrt(26 / 2))
    expected_code = norm(2, 2, math.sqrt(14 / 3)) - norm(2, -2, math.sqrt(26 / 3))
    np.testing.assert_allclose(paper, [expected_paper] * 2, rtol=1e-12)
    np.testing.assert_allclose(code, [expected_code] * 2, rtol=1e-12)


def test_lira_code_convention_fixes_one_global_std_of_all_in_scores():
    # The code's fixed std is np.std over every IN score of every example (not centred per
    # example): std of {1, 2, 6, 11, 12, 16}, population (ddof 0), for IN and OUT alike.
    global_in = np.std([1, 2, 6, 11, 12, 16])
    code = lira.lira_online(_CONV_TARGET, _CONV_REF, _CONV_KEEP, fixed_variance=True,
                            conv="code")
    norm = stats.norm.logpdf
    np.testing.assert_allclose(code[0], norm(2, 2, global_in) - norm(2, -2, global_in),
                               rtol=1e-12)
    # The paper convention pools within-example deviations of IN and OUT: (2*14 + 2*26) / 8.
    paper = lira.lira_online(_CONV_TARGET, _CONV_REF, _CONV_KEEP, fixed_variance=True)
    pooled = math.sqrt((2 * 14 + 2 * 26) / 8)
    np.testing.assert_allclose(paper[0], norm(2, 3, pooled) - norm(2, -1, pooled), rtol=1e-12)


def test_lira_offline_one_sided_and_two_sided():
    # Target phi 2 against OUT {-4, -2, 3}: paper: log Phi((2 - (-1)) / sqrt(13));
    # code: minus log N(2; median -2, sqrt(26/3)), which also rises below the centre.
    one = lira.lira_offline(_CONV_TARGET, _CONV_REF, _CONV_KEEP)
    two = lira.lira_offline(_CONV_TARGET, _CONV_REF, _CONV_KEEP, conv="code")
    np.testing.assert_allclose(one[0], stats.norm.logcdf(3 / math.sqrt(13)), rtol=1e-12)
    np.testing.assert_allclose(two[0], -stats.norm.logpdf(2, -2, math.sqrt(26 / 3)), rtol=1e-12)
    below = np.array([[-6.0], [4.0]])  # 4 below the OUT median, as far as 2 is above it
    two_below = lira.lira_offline(below, _CONV_REF, _CONV_KEEP, conv="code")
    one_below = lira.lira_offline(below, _CONV_REF, _CONV_KEEP)
    np.testing.assert_allclose(two_below, two, rtol=1e-12)  # symmetric about the centre
    assert (one_below < one).all()  # one-sided: below the centre is less member-like


def test_lira_conventions_are_checked():
    with pytest.raises(ValueError, match="convention must be one of"):
        lira.lira_online(_CONV_TARGET, _CONV_REF, _CONV_KEEP, conv="mine")
    with pytest.raises(ValueError, match="center must be one of"):
        lira.Convention(center="mode")
