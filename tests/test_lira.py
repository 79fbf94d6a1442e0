"""LiRA and RMIA: closed-form oracles, chance and signal on synthetic logits, errors, end to end."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from jaxpet import data, lira, splits, training


# --------------------------------------------------------------------------- signals


def test_phi_matches_known_probabilities():
    p = np.array([0.7, 0.2, 0.1])
    logits = np.log(p)[None] + np.array([[0.0], [3.0]])  # a constant shift changes nothing
    phi = lira.logit_scaled_confidence(logits, np.array([0, 2]))
    np.testing.assert_allclose(phi, [math.log(0.7 / 0.3), math.log(0.1 / 0.9)], rtol=1e-12)
    log_p = lira.true_class_log_prob(logits, np.array([0, 2]))
    np.testing.assert_allclose(log_p, np.log([0.7, 0.1]), rtol=1e-12)


def test_phi_is_stable_where_the_probability_rounds_to_one():
    logits = np.array([[60.0, 0.0, 0.0], [-60.0, 0.0, 0.0]], np.float32)
    phi = lira.logit_scaled_confidence(logits, np.array([0, 0]))
    # p_y = 1 - 2e^-60 in exact arithmetic: phi = 60 - log 2, and -60 - log 2 for the second row.
    np.testing.assert_allclose(phi, [60 - math.log(2), -60 - math.log(2)], rtol=1e-12)


def test_phi_equals_the_naive_formula_on_random_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (3, 5, 2, 7))
    labels = rng.integers(0, 7, 5)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    py = np.take_along_axis(p, np.broadcast_to(labels[None, :, None, None], (3, 5, 2, 1)), -1)[..., 0]
    phi = lira.logit_scaled_confidence(logits, labels[:, None])
    np.testing.assert_allclose(phi, np.log(py) - np.log(1 - py), rtol=1e-9)


# --------------------------------------------------------------------------- closed-form oracles


def test_lira_online_is_the_gaussian_log_likelihood_ratio():
    # One example, two queries; references 0, 1 are IN, 2, 3 OUT.
    ref = np.array([[[2.0, 1.0]], [[4.0, 3.0]], [[-1.0, -1.0]], [[1.0, 1.0]]])
    keep = np.array([[True], [True], [False], [False]])
    target = np.array([[2.5, 2.0]])
    # Query 0: IN mean 3, var 2; OUT mean 0, var 2 -> ((2.5 - 0)^2 - (2.5 - 3)^2) / (2 * 2) = 1.5.
    # Query 1: IN mean 2, var 2; OUT mean 0, var 2 -> (2^2 - 0^2) / 4 = 1. Queries are averaged.
    np.testing.assert_allclose(lira.lira_online(target, ref, keep), [1.25], rtol=1e-12)
    q0 = stats.norm.logpdf(2.5, 3, math.sqrt(2)) - stats.norm.logpdf(2.5, 0, math.sqrt(2))
    np.testing.assert_allclose(lira.lira_online(target[:, :1], ref[:, :, :1], keep), [q0], rtol=1e-12)


def test_lira_online_three_reference_toy_falls_back_to_the_pooled_std():
    # IN {1, 3}, OUT {0}: one OUT score has no variance of its own, so it takes the pooled
    # within-group one, (1 + 1) / 1 dof = 2, equal to the IN variance here.
    ref = np.array([[[1.0]], [[3.0]], [[0.0]]])
    keep = np.array([[True], [True], [False]])
    expected = stats.norm.logpdf(2, 2, math.sqrt(2)) - stats.norm.logpdf(2, 0, math.sqrt(2))
    assert expected == pytest.approx(1.0)
    np.testing.assert_allclose(lira.lira_online(np.array([[2.0]]), ref, keep), [expected], rtol=1e-12)


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
    np.testing.assert_allclose(lira.rmia(*args, online=True, offline_a=a, gamma=2), expected)
    # Offline: Pr(x0) from OUT model 1 only: (1.5 * 0.5 + 0.5) / 2 = 0.625; Pr(x1) = 0.55.
    ratio_x = p_target / np.array([0.625, 0.55])
    expected = [(ratio_x[i] / ratio_z >= 2).mean() for i in range(2)]
    np.testing.assert_allclose(expected, [1, 1 / 3])
    np.testing.assert_allclose(lira.rmia(*args, online=False, offline_a=a, gamma=2), expected)
    # gamma = 1: x0 dominates every z online; x1 all but z1 (ratio 0.5 / 0.63).
    np.testing.assert_allclose(lira.rmia(*args, online=True, offline_a=a, gamma=1), [1, 2 / 3])


def test_equalized_use_gives_every_example_the_same_counts():
    keep = splits.balanced_keep_mask(300, 8, seed=1)
    others = keep[1:]
    use = lira.equalized_use(others, seed=0)
    assert np.all((others & use).sum(0) == 3) and np.all((~others & use).sum(0) == 3)
    assert not np.array_equal(use, lira.equalized_use(others, seed=1))  # the drop is random


# --------------------------------------------------------------------------- synthetic logits


def _synthetic(effect, num_models=8, n=600, z=300, seed=0, classes=10):
    """Logits whose true-class margin is a per-example difficulty + ``effect`` if a member."""
    rng = np.random.default_rng(seed)
    keep = splits.balanced_keep_mask(n, num_models, seed)

    def logits(count, labels, member):
        out = rng.normal(0, 1, (num_models, count, 2, classes))
        margin = rng.normal(2, 2, count)[None, :, None] + effect * member[:, :, None] \
            + rng.normal(0, 0.5, (num_models, count, 2))
        out[:, np.arange(count), :, labels] += np.moveaxis(margin, 1, 0)
        return out

    labels, pop_labels = rng.integers(0, classes, n), rng.integers(0, classes, z)
    signals = lira.Signals.from_logits(logits(n, labels, keep), labels,
                                       logits(z, pop_labels, np.zeros((num_models, z))), pop_labels)
    return signals, keep


def test_attacks_beat_chance_and_lira_beats_the_loss_baseline():
    signals, keep = _synthetic(effect=1.5)
    res = lira.leave_one_out(signals, keep)
    auc = {name: s["auc"]["mean"] for name, s in res["summary"].items()}
    assert set(auc) == set(lira.ATTACKS)
    assert min(auc.values()) > 0.6, auc
    # The reference models calibrate away the per-example difficulty that the loss sees.
    for name in ("lira_online_fixed_variance", "lira_offline", "rmia_online"):
        assert auc[name] > auc["global_loss"] + 0.05, auc
    assert res["summary"]["lira_offline"]["tpr_at_fpr_0.01"]["mean"] > 0.05
    assert len(res["per_target"]["lira_online"]) == 8


def test_attacks_are_at_chance_when_membership_has_no_effect():
    signals, keep = _synthetic(effect=0.0)
    for count in (None, 1, 3):  # all references (equalized), and random subsets of them
        res = lira.leave_one_out(signals, keep, num_references=count)
        for name, s in res["summary"].items():
            assert abs(s["auc"]["mean"] - 0.5) < 0.03, (count, name, s["auc"])


def test_reference_sweep_counts_and_rows():
    assert lira.sweep_counts(16) == [1, 2, 4, 8, 15]
    assert lira.sweep_counts(16, 6) == [1, 2, 4, 6]
    assert lira.sweep_counts(2) == [1]
    signals, keep = _synthetic(effect=1.5, num_models=4, n=200, z=50)
    rows = lira.reference_sweep(signals, keep, [1, 3], targets=[0, 1])
    assert [r["num_references"] for r in rows] == [1, 3]
    assert "global_loss" not in rows[0]["attacks"]
    assert all(r["attacks"]["lira_offline"]["auc"]["mean"] > 0.55 for r in rows)


def test_single_query_scoring():
    signals, keep = _synthetic(effect=1.5, num_models=4, n=200, z=50)
    one = lira.attack_scores(signals, keep, 0, [1, 2, 3], lira.AttackConfig(num_queries=1))
    two = lira.attack_scores(signals, keep, 0, [1, 2, 3], lira.AttackConfig(num_queries=2))
    np.testing.assert_allclose(one["global_loss"], signals.log_p[0, :, 0])
    np.testing.assert_allclose(two["global_loss"], signals.log_p[0].mean(-1))


# --------------------------------------------------------------------------- errors


def test_bad_inputs_raise_clear_value_errors():
    signals, keep = _synthetic(effect=1.0, num_models=4, n=40, z=10)
    with pytest.raises(ValueError, match="num_models >= 2"):
        lira.leave_one_out(lira.Signals(signals.phi[:1], signals.log_p[:1]), keep[:1])
    with pytest.raises(ValueError, match="keep mask"):
        lira.leave_one_out(signals, keep[:, :-1])
    with pytest.raises(ValueError, match="even"):
        lira.LiraConfig(num_models=5).validate()
    with pytest.raises(ValueError, match="num_models"):
        lira.LiraConfig(num_models=1).validate()
    with pytest.raises(ValueError, match="defense"):
        lira.LiraConfig(defense="laplace").validate()
    with pytest.raises(ValueError, match="dp_noise_multiplier"):
        lira.LiraConfig(defense="dpsgd", dp_noise_multiplier=0.0).validate()
    with pytest.raises(ValueError, match="dp_delta"):
        lira.LiraConfig(defense="dpsgd", dp_delta=0.0).validate()
    with pytest.raises(ValueError, match="pool_size"):
        lira.LiraConfig(pool_size=100).validate(train_size=50)
    with pytest.raises(ValueError, match="even number"):
        splits.balanced_keep_mask(10, 3, seed=0)
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
    with pytest.raises(ValueError, match="gamma"):
        lira.AttackConfig(rmia_gamma=0)
    with pytest.raises(ValueError, match="references"):
        lira.attack_scores(signals, keep, 0, [0, 1])
    with pytest.raises(ValueError, match="num_references"):
        lira.leave_one_out(signals, keep, num_references=4)


# --------------------------------------------------------------------------- end to end


def _tiny_dataset(n_train=96, n_test=32, seed=0):
    rng = np.random.default_rng(seed)

    def split(n):
        return data.Split(images=rng.integers(0, 256, (n, 8, 8, 3)).astype(np.uint8),
                          labels=rng.integers(0, 10, n).astype(np.int32))

    return data.Dataset(name="cifar10", train=split(n_train), test=split(n_test),
                        class_names=tuple(str(i) for i in range(10)), info={"source": "synthetic"})


def _config(tmp_path, **kwargs):
    values = dict(dataset="cifar10", workdir=str(tmp_path / "run"), num_models=4, pool_size=64,
                  population_size=1000, epochs=2, batch_size=16, width_scale=0.05)
    values.update(kwargs)
    return lira.LiraConfig(**values)


def test_run_end_to_end_and_rerun_reuses_the_logits(tmp_path, monkeypatch):
    results = lira.run(_config(tmp_path), dataset=_tiny_dataset())
    workdir = tmp_path / "run"
    for name in ("results.json", "summary.md", "roc.png", "sweep.png", "logits.npz", "config.json"):
        assert (workdir / name).stat().st_size > 0, name
    saved = json.loads((workdir / "results.json").read_text())
    for key in ("config", "data", "models", "attacks", "per_target", "sweep", "seconds", "backend",
                "published", "reused_logits"):
        assert key in saved, key
    assert set(saved["attacks"]) == set(lira.ATTACKS)
    for summary in saved["attacks"].values():
        for metric in ("auc", "balanced_accuracy", "tpr_at_fpr_0.01", "tpr_at_fpr_0.001",
                       "tpr_at_fpr_0.0001", "tpr_at_fpr_0.0"):
            assert 0 <= summary[metric]["mean"] <= 1 and summary[metric]["std"] >= 0, metric
        assert summary["balanced_accuracy"]["mean"] >= 0.5
    assert [row["num_references"] for row in saved["sweep"]] == [1, 2, 3]
    assert saved["data"]["pool_size"] == 64 and saved["data"]["population_size"] == 32
    assert sum(saved["data"]["members_per_model"]) == 2 * 64  # each example in 2 of 4 models
    assert len(saved["per_target"]["lira_online"]) == 4 and not saved["reused_logits"]
    logits = np.load(workdir / "logits.npz")
    assert logits["logits"].shape == (4, 64, 2, 10) and logits["population_logits"].shape == (4, 32, 2, 10)
    assert logits["keep"].sum(0).tolist() == [2] * 64
    assert "| lira_online |" in (workdir / "summary.md").read_text()
    assert results["attacks"]["lira_online"]["auc"]["mean"] == saved["attacks"]["lira_online"]["auc"]["mean"]

    # A rerun with other scoring knobs reuses logits.npz and trains nothing.
    def no_training(*args, **kwargs):
        raise AssertionError("retrained although logits.npz matches")

    monkeypatch.setattr(training, "train_ensemble", no_training)
    again = lira.run(_config(tmp_path, augment_queries=False, num_targets=2, rmia_gamma=1.0),
                     dataset=_tiny_dataset())
    assert again["reused_logits"] and again["data"]["queries"] == 1
    assert len(again["per_target"]["rmia_online"]) == 2
    # Another training configuration in the same workdir is refused, naming the difference.
    with pytest.raises(lira.WorkdirMismatchError, match="epochs: saved 2, now 3"):
        lira.run(_config(tmp_path, epochs=3), dataset=_tiny_dataset())


def test_dpsgd_run_reports_epsilon_and_leaves_no_checkpoints(tmp_path):
    results = lira.run(_config(tmp_path, defense="dpsgd", dp_noise_multiplier=2.0, num_targets=1),
                       dataset=_tiny_dataset())
    spent = results["privacy"]
    assert spent["noise_multiplier"] == 2.0 and 0 < spent["epsilon"] < float("inf")
    assert "epsilon" in (tmp_path / "run" / "summary.md").read_text()
    assert not list((tmp_path / "run").glob("checkpoints-*"))
