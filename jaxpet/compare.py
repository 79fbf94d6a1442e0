"""Many runs side by side: one table of their headline figures, labelled by what differs.

:func:`load_runs` reads the ``results.json`` of each workdir; :func:`headline`
picks the figures a reader compares (accuracies, each attack's AUC and TPR at
low FPR, epsilon, wall time) from any experiment's results; :func:`label_runs`
names each run by the settings that differ between the runs' configs;
:func:`write_comparison` writes ``compare.md``, ``compare.csv`` (one row per
run, ready for ``pandas.read_csv``), ``roc.png`` (every run's ROC curves,
one panel per attack) and ``compare.html``.

Whatever the runs' files hold, a comparison is a table or one ``error:`` line: a
``results.json`` that is not a run's is an error naming it, a figure of an odd
shape is left out with a warning naming the file, and a score file that does not
load (or holds arrays of the wrong shape) leaves that run's curves out, with a
warning. The comparison writes only into a folder of its own: ``--output`` is
refused when it is (or is inside) a run's workdir, or holds files no comparison
wrote, and it is locked while the comparison writes.
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

from absl import logging
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
        provenance = self.results.get("provenance")
        name = provenance.get("experiment") if isinstance(provenance, Mapping) else None
        return name if isinstance(name, str) else "?"

    @property
    def file(self) -> pathlib.Path:
        return self.path / "results.json"

    @property
    def config(self) -> dict:
        config = self.results.get("config", {})
        return config if isinstance(config, dict) else {}


def load_runs(patterns: Sequence[str]) -> list[RunRecord]:
    """The runs in ``patterns`` (folders, or shell globs of folders), in the order given; a
    pattern that names no folder, or a folder without a run's readable ``results.json``, is
    an error naming it."""
    if not patterns:
        raise UserError("no workdir given — pass the folders of finished runs, e.g. "
                        "runs/membership_*.")
    folders: list[pathlib.Path] = []
    for pattern in patterns:
        if not pattern.strip():
            raise UserError("an empty workdir was given — pass the folders of finished runs.")
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matches and glob.has_magic(pattern):
            raise UserError(f"{pattern} matches no folder — pass the workdirs of finished runs "
                            "(check the pattern).")
        for match in matches or [os.path.expanduser(pattern)]:
            path = pathlib.Path(match)
            if path not in folders:
                folders.append(path)
    records = []
    for path in folders:
        if path.is_file():
            hint = f" (pass its folder, {path.parent})" if path.name == "results.json" else ""
            raise UserError(f"{path} is a file, not a folder — pass the workdirs of finished "
                            f"runs{hint}.")
        if not path.is_dir():
            raise UserError(f"{path} is not a folder — pass the workdirs of finished runs.")
        file = path / "results.json"
        try:
            results = files.read_json(file)
        except FileNotFoundError:
            raise UserError(f"{path} holds no results.json — it is not a finished run's workdir "
                            "(a run writes results.json when it ends).") from None
        except (OSError, ValueError, RecursionError) as e:
            raise UserError(f"{file} does not load ({type(e).__name__}: {e}) — rerun that "
                            "experiment to rewrite it.") from e
        problem = _not_a_run(results)
        if problem:
            raise UserError(f"{file} is not the results of a jaxpet run: {problem} — rerun that "
                            f"experiment to rewrite it, or leave {path} out.")
        records.append(RunRecord(path, results))
    return records


def _kind(x) -> str:
    """The JSON kind of ``x``, for messages."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(x), type(x).__name__)


def _not_a_run(results) -> str | None:
    """What makes ``results`` (a results.json's content) not a run's, or None: the parts
    every run writes and a comparison names and labels runs by."""
    if not isinstance(results, dict):
        return f"it holds {_kind(results)}, not an object"
    provenance = results.get("provenance")
    if not isinstance(provenance, dict):
        return ("it has no 'provenance' block" if provenance is None
                else f"its 'provenance' is {_kind(provenance)}, not an object")
    experiment = provenance.get("experiment")
    if not isinstance(experiment, str) or not experiment:
        return f"its provenance's 'experiment' is {_kind(experiment)}, not a name"
    config = results.get("config")
    if not isinstance(config, dict):
        return ("it has no 'config' block" if config is None
                else f"its 'config' is {_kind(config)}, not an object")
    return None


