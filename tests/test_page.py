"""report.html's parts: the Markdown subset, the command that reproduces a run."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shlex
import subprocess

from absl import flags
import pytest

from jaxpet import config as config_lib, files, page
from jaxpet.experiments import lira, membership

ROOT = pathlib.Path(page.__file__).resolve().parents[1]  # the repository, where jaxpet sits


def test_markdown_tables_headings_lists_and_inline_marks():
    text = ("# Title\n\nSome **bold** and `x<y` text\ncontinued.\n\n"
            "| a | b |\n|---|---|\n| 1 | <2> |\n\n- one\n- [two](roc.png)\n")
    out = page.markdown_to_html(text)
    assert "<h2>Title</h2>" in out  # the page's own title is the only <h1>
    assert "<p>Some <strong>bold</strong> and <code>x&lt;y</code> text continued.</p>" in out
    assert "<thead><tr><th>a</th><th>b</th></tr></thead>" in out
    assert "<tr><td>1</td><td>&lt;2&gt;</td></tr>" in out and "---" not in out
    assert '<ul><li>one</li><li><a href="roc.png">two</a></li></ul>' in out


def test_markdown_never_passes_raw_html():
    out = page.markdown_to_html('<script>alert(1)</script>\n\n| <img src=x> |\n|---|\n')
    assert "<script>" not in out and "<img" not in out


def _reparsed(module, command):
    """The config the experiment's own flags build from ``command``."""
    values = flags.FlagValues()
    config_lib.define_flags(module.Config, presets=getattr(module, "PRESETS", None) or None,
                            flag_values=values, module_name="test")
    values(["prog", *command.split()[2:]])
    return config_lib.from_flags(module.Config, presets=getattr(module, "PRESETS", None) or None,
                                 flag_values=values)


@pytest.mark.parametrize("module, config", [
    (membership, membership.get_config("quick", dataset="mnist", epochs=3, seed=2,
                                       defense="dropout_early_stopping", patience=4)),
    (membership, membership.get_config("seed", num_shadow=4, workdir="runs/x")),
    (lira, lira.Config(dataset="cifar10", num_models=4, augment_training=True, epochs=2)),
])
def test_the_reproduce_command_rebuilds_the_same_config(module, config):
    results = {"config": dataclasses.asdict(config),
               "provenance": {"experiment": module.__name__.rsplit(".", 1)[-1]}}
    command = page.reproduce_command(results)
    assert command.startswith(f"python experiments/{results['provenance']['experiment']}.py")
    assert _reparsed(module, command) == config


def test_a_multi_process_run_is_reproduced_through_the_launcher():
    config = lira.Config(dataset="mnist", num_models=4, epochs=2)
    results = {"config": dataclasses.asdict(config),
               "provenance": {"experiment": "lira", "process_count": 2}}
    command = page.reproduce_command(results)
    assert command.startswith("python -m jaxpet.launch --num_processes=2 -- "
                              "experiments/lira.py ")
    assert _reparsed(lira, "python " + command.split(" -- ", 1)[1]) == config
    results["provenance"]["process_count"] = 1
    assert page.reproduce_command(results).startswith("python experiments/lira.py ")


def test_no_command_for_a_result_of_unknown_origin():
    assert page.reproduce_command({"config": {}, "provenance": {"experiment": "nope"}}) is None
    assert page.reproduce_command({}) is None


def _audit_results(provenance):
    from jaxpet.experiments import audit

    config = audit.Config(model="my_model:make_classifier", data="mnist", num_references=4)
    return {"config": dataclasses.asdict(config),
            "provenance": {"experiment": "audit", **provenance}}, config


def test_the_reproduce_command_carries_the_pythonpath_the_run_had(tmp_path, monkeypatch):
    """A model imported from the user's module is found again: the recorded PYTHONPATH (made
    absolute) leads the command, as one shell assignment."""
    from jaxpet import runs
    from jaxpet.experiments import audit

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["examples", "", "/opt/my models"]))
    provenance = runs.provenance(runs.now(), argv=["experiments/audit.py"])
    assert provenance["pythonpath"] == [str(tmp_path / "examples"), "/opt/my models"]
    results, config = _audit_results(provenance)
    command = page.reproduce_command(results)
    words = shlex.split(command)
    # Run outside the repository: from where it ran (its relative paths), the script by path.
    assert words[:3] == ["cd", str(tmp_path), "&&"]
    assert words[3] == f"PYTHONPATH={tmp_path / 'examples'}{os.pathsep}/opt/my models"
    assert words[4:6] == ["python", str(ROOT / "experiments" / "audit.py")]
    assert _reparsed(audit, shlex.join(["python", "experiments/audit.py", *words[6:]])) == config
    # A shell takes it as an assignment for the command (quoted apart from its name).
    prefix = command.split(" python ", 1)[0]
    shown = subprocess.run(["sh", "-c", f"{prefix} printenv PYTHONPATH"], capture_output=True,
                           text=True, check=True).stdout.strip()
    assert shown == f"{tmp_path / 'examples'}{os.pathsep}/opt/my models"


@pytest.mark.parametrize("value", [None, ""])
def test_without_a_pythonpath_the_command_is_unchanged(monkeypatch, value):
    from jaxpet import runs

    monkeypatch.chdir(ROOT)  # run from the repository root: no cd

    if value is None:
        monkeypatch.delenv("PYTHONPATH", raising=False)
    else:
        monkeypatch.setenv("PYTHONPATH", value)
    provenance = runs.provenance(runs.now(), argv=["experiments/audit.py"])
    assert "pythonpath" not in provenance
    results, _ = _audit_results(provenance)
    assert page.reproduce_command(results).startswith("python experiments/audit.py ")


@pytest.mark.parametrize("recorded", [[], "examples", [3], [""], {"a": 1}])
def test_a_malformed_recorded_pythonpath_is_left_out(recorded):
    results, _ = _audit_results({"pythonpath": recorded})
    assert page.reproduce_command(results).startswith("python experiments/audit.py ")


def test_a_run_given_python_objects_has_no_command_but_says_how_to_rerun(tmp_path):
    results, _ = _audit_results({})
    results["config"]["model"] = "python:my_notebook.Net"
    assert page.reproduce_command(results) is None
    files.write_json(tmp_path / "results.json", results)
    assert "Run from Python" in page.render_page(tmp_path)
