"""compare.py on three tiny membership runs: rows, labels, CSV, HTML, overlaid ROC curves;
and on hostile input: results and score files of odd shapes, an --output that is a run's,
odd flags."""

from __future__ import annotations

import csv
import html
import io
import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from jaxpet import compare, errors, runs
from jaxpet.experiments import membership

_TINY = dict(dataset="mnist", train_size=100, val_size=20, epochs=2, width_scale=0.5,
             batch_size=16, num_posteriors=3)
_VARIANTS = {"a": dict(seed=0, attack_epochs=2), "b": dict(seed=1, attack_epochs=2),
             "c": dict(seed=0, attack_epochs=3)}


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory, make_dataset, figures_not_drawn):
    root = tmp_path_factory.mktemp("compare")
    results = {}
    for name, variant in _VARIANTS.items():
        # One stage folder for the three: run c differs from a only in the attack, so it
        # reuses a's trained target and shadow, as runs sharing a --stage_dir do.
        config = membership.Config(workdir=str(root / f"run_{name}"),
                                   stage_dir=str(root / "stages"), **_TINY, **variant)
        with figures_not_drawn():  # compare reads results and scores, not the runs' figures
            results[name] = membership.run(config, dataset=make_dataset())
    return root, results


def test_rows_are_labelled_by_what_differs(three_runs):
    root, results = three_runs
    records = compare.load_runs([str(root / "run_*")])  # a glob
    assert [r.path.name for r in records] == ["run_a", "run_b", "run_c"]
    columns, rows = compare.table_rows(records)
    assert [row["run"] for row in rows] == ["seed=0, attack_epochs=2", "seed=1, attack_epochs=2",
                                           "seed=0, attack_epochs=3"]
    assert columns[:5] == ["run", "workdir", "experiment", "seed", "attack_epochs"]
    for row, name in zip(rows, _VARIANTS, strict=True):
        assert row["target test_acc"] == results[name]["target"]["test_acc"]
        for attack, report in results[name]["attacks"].items():
            assert row[f"{attack} AUC"] == report["auc"]
            assert row[f"{attack} TPR@0.1%FPR"] == report["tpr_at_fpr"]["0.001"]


