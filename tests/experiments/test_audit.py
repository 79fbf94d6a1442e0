"""Auditing a user's own model: a module defined here (no mask keyword), the .npz routes,
a user-supplied target checkpoint, and every bad input refused before training."""

from __future__ import annotations

import dataclasses
import json
import textwrap

from flax import serialization
import jax
import numpy as np
import pytest

from jaxpet import attacks, classifiers, splits, stages, training
from jaxpet.experiments import audit

USER_MODELS = textwrap.dedent('''
    import flax.linen as nn

    class Tabular(nn.Module):
        num_classes: int

        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.relu(nn.Dense(64)(x))
            x = nn.Dropout(0.1, deterministic=not train)(x)
            return nn.Dense(self.num_classes)(x)

    class SmallCNN(nn.Module):
        num_classes: int

        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.Conv(8, (3, 3))(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
            return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))

    def tabular(num_classes):
        return Tabular(num_classes)

    def small_cnn(num_classes):
        return SmallCNN(num_classes)

    def not_a_module(num_classes):
        return "a string"

    def one_logit(num_classes):
        return Tabular(1)
''')


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    (tmp_path / "user_models.py").write_text(USER_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_models"


def _features(path, n=160, test=80, d=12, seed=0):
    """Random vectors with random labels: a model memorises its members, so they leak."""
    rng = np.random.default_rng(seed)
    np.savez(path, features=rng.normal(size=(n, d)).astype(np.float32),
             labels=rng.integers(0, 4, n), test_features=rng.normal(size=(test, d)),
             test_labels=rng.integers(0, 4, test))
    return str(path)


def _config(tmp_path, **kwargs):
    values = dict(workdir=str(tmp_path / "audit"), num_references=4, epochs=30, batch_size=16,
                  population_size=40, learning_rate=1e-2, num_exposed=4)
    values.update(kwargs)
    return audit.Config(**values)


def test_feature_vectors_of_an_overfit_model_leak(tmp_path, user_models, check_common_schema):
    config = _config(tmp_path, model=f"{user_models}:tabular", data=_features(tmp_path / "d.npz"))
    results = audit.run(config)
    check_common_schema(results, tmp_path / "audit")
    assert results["target"]["train_acc"] > 0.9 and results["data"]["kind"] == "features"
    assert results["attacks"]["lira_online"]["auc"] > 0.65
    assert results["attacks"]["global_loss"]["auc"] > 0.6
    scores = np.load(tmp_path / "audit" / "scores.npz")
    assert scores["membership"].sum() == results["data"]["target_members"] == 80
    top = results["most_exposed"]
    assert len(top) == 4 and all(scores["membership"][e["index"]] for e in top)
    assert [e["score"] for e in top] == sorted((e["score"] for e in top), reverse=True)
    assert not (tmp_path / "audit" / "exposed.png").exists()  # no picture of feature vectors


def test_without_a_held_out_part_the_population_comes_from_training(tmp_path, user_models):
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "f.npz", features=rng.normal(size=(200, 12)).astype(np.float32),
             labels=rng.integers(0, 4, 200))
    results = audit.run(_config(tmp_path, model=f"{user_models}:tabular",
                                data=str(tmp_path / "f.npz")))
    assert results["data"]["pool_size"] == 160 and results["data"]["population_size"] == 40
    scores = np.load(tmp_path / "audit" / "scores.npz")
    assert len(scores["indices"]) == 160 and results["attacks"]["lira_online"]["auc"] > 0.6


def test_images_with_a_batchnorm_module_without_mask(tmp_path, user_models):
    rng = np.random.default_rng(1)
    path = tmp_path / "images.npz"
    np.savez(path, images=rng.integers(0, 256, (96, 8, 8, 3), dtype=np.uint8),
             labels=rng.integers(0, 3, 96), test_images=rng.integers(0, 256, (40, 8, 8, 3),
                                                                      dtype=np.uint8),
             test_labels=rng.integers(0, 3, 40))
    results = audit.run(_config(tmp_path, model=f"{user_models}:small_cnn", data=str(path),
                                epochs=8, population_size=20))
    assert results["data"]["queries"] == 2 and results["attacks"]["lira_online"]["auc"] > 0.55
    assert (tmp_path / "audit" / "exposed.png").stat().st_size > 0
    # Images get the label-only attack too: 10 queries (5 shifts, with and without a flip).
    assert 0 <= results["attacks"]["label_only_ref"]["auc"] <= 1
    stage = next((tmp_path / "audit" / "stages").glob("logits-*.npz"))
    assert np.load(stage)["correct"].shape[-1] == 10


