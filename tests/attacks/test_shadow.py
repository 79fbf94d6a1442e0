"""The shadow-model attack MLP: sorted posteriors as features, above chance only on members."""

import numpy as np
import pytest

from jaxpet import attacks, metrics
from jaxpet.attacks import shadow


def test_sort_posteriors_descending_top_k():
    p = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]])
    np.testing.assert_allclose(shadow.sort_posteriors(p, 2), [[0.6, 0.3], [0.5, 0.3]])
    with pytest.raises(ValueError, match="top_k"):
        shadow.sort_posteriors(p, 4)


def test_shadow_mlp_attack_beats_chance_only_on_members(overfit):
    s, t, fake = overfit.shadow(), overfit.target(), overfit.unseen()
    config = shadow.ShadowAttackConfig(top_k=3, epochs=10, batch_size=10)
    out, info = shadow.shadow_mlp_attack(s.posteriors, s.membership, t.posteriors, t.membership,
                                         config)
    assert out.report["auc"] > 0.75 and out.report["accuracy"] > 0.65, out.report
    assert info["train_acc"] > 0.65
    np.testing.assert_allclose(out.report["auc"], metrics.roc_auc(t.membership, out.scores))
    # The registered attack is the same call, with its train accuracy in ``info``.
    registered = attacks.get_attack("shadow_mlp", "shadow").fn(s, t, config=config, seed=0)
    np.testing.assert_array_equal(registered.scores, out.scores)
    assert registered.info["train_acc"] == info["train_acc"]
    control, _ = shadow.shadow_mlp_attack(s.posteriors, s.membership, fake.posteriors,
                                          fake.membership, config)
    assert abs(control.report["auc"] - 0.5) < 0.08, control.report
