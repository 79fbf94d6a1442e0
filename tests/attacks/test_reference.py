"""Reference-model evaluation: chance and signal on synthetic logits, sweeps, queries, input
checks."""

import numpy as np
import pytest

from jaxpet import attacks
from jaxpet.attacks import lira, reference


def test_attacks_beat_chance_and_lira_beats_the_loss_baseline(make_signals):
    signals, keep = make_signals(effect=1.5)
    res = reference.leave_one_out(signals, keep)
    auc = {name: s["auc"]["mean"] for name, s in res["summary"].items()}
    # every reference attack these signals can feed (no label-only queries here), in order
    assert tuple(auc) == tuple(a for a in attacks.attack_names("reference")
                               if a != "label_only_ref")
    assert min(auc.values()) > 0.6, auc
    # The reference models calibrate away the per-example difficulty that the loss sees.
    for name in ("lira_online_fixed_variance", "lira_offline", "rmia_online"):
        assert auc[name] > auc["global_loss"] + 0.05, auc
    assert res["summary"]["lira_offline"]["tpr_at_fpr_0.01"]["mean"] > 0.05
    assert len(res["per_target"]["lira_online"]) == 8


def test_attacks_are_at_chance_when_membership_has_no_effect(make_signals):
    signals, keep = make_signals(effect=0.0)
    for count in (None, 1, 3):  # all references (equalized), and random subsets of them
        res = reference.leave_one_out(signals, keep, num_references=count)
        for name, s in res["summary"].items():
            assert abs(s["auc"]["mean"] - 0.5) < 0.03, (count, name, s["auc"])


def test_reference_sweep_counts_and_rows(make_signals):
    assert reference.sweep_counts(16) == [1, 2, 4, 8, 15]
    assert reference.sweep_counts(16, 6) == [1, 2, 4, 6]
    assert reference.sweep_counts(2) == [1]
    signals, keep = make_signals(effect=1.5, num_models=4, n=200, z=50)
    rows = reference.reference_sweep(signals, keep, [1, 3], targets=[0, 1])
    assert [r["num_references"] for r in rows] == [1, 3]
    assert "global_loss" not in rows[0]["attacks"]  # it uses no reference
    assert all(r["attacks"]["lira_offline"]["auc"]["mean"] > 0.55 for r in rows)


def test_single_query_scoring(make_signals):
    signals, keep = make_signals(effect=1.5, num_models=4, n=200, z=50)
    one = reference.attack_scores(signals, keep, 0, [1, 2, 3],
                                  reference.AttackConfig(num_queries=1))
    two = reference.attack_scores(signals, keep, 0, [1, 2, 3],
                                  reference.AttackConfig(num_queries=2))
    np.testing.assert_allclose(one["global_loss"], signals.log_p[0, :, 0])
    np.testing.assert_allclose(two["global_loss"], signals.log_p[0].mean(-1))


def test_attack_metrics_and_summary_on_a_toy():
    labels = np.array([1, 1, 0, 0])
    report = reference.attack_metrics(labels, np.array([4.0, 1.0, 2.0, 0.0]))
    # ROC (0,0) (0,.5) (.5,.5) (.5,1) (1,1): AUC 0.75; best balanced accuracy 0.75.
    assert report["auc"] == 0.75 and report["balanced_accuracy"] == 0.75
    assert report["tpr_at_fpr"] == {"0.01": 0.5, "0.001": 0.5, "0.0001": 0.5, "0.0": 0.5}
    summary = reference.summarize([report, {**report, "auc": 0.25}])
    assert summary["auc"] == {"mean": 0.5, "std": 0.25}
    levels = ["0.01", "0.001", "0.0001", "0.0"]
    assert list(summary) == ["auc", "balanced_accuracy", *(f"tpr_at_fpr_{v}" for v in levels),
                             *(f"tpr_at_fpr_randomized_{v}" for v in levels)]
    # No ties: the randomised reading is the thresholded one.
    assert report["tpr_at_fpr_randomized"] == report["tpr_at_fpr"]


def test_bad_inputs_raise_clear_value_errors(make_signals):
    signals, keep = make_signals(effect=1.0, num_models=4, n=40, z=10)
    with pytest.raises(ValueError, match="num_models >= 2"):
        reference.leave_one_out(lira.Signals(signals.phi[:1], signals.log_p[:1]), keep[:1])
    with pytest.raises(ValueError, match="keep mask"):
        reference.leave_one_out(signals, keep[:, :-1])
    with pytest.raises(ValueError, match="gamma"):
        reference.AttackConfig(rmia_gamma=0)
    with pytest.raises(ValueError, match="num_queries"):
        reference.AttackConfig(num_queries=0)
    with pytest.raises(ValueError, match="references"):
        reference.attack_scores(signals, keep, 0, [0, 1])
    with pytest.raises(ValueError, match="num_references"):
        reference.leave_one_out(signals, keep, num_references=4)
    with pytest.raises(ValueError, match="targets"):
        reference.leave_one_out(signals, keep, targets=[4])
    with pytest.raises(ValueError, match="use mask"):
        reference.attack_scores(signals, keep, 0, [1, 2], use=np.ones((3, 40), bool))
