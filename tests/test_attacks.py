"""Membership attacks: closed-form scores, and above chance exactly when the model saw the data."""

import numpy as np
import pytest

from jaxpet import attacks, metrics, models, splits, training


def test_sort_posteriors_descending_top_k():
    p = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]])
    np.testing.assert_allclose(attacks.sort_posteriors(p, 2), [[0.6, 0.3], [0.5, 0.3]])
    with pytest.raises(ValueError, match="top_k"):
        attacks.sort_posteriors(p, 4)


def test_scores_closed_form():
    p = np.array([[0.7, 0.2, 0.1]])
    y = np.array([0])
    np.testing.assert_allclose(attacks.loss_score(p, y), np.log(0.7))
    np.testing.assert_allclose(attacks.confidence_score(p), 0.7)
    np.testing.assert_allclose(attacks.entropy_score(p), np.sum(p * np.log(p)))
    mentr = -(0.3) * np.log(0.7) - (0.2 * np.log(0.8) + 0.1 * np.log(0.9))
    np.testing.assert_allclose(attacks.modified_entropy_score(p, y), -mentr)
    # Modified entropy ranks a confidently wrong prediction as a non-member, unlike entropy.
    wrong = np.array([[0.05, 0.9, 0.05]])
    assert attacks.modified_entropy_score(wrong, y) < attacks.modified_entropy_score(p, y)
    assert attacks.entropy_score(wrong) > attacks.entropy_score(p)


@pytest.fixture(scope="module")
def overfit_models():
    """A target and a shadow MLP that memorise random labels of their own 200 members."""
    rng = np.random.default_rng(0)
    n = 1600
    x = rng.normal(size=(n, 32)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    order = rng.permutation(n)
    target_in, target_out, shadow_in, shadow_out = np.split(order[:800], 4)
    unseen_a, unseen_b = np.split(order[800:], 2)
    model = models.MLP(hidden_sizes=(256,), num_classes=10)
    sets = splits.MemberSets.from_lists([target_in, shadow_in])
    result = training.train_ensemble(model, x, y, sets,
                                     training.TrainConfig(epochs=60, batch_size=32, learning_rate=3e-3),
                                     seed=1)
    post = training.predict(model, result.variables(), x)
    return dict(x=x, y=y, post=post, target_in=target_in, target_out=target_out, shadow_in=shadow_in,
                shadow_out=shadow_out, unseen_a=unseen_a, unseen_b=unseen_b)


def _sets(m, model, ins, outs):
    idx = np.r_[ins, outs]
    return m["post"][model][idx], m["y"][idx], np.r_[np.ones(len(ins)), np.zeros(len(outs))].astype(int)


@pytest.mark.parametrize("name", sorted(attacks.THRESHOLD_ATTACKS))
def test_threshold_attacks_beat_chance_on_overfit_model(overfit_models, name):
    m = overfit_models
    shadow = _sets(m, 1, m["shadow_in"], m["shadow_out"])
    target = _sets(m, 0, m["target_in"], m["target_out"])
    out = attacks.threshold_attack(name, *shadow, *target)
    assert out.report["auc"] > 0.75, out.report
    assert out.report["accuracy"] > 0.65, out.report


@pytest.mark.parametrize("name", ["loss", "modified_entropy"])
def test_threshold_attack_at_chance_on_data_the_model_never_saw(overfit_models, name):
    m = overfit_models
    shadow = _sets(m, 1, m["shadow_in"], m["shadow_out"])
    fake = _sets(m, 0, m["unseen_a"], m["unseen_b"])  # "members" the target never trained on
    out = attacks.threshold_attack(name, *shadow, *fake)
    assert abs(out.report["auc"] - 0.5) < 0.08, out.report
    assert abs(out.report["accuracy"] - 0.5) < 0.08, out.report


def test_shadow_mlp_attack_beats_chance_only_on_members(overfit_models):
    m = overfit_models
    shadow_post, _, shadow_membership = _sets(m, 1, m["shadow_in"], m["shadow_out"])
    target_post, _, target_membership = _sets(m, 0, m["target_in"], m["target_out"])
    config = attacks.ShadowAttackConfig(top_k=3, epochs=10, batch_size=10)
    out, info = attacks.shadow_mlp_attack(shadow_post, shadow_membership, target_post, target_membership,
                                          config)
    assert out.report["auc"] > 0.75 and out.report["accuracy"] > 0.65, out.report
    assert info["train_acc"] > 0.65
    np.testing.assert_allclose(out.report["auc"], metrics.roc_auc(target_membership, out.scores))
    fake_post, _, fake_membership = _sets(m, 0, m["unseen_a"], m["unseen_b"])
    control, _ = attacks.shadow_mlp_attack(shadow_post, shadow_membership, fake_post, fake_membership, config)
    assert abs(control.report["auc"] - 0.5) < 0.08, control.report
