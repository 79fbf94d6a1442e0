"""Membership pipeline end to end on a tiny synthetic dataset: outputs, stages, faults, reports."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from jaxpet import attacks as attacks_lib, report, runs, splits, training
from jaxpet.attacks import registry
from jaxpet.experiments import membership


def _config(tmp_path, **kwargs):
    values = dict(dataset="mnist", workdir=str(tmp_path / "run"), train_size=100, val_size=20,
                  epochs=25, attack_epochs=3, width_scale=0.5, batch_size=16, num_posteriors=3)
    values.update(kwargs)
    return membership.Config(**values)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, make_dataset):
    tmp_path = tmp_path_factory.mktemp("membership")
    return tmp_path / "run", membership.run(_config(tmp_path), dataset=make_dataset())


def test_membership_run_writes_every_output(finished):
    workdir, results = finished
    for name in ("results.json", "predictions.npz", "roc.png", "summary.md", "config.json"):
        assert (workdir / name).stat().st_size > 0, name
    saved = json.loads((workdir / "results.json").read_text())
    assert list(saved["attacks"]) == list(registry.attack_names("shadow"))
    assert list(saved["attacks"])[:5] == ["shadow_mlp", "loss", "confidence", "entropy",
                                          "modified_entropy"]
    for attack in saved["attacks"].values():
        for key in ("accuracy", "precision", "recall", "f1", "auc"):
            assert 0.0 <= attack[key] <= 1.0
    # Random labels of 100 members are memorised: the target fits them, and the loss attack sees it.
    assert saved["target"]["train_acc"] > 0.9
    assert saved["attacks"]["loss"]["auc"] > 0.7
    preds = np.load(workdir / "predictions.npz")
    members = preds["indices"][preds["membership"] == 1]
    non_members = preds["indices"][preds["membership"] == 0]
    # 800 examples hold four parts of 100 and both validation sets of 20 outside them, so the
    # out part is evaluated whole: balanced 100 in vs 100 out.
    assert results["data"]["val_source"] == "unused"
    assert len(members) == len(non_members) == 100
    assert not set(members) & set(non_members)
    assert preds["posteriors"].shape == (200, 10)
    assert results["data"]["attack_test_members"] == 100
    assert "Validation: 20 examples per role from the data outside the four parts" in (
        workdir / "summary.md").read_text()


def test_results_schema(finished, check_common_schema):
    workdir, results = finished
    check_common_schema(results, workdir)
    assert {"config", "data", "target", "shadow", "attacks", "privacy", "attack_train_acc",
            "seconds", "provenance"} <= set(results)
    assert {"dataset", "digest", "pool_size", "members_per_model", "val_size", "val_source",
            "attack_test_members", "attack_test_non_members"} <= set(results["data"])
    assert {"train_acc", "test_acc", "epochs_run"} <= set(results["target"])
    assert {"target", "shadow", "attacks"} <= set(results["seconds"])
    for attack in results["attacks"].values():
        assert set(attack["tpr_at_fpr"]) == {"0.01", "0.001", "0.0"}
    assert results["privacy"] is None and results["config"]["train_size"] == 100


def test_summary_table_shows_each_attack_under_the_right_column(finished):
    workdir, results = finished
    text = (workdir / "summary.md").read_text()
    rows = report.parse_markdown_table(text[text.index("## All attacks"):])
    assert [r["attack"] for r in rows] == list(results["attacks"])
    for row in rows:
        r = results["attacks"][row["attack"]]
        assert row["AUC"] == f"{r['auc']:.4f}"
        assert row["acc (%)"] == report.pct(r["accuracy"])
        assert row["precision"] == f"{r['precision']:.3f}" and row["recall"] == f"{r['recall']:.3f}"
        assert row["TPR@1%FPR (%)"] == report.pct(r["tpr_at_fpr"]["0.01"])
        assert row["TPR@0.1%FPR (%)"] == report.pct(r["tpr_at_fpr"]["0.001"])
    seed_row = report.parse_markdown_table(text)[0]
    assert seed_row["Target acc (%)"].startswith(
        f"Train = {report.pct(results['target']['train_acc'])}")


def test_posteriors_and_accuracies_are_read_from_the_saved_logits(finished):
    """The role's stage holds the ensemble's logits; the attacks' posteriors are their softmax
    and the reported accuracies their argmax on the members and the test split."""
    workdir, results = finished
    saved = np.load(next((workdir / "stages").glob("target-*.npz")))
    preds = np.load(workdir / "predictions.npz")
    rows = np.searchsorted(saved["candidates"], preds["indices"])
    np.testing.assert_allclose(preds["posteriors"],
                               jax.nn.softmax(saved["logits"][0, rows, 0]), rtol=1e-6)
    hits = saved["logits"][0, :, 0].argmax(-1) == saved["labels"]
    assert results["target"]["train_acc"] == hits[saved["keep"][0]].mean()
    test_hits = saved["test_logits"][0, :, 0].argmax(-1) == saved["test_labels"]
    assert results["target"]["test_acc"] == test_hits.mean()
    assert saved["keep"][0].sum() == results["data"]["members_per_model"] == 100


def test_role_keys_leave_out_only_what_cannot_change_the_role(tmp_path, make_dataset):
    dataset = make_dataset()
    key = lambda role, **kw: _config(tmp_path, **kw).training_key(dataset, role)
    assert key("target", num_shadow=3) == key("target")  # the target is the same model
    assert key("shadow", num_shadow=3) != key("shadow")
    for attack_only in (dict(num_posteriors=10), dict(attack_epochs=9),
                        dict(thresholds="global"), dict(label_only_attack_model="per_class"),
                        dict(strategy="loop"), dict(checkpoint_every=1)):
        assert key("target", **attack_only) == key("target"), attack_only
        assert key("shadow", **attack_only) == key("shadow"), attack_only
    for training_setting in (dict(epochs=3), dict(batch_size=8), dict(label_only_shift=2),
                             dict(width_scale=0.25), dict(seed=1)):
        assert key("target", **training_setting) != key("target"), training_setting


@pytest.fixture
def figures_skipped(figures_not_drawn):
    with figures_not_drawn():  # six runs, checked for their stages (not the test's monkeypatch,
        yield  # which it undoes midway)


def test_interrupted_run_keeps_finished_stages_and_resumes(tmp_path, monkeypatch, make_dataset,
                                                           figures_skipped):
    tiny_dataset = make_dataset
    config = _config(tmp_path, epochs=2, attack_epochs=1)
    real_mlp = registry.get_attack("shadow_mlp")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed during the attack stage")

    monkeypatch.setitem(registry._REGISTRY, "shadow_mlp", dataclasses.replace(real_mlp, fn=crash))
    with pytest.raises(KeyboardInterrupt):
        membership.run(config, dataset=tiny_dataset())
    stages = tmp_path / "run" / "stages"
    assert len(list(stages.glob("target-*.npz"))) == len(list(stages.glob("shadow-*.npz"))) == 1
    monkeypatch.undo()

    calls = []
    real = training.train_ensemble
    monkeypatch.setattr(training, "train_ensemble",
                        lambda *a, **k: calls.append(k.get("log_prefix")) or real(*a, **k))
    membership.run(config, dataset=tiny_dataset())
    # Target and shadow were not retrained: only the attack models are.
    assert calls == ["attack ", "attack label-only "]
    # Another attack on the same models reuses them; another training config does not.
    calls.clear()
    membership.run(_config(tmp_path, epochs=2, attack_epochs=1, num_posteriors=10),
                   dataset=tiny_dataset())
    assert calls == ["attack ", "attack label-only "]
    calls.clear()
    membership.run(_config(tmp_path, epochs=3, attack_epochs=1), dataset=tiny_dataset())
    assert calls == ["target ", "shadow ", "attack ", "attack label-only "]
    # The same workdir and settings on other data (same shapes and counts): retrained, not reused.
    calls.clear()
    other = membership.run(_config(tmp_path, epochs=3, attack_epochs=1),
                           dataset=tiny_dataset(seed=1))
    assert calls == ["target ", "shadow ", "attack ", "attack label-only "]
    assert other["data"]["digest"] == tiny_dataset(seed=1).digest != tiny_dataset().digest
    # A truncated stage file is discarded and that stage recomputed; the other is reused.
    shadow_file = next(p for p in stages.glob("shadow-*.npz")
                       if p.with_suffix(".json").exists()
                       and json.loads(p.with_suffix(".json").read_text())["key"]["data"]
                       == tiny_dataset(seed=1).digest)
    shadow_file.write_bytes(shadow_file.read_bytes()[:100])
    calls.clear()
    membership.run(_config(tmp_path, epochs=3, attack_epochs=1), dataset=tiny_dataset(seed=1))
    assert calls == ["shadow ", "attack ", "attack label-only "]


@pytest.fixture(scope="module")
def seed_layout(tmp_path_factory, make_dataset, figures_not_drawn):
    """One run in the seed's layout (400 examples: the four parts of 100 fill the pool, so each
    role's validation set is the start of its out part) with three shadow models: the
    several-shadows and the seed-layout tests share it (one run's programs, compiled once)."""
    tmp_path = tmp_path_factory.mktemp("seed_layout")
    with figures_not_drawn():
        results = membership.run(_config(tmp_path, num_shadow=3, epochs=1, attack_epochs=1),
                                 dataset=make_dataset(n_train=400))
    return tmp_path / "run", results


def test_several_shadow_models_train_together(seed_layout):
    _, results = seed_layout
    assert results["config"]["num_shadow"] == 3
    assert len(results["shadow"]["per_model_train_acc"]) == 3


def test_a_second_writer_is_refused_and_writes_nothing(tmp_path, make_dataset):
    with runs.Workdir(tmp_path / "run"):  # another run holds the workdir
        with pytest.raises(runs.WorkdirError, match="in use by another jaxpet run"):
            membership.run(_config(tmp_path, epochs=1), dataset=make_dataset())
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".jaxpet.lock"]


