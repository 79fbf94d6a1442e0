"""Many runs side by side: one table of their headline figures, labelled by what differs.

:func:`load_runs` reads the ``results.json`` of each workdir; :func:`headline`
picks the figures a reader compares (accuracies, each attack's AUC and TPR at
low FPR, epsilon, wall time) from any experiment's results; :func:`label_runs`
names each run by the settings that differ between the runs' configs;
:func:`write_comparison` writes ``compare.md``, ``compare.csv`` (one row per
run, ready for ``pandas.read_csv``), ``roc.png`` (every run's ROC curves,
one panel per attack) and ``compare.html``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import csv
import dataclasses
import datetime
import glob
import html
import io
import json
import os
import pathlib
from typing import Any

import numpy as np

from jaxpet import files, metrics, page, report, runs
from jaxpet.errors import UserError

# Settings that do not change a run's results: never what tells runs apart.
NOT_RESULTS = ("workdir", "data_dir", "stage_dir", "strategy", "checkpoint_every",
               "eval_batch_size")
# Files holding per-candidate scores: a ``membership`` array and ``score_<attack>`` arrays.
SCORE_FILES = ("predictions.npz", "scores.npz")


@dataclasses.dataclass
class RunRecord:
    """One finished run: its folder, its results, and the label :func:`label_runs` gives it."""

    path: pathlib.Path
    results: dict
    label: str = ""

    @property
    def experiment(self) -> str:
        return self.results.get("provenance", {}).get("experiment", "?")

    @property
    def config(self) -> dict:
        config = self.results.get("config", {})
        return config if isinstance(config, dict) else {}


def load_runs(patterns: Sequence[str]) -> list[RunRecord]:
    """The runs in ``patterns`` (folders, or shell globs of folders), in the order given; a
    folder without a readable ``results.json`` is an error naming it."""
    if not patterns:
        raise UserError("no workdir given — pass the folders of finished runs, e.g. "
                        "runs/membership_*.")
    folders: list[pathlib.Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern))) or [pattern]
        for match in matches:
            path = pathlib.Path(match)
            if path not in folders:
                folders.append(path)
    records = []
    for path in folders:
        if not path.is_dir():
            raise UserError(f"{path} is not a folder — pass the workdirs of finished runs.")
        try:
            results = files.read_json(path / "results.json")
        except FileNotFoundError:
            raise UserError(f"{path} holds no results.json — it is not a finished run's workdir "
                            "(a run writes results.json when it ends).") from None
        except (OSError, ValueError) as e:
            raise UserError(f"{path / 'results.json'} does not load ({e}) — rerun that "
                            "experiment to rewrite it.") from e
        if not isinstance(results, dict):
            raise UserError(f"{path / 'results.json'} is not a jaxpet results file.")
        records.append(RunRecord(path, results))
    return records


def _value(x) -> float | None:
    """A number, or the mean of a {"mean", "std"} summary; None for anything else."""
    if isinstance(x, Mapping) and "mean" in x:
        x = x["mean"]
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x)


def headline(results: Mapping[str, Any]) -> dict[str, float]:
    """The figures a reader compares, by column name (fractions stay fractions; seconds)."""
    out: dict[str, float] = {}
    for role in ("target", "shadow", "models"):
        block = results.get(role)
        if isinstance(block, Mapping):
            for name in ("train_acc", "test_acc"):
                value = block.get(name)
                if isinstance(value, list) and value:
                    value = float(np.mean(value))
                if (number := _value(value)) is not None:
                    out[f"{role} {name}"] = number
    attacks = results.get("attacks")
    if isinstance(attacks, Mapping):
        for name, attack in attacks.items():
            if not isinstance(attack, Mapping):
                continue
            for key, column in (("auc", "AUC"), ("accuracy", "acc"),
                                ("balanced_accuracy", "balanced acc")):
                if (number := _value(attack.get(key))) is not None:
                    out[f"{name} {column}"] = number
            tpr = attack.get("tpr_at_fpr", {})
            for fpr, column in (("0.01", "TPR@1%FPR"), ("0.001", "TPR@0.1%FPR")):
                value = tpr.get(fpr) if isinstance(tpr, Mapping) else None
                value = attack.get(f"tpr_at_fpr_{fpr}", value)
                if (number := _value(value)) is not None:
                    out[f"{name} {column}"] = number
    privacy = results.get("privacy")
    if isinstance(privacy, Mapping) and (number := _value(privacy.get("epsilon"))) is not None:
        out["epsilon"] = number
    seconds = results.get("seconds")
    if isinstance(seconds, Mapping):
        prov = results.get("provenance", {})
        total = _wall_seconds(prov.get("started"), prov.get("finished"))
        out["wall seconds"] = total if total is not None else float(sum(
            v for v in seconds.values() if isinstance(v, (int, float))))
    return out


def _wall_seconds(started, finished) -> float | None:
    try:
        a, b = (datetime.datetime.fromisoformat(t) for t in (started, finished))
    except (TypeError, ValueError):
        return None
    return (b - a).total_seconds()


def _show(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def differing_settings(records: Sequence[RunRecord]) -> list[str]:
    """The experiment (when runs of several are compared) and the config keys that every run
    has but not with the same value."""
    keys: list[str] = []
    if len({r.experiment for r in records}) > 1:
        keys.append("experiment")
    common = [k for k in records[0].config if all(k in r.config for r in records[1:])]
    for key in common:
        if key not in NOT_RESULTS and len({json.dumps(r.config[key], sort_keys=True)
                                           for r in records}) > 1:
            keys.append(key)
    return keys


def label_runs(records: Sequence[RunRecord]) -> list[str]:
    """Labels each run by what differs ('defense=dpsgd, seed=1'); by folder name when the
    configs agree; a folder name is appended where labels would still collide."""
    keys = differing_settings(records)
    labels = []
    for r in records:
        parts = [r.experiment if k == "experiment" else f"{k}={_show(r.config.get(k))}"
                 for k in keys]
        labels.append(", ".join(parts) or r.path.name)
    for i, label in enumerate(labels):
        if labels.count(label) > 1:
            labels[i] = f"{label} ({records[i].path.name})"
    for r, label in zip(records, labels, strict=True):
        r.label = label
    return labels


def table_rows(records: Sequence[RunRecord]) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, one dict per run): run label, workdir, experiment, the differing settings
    and every headline figure any run has (blank where a run lacks it)."""
    label_runs(records)
    settings = [k for k in differing_settings(records) if k != "experiment"]
    figures: list[str] = []
    heads = [headline(r.results) for r in records]
    for h in heads:
        figures += [k for k in h if k not in figures]
    last = ("epsilon", "wall seconds")  # after every accuracy and attack column
    figures = [k for k in figures if k not in last] + [k for k in last if k in figures]
    columns = ["run", "workdir", "experiment", *settings, *figures]
    rows = []
    for r, h in zip(records, heads, strict=True):
        row: dict[str, Any] = {"run": r.label, "workdir": str(r.path),
                               "experiment": r.experiment}
        row.update({k: _show(r.config.get(k)) for k in settings})
        row.update(h)
        rows.append(row)
    return columns, rows


