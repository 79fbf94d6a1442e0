"""report.html's parts: the Markdown subset, the command that reproduces a run."""

from __future__ import annotations

import dataclasses

from absl import flags
import pytest

from jaxpet import config as config_lib, page
from jaxpet.experiments import lira, membership


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


def test_no_command_for_a_result_of_unknown_origin():
    assert page.reproduce_command({"config": {}, "provenance": {"experiment": "nope"}}) is None
    assert page.reproduce_command({}) is None
