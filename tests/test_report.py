"""Reports a reader can trust: tables and figures are checked against the numbers they show."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jaxpet import files, metrics, report


def test_markdown_table_round_trips_and_refuses_ragged_rows():
    text = report.markdown_table(["attack", "AUC"], [["loss", "0.7281"], ["entropy", "0.6247"]])
    assert report.parse_markdown_table("intro\n\n" + text) == [
        {"attack": "loss", "AUC": "0.7281"}, {"attack": "entropy", "AUC": "0.6247"}]
    with pytest.raises(ValueError, match="every row needs 2 cells"):
        report.markdown_table(["a", "b"], [["only one"]])


def test_number_formats():
    assert report.pct(0.12345) == "12.35"
    assert report.plus_minus(0.5, 0.0) == "0.5000"
    assert report.plus_minus(0.5, 0.0, show_zero=True) == "0.5000 ± 0.0000"
    assert report.plus_minus(0.5, 0.01, scale=100, digits=1) == "50.0 ± 1.0"


def test_roc_figure_plots_fpr_on_x_and_tpr_on_y():
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(200), np.zeros(300)].astype(bool)
    scores = {"good": rng.normal(labels * 1.5), "weak": rng.normal(labels * 0.3)}
    fig = report.roc_figure({k: (labels, v) for k, v in scores.items()}, title="t")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "false positive rate" and ax.get_ylabel() == "true positive rate"
    assert ax.get_xscale() == ax.get_yscale() == "log"
    for line, (name, s) in zip(ax.lines, scores.items(), strict=False):  # then the chance line
        fpr, tpr, _ = metrics.roc_curve(labels, s)
        np.testing.assert_allclose(line.get_xdata(), fpr)
        np.testing.assert_allclose(line.get_ydata(), tpr)
        assert line.get_label().startswith(f"{name} (AUC {metrics.roc_auc(labels, s):.3f}")


def test_privacy_curve_figure_puts_epsilon_and_accuracy_on_x():
    points = [{"name": "none", "epsilon": None, "target_test_acc": 0.5,
               "attacks": {"loss": {"auc": 0.7, "tpr_at_0.1%fpr": 0.01}}},
              {"name": "dp1", "epsilon": 5.0, "target_test_acc": 0.3,
               "attacks": {"loss": {"auc": 0.55, "tpr_at_0.1%fpr": 0.002}}},
              {"name": "dp2", "epsilon": 1.0, "target_test_acc": 0.2,
               "attacks": {"loss": {"auc": 0.52, "tpr_at_0.1%fpr": 0.001}}}]
    fig = report.privacy_curve_figure(points)
    auc_vs_eps, auc_vs_acc = fig.axes[0], fig.axes[1]
    dp_line = auc_vs_eps.lines[0]  # the DP runs, sorted by epsilon
    assert list(dp_line.get_xdata()) == [1.0, 5.0] and list(dp_line.get_ydata()) == [0.52, 0.55]
    assert list(auc_vs_acc.lines[0].get_xdata()) == [20.0, 30.0]
    assert "epsilon" in fig.axes[2].get_xlabel() and "accuracy" in fig.axes[3].get_xlabel()


def test_confusion_figure_normalises_rows():
    fig = report.confusion_figure([("attack", {"confusion": [[3, 1], [0, 4]], "accuracy": 0.875})],
                                  ["a", "b"])
    image = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(image, [[0.75, 0.25], [0.0, 1.0]])
    assert fig.axes[0].get_xlabel() == "predicted" and fig.axes[0].get_ylabel() == "true"


def test_save_figure_writes_a_png(tmp_path):
    path = files.save_figure(report.confusion_figure(
        [("x", {"confusion": [[1]], "accuracy": 1.0})], ["a"]), tmp_path / "c.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_importing_jaxpet_and_plotting_keeps_the_matplotlib_backend(tmp_path):
    script = textwrap.dedent(f"""
        import matplotlib
        matplotlib.use("svg")
        import pkgutil, importlib, jaxpet
        for m in pkgutil.walk_packages(jaxpet.__path__, "jaxpet."):
            if "torch_reference" not in m.name:
                importlib.import_module(m.name)
        import numpy as np
        from jaxpet import files, report
        labels = np.r_[np.ones(5), np.zeros(5)]
        figure = report.roc_figure({{"a": (labels, np.arange(10.0))}})
        files.save_figure(figure, r"{tmp_path}/r.png")
        print(matplotlib.get_backend())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip().lower() == "svg"


def test_attack_table_shows_the_levels_every_row_holds_and_summaries_as_mean_std():
    single = {"auc": 0.61234, "balanced_accuracy": 0.55,
              "tpr_at_fpr": {"0.01": 0.02, "0.001": 0.003, "0.0": 0.0},
              "tpr_at_fpr_randomized": {"0.01": 0.021, "0.001": 0.0031}}
    rows = report.parse_markdown_table(report.attack_table(
        {"a": single}, leading=[("acc (%)", lambda r: "x")]))
    assert rows == [{"attack": "a", "acc (%)": "x", "AUC": "0.6123", "balanced acc (%)": "55.00",
                     "TPR@1%FPR (%)": "2.00", "TPR@0.1%FPR (%)": "0.30", "TPR@0%FPR (%)": "0.00",
                     "TPR@1%FPR, ties random (%)": "2.10",
                     "TPR@0.1%FPR, ties random (%)": "0.31"}]
    # A level one row lacks is left out for all; a summary over targets shows mean ± std.
    summary = {"auc": {"mean": 0.6, "std": 0.01}, "tpr_at_fpr_0.01": {"mean": 0.02, "std": 0.0},
               "tpr_at_fpr_0.0001": {"mean": 0.0, "std": 0.0}}
    rows = report.parse_markdown_table(report.attack_table(
        {"b": summary, "c": {**summary, "tpr_at_fpr_0.001": {"mean": 0.1, "std": 0.0}}}))
    assert list(rows[0]) == ["attack", "AUC", "TPR@1%FPR (%)", "TPR@0.01%FPR (%)"]
    assert rows[1]["AUC"] == "0.6000 ± 0.0100"