def _formatted(column: str, value) -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, float):
        return str(value)
    if column.endswith(("acc", "TPR@1%FPR", "TPR@0.1%FPR")):
        return report.pct(value)
    if column == "wall seconds":
        return f"{value:.0f}"
    return f"{value:.4f}" if column.endswith("AUC") else f"{value:.3g}"


def markdown(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    """The comparison as a Markdown table: each run's label, accuracies, and each attack's AUC
    and TPR at 0.1% FPR (in %), epsilon and wall time; the CSV holds every column."""
    shown = ["run", *[c for c in columns if c.endswith(("train_acc", "test_acc", " AUC",
                                                         "TPR@0.1%FPR"))
                      or c in ("epsilon", "wall seconds")]]
    headers = [f"{c} (%)" if c.endswith(("acc", "TPR@1%FPR", "TPR@0.1%FPR")) else c
               for c in shown]
    return report.markdown_table(headers, [[_formatted(c, row.get(c)) for c in shown]
                                           for row in rows])


def csv_text(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: row.get(c, "") for c in columns})
    return buffer.getvalue()


def scores(record: RunRecord) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """attack -> (membership labels, scores) from the run's score file, or None."""
    for name in SCORE_FILES:
        path = record.path / name
        if path.exists():
            try:
                arrays = files.read_npz(path)
            except (OSError, ValueError):
                return None
            if "membership" not in arrays:
                continue
            labels = arrays["membership"].astype(bool)
            return {k[len("score_"):]: (labels, v) for k, v in arrays.items()
                    if k.startswith("score_")}
    return None