@pytest.mark.parametrize("kwargs, flag", [
    (dict(num_posteriors=5), "num_posteriors"),
    (dict(epochs=0), "epochs"),
    (dict(defense="laplace"), "defense"),
    (dict(defense="dpsgd", dp_noise_multiplier=0.0), "dp_noise_multiplier"),
    (dict(defense="dpsgd", dp_delta=1.5), "dp_delta"),
    (dict(dp_noise_multiplier=2.0), "dp_noise_multiplier=2.0 has no effect unless --defense"),
    (dict(dropout_rate=0.3), "dropout_rate=0.3 has no effect"),
    (dict(strategy="pmap"), "strategy"),
    (dict(dataset="svhn"), "dataset"),
    (dict(width_scale=float("nan")), "width_scale must be a finite number"),
    (dict(defense="dpsgd", norm="batch"), "per-example normalisation"),
])
def test_bad_settings_fail_before_any_work(tmp_path, kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        _config(tmp_path, **kwargs)
    assert not (tmp_path / "run").exists()


def test_sizes_the_data_cannot_hold_fail_before_training(tmp_path, make_dataset):
    with pytest.raises(ValueError, match="train_size=300 is larger than a quarter"):
        membership.run(_config(tmp_path, train_size=300), dataset=make_dataset())
    # 2 x 250 validation examples fit neither in the 400 unused nor in an out part of 100.
    with pytest.raises(ValueError, match="--val_size=250 leaves no non-member"):
        membership.run(_config(tmp_path, val_size=250), dataset=make_dataset())
    assert not list((tmp_path / "run").glob("stages/*"))


def test_train_size_alone_fits_the_full_pool():
    """--train_size=1000 on CIFAR-10's 50,000: validation comes from the unused 46,000."""
    config = membership.Config(dataset="cifar10", train_size=1000)
    config.check_sizes(50_000)
    assert config.val_source(50_000) == "unused"
    assert membership.Config(dataset="cifar10").val_source(50_000) == "out_part"  # the seed's
    with pytest.raises(ValueError, match=r"--val_size=12500 .* lower --val_size below 12500, "
                                         r"or --train_size to at most 6250\.$"):
        membership.Config(dataset="cifar10", val_size=12_500).check_sizes(50_000)
    with pytest.raises(ValueError, match=r"--val_size=25000 .* lower --val_size below 12500\.$"):
        membership.Config(dataset="cifar10", val_size=25_000).check_sizes(50_000)
    with pytest.raises(ValueError, match=r"--val_size=12000 .* or --train_size to at most 6500"):
        membership.Config(dataset="cifar10", train_size=12_000, val_size=12_000).check_sizes(50_000)


def test_the_seed_layout_keeps_the_training_key(tmp_path, make_dataset):
    """Where the four parts fill the pool nothing changed, so finished stages stay valid."""
    dataset = make_dataset()
    assert "val_source" not in _config(tmp_path, train_size=None).training_key(dataset)
    assert _config(tmp_path).training_key(dataset)["val_source"] == "unused"


@pytest.mark.parametrize("pool_size, source", [(800, "unused"), (400, "out_part")])
@pytest.mark.parametrize("num_shadow", [1, 3])
def test_roles_keep_members_validation_and_non_members_apart(pool_size, source, num_shadow):
    split = splits.quarter_split(pool_size, seed=0, part_size=100, val_size=20)
    assert split.val_source == source
    target, shadow = membership._roles(split, num_shadow, seed=0)
    for role in (target, shadow):
        assert role.validation.num_models == role.members.num_models
        for k in range(role.members.num_models):
            members, val = set(role.members.member(k)), set(role.validation.member(k))
            non_members = set(role.non_members[k])
            assert len(val) == 20 and not members & val and not val & non_members
            assert not members & non_members
    target_sets = set(target.members.member(0)) | set(target.validation.member(0)) | set(
        target.non_members[0])
    for k in range(num_shadow):
        shadow_sets = set(shadow.members.member(k)) | set(shadow.validation.member(k)) | set(
            shadow.non_members[k])
        assert not target_sets & shadow_sets
        if source == "unused":  # every shadow validates on the shadow set outside the parts
            np.testing.assert_array_equal(shadow.validation.member(k), split.shadow_val)
            assert len(shadow.non_members[k]) == 100
        else:
            assert len(shadow.non_members[k]) == 80


def test_the_seed_layout_runs_with_validation_in_the_out_part(seed_layout):
    workdir, results = seed_layout
    assert results["data"]["val_source"] == "out_part"
    assert results["data"]["attack_test_members"] == 80  # 100 out - 20 validation
    assert "the first 20 examples of each out part" in (workdir / "summary.md").read_text()


def test_threshold_attacks_are_reported_under_both_conventions(finished):
    workdir, results = finished
    assert results["conventions"] == {"thresholds": "per_class", "confidence": "true_class"}
    other = results["other_conventions"]
    assert (other["thresholds"], other["confidence"]) == ("global", "max")
    assert list(other["attacks"]) == list(attacks_lib.THRESHOLD_ATTACKS)
    for name in other["attacks"]:  # per-class margins rank examples differently
        assert other["attacks"][name]["auc"] != results["attacks"][name]["auc"], name
    assert "class_thresholds" in results["attacks"]["loss"]
    text = (workdir / "summary.md").read_text()
    assert "## Threshold attacks under the other convention" in text
    rows = report.parse_markdown_table(text[text.index("under the other convention"):])
    assert rows[0]["AUC"] == f"{other['attacks']['loss']['auc']:.4f}"
