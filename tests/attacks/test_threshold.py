"""Threshold attacks: above chance exactly when the model saw the data."""

import numpy as np
import pytest

from jaxpet import attacks, metrics
from jaxpet.attacks import threshold


def _run(name, shadow, target):
    return threshold.threshold_attack(name, shadow.posteriors, shadow.labels, shadow.membership,
                                      target.posteriors, target.labels, target.membership)


@pytest.mark.parametrize("name", sorted(threshold.THRESHOLD_ATTACKS))
def test_threshold_attacks_beat_chance_on_overfit_model(overfit, name):
    out = _run(name, overfit.shadow(), overfit.target())
    assert out.report["auc"] > 0.75, out.report
    assert out.report["accuracy"] > 0.65, out.report
    # The threshold is the shadow's most accurate one, applied as score >= threshold.
    np.testing.assert_array_equal(out.predictions, out.scores >= out.report["threshold"])


@pytest.mark.parametrize("name", ["loss", "modified_entropy"])
def test_threshold_attack_at_chance_on_data_the_model_never_saw(overfit, name):
    out = _run(name, overfit.shadow(), overfit.unseen())
    assert abs(out.report["auc"] - 0.5) < 0.08, out.report
    assert abs(out.report["accuracy"] - 0.5) < 0.08, out.report


def test_the_registered_attack_equals_the_direct_call(overfit):
    direct = _run("entropy", overfit.shadow(), overfit.target())
    registered = attacks.get_attack("entropy", "shadow").fn(overfit.shadow(), overfit.target(),
                                                            config=None, seed=0)
    np.testing.assert_array_equal(direct.scores, registered.scores)
    assert direct.report == registered.report


def test_threshold_fitted_on_a_hand_built_toy():
    # Shadow losses: members -0.1, -0.2; non-members -1, -2: any threshold in (-1, -0.2] is exact,
    # and the ROC-based fit picks the lowest member score.
    p = np.array([[np.exp(-0.1), 0.0], [np.exp(-0.2), 0.0], [np.exp(-1.0), 0.0], [np.exp(-2.0), 0.0]])
    y = np.zeros(4, int)
    membership = np.array([1, 1, 0, 0])
    out = threshold.threshold_attack("loss", p, y, membership, p[::-1], y, membership[::-1])
    assert out.report["threshold"] == pytest.approx(-0.2)
    np.testing.assert_array_equal(out.predictions, [False, False, True, True])
    assert out.report["accuracy"] == 1.0 and out.report["auc"] == metrics.roc_auc(membership[::-1],
                                                                                   out.scores)


def test_unknown_threshold_attack():
    with pytest.raises(ValueError, match="Unknown threshold attack 'hinge'"):
        threshold.threshold_attack("hinge", *([np.zeros(2)] * 6))
