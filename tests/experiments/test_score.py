"""Scoring membership attacks from logits computed elsewhere: the audit's figures from its own
logits, every bad input refused in one line, a no-signal model at chance, the docs' recipe."""

from __future__ import annotations

import json
import pathlib
import re

import numpy as np
import pytest

from jaxpet import calibration, files
from jaxpet.config import ConfigError
from jaxpet.experiments import audit, score

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "score_logits.md"


def _features(path, n=160, test=80, d=12, seed=0):
    """Random vectors with random labels: a model memorises its members, so they leak."""
    rng = np.random.default_rng(seed)
    np.savez(path, features=rng.normal(size=(n, d)).astype(np.float32),
             labels=rng.integers(0, 4, n), test_features=rng.normal(size=(test, d)),
             test_labels=rng.integers(0, 4, test))
    return str(path)


def test_the_audits_own_logits_give_the_audits_scores_and_figures(tmp_path, check_common_schema):
    data = _features(tmp_path / "d.npz")
    config = audit.Config(model="mlp", width_scale=0.25, data=data, num_references=4, epochs=10,
                          batch_size=16, learning_rate=1e-2, population_size=80, num_exposed=4,
                          workdir=str(tmp_path / "audit"))
    audited = audit.run(config)
    stage = files.read_npz(next((tmp_path / "audit" / "stages").glob("logits-*.npz")))
    kept = files.read_npz(tmp_path / "audit" / "scores.npz")
    # Every held-out example is the population (population_size = all 80), in order.
    population_labels = np.load(data)["test_labels"]
    np.savez(tmp_path / "logits.npz", logits=stage["logits"], labels=kept["labels"],
             keep=kept["keep"], target=0, population_logits=stage["population_logits"],
             population_labels=population_labels)
    results = score.run(score.Config(logits=str(tmp_path / "logits.npz"),
                                     workdir=str(tmp_path / "score"), num_exposed=4))
    check_common_schema(results, tmp_path / "score")
    ours = files.read_npz(tmp_path / "score" / "scores.npz")
    names = {k[len("score_"):] for k in kept if k.startswith("score_")}
    assert names == {k[len("score_"):] for k in ours if k.startswith("score_")}
    assert names >= {"lira_online", "rmia_online", "rmia_offline_fitted_a", "global_loss"}
    for name in names:
        np.testing.assert_allclose(ours[f"score_{name}"], kept[f"score_{name}"], rtol=1e-6,
                                   err_msg=name)
        for metric in ("auc", "balanced_accuracy"):
            assert results["attacks"][name][metric] == pytest.approx(
                audited["attacks"][name][metric], rel=1e-6), (name, metric)
        assert results["attacks"][name]["tpr_at_fpr"] == pytest.approx(
            audited["attacks"][name]["tpr_at_fpr"], rel=1e-6), name
        assert results["calibration"]["attacks"][name]["auc"] == pytest.approx(
            audited["calibration"]["attacks"][name]["auc"], rel=1e-6), name
    np.testing.assert_array_equal(ours["keep"], kept["keep"])
    assert set(results["not_available"]) == {"label_only_ref"}  # logits give no label queries
    assert [kept["indices"][e["index"]] for e in results["most_exposed"]] == [
        e["index"] for e in audited["most_exposed"]]
    assert "## Calibration" in (tmp_path / "score" / "summary.md").read_text()
    assert (tmp_path / "score" / "roc.png").stat().st_size > 0
    command = re.search(r"<pre>(python experiments/score\.py [^<]*)</pre>",
                        (tmp_path / "score" / "report.html").read_text())
    assert command and "--logits=" in command.group(1)

    # The target need not be model 0: the same models in another order, the same scores.
    arrays = dict(np.load(tmp_path / "logits.npz"))
    moved = [1, 2, 0, 3, 4]  # the target (old 0) now at 2; the references keep their order
    inputs = score.LogitsInputs(
        logits=arrays["logits"][moved], labels=arrays["labels"], keep=arrays["keep"][moved],
        target=2, population_logits=arrays["population_logits"][moved],
        population_labels=arrays["population_labels"])
    scored = score.score(inputs, score.Config())
    for name in names:
        np.testing.assert_allclose(scored.scores[name], kept[f"score_{name}"], rtol=1e-6)