def test_the_script_writes_markdown_csv_html_and_the_overlaid_rocs(three_runs, tmp_path):
    root, results = three_runs
    out = tmp_path / "cmp"
    script = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "compare.py"
    done = subprocess.run([sys.executable, str(script), str(root / "run_*"),
                           f"--output={out}", "--quiet"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert not re.search(r"^I\d{4} ", done.stderr, re.M)  # --quiet: no info lines
    assert "| seed=1, attack_epochs=2 |" in done.stdout
    table = list(csv.DictReader(io.StringIO((out / "compare.csv").read_text())))
    assert [row["seed"] for row in table] == ["0", "1", "0"]
    assert float(table[1]["loss AUC"]) == pytest.approx(results["b"]["attacks"]["loss"]["auc"])
    page = (out / "compare.html").read_text()
    for link in re.findall(r'(?:src|href)="([^"]+)"', page):
        assert (out / html.unescape(link)).resolve().exists(), link
    assert "roc.png" in page and page.count("report.html") == 3
    assert (out / "roc.png").stat().st_size > 0


def test_identical_configs_are_told_apart_by_folder(three_runs, tmp_path):
    root, _ = three_runs
    records = compare.load_runs([str(root / "run_a"), str(root / "run_a")])
    assert len(records) == 1  # the same folder twice is one run
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "results.json").write_text((root / "run_a" / "results.json").read_text())
    records = compare.load_runs([str(root / "run_a"), str(tmp_path / "copy")])
    assert compare.label_runs(records) == ["run_a", "copy"]


def test_a_folder_without_results_is_a_clear_error(tmp_path):
    with pytest.raises(errors.UserError, match="holds no results.json"):
        compare.load_runs([str(tmp_path)])
    with pytest.raises(errors.UserError, match="no workdir given"):
        compare.load_runs([])
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(errors.UserError, match="does not load"):
        compare.load_runs([str(tmp_path)])


def test_headline_reads_summaries_of_many_targets():
    results = {"attacks": {"lira_online": {"auc": {"mean": 0.7, "std": 0.01},
                                           "tpr_at_fpr_0.001": {"mean": 0.02, "std": 0.0}}},
               "privacy": {"epsilon": 3.5}, "models": {"test_acc": [0.5, 0.7]}}
    assert compare.headline(json.loads(json.dumps(results))) == {
        "models test_acc": pytest.approx(0.6), "lira_online AUC": 0.7,
        "lira_online TPR@0.1%FPR": 0.02, "epsilon": 3.5}


# ----------------------------------------------------------------------------- hostile input
# Runs written by hand here (no training): a results.json as every run writes it, and scores.

_SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "compare.py"


def _results(seed):
    return {"config": {"seed": seed, "epochs": 2},
            "target": {"train_acc": 0.9, "test_acc": 0.7 + seed / 100},
            "attacks": {"loss": {"auc": 0.6 + seed / 100, "tpr_at_fpr": {"0.001": 0.01}},
                        "lira": {"auc": 0.7, "tpr_at_fpr_0.001": 0.05}},
            "seconds": {"train": 3.0},
            "provenance": {"experiment": "membership", "started": "2025-01-01T00:00:00+00:00",
                           "finished": "2025-01-01T00:01:00+00:00"}}


def _scores(n=40, seed=0):
    rng = np.random.default_rng(seed)
    membership = np.arange(n) % 2 == 0
    return {"membership": membership.astype(np.int32),
            "score_loss": rng.normal(size=n) + membership,
            "score_lira": rng.normal(size=n) + 2 * membership}


def _run(folder, results=None, seed=0, scores=True):
    folder.mkdir(parents=True)
    content = _results(seed) if results is None else results
    (folder / "results.json").write_text(content if isinstance(content, str)
                                         else json.dumps(content))
    if scores:
        np.savez(folder / "scores.npz", **_scores(seed=seed))
    return folder


@pytest.fixture
def good_runs(tmp_path):
    return [_run(tmp_path / "good_0", seed=0), _run(tmp_path / "good_1", seed=1)]


def _edited(change):
    results = _results(2)
    change(results)
    return results


_NOT_A_RUN = {
    "a list": ("[1, 2]", "it holds a list, not an object"),
    "a string": ('"results"', "it holds a string"),
    "null": ("null", "it holds null"),
    "no provenance": (_edited(lambda r: r.pop("provenance")), "no 'provenance' block"),
    "provenance a list": (_edited(lambda r: r.update(provenance=[1])),
                          "'provenance' is a list"),
    "experiment a list": (_edited(lambda r: r["provenance"].update(experiment=["a"])),
                          "'experiment' is a list, not a name"),
    "experiment null": (_edited(lambda r: r["provenance"].update(experiment=None)),
                        "'experiment' is null"),
    "config a list": (_edited(lambda r: r.update(config=[1])), "'config' is a list"),
    "no config": (_edited(lambda r: r.pop("config")), "no 'config' block"),
}


@pytest.mark.parametrize("case", sorted(_NOT_A_RUN))
def test_a_results_file_that_is_not_a_runs_is_one_error_naming_it(good_runs, tmp_path, case):
    content, problem = _NOT_A_RUN[case]
    odd = _run(tmp_path / "odd", content)
    with pytest.raises(errors.UserError) as raised:
        compare.load_runs([str(good_runs[0]), str(odd), str(good_runs[1])])
    message = str(raised.value)
    assert f"{odd / 'results.json'} is not the results of a jaxpet run" in message
    assert problem in message and "\n" not in message


_ODD_FIGURES = {
    "attacks a list": (lambda r: r.update(attacks=[1, 2]), "'attacks' is a list"),
    "attacks a string": (lambda r: r.update(attacks="loss"), "'attacks' is a string"),
    "an attack a list": (lambda r: r["attacks"].update(loss=[0.5]), "attacks.loss is a list"),
    "auc a string": (lambda r: r["attacks"]["loss"].update(auc="0.6"),
                     "attacks.loss.auc is a string ('0.6')"),
    "auc mean a string": (lambda r: r["attacks"]["loss"].update(auc={"mean": "x"}),
                          "attacks.loss.auc.mean is a string"),
    "auc a boolean": (lambda r: r["attacks"]["loss"].update(auc=True),
                      "attacks.loss.auc is a boolean"),
    "auc too large": (lambda r: r["attacks"]["loss"].update(auc=10 ** 400),
                      "attacks.loss.auc is a number too large"),
    "tpr a list": (lambda r: r["attacks"]["loss"].update(tpr_at_fpr=[0.1]),
                   "attacks.loss.tpr_at_fpr is a list"),
    "accuracies strings": (lambda r: r["target"].update(test_acc=["a", "b"]),
                           "target.test_acc[0] is a string"),
    "accuracies nested": (lambda r: r["target"].update(test_acc=[[1, 2], [3]]),
                          "target.test_acc[0] is a list"),
    "target a list": (lambda r: r.update(target=[1]), "'target' is a list"),
    "privacy a list": (lambda r: r.update(privacy=[1]), "'privacy' is a list"),
    "epsilon a string": (lambda r: r.update(privacy={"epsilon": "inf"}),
                         "privacy.epsilon is a string"),
    "seconds a list": (lambda r: r.update(seconds=[1]), "'seconds' is a list"),
    "times of two kinds": (lambda r: r["provenance"].update(finished="2025-01-01T00:01:00"), None),
    "times not times": (lambda r: r["provenance"].update(started=5, finished=[1]), None),
    "a setting nested": (lambda r: r["config"].update(seed={"a": [1, None]}), None),
}


@pytest.mark.parametrize("case", sorted(_ODD_FIGURES))
def test_an_odd_figure_is_left_out_with_a_warning_naming_the_file(good_runs, tmp_path, caplog,
                                                                 case):
    change, note = _ODD_FIGURES[case]
    odd = _run(tmp_path / "odd", _edited(change), seed=2)
    records = compare.load_runs([str(good_runs[0]), str(odd), str(good_runs[1])])
    with caplog.at_level("WARNING"):
        written = compare.write_comparison(records, tmp_path / "cmp")
    table = list(csv.DictReader(io.StringIO(written["csv"].read_text())))
    assert [row["workdir"] for row in table] == [str(good_runs[0]), str(odd), str(good_runs[1])]
    assert float(table[2]["loss AUC"]) == pytest.approx(0.61)  # the good runs' figures are there
    if note:
        assert f"{odd / 'results.json'}: {note}" in caplog.text
    assert (tmp_path / "cmp" / "roc.png").exists()


def _truncated(path):
    path.write_bytes(path.read_bytes()[:300])


def _flipped(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _with(**arrays):
    def damage(path):
        np.savez(path, **{**_scores(seed=2), **arrays})
    return damage


_BAD_SCORES = {
    "truncated": (_truncated, "does not load"),
    "a flipped byte": (lambda p: (np.savez_compressed(p, **_scores(seed=2)), _flipped(p)),
                       "does not load"),
    "text": (lambda p: p.write_text("membership,score\n1,0.5\n"), "not an .npz archive"),
    "an object array": (_with(score_loss=np.array([{}] * 40, dtype=object)), "does not load"),
    "scores of another length": (_with(score_loss=np.zeros(7)), "holds score_loss of shape (7,)"),
    "scores 2-D": (_with(score_loss=np.zeros((40, 2))), "holds score_loss of shape (40, 2)"),
    "scores as strings": (_with(score_loss=np.array(["a"] * 40)), "holds score_loss of shape"),
    "scores complex": (_with(score_loss=np.zeros(40, complex)), "dtype complex128"),
    "membership 2-D": (_with(membership=np.zeros((2, 40), bool)), "a membership array of shape"),
    "membership not flags": (_with(membership=np.arange(40)), "other than 0 and 1"),
    "members only": (_with(membership=np.ones(40, bool)), "members only"),
    "NaN scores": (_with(score_loss=np.full(40, np.nan)), "NaN or infinite scores in score_loss"),
}


@pytest.mark.parametrize("case", sorted(_BAD_SCORES))
def test_a_bad_score_file_leaves_that_runs_curves_out_with_a_warning(good_runs, tmp_path,
                                                                    caplog, case):
    damage, warning = _BAD_SCORES[case]
    odd = _run(tmp_path / "odd", seed=2)
    damage(odd / "scores.npz")
    records = compare.load_runs([str(good_runs[0]), str(odd)])
    with caplog.at_level("WARNING"):
        written = compare.write_comparison(records, tmp_path / "cmp")
    assert written["roc"].stat().st_size > 0  # the good run's curves are drawn
    assert f"{odd / 'scores.npz'}" in caplog.text and warning in caplog.text


def _marked(folder, mark):
    folder.mkdir(parents=True)
    if mark == "stages":
        (folder / "stages").mkdir()
    elif mark == "lock":
        (folder / ".jaxpet.lock").write_text("pid 1: experiments/audit.py\n")
        (folder / "summary.md").write_text("a failed run's summary")
    elif mark == "foreign roc":
        (folder / "roc.png").write_text("someone's figure")
    return folder


@pytest.mark.parametrize("where, owner", [
    ("good_0", "is the workdir of .*good_0, one of the runs compared"),
    ("good_0/cmp", "is inside the workdir of .*good_0, one of the runs compared"),
    ("other", "is the workdir of a membership run"),
    ("other/deeper/cmp", r"is inside .*other, the workdir of a membership run"),
    ("staged", "is the workdir of a run \\(it holds its stages\\)"),
    ("locked", "is the workdir of a run \\(it holds a run's lock\\)"),
    ("foreign", "holds roc.png, which no comparison wrote"),
])
def test_an_output_that_is_not_the_comparisons_own_is_refused(good_runs, tmp_path, where,
                                                              owner):
    _run(tmp_path / "other", seed=3)
    _marked(tmp_path / "staged", "stages")
    _marked(tmp_path / "locked", "lock")
    _marked(tmp_path / "foreign", "foreign roc")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    records = compare.load_runs([str(p) for p in good_runs])
    with pytest.raises(errors.UserError, match=f"--output=.*{owner}") as raised:
        compare.write_comparison(records, tmp_path / where)
    assert "\n" not in str(raised.value)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing rewritten


def test_the_comparisons_own_folder_is_rewritten_and_locked_while_written(good_runs, tmp_path):
    records = compare.load_runs([str(p) for p in good_runs])
    out = tmp_path / "cmp"
    compare.write_comparison(records, out)
    first = (out / "compare.csv").read_text()
    records = compare.load_runs([str(good_runs[1]), str(good_runs[0])])
    compare.write_comparison(records, out)  # an earlier comparison: its own, rewritten
    assert (out / "compare.csv").read_text() != first
    with runs.Workdir(out, flag="--output"):  # another process writing there
        with pytest.raises(errors.UserError, match="in use by another jaxpet run"):
            compare.write_comparison(records, out)
    only_lock = tmp_path / "failed_cmp"
    only_lock.mkdir()
    (only_lock / ".jaxpet.lock").write_text("")  # a comparison that failed before writing
    assert compare.write_comparison(records, only_lock)["csv"].exists()


def test_attacks_must_name_attacks_the_runs_have(good_runs, tmp_path):
    records = compare.load_runs([str(p) for p in good_runs])
    with pytest.raises(errors.UserError, match="holds an empty name"):
        compare.write_comparison(records, tmp_path / "cmp", ["", ""])
    with pytest.raises(errors.UserError, match="no run has scores of nosuch — the runs have "
                                               "lira, loss"):
        compare.write_comparison(records, tmp_path / "cmp", ["loss", "nosuch"])
    for p in good_runs:
        (p / "scores.npz").unlink()
    with pytest.raises(errors.UserError, match="none of these runs keeps per-example scores"):
        compare.write_comparison(records, tmp_path / "cmp", ["loss"])
    assert not (tmp_path / "cmp").exists()


def test_workdirs_that_name_no_run_are_clear_errors(good_runs, tmp_path):
    with pytest.raises(errors.UserError, match=r"nothing\* matches no folder"):
        compare.load_runs([str(tmp_path / "nothing*")])
    with pytest.raises(errors.UserError, match=f"is a file, not a folder .*pass its folder, "
                                               f"{good_runs[0]}"):
        compare.load_runs([str(good_runs[0] / "results.json")])
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "results.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(errors.UserError, match="does not load"):
        compare.load_runs([str(tmp_path / "deep")])


_BAD_COMMAND_LINES = [
    (["--nosuch"], "error: Unknown command line flag 'nosuch' — see --help"),
    (["--progress=sideways"], "error: flag --progress=sideways: value should be one of"),
    ([], "error: no workdir given"),
]


@pytest.fixture(scope="module")
def bad_command_lines():
    """The script run on each of _BAD_COMMAND_LINES: all started at once (each process spends
    its seconds importing, one core each), a dict args -> CompletedProcess."""
    started = [subprocess.Popen([sys.executable, str(_SCRIPT), *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
               for args, _ in _BAD_COMMAND_LINES]
    try:
        outputs = [p.communicate(timeout=120) for p in started]
    finally:
        for p in started:
            if p.poll() is None:
                p.kill()
                p.wait()
    return {tuple(args): subprocess.CompletedProcess(p.args, p.returncode, *out)
            for (args, _), p, out in zip(_BAD_COMMAND_LINES, started, outputs, strict=True)}


@pytest.mark.parametrize("args, message", _BAD_COMMAND_LINES)
def test_the_script_reports_a_bad_command_line_as_one_error_line(bad_command_lines, args,
                                                                 message):
    done = bad_command_lines[tuple(args)]
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith(message), done.stderr
    assert "FATAL" not in done.stderr and "Traceback" not in done.stderr
