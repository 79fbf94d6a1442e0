"""Threshold attacks: above chance exactly when the model saw the data."""

import numpy as np
import pytest

from jaxpet import attacks, metrics
from jaxpet.attacks import threshold


def _run(name, shadow, target, **conventions):
    return threshold.threshold_attack(name, shadow.posteriors, shadow.labels, shadow.membership,
                                      target.posteriors, target.labels, target.membership,
                                      **conventions)


@pytest.mark.parametrize("scope", ["per_class", "global"])
@pytest.mark.parametrize("name", sorted(threshold.THRESHOLD_ATTACKS))
def test_threshold_attacks_beat_chance_on_overfit_model(overfit, name, scope):
    out = _run(name, overfit.shadow(), overfit.target(), thresholds=scope)
    assert out.report["auc"] > 0.75, out.report
    assert out.report["accuracy"] > 0.65, out.report
    # The global threshold is the shadow's most accurate one, applied as score >= threshold;
    # per class, the score is the margin over the example's class threshold.
    cut = out.report["threshold"] if scope == "global" else 0.0
    np.testing.assert_array_equal(out.predictions, out.scores >= cut)


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
    p = np.array([[np.exp(-0.1), 0.0], [np.exp(-0.2), 0.0], [np.exp(-1.0), 0.0],
                  [np.exp(-2.0), 0.0]])
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


def test_per_class_thresholds_on_a_hand_built_toy():
    # Two classes, true-class confidence. Shadow class 0: members 0.9, 0.8, non-members 0.6,
    # 0.5 -> threshold 0.8; class 1: members 0.4, 0.35, non-members 0.3, 0.2 -> threshold
    # 0.35. One global threshold cannot separate both classes (0.4 member < 0.5 non-member).
    conf = np.array([0.9, 0.8, 0.6, 0.5, 0.4, 0.35, 0.3, 0.2])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    membership = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    # Rows: the true class gets conf; the rest goes to the other class.
    post = np.zeros((8, 2))
    post[np.arange(8), labels] = conf
    post[np.arange(8), 1 - labels] = 1 - conf
    per_class = threshold.threshold_attack("confidence", post, labels, membership, post, labels,
                                           membership)
    assert per_class.report["class_thresholds"] == pytest.approx([0.8, 0.35])
    np.testing.assert_allclose(per_class.scores, conf - np.array([0.8] * 4 + [0.35] * 4))
    assert per_class.report["accuracy"] == 1.0
    glob = threshold.threshold_attack("confidence", post, labels, membership, post, labels,
                                      membership, thresholds="global")
    assert glob.report["accuracy"] == 0.75  # the best single cut (0.8) misses class 1's members


def test_confidence_is_the_true_class_probability_or_the_top_posterior():
    post = np.array([[0.7, 0.3], [0.2, 0.8]])
    labels = np.array([1, 1])
    membership = np.array([0, 1])
    true_class = threshold.threshold_attack("confidence", post, labels, membership, post, labels,
                                            membership, thresholds="global")
    top = threshold.threshold_attack("confidence", post, labels, membership, post, labels,
                                     membership, thresholds="global", confidence="max")
    np.testing.assert_allclose(true_class.scores, [0.3, 0.8])
    np.testing.assert_allclose(top.scores, [0.7, 0.8])
    with pytest.raises(ValueError, match="thresholds must be one of"):
        threshold.threshold_attack("loss", post, labels, membership, post, labels, membership,
                                   thresholds="per_model")


def _confidence_posteriors(conf, labels):
    """Two-class rows whose true class has probability ``conf``."""
    post = np.zeros((len(conf), 2))
    post[np.arange(len(conf)), labels] = conf
    post[np.arange(len(conf)), 1 - labels] = 1 - conf
    return post


def test_per_class_thresholds_by_balanced_accuracy_or_accuracy():
    # Class 0: 2 members (0.9, 0.5), 6 non-members (0.7, 0.6, 0.4, 0.3, 0.2, 0.1). Accuracy
    # picks 0.9 (7 of 8 right; balanced 0.75); balanced accuracy picks 0.5 (6 of 8; balanced
    # 0.5 * (2/2 + 4/6) = 0.833). Class 1: 6 members (0.8, 0.7, 0.6, 0.5, 0.3, 0.2), 2
    # non-members (0.4, 0.1). Accuracy picks 0.2 (7 of 8; balanced 0.75); balanced accuracy
    # picks 0.5 (6 of 8; 0.5 * (4/6 + 2/2) = 0.833). Overall 8 members and 8 non-members, so
    # both criteria agree on the global cut, 0.5 (12 of 16).
    conf = np.array([0.9, 0.5, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1,
                     0.8, 0.7, 0.6, 0.5, 0.3, 0.2, 0.4, 0.1])
    labels = np.repeat([0, 1], 8)
    membership = np.array([1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0])
    post = _confidence_posteriors(conf, labels)
    expected = {"balanced_accuracy": [0.5, 0.5], "accuracy": [0.9, 0.2]}
    for criterion, cuts in expected.items():
        per_class, overall = threshold.class_thresholds(labels, membership, conf, 2,
                                                        criterion=criterion)
        assert per_class.tolist() == cuts and overall == 0.5
        out = threshold.threshold_attack("confidence", post, labels, membership, post, labels,
                                         membership, criterion=criterion)
        assert out.report["class_thresholds"] == cuts
        np.testing.assert_allclose(out.scores, conf - np.repeat(cuts, 8))
        np.testing.assert_array_equal(out.predictions, conf >= np.repeat(cuts, 8))
        glob = threshold.threshold_attack("confidence", post, labels, membership, post, labels,
                                          membership, thresholds="global", criterion=criterion)
        assert glob.report["threshold"] == 0.5
    # The default (direct call and registered attack) is Song & Mittal's balanced accuracy.
    default = threshold.threshold_attack("confidence", post, labels, membership, post, labels,
                                         membership)
    assert default.report["class_thresholds"] == expected["balanced_accuracy"]
    shadow = attacks.LabeledPosteriors(post, labels, membership)
    fn = attacks.get_attack("confidence", "shadow").fn
    for config, cuts in ((None, expected["balanced_accuracy"]),
                         (attacks.ShadowAttackConfig(), expected["balanced_accuracy"]),
                         (attacks.ShadowAttackConfig(threshold_criterion="accuracy"),
                          expected["accuracy"])):
        assert fn(shadow, shadow, config=config).report["class_thresholds"] == cuts


def test_a_class_with_only_members_or_non_members_uses_the_global_cut():
    # Class 2 has members only and class 3 no shadow example: both take the global cut (Song &
    # Mittal's loop would keep its starting cut, 0, there).
    conf = np.array([0.9, 0.2, 0.8, 0.1, 0.6, 0.7])
    labels = np.array([0, 0, 1, 1, 2, 2])
    membership = np.array([1, 0, 1, 0, 1, 1])
    per_class, overall = threshold.class_thresholds(labels, membership, conf, 4)
    assert overall == 0.6
    assert per_class.tolist() == [0.9, 0.8, 0.6, 0.6]


def test_unknown_threshold_criterion():
    post, labels, membership = np.eye(2), np.array([0, 1]), np.array([1, 0])
    with pytest.raises(ValueError, match="criterion must be one of"):
        threshold.threshold_attack("loss", post, labels, membership, post, labels, membership,
                                   criterion="f1")
    with pytest.raises(ValueError, match="threshold_criterion must be one of"):
        attacks.ShadowAttackConfig(threshold_criterion="f1")
