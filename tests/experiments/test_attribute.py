"""Attribute inference end to end on a tiny synthetic dataset with a planted hidden attribute."""

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from jaxpet import data, report as report_lib, stages, training
from jaxpet.experiments import attribute

RACES = data.UTKFACE_RACES
RACE_COLOURS = np.array([[220, 40, 40], [40, 220, 40], [40, 40, 220], [220, 220, 40],
                         [40, 220, 220]], np.uint8)


def _planted_dataset(n=600, size=16, seed=0, race_probs=(0.4, 0.2, 0.15, 0.15, 0.1)):
    """Noise faces; gender = bright/dark left half (the target's task), race = that half's hue.

    The target must read the half's brightness through its colour, so its
    representation keeps the hue: the planted race leaks, as in overlearning.

    A few names lack race (-1), as in UTKFace; they must be dropped and counted.
    """
    rng = np.random.default_rng(seed)
    images = rng.integers(60, 120, (n, size, size, 3)).astype(np.uint8)
    gender = rng.integers(0, 2, n).astype(np.int32)
    race = rng.choice(len(RACES), n, p=race_probs).astype(np.int32)
    brightness = np.where(gender == 1, 1.0, 0.45)[:, None]
    half = (RACE_COLOURS[race] * brightness).astype(np.uint8)
    images[:, :, : size // 2] = half[:, None, None, :]
    images[:, :, : size // 2] += rng.integers(0, 30, (n, size, size // 2, 3)).astype(np.uint8)
    race[:7] = -1
    age = rng.integers(1, 90, n).astype(np.int32)
    train = data.Split(images, gender.copy(), {"age": age, "gender": gender, "race": race})
    return data.Dataset("utkface", train, None, data.UTKFACE_GENDERS,
                        {"race": RACES, "gender": data.UTKFACE_GENDERS},
                        {"skipped_names": 3, "source": "synthetic"})


def _config(tmp_path, **kwargs):
    values = dict(workdir=str(tmp_path / "run"), image_size=16, epochs=4, attack_epochs=12,
                  batch_size=32, attack_batch_size=32, num_targets=2)
    values.update(kwargs)
    return attribute.Config(**values)


@pytest.fixture(scope="module")
def two_targets(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("attribute")
    results = attribute.run(_config(tmp_path, compare_layers=("conv3",)),
                            dataset=_planted_dataset())
    return tmp_path / "run", results


def test_outputs_and_result_ranges(two_targets, check_common_schema):
    workdir, results = two_targets
    check_common_schema(results, workdir)
    for name in ("results.json", "confusion.png", "summary.md"):
        assert (workdir / name).stat().st_size > 0, name
    saved = json.loads((workdir / "results.json").read_text())
    assert 0 <= saved["target"]["test_acc"] <= 1
    for report in (saved["attack"], saved["controls"]["pixels"], saved["controls"]["untrained"]):
        for key in ("accuracy", "baseline_accuracy", "macro_f1"):
            assert 0 <= report[key] <= 1
        assert set(report["per_class"]) == set(RACES)
        assert all(0 <= report["per_class"][r]["f1"] <= 1 for r in RACES)
    d = saved["data"]
    assert d["missing_attribute"] == 7 and d["used"] == 593 and d["skipped_names"] == 3
    assert d["test"] == round(0.1 * 593) and abs(d["target_train"] - d["attack_train"]) <= 1
    assert sum(d["class_counts_test"].values()) == d["test"]
    assert saved["config"]["layer"] == "fc2" and saved["seconds"]["target_training"] > 0
    summary = (workdir / "summary.md").read_text()
    assert "Majority-class baseline" in summary and "Class 4 (Others)" in summary
    conv3 = saved["layers"]["conv3"]  # a compared layer, with its own untrained control
    assert 0 <= conv3["untrained"]["accuracy"] <= 1
    assert conv3["attack"]["accuracy"] > conv3["attack"]["baseline_accuracy"] + 0.2
    assert "Attack accuracy by layer" in summary and "`conv3`" in summary


def test_summary_tables_show_the_results_numbers(two_targets):
    workdir, results = two_targets
    text = (workdir / "summary.md").read_text()
    headline = {row[""]: row for row in report_lib.parse_markdown_table(text)}
    pct = lambda m, s: report_lib.plus_minus(m, s, scale=100, digits=2)
    t, a = results["target"], results["attack"]
    assert headline["Target test accuracy (%)"]["ours"] == pct(t["test_acc"], t["test_acc_std"])
    assert headline["Attack accuracy (%)"]["ours"] == pct(a["accuracy"], a["std"]["accuracy"])
    pixels = results["controls"]["pixels"]
    assert headline["Control: attack on raw pixels (%)"]["ours"] == pct(
        pixels["accuracy"], pixels["std"]["accuracy"])
    per_class = report_lib.parse_markdown_table(text[text.index("## Per class"):])
    for row, name in zip(per_class, RACES, strict=True):
        assert row["Class"].endswith(f"({name})")
        assert row["samples (ours)"] == str(results["data"]["class_counts"][name])
        assert row["F1 (pixels)"] == f"{pixels['per_class'][name]['f1']:.2f}"


def test_attack_finds_planted_attribute(two_targets):
    _, results = two_targets
    assert results["target"]["test_acc"] > 0.9  # the planted gender half is easy
    attack = results["attack"]
    assert attack["majority_class"] == "White"
    assert attack["accuracy"] > attack["baseline_accuracy"] + 0.3
    assert results["controls"]["pixels"]["accuracy"] > attack["baseline_accuracy"] + 0.3


def test_two_targets_give_per_target_numbers_and_spread(two_targets):
    _, results = two_targets
    attack = results["attack"]
    assert len(results["target"]["per_target_test_acc"]) == 2
    assert len(attack["per_target"]) == 2
    per = [r["accuracy"] for r in attack["per_target"]]
    assert attack["accuracy"] == pytest.approx(np.mean(per))
    assert attack["std"]["accuracy"] == pytest.approx(np.std(per))
    for name in RACES:  # each class's figures: mean and spread of the per-target ones
        for key in ("precision", "recall", "f1"):
            values = [r["per_class"][name][key] for r in attack["per_target"]]
            assert attack["per_class"][name][key] == pytest.approx(np.mean(values))
            assert attack["std"]["per_class"][name][key] == pytest.approx(np.std(values))
    total = np.sum([r["confusion"] for r in attack["per_target"]], axis=0)
    np.testing.assert_array_equal(attack["confusion"], total)


def test_per_class_report_agrees_with_sklearn(two_targets):
    _, results = two_targets
    for report in results["attack"]["per_target"] + results["controls"]["pixels"]["per_target"]:
        # Rebuild (label, prediction) pairs from the confusion matrix and recompute with sklearn.
        matrix = np.asarray(report["confusion"])
        pairs = [(t, p) for t in range(5) for p in range(5) for _ in range(matrix[t, p])]
        labels, preds = map(np.array, zip(*pairs, strict=True))
        p, r, f, s = skm.precision_recall_fscore_support(labels, preds, labels=range(5),
                                                         zero_division=0)
        for c, name in enumerate(RACES):
            got = report["per_class"][name]
            assert got["precision"] == pytest.approx(p[c])
            assert got["recall"] == pytest.approx(r[c])
            assert got["f1"] == pytest.approx(f[c])
            assert got["support"] == s[c]
        assert report["accuracy"] == pytest.approx(skm.accuracy_score(labels, preds))


@pytest.mark.parametrize("kwargs, message", [
    (dict(attribute="religion"), "--attribute='religion' is not an attribute"),
    (dict(target_attribute="eyes"), "--target_attribute='eyes'"),
    (dict(layer="fc9"), "--layer must be one of"),
    (dict(compare_layers=("fc1", "fc7")), "--compare_layers must be one of"),
    (dict(image_size=6), "--image_size must be >= 8"),
    (dict(attribute="gender"), "both 'gender'"),
    (dict(num_targets=0), "--num_targets must be >= 1"),
    (dict(test_fraction=float("inf")), "--test_fraction must be a finite number"),
])
def test_bad_input_fails_up_front(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        attribute.run(_config(tmp_path, **kwargs), dataset=_planted_dataset(n=60))


def test_split_leaving_a_class_empty_fails(tmp_path):
    dataset = _planted_dataset(n=60, race_probs=(0.5, 0.5, 0.0, 0.0, 0.0))
    with pytest.raises(ValueError,
                       match=r"leaves class\(es\) \['Asian', 'Indian', 'Others'\] empty"):
        attribute.run(_config(tmp_path), dataset=dataset)


def test_split_is_seeded_and_disjoint():
    a, b = attribute.split_examples(101, 0.1, 3), attribute.split_examples(101, 0.1, 3)
    np.testing.assert_array_equal(a.attack, b.attack)
    everything = np.concatenate([a.target, a.attack, a.test])
    assert len(a.test) == 10 and sorted(everything) == list(range(101))


def test_presets_and_the_targets_stage_key():
    """The full setting is the first preset; quick is a valid config in its own workdir. The
    targets' key moves with the target's settings, not the attack's."""
    assert list(attribute.PRESETS) == ["seed", "quick"] and attribute.PRESETS["seed"] == {}
    quick = attribute.Config(**attribute.PRESETS["quick"])
    assert quick.workdir != attribute.Config().workdir and quick.max_examples is not None
    key = lambda **kw: stages.stage_key(attribute.Config(**kw),
                                        ignore=attribute.TARGETS_KEY_IGNORE)
    assert key() == key(attack_epochs=3, attack_weight_decay=0.0, compare_layers=("fc1",),
                        layer="conv3", workdir="elsewhere")
    assert key() != key(epochs=3) and key() != key(lr_decay=0.5) and key() != key(seed=1)


def test_train_configs_take_the_shared_settings():
    config = attribute.Config(epochs=7, learning_rate=0.01, lr_decay=0.9, attack_epochs=3,
                              attack_weight_decay=0.0)
    target, attack = config.target_train_config(), config.attack_train_config()
    assert (target.epochs, target.learning_rate, target.lr_decay) == (7, 0.01, 0.9)
    assert (attack.epochs, attack.weight_decay, attack.lr_decay) == (3, 0.0, 0.9)
    assert target.weight_decay == training.TrainConfig().weight_decay == config.weight_decay
