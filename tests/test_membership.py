"""Membership pipeline end to end on a tiny synthetic dataset: outputs, disjoint sets, resume."""

import json

import numpy as np
import pytest

from jaxpet import data, membership, training


def _tiny_dataset(n_train=800, n_test=200, seed=0):
    rng = np.random.default_rng(seed)

    def split(n):
        labels = rng.integers(0, 10, n).astype(np.int32)
        images = rng.integers(0, 256, (n, 8, 8, 1)).astype(np.uint8)
        return data.Split(images=images, labels=labels)

    return data.Dataset(name="mnist", train=split(n_train), test=split(n_test),
                        class_names=tuple(str(i) for i in range(10)), info={"source": "synthetic"})


def _config(tmp_path, **kwargs):
    values = dict(dataset="mnist", workdir=str(tmp_path / "run"), train_size=100, val_size=20,
                  epochs=25, attack_epochs=3, width_scale=0.5, batch_size=16, num_posteriors=3)
    values.update(kwargs)
    return membership.MembershipConfig(**values)


def test_membership_run_writes_every_output(tmp_path):
    results = membership.run(_config(tmp_path), dataset=_tiny_dataset())
    workdir = tmp_path / "run"
    for name in ("results.json", "predictions.npz", "roc.png", "summary.md", "config.json"):
        assert (workdir / name).stat().st_size > 0, name
    saved = json.loads((workdir / "results.json").read_text())
    assert set(saved["attacks"]) == {"shadow_mlp", "loss", "confidence", "entropy", "modified_entropy"}
    for report in saved["attacks"].values():
        for key in ("accuracy", "precision", "recall", "f1", "auc"):
            assert 0.0 <= report[key] <= 1.0
        assert set(report["tpr_at_fpr"]) == {"0.01", "0.001", "0.0"}
    assert saved["config"]["train_size"] == 100
    # Random labels of 100 members are memorised: the target fits them, and the loss attack sees it.
    assert saved["target"]["train_acc"] > 0.9
    assert saved["attacks"]["loss"]["auc"] > 0.7
    preds = np.load(workdir / "predictions.npz")
    members = preds["indices"][preds["membership"] == 1]
    non_members = preds["indices"][preds["membership"] == 0]
    assert len(members) == len(non_members) == 80  # balanced: 100 in vs 100 - 20 validation out
    assert not set(members) & set(non_members)
    assert preds["posteriors"].shape == (160, 10)
    assert results["data"]["attack_test_members"] == 80
    assert "| attack |" in (workdir / "summary.md").read_text()


def test_interrupted_run_keeps_finished_phases_and_resumes(tmp_path, monkeypatch):
    config = _config(tmp_path, epochs=2, attack_epochs=1)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed during the attack phase")

    monkeypatch.setattr(membership.attacks, "shadow_mlp_attack", crash)
    with pytest.raises(KeyboardInterrupt):
        membership.run(config, dataset=_tiny_dataset())
    assert len(list((tmp_path / "run" / "phases").glob("target-*.npz"))) == 1
    assert len(list((tmp_path / "run" / "phases").glob("shadow-*.npz"))) == 1
    monkeypatch.undo()

    calls = []
    real = training.train_ensemble
    monkeypatch.setattr(training, "train_ensemble", lambda *a, **k: calls.append(k.get("log_prefix")) or real(*a, **k))
    membership.run(config, dataset=_tiny_dataset())
    assert calls == ["attack "]  # target and shadow were not retrained
    # Another attack on the same models reuses them; another training config does not.
    calls.clear()
    membership.run(_config(tmp_path, epochs=2, attack_epochs=1, num_posteriors=10), dataset=_tiny_dataset())
    assert calls == ["attack "]
    calls.clear()
    membership.run(_config(tmp_path, epochs=3, attack_epochs=1), dataset=_tiny_dataset())
    assert calls == ["target ", "shadow ", "attack "]


def test_several_shadow_models_train_together(tmp_path):
    results = membership.run(_config(tmp_path, num_shadow=3, epochs=2, attack_epochs=1), dataset=_tiny_dataset())
    assert len(results["shadow"]["per_model_train_acc"]) == 3


@pytest.mark.parametrize("kwargs, flag", [
    (dict(num_posteriors=5), "num_posteriors"),
    (dict(epochs=0), "epochs"),
    (dict(defense="laplace"), "defense"),
    (dict(defense="dpsgd", dp_noise_multiplier=0.0), "dp_noise_multiplier"),
    (dict(defense="dpsgd", dp_delta=1.5), "dp_delta"),
    (dict(strategy="pmap"), "strategy"),
    (dict(dataset="svhn"), "dataset"),
    (dict(train_size=300), "train_size"),  # more than a quarter of 800
])
def test_bad_flags_fail_before_training(tmp_path, kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        membership.run(_config(tmp_path, **kwargs), dataset=_tiny_dataset())


def test_unwritable_workdir_is_reported(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="workdir"):
        membership.check_workdir(str(blocker / "sub"))


def test_dpsgd_curve_reports_epsilon_and_lowers_the_attack(tmp_path):
    base = _config(tmp_path, epochs=8, attack_epochs=2, num_posteriors=10)
    curve = membership.privacy_curve(base, [3.0], dataset=_tiny_dataset())
    plain, plain_groupnorm, private = curve["points"]
    assert plain["defense"] == plain_groupnorm["defense"] == "none" and plain["epsilon"] is None
    assert json.loads((tmp_path / "run" / "none_groupnorm" / "results.json").read_text())["config"]["norm"] == "group"
    assert 0 < private["epsilon"] < 50
    dp_results = json.loads((tmp_path / "run" / "dpsgd_sigma3" / "results.json").read_text())
    assert dp_results["privacy"]["steps"] == 8 * 7  # ceil(100 / 16) steps per epoch
    assert "epsilon" in (tmp_path / "run" / "dpsgd_sigma3" / "summary.md").read_text()
    assert (tmp_path / "run" / "privacy_curve.png").stat().st_size > 10_000
    # The overfit plain model leaks more than the noisy one.
    assert private["attacks"]["loss"]["auc"] < plain["attacks"]["loss"]["auc"]
    with pytest.raises(ValueError, match="noise_multipliers"):
        membership.privacy_curve(base, [0.0], dataset=_tiny_dataset())