def roc_overlay_figure(records: Sequence[RunRecord], attacks: Sequence[str] | None = None):
    """One log-log ROC panel per attack, a line per run (runs without score files are left
    out); None when no run has scores."""
    from matplotlib.figure import Figure

    loaded = [(r, scores(r)) for r in records]
    per_run = [(r, s) for r, s in loaded if s]
    if not per_run:
        return None
    names: list[str] = []
    for _, s in per_run:
        names += [n for n in s if n not in names and (not attacks or n in attacks)]
    if not names:
        return None
    cols = min(len(names), 3)
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(4.6 * cols, 4.3 * rows), dpi=100)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, name in zip(axes, names, strict=False):  # the grid may have spare axes
        smallest = 1.0
        for i, (r, s) in enumerate(per_run):
            if name not in s:
                continue
            labels, score = s[name]
            fpr, tpr, _ = metrics.roc_curve(labels, score)
            auc = metrics.roc_auc(labels, score)
            ax.plot(fpr, tpr, lw=1.2, color=f"C{i % 10}", label=f"{r.label} (AUC {auc:.3f})")
            smallest = min(smallest, 1.0 / max(1, int(np.sum(~labels))))
        ax.plot([smallest, 1], [smallest, 1], "k--", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(smallest, 1)
        ax.set_ylim(smallest, 1)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6.5, loc="lower right")
    for ax in axes[len(names):]:
        ax.set_visible(False)
    return fig


def html_page(columns, rows, records, roc_name: str | None, output: pathlib.Path) -> str:
    """compare.html: the table, the overlaid ROC curves and a link to each run's page."""
    table = page.markdown_to_html(markdown(columns, rows))
    links = []
    for r in records:
        target = r.path / "report.html"
        href = os.path.relpath(target, output)
        item = (f'<a href="{html.escape(href)}">{html.escape(r.label)}</a>' if target.exists()
                else html.escape(r.label))
        links.append(f"<li>{item} — <code>{html.escape(str(r.path))}</code></li>")
    figure = (f'<h2>ROC curves</h2><figure><img src="{html.escape(roc_name)}" alt="ROC curves">'
              "<figcaption>Every run's ROC curve per attack, log-log; the dashed line is chance."
              "</figcaption></figure>" if roc_name else "")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>jaxpet: {len(records)} runs compared</title><style>{page.STYLE}</style>"
            f"</head>\n<body>\n<h1>{len(records)} runs compared</h1>\n"
            "<p>Rows are labelled by the settings that differ between the runs; accuracies and "
            "TPRs in %. <code>compare.csv</code> holds the same table as fractions.</p>\n"
            f"{table}\n{figure}\n<h2>Runs</h2><ul>{''.join(links)}</ul>\n</body></html>\n")


def write_comparison(records: Sequence[RunRecord], output,
                     attacks: Sequence[str] | None = None) -> dict[str, pathlib.Path]:
    """Writes compare.md, compare.csv, roc.png (when any run has scores) and compare.html to
    ``output``; returns their paths by kind."""
    output = runs.check_writable(pathlib.Path(output), "--output")
    columns, rows = table_rows(records)
    written = {"markdown": files.write_text(output / "compare.md", markdown(columns, rows)),
               "csv": files.write_text(output / "compare.csv", csv_text(columns, rows))}
    fig = roc_overlay_figure(records, attacks)
    roc_name = None
    if fig is not None:
        written["roc"] = files.save_figure(fig, output / "roc.png")
        roc_name = "roc.png"
    written["html"] = files.write_text(output / "compare.html",
                                      html_page(columns, rows, records, roc_name, output))
    return written