def _value(x, where: str = "", notes: list[str] | None = None) -> float | None:
    """A number, or the mean of a {"mean", "std"} summary; None for anything else (absent or
    null: not available). Anything but a number or null adds a note on ``where``."""
    if isinstance(x, Mapping) and "mean" in x:
        x, where = x["mean"], f"{where}.mean"
    if x is None:
        return None
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        try:
            return float(x)
        except OverflowError:
            if notes is not None:
                notes.append(f"{where} is a number too large for a float; left out")
            return None
    if notes is not None:
        notes.append(f"{where} is {_kind(x)}{f' ({x!r:.40})' if _kind(x) != 'an object' else ''},"
                     " not a number; left out")
    return None


def _block(results: Mapping, key: str, notes: list[str] | None) -> Mapping | None:
    """``results[key]`` when it is an object; a note when it is there but something else."""
    block = results.get(key)
    if block is None or isinstance(block, Mapping):
        return block
    if notes is not None:
        notes.append(f"'{key}' is {_kind(block)}, not an object; its figures are left out")
    return None


def headline(results: Mapping[str, Any], notes: list[str] | None = None) -> dict[str, float]:
    """The figures a reader compares, by column name (fractions stay fractions; seconds).

    A figure of an unexpected shape (a string, a list where an object belongs) is left out;
    ``notes``, when given, gets one line on each.
    """
    out: dict[str, float] = {}
    for role in ("target", "shadow", "models"):
        block = _block(results, role, notes)
        if block is None:
            continue
        for name in ("train_acc", "test_acc"):
            value, where = block.get(name), f"{role}.{name}"
            if isinstance(value, list):  # one per model
                numbers = [_value(v, f"{where}[{i}]", notes) for i, v in enumerate(value)]
                known = [v for v in numbers if v is not None]
                value = float(np.mean(known)) if known and len(known) == len(numbers) else None
            if (number := _value(value, where, notes)) is not None:
                out[f"{role} {name}"] = number
    attacks = _block(results, "attacks", notes)
    for name, attack in (attacks or {}).items():
        if not isinstance(attack, Mapping):
            if notes is not None and attack is not None:
                notes.append(f"attacks.{name} is {_kind(attack)}, not an object; left out")
            continue
        for key, column in (("auc", "AUC"), ("accuracy", "acc"),
                            ("balanced_accuracy", "balanced acc")):
            if (number := _value(attack.get(key), f"attacks.{name}.{key}", notes)) is not None:
                out[f"{name} {column}"] = number
        tpr = _block(attack, "tpr_at_fpr", None)
        if tpr is None and attack.get("tpr_at_fpr") is not None and notes is not None:
            notes.append(f"attacks.{name}.tpr_at_fpr is {_kind(attack['tpr_at_fpr'])}, not an "
                         "object; left out")
        for fpr, column in (("0.01", "TPR@1%FPR"), ("0.001", "TPR@0.1%FPR")):
            key = f"tpr_at_fpr_{fpr}"
            value, where = ((attack[key], f"attacks.{name}.{key}") if key in attack
                            else ((tpr or {}).get(fpr), f"attacks.{name}.tpr_at_fpr.{fpr}"))
            if (number := _value(value, where, notes)) is not None:
                out[f"{name} {column}"] = number
    privacy = _block(results, "privacy", notes)
    if privacy is not None and (number := _value(privacy.get("epsilon"), "privacy.epsilon",
                                                 notes)) is not None:
        out["epsilon"] = number
    seconds = _block(results, "seconds", notes)
    if seconds is not None:
        prov = results.get("provenance")
        prov = prov if isinstance(prov, Mapping) else {}
        total = _wall_seconds(prov.get("started"), prov.get("finished"))
        if total is None:
            parts = [_value(v, f"seconds.{k}", notes) for k, v in seconds.items()]
            total = float(sum(v for v in parts if v is not None))
        out["wall seconds"] = total
    return out