def _inputs(models=5, examples=12, classes=3, population=6, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    keep = np.argsort(rng.random((models, examples)), axis=0) < models // 2
    keep[0] = np.arange(examples) % 2 == 0
    return dict(logits=rng.normal(size=(models, examples, classes)).astype(np.float32),
                labels=rng.integers(0, classes, examples), keep=keep, target=np.int64(0),
                population_logits=rng.normal(size=(models, population, classes)),
                population_labels=rng.integers(0, classes, population))


def _bad(arrays: dict, case: str) -> dict:
    a = dict(arrays)
    if case == "no keep":
        del a["keep"]
    elif case == "a misspelt array":
        a["population_logit"] = a.pop("population_logits")
    elif case == "logits 2-d":
        a["logits"] = a["logits"][0]
    elif case == "logits ints":
        a["logits"] = a["logits"].astype(np.int64)
    elif case == "keep 0/1 ints":
        a["keep"] = a["keep"].astype(np.int64)
    elif case == "keep short":
        a["keep"] = a["keep"][:, :-1]
    elif case == "labels short":
        a["labels"] = a["labels"][:-1]
    elif case == "labels floats":
        a["labels"] = a["labels"].astype(np.float32)
    elif case == "label out of range":
        a["labels"] = np.r_[a["labels"][:-1], 3]
    elif case == "target out of range":
        a["target"] = np.int64(5)
    elif case == "target a float":
        a["target"] = np.float64(0)
    elif case == "target a list":
        a["target"] = np.array([0, 1])
    elif case == "NaN in logits":
        a["logits"] = a["logits"].copy()
        a["logits"][2, 3, 1] = np.nan
    elif case == "inf in population":
        a["population_logits"] = a["population_logits"].copy()
        a["population_logits"][1, 0, 0] = np.inf
    elif case == "one reference":
        a["logits"], a["keep"] = a["logits"][:2], a["keep"][:2]
        a["population_logits"] = a["population_logits"][:2]
    elif case == "target all members":
        a["keep"] = a["keep"].copy()
        a["keep"][0] = True
    elif case == "population without labels":
        del a["population_labels"]
    elif case == "population labels alone":
        del a["population_logits"]
    elif case == "population of other classes":
        a["population_logits"] = a["population_logits"][..., :2]
    elif case == "population of other models":
        a["population_logits"] = a["population_logits"][:4]
    elif case == "population label out of range":
        a["population_labels"] = np.r_[a["population_labels"][:-1], -1]
    elif case == "queries on one side only":
        a["population_logits"] = a["population_logits"][:, :, None, :]
    elif case == "no population, an RMIA setting":
        del a["population_logits"], a["population_labels"]
    else:
        raise AssertionError(case)
    return a


@pytest.mark.parametrize("case, expected", [
    ("no keep", "has no 'keep'"),
    ("a misspelt array", "'population_logit', which is not one of its arrays"),
    ("logits 2-d", "logits must be [models, examples, classes] or [models, examples, queries"),
    ("logits ints", "logits must be floating-point; got int64 — write logits.astype"),
    ("keep 0/1 ints", "keep must be boolean; got int64 — write keep.astype(bool)"),
    ("keep short", "keep must be [models, examples] = [5, 12] as the logits; got shape (5, 11)"),
    ("labels short", "labels must be [12] integers"),
    ("labels floats", "labels must be [12] integers (one class per example of the logits); got "
                      "float32"),
    ("label out of range", "labels must be in [0, 3)"),
    ("target out of range", "target must be in [0, 5)"),
    ("target a float", "target must be one integer"),
    ("target a list", "target must be one integer"),
    ("NaN in logits", "logits holds 1 NaN or infinite values (the first at logits[2, 3, 1])"),
    ("inf in population", "population_logits holds 1 NaN or infinite values"),
    ("one reference", "at least 2 references"),
    ("target all members", "keep[0] (the target's) marks 12 of 12 examples as members"),
    ("population without labels", "population_logits needs population_labels"),
    ("population labels alone", "population_labels needs population_logits"),
    ("population of other classes", "population_logits must be laid out as the logits"),
    ("population of other models", "population_logits must be laid out as the logits"),
    ("population label out of range", "population_labels must be in [0, 3)"),
    ("queries on one side only", "population_logits must be laid out as the logits"),
    ("no population, an RMIA setting", "--rmia_offline_a=0.5 has no effect"),
])
def test_each_bad_input_is_one_line_naming_it_before_any_scoring(tmp_path, monkeypatch, case,
                                                                 expected):
    monkeypatch.setattr(score, "score", lambda *a, **k: pytest.fail("scored"))
    np.savez(tmp_path / "bad.npz", **_bad(_inputs(), case))
    config = score.Config(logits=str(tmp_path / "bad.npz"), workdir=str(tmp_path / "out"),
                          **({"rmia_offline_a": 0.5} if "RMIA" in case else {}))
    with pytest.raises(ConfigError) as error:
        score.run(config)
    message = str(error.value)
    assert expected in message and "\n" not in message
    assert f"--logits={tmp_path / 'bad.npz'}" in message
    assert not (tmp_path / "out" / "results.json").exists()


def test_the_arrays_are_checked_without_a_file_too():
    arrays = _inputs()
    with pytest.raises(ConfigError, match=r"keep must be boolean; got int64"):
        score.LogitsInputs(**{**arrays, "keep": arrays["keep"].astype(int)})
    inputs = score.LogitsInputs(**arrays)  # a plain int target, 3-d logits as one query
    assert inputs.logits.shape == (5, 12, 1, 3) and inputs.target == 0


@pytest.mark.parametrize("write, expected", [
    (lambda p: None, "does not exist"),
    (lambda p: p.write_text("not an archive"), "cannot be read: bad.npz is not an .npz"),
    (lambda p: np.savez(p, logits=np.array([{"a": 1}], dtype=object)),
     "cannot be read: bad.npz is not an .npz of plain numpy arrays"),
])
def test_a_file_that_is_no_plain_npz_is_refused(tmp_path, write, expected):
    path = tmp_path / "bad.npz"
    write(path)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        score.run(score.Config(logits=str(path), workdir=str(tmp_path / "out")))


def test_logits_are_required():
    with pytest.raises(ConfigError, match="--logits is required"):
        score.run(score.Config())


def test_without_a_population_rmia_is_not_available_and_the_rest_runs(tmp_path):
    arrays = _inputs(examples=40)
    del arrays["population_logits"], arrays["population_labels"]
    scored = score.score(score.LogitsInputs(**arrays))
    assert {"lira_online", "lira_offline", "global_loss"} <= set(scored.scores)
    for name in score.POPULATION_ATTACKS:
        assert "population_logits" in scored.not_available[name]
    assert "label-only" in scored.not_available["label_only_ref"]


def test_references_that_trained_on_no_candidate_give_the_offline_attacks_only():
    arrays = _inputs(examples=40)
    arrays["keep"][1:] = False  # offline references: every example OUT for all of them
    scored = score.score(score.LogitsInputs(**arrays))
    assert set(scored.scores) == {"lira_offline", "lira_offline_fixed_variance", "rmia_offline",
                                  "global_loss"}
    assert "no reference is IN for any example" in scored.not_available["lira_online"]
    # No reference has members to fit RMIA's a on: not fitted, and said so.
    assert scored.fitted_a is None
    assert "fixed a = 0.3" in scored.not_available["rmia_offline_fitted_a"]


def test_a_model_without_signal_is_scored_at_chance():
    """Every model's logits drawn alike, whatever it trained on: each attack's TPR at 1% FPR
    and AUC lie in the exact no-signal bands (jaxpet.calibration)."""
    rng = np.random.default_rng(7)
    models, examples, classes, population = 9, 2000, 10, 200
    keep = np.argsort(rng.random((models, examples)), axis=0) < models // 2
    inputs = score.LogitsInputs(
        logits=rng.normal(size=(models, examples, classes)).astype(np.float32),
        labels=rng.integers(0, classes, examples), keep=keep, target=3,
        population_logits=rng.normal(size=(models, population, classes)).astype(np.float32),
        population_labels=rng.integers(0, classes, population))
    scored = score.score(inputs)
    members = int(keep[3].sum())
    low, high = calibration.tpr_null_interval(0.01, members, examples - members)
    width = calibration.auc_null_halfwidth(members, examples - members)
    assert {"lira_online", "lira_offline", "rmia_online", "rmia_offline",
            "global_loss"} <= set(scored.attacks)
    for name, figures in scored.attacks.items():
        assert low <= figures["tpr_at_fpr_randomized"]["0.01"] <= high, name
        assert abs(figures["auc"] - 0.5) <= width, name


def _doc_blocks() -> list[str]:
    """The docs' numpy blocks, the ones marked as run by this test."""
    text = DOCS.read_text()
    return re.findall(r"<!-- numpy: run by tests/experiments/test_score\.py -->\s*```python\n"
                      r"(.*?)```", text, flags=re.S)


def test_the_docs_numpy_recipe_writes_a_file_that_scores(tmp_path, monkeypatch):
    draw, save = _doc_blocks()
    assert "torch" not in draw + save
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    examples, classes, population = 300, 10, 50
    namespace: dict = {"labels": rng.integers(0, classes, examples)}
    exec(draw, namespace)  # draws the keep mask the models train on
    keep = namespace["keep"]
    assert keep.shape[1] == examples and (keep.sum(0) == keep.shape[0] // 2).all()
    # What the torch block gives: one [examples, classes] array per model, here random.
    namespace["logits"] = [rng.normal(size=(examples, classes)).astype(np.float32)
                           for _ in keep]
    namespace["population_logits"] = [rng.normal(size=(population, classes)) for _ in keep]
    namespace["population_labels"] = rng.integers(0, classes, population)
    exec(save, namespace)
    results = score.run(score.Config(logits="logits.npz", workdir="runs/score"))
    assert results["data"]["models"] == len(keep) and results["data"]["population_size"] == 50
    assert {"lira_online", "rmia_online", "global_loss"} <= set(results["attacks"])
    assert json.loads((tmp_path / "runs/score/results.json").read_text())["config"][
        "logits"] == "logits.npz"
