"""The shared stages: a derived stage key, the ensemble-logits stage, accuracy."""

import dataclasses

import numpy as np
import pytest

from jaxpet import data, models, splits, stages, training


@dataclasses.dataclass(frozen=True)
class _Config:
    seed: int = 0
    epochs: int = 3
    workdir: str = "runs/x"
    new_field: float = 0.5  # a field nobody listed anywhere


def test_stage_key_holds_every_field_but_the_declared_ones():
    key = stages.stage_key(_Config(), ignore=("workdir",), data="abc")
    assert key == {"seed": 0, "epochs": 3, "new_field": 0.5, "data": "abc"}
    # A new field changes the key by default; only a declared one does not.
    assert stages.stage_key(_Config(new_field=0.6), ignore=("workdir",)) != \
        stages.stage_key(_Config(), ignore=("workdir",))
    assert stages.stage_key(_Config(workdir="elsewhere"), ignore=("workdir",)) == \
        stages.stage_key(_Config(), ignore=("workdir",))


def test_stage_key_refuses_an_unknown_ignored_field():
    with pytest.raises(ValueError, match="workdirr"):
        stages.stage_key(_Config(), ignore=("workdirr",))


def test_accuracy_matches_a_direct_count():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 20, 2, 4)).astype(np.float32)
    labels = rng.integers(0, 4, 20)
    keep = rng.random((3, 20)) < 0.5
    population_logits = rng.normal(size=(3, 7, 2, 4)).astype(np.float32)
    population_labels = rng.integers(0, 4, 7)
    acc = stages.accuracy(logits, labels, keep, population_logits, population_labels)
    for k in range(3):
        hits = logits[k, :, 0].argmax(-1) == labels
        assert acc["train_acc"][k] == pytest.approx(hits[keep[k]].mean())
        assert acc["pool_non_member_acc"][k] == pytest.approx(hits[~keep[k]].mean())
        assert acc["test_acc"][k] == pytest.approx(
            (population_logits[k, :, 0].argmax(-1) == population_labels).mean())


def test_ensemble_logits_equals_training_then_querying(tmp_path):
    """The stage is exactly train_ensemble followed by query_logits on each query set."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (40, 8, 8, 1), dtype=np.uint8)
    y = rng.integers(0, 3, 40).astype(np.int32)
    keep = splits.balanced_keep_mask(40, 2, seed=0)
    model = models.MLP(hidden_sizes=(8,), num_classes=3)
    config = training.TrainConfig(epochs=2, batch_size=8)
    preprocess = data.Normalize(mean=(0.0,), std=(1.0,), scale=255.0)
    arrays, info = stages.ensemble_logits(
        model, x, y, splits.MemberSets.from_mask(keep), config,
        queries={"logits": x, "population_logits": x[:5]}, seed=3, preprocess=preprocess,
        flips=False)
    result = training.train_ensemble(model, x, y, splits.MemberSets.from_mask(keep), config,
                                     seed=3, preprocess=preprocess)
    direct = training.query_logits(model, result.variables(), x, preprocess=preprocess,
                                   flips=False, batch_size=256)
    np.testing.assert_allclose(arrays["logits"], direct, rtol=1e-5, atol=1e-5)
    assert arrays["population_logits"].shape == (2, 5, 1, 3)
    assert arrays["final_loss"].shape == (2,) and info["train_seconds"] > 0


def test_ensemble_logits_reports_the_epochs_and_each_models_best_epoch():
    """Under early stopping the info holds what the trainer's own state says."""
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (80, 8, 8, 1), dtype=np.uint8)
    y = rng.integers(0, 3, 80).astype(np.int32)
    members = splits.MemberSets.from_lists([np.arange(30), np.arange(30, 60)])
    validation = splits.MemberSets.from_lists([np.arange(60, 80)] * 2)
    model = models.MLP(hidden_sizes=(8,), num_classes=3)
    config = training.TrainConfig(epochs=8, batch_size=10, early_stopping=True, patience=2,
                                  learning_rate=0.05)
    preprocess = data.Normalize(mean=(0.0,), std=(1.0,), scale=255.0)
    _, info = stages.ensemble_logits(model, x, y, members, config, queries={}, seed=1,
                                     preprocess=preprocess, validation=validation)
    result = training.train_ensemble(model, x, y, members, config, seed=1,
                                     validation=validation, preprocess=preprocess)
    assert info["epochs_run"] == len(result.history)
    assert info["best_epoch"] == np.asarray(result.state.best_epoch).tolist()
    _, plain = stages.ensemble_logits(model, x, y, members, training.TrainConfig(
        epochs=1, batch_size=10), queries={}, seed=1, preprocess=preprocess)
    assert plain["epochs_run"] == 1 and plain["best_epoch"] is None