def _wall_seconds(started, finished) -> float | None:
    try:
        a, b = (datetime.datetime.fromisoformat(t) for t in (started, finished))
        return (b - a).total_seconds()
    except (TypeError, ValueError, OverflowError):  # not times, or one with a zone, one not
        return None


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
    heads = []
    for r in records:
        notes: list[str] = []
        heads.append(headline(r.results, notes))
        for note in notes:
            logging.warning("%s: %s.", r.file, note)
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
    """attack -> (membership labels, scores) from the run's score file, or None.

    A score file that does not load, or whose arrays are not one flag and one real score
    per candidate, is a warning naming it, and None: the run's curves are left out.
    """
    for name in SCORE_FILES:
        path = record.path / name
        if not path.exists():
            continue
        try:
            arrays = files.read_npz(path)
        except (OSError, ValueError) as e:
            logging.warning("%s does not load (%s); that run's ROC curves are left out.",
                            path, e)
            return None
        if "membership" not in arrays:
            continue
        problem = _not_scores(arrays)
        if problem:
            logging.warning("%s %s; that run's ROC curves are left out.", path, problem)
            return None
        labels = arrays["membership"].astype(bool)
        found = {}
        for key, value in arrays.items():
            if not key.startswith("score_"):
                continue
            if not np.isfinite(value).all():
                logging.warning("%s holds NaN or infinite scores in %s; that curve is left "
                                "out.", path, key)
                continue
            found[key[len("score_"):]] = (labels, value.astype(np.float64))
        return found
    return None


def _not_scores(arrays: Mapping[str, np.ndarray]) -> str | None:
    """What makes a score file's arrays unusable, or None: ``membership`` one 0/1 flag per
    candidate, both kinds present, and each ``score_<attack>`` one real number per
    candidate."""
    membership = arrays["membership"]
    if membership.ndim != 1 or membership.dtype.kind not in "biuf":
        return (f"holds a membership array of shape {membership.shape} and dtype "
                f"{membership.dtype}, not one 0/1 flag per candidate")
    if not np.isin(membership, (0, 1)).all():
        return "holds membership flags other than 0 and 1"
    if membership.all() or not membership.any():
        return "holds members only or non-members only (a ROC curve needs both)"
    for key, value in arrays.items():
        if key.startswith("score_") and (value.shape != membership.shape
                                         or value.dtype.kind not in "biuf"):
            return (f"holds {key} of shape {value.shape} and dtype {value.dtype}, not one "
                    f"real score for each of its {membership.size} candidates")
    return None


def roc_overlay_figure(records: Sequence[RunRecord], attacks: Sequence[str] | None = None,
                       loaded: Sequence[dict | None] | None = None):
    """One log-log ROC panel per attack, a line per run (runs without score files, and
    attacks whose scores give no curve, are left out with a warning); None when no run has
    scores. ``loaded`` is each record's :func:`scores`, when already read."""
    from matplotlib.figure import Figure

    loaded = [scores(r) for r in records] if loaded is None else loaded
    per_run = [(r, s) for r, s in zip(records, loaded, strict=True) if s]
    curves: dict[str, list] = {}  # attack -> [(run index, record, fpr, tpr, auc, non-members)]
    for i, (r, s) in enumerate(per_run):
        for name, (labels, score) in s.items():
            if attacks and name not in attacks:
                continue
            try:
                fpr, tpr, _ = metrics.roc_curve(labels, score)
                auc = metrics.roc_auc(labels, score)
            except ValueError as e:  # scores :func:`scores` did not check (given by a caller)
                logging.warning("%s: the scores of %s give no ROC curve (%s); left out.",
                                r.path, name, e)
                continue
            curves.setdefault(name, []).append((i, r, fpr, tpr, auc, int(np.sum(~labels))))
    if not curves:
        return None
    names = list(curves)
    cols = min(len(names), 3)
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(4.6 * cols, 4.3 * rows), dpi=100)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, name in zip(axes, names, strict=False):  # the grid may have spare axes
        smallest = 1.0
        for i, r, fpr, tpr, auc, negatives in curves[name]:
            ax.plot(fpr, tpr, lw=1.2, color=f"C{i % 10}", label=f"{r.label} (AUC {auc:.3f})")
            smallest = min(smallest, 1.0 / max(1, negatives))
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


def check_attacks(attacks: Sequence[str] | None,
                  loaded: Sequence[dict | None]) -> list[str] | None:
    """``--attacks`` checked against the attacks the runs' score files hold (``loaded``: each
    run's :func:`scores`): an empty or unknown name, or a choice with nothing to draw, is a
    UserError naming it."""
    if not attacks:
        return None
    if any(not name.strip() for name in attacks):
        raise UserError(f"--attacks={','.join(attacks)} holds an empty name — give attack "
                        "names separated by commas, e.g. --attacks=lira_online,loss.")
    available = sorted({name for s in loaded if s for name in s})
    if not available:
        raise UserError("--attacks chooses the ROC curves drawn, but none of these runs keeps "
                        f"per-example scores ({' or '.join(SCORE_FILES)}) — leave --attacks "
                        "out.")
    unknown = [name for name in attacks if name not in available]
    if unknown:
        raise UserError(f"--attacks: no run has scores of {', '.join(unknown)} — the runs have "
                        f"{', '.join(available)}.")
    return list(attacks)


