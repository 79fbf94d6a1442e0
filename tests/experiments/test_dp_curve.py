"""The DP-SGD curve: one membership run per point, epsilon reported, the attack weakened."""

from __future__ import annotations

import json

import pytest

from jaxpet import report
from jaxpet.experiments import dp_curve


def test_curve_reports_epsilon_and_lowers_the_attack(tmp_path, make_dataset, check_common_schema,
                                                      figures_not_drawn):
    config = dp_curve.Config(dataset="mnist", workdir=str(tmp_path / "curve"), preset="quick",
                             noise_multipliers=(3.0,), epochs=8, train_size=100, width_scale=0.5,
                             batch_size=16)
    # The quick preset's validation slice (500) does not fit 100 members: refused before work.
    with pytest.raises(ValueError, match="val_size=500 leaves no non-member"):
        dp_curve.run(config, make_dataset())
    assert not list((tmp_path / "curve").glob("*/stages/*"))

    config = dp_curve.Config(dataset="mnist", workdir=str(tmp_path / "curve"), preset="quick",
                             noise_multipliers=(3.0,), epochs=8, train_size=100, width_scale=0.5,
                             val_size=20, attack_epochs=2, batch_size=16)
    # The curve's figure is drawn (and checked below); its three runs' own figures are not.
    with figures_not_drawn(keep=("privacy_curve.png",)):
        curve = dp_curve.run(config, make_dataset())
    plain, plain_groupnorm, private = curve["points"]
    assert plain["defense"] == plain_groupnorm["defense"] == "none" and plain["epsilon"] is None
    saved = lambda name: json.loads((tmp_path / "curve" / name / "results.json").read_text())
    assert saved("none_groupnorm")["config"]["norm"] == "group"
    assert 0 < private["epsilon"] < 50
    assert saved("dpsgd_sigma3")["privacy"]["steps"] == 8 * 7  # ceil(100 / 16) steps per epoch
    assert (tmp_path / "curve" / "privacy_curve.png").stat().st_size > 10_000
    assert private["attacks"]["loss"]["auc"] < plain["attacks"]["loss"]["auc"]
    rows = report.parse_markdown_table((tmp_path / "curve" / "privacy_curve.md").read_text())
    assert [r["run"] for r in rows] == ["none", "none_groupnorm", "dpsgd_sigma3"]
    assert rows[2]["epsilon"] == f"{private['epsilon']:.2f}" and rows[0]["epsilon"] == "no DP"
    assert rows[0]["loss AUC"] == f"{plain['attacks']['loss']['auc']:.3f}"
    assert {"delta", "points"} <= set(check_common_schema(curve, tmp_path / "curve"))


def test_bad_multipliers_are_refused():
    with pytest.raises(ValueError, match="noise_multipliers must be > 0"):
        dp_curve.Config(noise_multipliers=(0.0,))
    with pytest.raises(ValueError, match="noise_multipliers needs at least one"):
        dp_curve.Config(noise_multipliers=())
