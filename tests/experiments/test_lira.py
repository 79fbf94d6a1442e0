"""The LiRA/RMIA experiment end to end on a tiny synthetic dataset: outputs, reuse, reports."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxpet import report, training
from jaxpet.attacks import reference, registry
from jaxpet.experiments import lira


def _config(tmp_path, **kwargs):
    values = dict(dataset="cifar10", workdir=str(tmp_path / "run"), num_models=4, pool_size=64,
                  population_size=32, epochs=2, batch_size=16, width_scale=0.05)
    values.update(kwargs)
    return lira.Config(**values)


def _dataset(make_dataset, seed=0):
    return make_dataset(n_train=96, n_test=32, seed=seed, name="cifar10", shape=(8, 8, 3))


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_models=5), "even"), (dict(num_models=2), "num_models must be >= 4"),
    (dict(defense="laplace"), "defense"),
    (dict(defense="dpsgd", dp_noise_multiplier=0.0), "dp_noise_multiplier must be > 0"),
    (dict(defense="dpsgd", dp_delta=0.0), "dp_delta"),
    (dict(learning_rate=float("nan")), "learning_rate must be a finite number"),
    (dict(dp_clip_norm=3.0), "dp_clip_norm=3.0 has no effect unless --defense is dpsgd"),
    (dict(num_targets=17), "num_targets must be at most"),
    (dict(dataset="mnist", augment_training=True), "augment_training"),
    (dict(dataset="mnist", recipe="lira", batch_size=128), "recipe=lira flips"),
    (dict(model="wrn", defense="dpsgd", batch_size=128), "BatchNorm"),
    (dict(model="wrn", wrn_depth=27, batch_size=128), "6n\\+4"),
    (dict(recipe="lira", learning_rate=0.5), "learning_rate=0.5 has no effect"),
])
def test_bad_config_raises_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        lira.Config(**kwargs)


def test_scoring_knobs_make_the_attack_config():
    assert lira.Config(augment_queries=False, rmia_gamma=1.5).attack_config() == \
        reference.AttackConfig(num_queries=1, rmia_gamma=1.5)


def test_run_end_to_end_and_rerun_reuses_the_logits(tmp_path, monkeypatch, make_dataset,
                                                    check_common_schema):
    results = lira.run(_config(tmp_path), dataset=_dataset(make_dataset))
    workdir = tmp_path / "run"
    check_common_schema(results, workdir)
    for name in ("results.json", "summary.md", "roc.png", "sweep.png", "config.json",
                 "scores.npz"):
        assert (workdir / name).stat().st_size > 0, name
    saved = json.loads((workdir / "results.json").read_text())
    for key in ("config", "data", "models", "attacks", "per_target", "sweep", "seconds",
                "provenance", "published", "reused_logits", "privacy", "targets"):
        assert key in saved, key
    # every reference attack but the label-only one, whose queries LiRA's stage does not make
    assert tuple(saved["attacks"]) == tuple(a for a in registry.attack_names("reference")
                                            if a != "label_only_ref")
    for summary in saved["attacks"].values():
        for metric in ("auc", "balanced_accuracy", "tpr_at_fpr_0.01", "tpr_at_fpr_0.001",
                       "tpr_at_fpr_0.0001", "tpr_at_fpr_0.0"):
            assert 0 <= summary[metric]["mean"] <= 1 and summary[metric]["std"] >= 0, metric
        assert summary["balanced_accuracy"]["mean"] >= 0.5
    assert [row["num_references"] for row in saved["sweep"]] == [1, 2, 3]
    assert saved["data"]["pool_size"] == 64 and saved["data"]["population_size"] == 32
    assert sum(saved["data"]["members_per_model"]) == 2 * 64  # each example in 2 of 4 models
    assert len(saved["per_target"]["lira_online"]) == 4 and not saved["reused_logits"]
    logits_file = next((workdir / "stages").glob("logits-*.npz"))
    logits = np.load(logits_file)
    assert logits["logits"].shape == (4, 64, 2, 10)
    assert logits["population_logits"].shape == (4, 32, 2, 10)
    assert logits["keep"].sum(0).tolist() == [2] * 64
    assert not list((workdir / "stages").glob("checkpoints-*"))

    # The summary's attack table shows each attack's own numbers in the right columns.
    text = (workdir / "summary.md").read_text()
    rows = report.parse_markdown_table(text[text.index("## Attacks"):])
    assert [r["attack"] for r in rows] == list(saved["attacks"])
    for row in rows:
        s = saved["attacks"][row["attack"]]
        assert row["AUC"] == f"{s['auc']['mean']:.4f} ± {s['auc']['std']:.4f}"
        assert row["TPR@0.1%FPR (%)"].startswith(f"{100 * s['tpr_at_fpr_0.001']['mean']:.2f} ±")
        assert row["TPR@1%FPR (%)"].startswith(f"{100 * s['tpr_at_fpr_0.01']['mean']:.2f} ±")

    # The other LiRA convention (the released code's, with its strict FPR rule) is reported too.
    other = saved["other_conventions"]
    assert (other["lira"], other["fpr_rule"]) == ("code", "lt")
    assert saved["conventions"] == {"lira": "paper", "fpr_rule": "le"}
    assert set(other["attacks"]) == set(saved["attacks"])
    assert other["attacks"]["lira_online"] != saved["attacks"]["lira_online"]
    assert other["attacks"]["rmia_online"]["auc"] == saved["attacks"]["rmia_online"]["auc"]
    assert "## Under the other conventions: LiRA code, FPR < level" in text
    # The a that rmia_offline_fitted_a chose for each target is recorded.
    from jaxpet.attacks import rmia as rmia_attack
    assert len(saved["rmia_fitted_a"]) == 4
    assert all(a in rmia_attack.A_GRID for a in saved["rmia_fitted_a"])
    # Target 0's scores, in the layout compare.py overlays.
    from jaxpet import compare
    overlaid = compare.scores(compare.RunRecord(workdir, saved))
    assert set(overlaid) == set(saved["attacks"]) and len(overlaid["lira_online"][0]) == 64

    # A rerun with other scoring knobs reuses the logits and trains nothing.
    def no_training(*args, **kwargs):
        raise AssertionError("retrained although the logits stage matches")

    monkeypatch.setattr(training, "train_ensemble", no_training)
    again = lira.run(_config(tmp_path, augment_queries=False, num_targets=2, rmia_gamma=1.0),
                     dataset=_dataset(make_dataset))
    assert again["reused_logits"] and again["data"]["queries"] == 1
    assert len(again["per_target"]["rmia_online"]) == 2
    # Other data of the same shapes in the same workdir is never scored with the old logits.
    with pytest.raises(AssertionError, match="retrained"):
        lira.run(_config(tmp_path), dataset=_dataset(make_dataset, seed=1))
    # Nor are LiRA's training-mode queries: the query mode is part of the stage key.
    with pytest.raises(AssertionError, match="retrained"):
        lira.run(_config(tmp_path, query_mode="train_batch_stats"),
                 dataset=_dataset(make_dataset))


def test_query_mode_keys_the_logits_and_reaches_the_queries(tmp_path, monkeypatch,
                                                             make_dataset):
    dataset = _dataset(make_dataset)
    eval_key = _config(tmp_path).training_key(dataset)
    assert eval_key["query_mode"] == "eval"
    assert _config(tmp_path, query_mode="train_batch_stats").training_key(dataset) == {
        **eval_key, "query_mode": "train_batch_stats"}
    # The scoring knobs are declared out of the key: changing them reuses the logits.
    assert _config(tmp_path, fpr_rule="lt", rmia_gamma=1.5).training_key(dataset) == eval_key
    with pytest.raises(ValueError, match="eval_batch_size=64 has no effect unless --query_mode"):
        _config(tmp_path, query_mode="train_batch_stats", eval_batch_size=64)

    calls = []
    real_variables, real_logits = training.query_variables, training.query_logits
    monkeypatch.setattr(training, "query_variables", lambda state, mode: calls.append(
        ("variables", mode)) or real_variables(state, mode))
    monkeypatch.setattr(training, "query_logits", lambda *a, **kw: calls.append(
        ("logits", kw["mode"], kw["batch_size"], kw["models_per_call"])) or real_logits(*a, **kw))
    results = lira.run(_config(tmp_path, query_mode="train_batch_stats", num_targets=1),
                       dataset=dataset)
    assert calls == [("variables", "train_batch_stats")] + [
        ("logits", "train_batch_stats", None, 1)] * 2  # pool and population, LiRA's batch
    assert 0 <= results["attacks"]["lira_online"]["auc"]["mean"] <= 1
    assert "queried as LiRA's inference.py does" in (tmp_path / "run" / "summary.md").read_text()


def test_dpsgd_run_reports_epsilon(tmp_path, make_dataset):
    results = lira.run(_config(tmp_path, defense="dpsgd", dp_noise_multiplier=2.0, num_targets=1),
                       dataset=_dataset(make_dataset))
    spent = results["privacy"]
    assert spent["noise_multiplier"] == 2.0 and 0 < spent["epsilon"] < float("inf")
    assert "epsilon" in (tmp_path / "run" / "summary.md").read_text()


def test_a_wide_resnet_with_the_lira_recipe_runs_end_to_end(tmp_path, make_dataset):
    """The field's architecture and recipe, at a tiny width and depth (WRN-10-1)."""
    dataset = make_dataset(n_train=600, n_test=40, name="cifar10", shape=(8, 8, 3))
    config = lira.Config(dataset="cifar10", workdir=str(tmp_path / "wrn"), num_models=4,
                         pool_size=560, population_size=40, epochs=1, model="wrn", wrn_depth=10,
                         wrn_width=1, recipe="lira", max_reference_sweep=1)
    train = config.train_config()
    assert (train.optimizer, train.momentum, train.weight_decay, train.schedule, train.augment,
            train.batch_size, train.learning_rate) == ("sgd", 0.9, 5e-4, "lira_cosine", "flip_crop",
                                                         256, 0.1)
    results = lira.run(config, dataset=dataset)
    assert results["data"]["pool_size"] == 560
    assert 0 <= results["attacks"]["lira_online"]["auc"]["mean"] <= 1
    text = (tmp_path / "wrn" / "summary.md").read_text()
    assert "4 WRN-10-1 models" in text and "LiRA/RMIA recipe" in text
    key = config.training_key(dataset)
    assert (key["model"], key["recipe"], key["wrn_depth"]) == ("wrn", "lira", 10)