# What marks a folder as a run's workdir: a run's results, its lock, its stages.
RUN_MARKS = ("results.json", runs.Workdir.LOCK_NAME, "stages")
# What a comparison writes; a folder holding an earlier comparison is the comparison's own.
OUTPUT_NAMES = ("compare.md", "compare.csv", "roc.png", "compare.html")


def _run_in(folder: pathlib.Path) -> str | None:
    """Whose workdir ``folder`` is ('a lira run', 'a run'), or None when it is no run's."""
    results = folder / "results.json"
    if results.is_file():
        try:
            experiment = files.read_json(results)["provenance"]["experiment"]
        except Exception:  # noqa: BLE001 - whatever it holds, the folder is a run's
            experiment = None
        if not isinstance(experiment, str):
            return "a run"
        return f"{'an' if experiment[:1] in tuple('aeiou') else 'a'} {experiment} run"
    if (folder / "stages").is_dir():
        return "a run (it holds its stages)"
    lock = folder / runs.Workdir.LOCK_NAME
    if lock.exists() and not any((folder / n).exists() for n in ("compare.md", "compare.csv")):
        others = [p for p in folder.iterdir() if p.name != runs.Workdir.LOCK_NAME]
        if others:  # a lock alone is a run that left nothing (or a comparison that failed)
            return "a run (it holds a run's lock)"
    return None


def check_output(output, records: Sequence[RunRecord]) -> pathlib.Path:
    """``--output`` checked to be the comparison's own before anything is written: not one
    of the compared runs' workdirs nor inside one, not inside any run's workdir, and not a
    folder holding compare's file names that no comparison wrote. Else a UserError naming
    the owner."""
    if not str(output).strip():
        raise UserError("--output is empty — name the folder the comparison is written to, "
                        "e.g. --output=runs/compare.")
    output = pathlib.Path(os.path.expanduser(str(output)))
    where = output.resolve()
    fix = "choose a folder of its own, e.g. --output=runs/compare"
    for r in records:
        run = r.path.resolve()
        if where == run or run in where.parents:
            inside = "is" if where == run else "is inside"
            raise UserError(f"--output={output} {inside} the workdir of {r.path}, one of the "
                            f"runs compared; the comparison would write over its files — {fix}.")
    for folder in (where, *where.parents):
        owner = _run_in(folder) if folder.is_dir() else None
        if owner:
            inside = "is" if folder == where else f"is inside {folder},"
            raise UserError(f"--output={output} {inside} the workdir of {owner}; the "
                            f"comparison would write over its files — {fix}.")
    if where.is_dir() and not any((where / n).exists() for n in ("compare.md", "compare.csv")):
        taken = [n for n in OUTPUT_NAMES if (where / n).exists()]
        if taken:
            raise UserError(f"--output={output} holds {', '.join(taken)}, which no comparison "
                            f"wrote — {fix}.")
    return output


def write_comparison(records: Sequence[RunRecord], output,
                     attacks: Sequence[str] | None = None) -> dict[str, pathlib.Path]:
    """Writes compare.md, compare.csv, roc.png (when any run has scores) and compare.html to
    ``output``, a folder of its own (:func:`check_output`), locked while it writes; returns
    their paths by kind."""
    loaded = [scores(r) for r in records]
    attacks = check_attacks(attacks, loaded)
    output = check_output(output, records)
    columns, rows = table_rows(records)
    with runs.Workdir(output, flag="--output"):
        written = {"markdown": files.write_text(output / "compare.md", markdown(columns, rows)),
                   "csv": files.write_text(output / "compare.csv", csv_text(columns, rows))}
        fig = roc_overlay_figure(records, attacks, loaded)
        roc_name = None
        if fig is not None:
            written["roc"] = files.save_figure(fig, output / "roc.png")
            roc_name = "roc.png"
        else:  # an earlier comparison's curves are not this one's
            (output / "roc.png").unlink(missing_ok=True)
        written["html"] = files.write_text(output / "compare.html",
                                          html_page(columns, rows, records, roc_name, output))
    return written