def test_a_tfds_dataset_by_name(tmp_path, user_models, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    from jaxpet.data import tfds as tfds_source

    monkeypatch.setattr(tfds_source, "probe_download", lambda *a, **k: None)
    monkeypatch.setenv("JAXPET_CACHE_DIR", str(tmp_path / "cache"))
    with tfds.testing.mock_data(num_examples=48):
        results = audit.run(_config(tmp_path, model=f"{user_models}:small_cnn",
                                    data="tfds:fashion_mnist", epochs=2, population_size=20,
                                    flip_queries=False))
    assert results["data"]["num_classes"] == 10 and results["data"]["pool_size"] == 48
    assert results["data"]["queries"] == 1


def test_a_user_target_that_never_saw_its_claimed_members_is_at_chance(tmp_path, user_models):
    data_path = _features(tmp_path / "d.npz")
    other = _features(tmp_path / "other.npz", seed=5)  # the target trains on other data
    model = classifiers.classifier(f"{user_models}:tabular", 4)
    arrays = np.load(other)
    result = training.train_ensemble(
        model, arrays["features"], arrays["labels"].astype(np.int32),
        splits.MemberSets.from_lists([np.arange(160)]), training.TrainConfig(epochs=30,
                                                                            batch_size=16))
    variables = jax.tree.map(lambda x: np.asarray(x[0]), result.variables())
    (tmp_path / "target.msgpack").write_bytes(serialization.to_bytes(variables))
    np.save(tmp_path / "members.npy", np.arange(0, 160, 2))
    results = audit.run(_config(
        tmp_path, model=f"{user_models}:tabular", data=data_path, target="checkpoint",
        target_checkpoint=str(tmp_path / "target.msgpack"),
        target_members=str(tmp_path / "members.npy")))
    for name in ("lira_online", "global_loss"):
        assert abs(results["attacks"][name]["auc"] - 0.5) < 0.12, name
    saved = json.loads((tmp_path / "audit" / "results.json").read_text())
    assert saved["config"]["target"] == "checkpoint" and saved["data"]["target_members"] == 80
    assert saved["data"]["pool_size"] == 160  # its 80 members and as many non-members


@pytest.mark.parametrize("case, expected", [
    ("no_module", "does not resolve"),
    ("not_a_module", "returned a str, not a Flax module"),
    ("one_logit", "needs one logit per class: (1, 4)"),
    ("no_labels", "needs 'images' or 'features', and 'labels'"),
    ("lengths", "holds 160 examples but labels 150"),
    ("label_range", "outside [0, 3) of its num_classes=3"),
    ("members_out_of_range", "indices must be in [0, 160)"),
    ("members_repeated", "repeats indices"),
    ("checkpoint_tree", "does not fit the model"),
    ("augment_features", "--augment=flip_crop has no effect: --data="),
])
def test_bad_input_fails_before_training(tmp_path, user_models, monkeypatch, case, expected):
    monkeypatch.setattr(training, "train_ensemble", lambda *a, **k: pytest.fail("trained"))
    data_path = _features(tmp_path / "d.npz")
    kwargs = dict(model=f"{user_models}:tabular", data=data_path)
    if case == "augment_features":
        kwargs["augment"] = "flip_crop"
    elif case == "no_module":
        kwargs["model"] = "no_such_package.models:make"
    elif case in ("not_a_module", "one_logit"):
        kwargs["model"] = f"{user_models}:{case}"
    elif case == "no_labels":
        np.savez(tmp_path / "bad.npz", features=np.zeros((10, 3)))
        kwargs["data"] = str(tmp_path / "bad.npz")
    elif case == "label_range":
        np.savez(tmp_path / "bad.npz", **dict(np.load(data_path)), num_classes=3)
        kwargs["data"] = str(tmp_path / "bad.npz")
    elif case == "lengths":
        arrays = dict(np.load(data_path))
        np.savez(tmp_path / "bad.npz", **{**arrays, "labels": arrays["labels"][:150]})
        kwargs["data"] = str(tmp_path / "bad.npz")
    else:
        members = {"members_out_of_range": [0, 5, 400], "members_repeated": [1, 1, 2]}.get(
            case, list(range(0, 160, 2)))
        np.save(tmp_path / "m.npy", np.asarray(members))
        (tmp_path / "t.msgpack").write_bytes(serialization.to_bytes({"params": {"x": np.ones(2)}}))
        kwargs.update(target="checkpoint", target_checkpoint=str(tmp_path / "t.msgpack"),
                      target_members=str(tmp_path / "m.npy"))
    with pytest.raises(ValueError) as error:
        audit.run(_config(tmp_path, **kwargs))
    assert expected in str(error.value)


@pytest.mark.parametrize("kwargs, expected", [
    (dict(num_references=1), "--num_references must be >= 2"),
    (dict(num_references=5), "must be even"),
    (dict(target="checkpoint"), "needs --target_checkpoint and --target_members"),
    (dict(momentum=0.5), "--momentum=0.5 has no effect unless --optimizer is sgd"),
])
def test_bad_settings_are_refused(kwargs, expected):
    with pytest.raises(ValueError, match=expected):
        audit.Config(**kwargs)


def test_offline_references_train_outside_the_candidates_on_as_many_examples(tmp_path,
                                                                            user_models):
    config = _config(tmp_path, model=f"{user_models}:tabular", data=_features(tmp_path / "d.npz"),
                     references="offline")
    pool = np.arange(0, 160, 2)
    target_keep = np.zeros(80, bool)
    target_keep[::2] = True
    layout = audit.reference_layout(config, target_keep, pool, np.arange(1, 160, 2))
    assert not layout.keep.any()  # every candidate OUT for all N references
    assert not np.isin(layout.extra, pool).any() and len(layout.extra) == 80
    assert (layout.train_keep[:, :80] == 0).all()
    # A balanced draw: each example in exactly half the references, so they train on as many
    # examples as the target on average.
    assert (layout.train_keep.sum(0)[80:] == 2).all() and layout.note is None
    assert layout.train_keep.sum(1).mean() == target_keep.sum()
    results = audit.run(config)
    assert set(results["attacks"]) == {"lira_offline", "lira_offline_fixed_variance",
                                       "rmia_offline", "rmia_offline_fitted_a", "global_loss"}
    # Half the training part is candidates; the other half trains the references.
    assert results["data"]["pool_size"] == 80 and results["data"]["reference_members"] == 40
    assert results["attacks"]["lira_offline"]["auc"] > 0.6
    assert results["most_exposed"][0]["attack"] == "lira_offline"
    # No reference has a member among the candidates, so RMIA's a is fitted on the references'
    # own training examples.
    assert results["rmia_fitted_a"] in [float(a) for a in attacks.rmia.A_GRID]
    assert "rmia_offline_fitted_a used a =" in (tmp_path / "audit" / "summary.md").read_text()
    check = results["calibration"]
    assert check["pseudo_target"] == 1 and check["candidates"] == 80
    assert set(check["attacks"]) == set(results["attacks"])
    summary = (tmp_path / "audit" / "summary.md").read_text()
    assert "## Calibration" in summary and "outside the candidates" in summary


@pytest.mark.parametrize("outside, members, expected", [
    (30, 20, "overlap more"),  # enough for each reference, not for a balanced draw
    (12, 20, "weaker than the target"),  # fewer than the target trained on
])
def test_offline_references_short_of_data_say_so(outside, members, expected):
    config = audit.Config(references="offline", num_references=4)
    target_keep = np.arange(2 * members) % 2 == 0
    layout = audit.reference_layout(config, target_keep, np.arange(2 * members),
                                    np.arange(100, 100 + outside))
    assert expected in layout.note
    assert (layout.train_keep.sum(1) == min(members, outside)).all()


def test_offline_with_every_example_a_candidate_is_refused():
    config = audit.Config(references="offline", num_references=4)
    with pytest.raises(ValueError, match="lower --pool_size"):
        audit.reference_layout(config, np.arange(8) % 2 == 0, np.arange(8), np.arange(0))


def test_the_built_in_wide_resnet_is_the_published_architecture():
    model = classifiers.classifier("wrn", 10, width_scale=0.5)
    assert (model.depth, model.width) == (28, 1)  # widen factor 2 x 0.5
    assert classifiers.classifier("wrn", 10).width == 2


def test_the_logits_stage_is_reused_across_scoring_settings_and_redone_for_training_ones(
        tmp_path, user_models):
    config = _config(tmp_path, model=f"{user_models}:tabular", data=_features(tmp_path / "d.npz"),
                     epochs=3)
    first = audit.run(config)
    stages_dir = tmp_path / "audit" / "stages"
    # Scoring knobs, memory and execution choices and the report's length change no logit.
    scoring = dataclasses.replace(config, fpr_rule="lt", lira_convention="code",
                                  rmia_offline_a=0.5, eval_batch_size=7, num_exposed=2,
                                  strategy="loop", checkpoint_every=1)
    again = audit.run(scoring)
    assert len(list(stages_dir.glob("logits-*.npz"))) == 1
    assert again["attacks"]["global_loss"]["auc"] == first["attacks"]["global_loss"]["auc"]
    assert again["target"] == first["target"] and len(again["most_exposed"]) == 2
    # A training setting is in the key: the stage is computed anew.
    audit.run(dataclasses.replace(config, learning_rate=5e-3))
    assert len(list(stages_dir.glob("logits-*.npz"))) == 2


def test_the_stage_key_holds_every_setting_but_those_declared_harmless():
    config = audit.Config()
    key = stages.stage_key(config, ignore=audit.NOT_IN_LOGITS)
    fields = {f.name for f in dataclasses.fields(audit.Config)}
    assert set(key) == fields - set(audit.NOT_IN_LOGITS)
    for name in ("epochs", "learning_rate", "batch_size", "optimizer", "weight_decay", "seed",
                 "augment", "flip_queries", "query_mode", "width_scale", "precision",
                 "num_references", "references", "pool_size", "population_size", "target",
                 "label_only_shift", "label_only_translations", "preprocess", "model"):
        assert name in key, name


def test_the_training_recipe_is_trainconfigs_own():
    config = audit.Config(optimizer="sgd", learning_rate=0.1, momentum=0.5, schedule="cosine",
                          augment="flip_crop", batch_size=32, epochs=7)
    train = config.train_config()
    assert (train.optimizer, train.learning_rate, train.momentum, train.schedule) == (
        "sgd", 0.1, 0.5, "cosine")
    assert (train.augment, train.batch_size, train.epochs) == ("flip_crop", 32, 7)
    assert audit.Config().train_config().eval_batch_size == 256  # the audit's own default
    for field in ("batch_size", "learning_rate", "weight_decay", "optimizer", "momentum",
                  "schedule", "lr_decay", "augment"):  # TrainConfig's defaults, not restated
        assert getattr(audit.Config(), field) == getattr(training.TrainConfig(), field), field
    with pytest.raises(ValueError, match="--lr_decay=0.5 has no effect unless --schedule"):
        audit.Config(schedule="cosine", lr_decay=0.5)
    with pytest.raises(ValueError, match="--learning_rate must be > 0"):
        audit.Config(learning_rate=0.0)


def test_the_quick_preset_is_a_valid_config():
    assert audit.PRESETS["full"] == {} and "quick" in audit.PRESET_HELP
    config = audit.Config(**audit.PRESETS["quick"])
    assert (config.model, config.data, config.pool_size, config.num_references) == (
        "mlp", "mnist", 2000, 8)


@pytest.mark.parametrize("members, size, offline, expected", [
    (None, None, False, 10),  # every available example
    (None, None, True, 5),  # half: offline references train on the rest
    (None, 4, False, 4),
    (np.array([1, 3, 5]), None, False, 6),  # a given target's members and as many others
])
def test_the_candidate_pool(members, size, offline, expected):
    available = np.arange(10, 20) if members is None else np.arange(10)
    pool = splits.candidate_pool(available, members, size, np.random.default_rng(0),
                                 offline=offline)
    assert len(pool) == expected and np.isin(pool, available).all()
    assert (np.diff(pool) > 0).all()
    if members is not None:
        assert np.isin(members, pool).all()


def test_a_pool_without_room_is_refused():
    with pytest.raises(ValueError, match="larger than the 10 training examples"):
        splits.candidate_pool(np.arange(10), None, 11, np.random.default_rng(0))
    with pytest.raises(ValueError, match="leaves no room for non-members"):
        splits.candidate_pool(np.arange(10), np.arange(4), 4, np.random.default_rng(0))
