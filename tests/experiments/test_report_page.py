"""Every workdir's report.html: exists, links only files that exist, carries results.json's
numbers, the summary, the curves and the command; history.jsonl and curves.png beside it."""

from __future__ import annotations

import html
import json
import re

import pytest

from jaxpet import runs
from jaxpet.experiments import membership


@pytest.fixture(scope="module")
def membership_run(tmp_path_factory, make_dataset):
    workdir = tmp_path_factory.mktemp("page") / "run"
    config = membership.Config(dataset="mnist", workdir=str(workdir), train_size=100, val_size=20,
                               epochs=3, attack_epochs=2, width_scale=0.5, batch_size=16,
                               num_posteriors=3)
    return workdir, membership.run(config, dataset=make_dataset())


def test_the_page_links_only_files_that_exist(membership_run):
    workdir, _ = membership_run
    text = (workdir / "report.html").read_text()
    links = re.findall(r'(?:src|href)="([^"]+)"', text)
    assert "roc.png" in links and "curves.png" in links
    for link in links:
        assert not re.match(r"[a-z]+://", link), link  # nothing from the network
        assert (workdir / html.unescape(link)).exists(), link


def test_the_page_carries_the_results_and_how_to_reproduce_them(membership_run):
    workdir, results = membership_run
    text = (workdir / "report.html").read_text()
    saved = json.loads(html.unescape(re.search(r"<details><summary>results.json[^<]*</summary>"
                                               r"<pre>(.*?)</pre>", text, re.S).group(1)))
    assert saved == json.loads((workdir / "results.json").read_text())
    for name, attack in results["attacks"].items():  # the summary table, rendered
        assert f"<td>{name}</td>" in text and f"<td>{attack['auc']:.4f}</td>" in text
    assert "python experiments/membership.py --dataset=mnist" in text
    assert "--train_size=100" in text and "<h2>Provenance</h2>" in text


def test_history_and_curves_are_written_for_every_trained_phase(membership_run):
    workdir, results = membership_run
    rows = runs.read_history(workdir / "history.jsonl")
    phases = {r["phase"] for r in rows}
    assert phases == {"target", "shadow", "attack", "attack label-only"}
    assert len([r for r in rows if r["phase"] == "target"]) == results["config"]["epochs"]
    assert all("val_acc" in r for r in rows if not r["phase"].startswith("attack"))
    assert (workdir / "curves.png").stat().st_size > 0
