"""compare.py on three tiny membership runs: rows, labels, CSV, HTML, overlaid ROC curves."""

from __future__ import annotations

import csv
import html
import io
import json
import pathlib
import re
import subprocess
import sys

import pytest

from jaxpet import compare, errors
from jaxpet.experiments import membership

_TINY = dict(dataset="mnist", train_size=100, val_size=20, epochs=2, width_scale=0.5,
             batch_size=16, num_posteriors=3)
_VARIANTS = {"a": dict(seed=0, attack_epochs=2), "b": dict(seed=1, attack_epochs=2),
             "c": dict(seed=0, attack_epochs=3)}


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory, make_dataset):
    root = tmp_path_factory.mktemp("compare")
    results = {}
    for name, variant in _VARIANTS.items():
        config = membership.Config(workdir=str(root / f"run_{name}"), **_TINY, **variant)
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
