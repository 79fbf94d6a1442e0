"""DP accounting: monotone in the right directions, consistent across accountants, bad input."""

import math

import pytest

from jaxpet import privacy


def test_epsilon_moves_the_right_way():
    base = privacy.dpsgd_epsilon(1.0, 0.01, 1000, 1e-5)
    assert privacy.dpsgd_epsilon(2.0, 0.01, 1000, 1e-5) < base  # more noise
    assert privacy.dpsgd_epsilon(1.0, 0.01, 4000, 1e-5) > base  # more steps
    assert privacy.dpsgd_epsilon(1.0, 0.05, 1000, 1e-5) > base  # larger batches
    assert privacy.dpsgd_epsilon(1.0, 0.01, 1000, 1e-3) < base  # looser delta


def test_single_gaussian_release_matches_the_analytic_bound():
    # One full-batch step is the Gaussian mechanism with sensitivity 1 and std sigma:
    # the classical bound sigma >= sqrt(2 ln(1.25/delta)) / eps (Dwork & Roth, Thm A.1)
    # gives an epsilon that the tight PLD accountant must not exceed.
    sigma, delta = 5.0, 1e-5
    classical = math.sqrt(2 * math.log(1.25 / delta)) / sigma
    pld = privacy.dpsgd_epsilon(sigma, 1.0, 1, delta, accountant="pld")
    rdp = privacy.dpsgd_epsilon(sigma, 1.0, 1, delta, accountant="rdp")
    assert 0 < pld <= classical
    assert pld <= rdp * 1.001  # RDP is an upper bound, PLD (nearly) tight


def test_training_epsilon_counts_steps():
    out = privacy.training_epsilon(1.0, batch_size=128, dataset_size=1000, epochs=3, delta=1e-5)
    assert out["steps"] == 3 * 8
    assert out["sampling_rate"] == pytest.approx(0.128)
    assert out["epsilon"] > 0


@pytest.mark.parametrize("args, match", [
    ((0.0, 0.1, 10, 1e-5), "noise multiplier"),
    ((1.0, 0.0, 10, 1e-5), "sampling rate"),
    ((1.0, 0.1, 0, 1e-5), "steps"),
    ((1.0, 0.1, 10, 1.0), "delta"),
])
def test_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        privacy.dpsgd_epsilon(*args)
