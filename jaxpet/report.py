"""What a reader sees: Markdown tables, number formats, figures and image grids.

Figures are built on ``matplotlib.figure.Figure`` objects (never pyplot), so
importing or using jaxpet leaves matplotlib's backend and figure registry as
they were: a notebook keeps its inline plots. Each ``*_figure`` function
returns the Figure (tests read its lines and labels); :func:`jaxpet.files.save_figure`
writes it atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib import ticker
from matplotlib.figure import Figure
import numpy as np
from PIL import Image, ImageDraw

from jaxpet import metrics

# ----------------------------------------------------------------------------- tables and numbers


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; cells printed with ``str`` (format numbers before)."""
    if any(len(row) != len(headers) for row in rows):
        raise ValueError(f"every row needs {len(headers)} cells, got "
                         f"{sorted({len(row) for row in rows})}.")
    lines = ["| " + " | ".join(map(str, headers)) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def parse_markdown_table(text: str) -> list[dict[str, str]]:
    """The rows of the first Markdown table in ``text`` as header -> cell dicts (for tests and
    tools that read a summary back)."""
    lines = [line.strip() for line in text.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    cells = lambda line: [c.strip() for c in line.strip("|").split("|")]
    headers = cells(lines[start])
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(headers, cells(line), strict=False)))
    return rows


def pct(x: float, digits: int = 2) -> str:
    """A fraction as a percentage without the sign: 0.1234 -> '12.34'."""
    return f"{100 * x:.{digits}f}"


def plus_minus(mean: float, std: float | None, scale: float = 1.0, digits: int = 4,
               show_zero: bool = False) -> str:
    """'mean ± std' scaled (100 for percentages); the ± part only for a non-zero std unless
    ``show_zero``."""
    text = f"{scale * mean:.{digits}f}"
    return text + (f" ± {scale * (std or 0.0):.{digits}f}" if std or show_zero else "")


def _level_name(level: float) -> str:
    return f"{100 * level:g}%"


def _metric(row: Mapping[str, Any], name: str, level: float | None = None):
    """A metric of one attack's row: nested (``tpr_at_fpr`` -> {"0.01": x}) as a single
    target's metrics hold it, or flat (``tpr_at_fpr_0.01``) as a summary over targets does;
    None where the row has no such metric."""
    if level is None:
        return row.get(name)
    nested = row.get(name)
    if isinstance(nested, Mapping) and "mean" not in nested:
        return nested.get(str(level))
    return row.get(f"{name}_{level}")


def _cell(value, percent: bool) -> str:
    """A number, or 'mean ± std' for a summary over targets; '-' where absent."""
    if value is None:
        return "-"
    if isinstance(value, Mapping):
        return plus_minus(value["mean"], value["std"], scale=100 if percent else 1,
                          digits=2 if percent else 4, show_zero=True)
    return pct(value) if percent else f"{value:.4f}"


# TPR at these FPR levels is also shown with ties broken at random (where the metrics hold it).
RANDOMIZED_LEVELS = (0.01, 0.001)


def attack_table(attacks: Mapping[str, Mapping[str, Any]],
                 leading: Sequence[tuple[str, Any]] = ()) -> str:
    """The one attack table of every experiment: per attack, ``leading`` columns (header,
    function of the row -> cell), AUC, balanced accuracy, TPR at every level of
    :data:`jaxpet.metrics.FPR_LEVELS` that every row holds, and TPR at
    :data:`RANDOMIZED_LEVELS` with ties broken at random. A row is one target's metrics or
    their mean and std over targets (shown as 'mean ± std')."""
    rows = list(attacks.values())
    has = lambda name, level=None: all(_metric(r, name, level) is not None for r in rows)
    levels = [lv for lv in metrics.FPR_LEVELS if has("tpr_at_fpr", lv)]
    randomized = [lv for lv in RANDOMIZED_LEVELS if has("tpr_at_fpr_randomized", lv)]
    columns = [*leading, ("AUC", lambda r: _cell(_metric(r, "auc"), False))]
    if has("balanced_accuracy"):
        columns.append(("balanced acc (%)", lambda r: _cell(_metric(r, "balanced_accuracy"),
                                                            True)))
    columns += [(f"TPR@{_level_name(lv)}FPR (%)",
                 lambda r, lv=lv: _cell(_metric(r, "tpr_at_fpr", lv), True)) for lv in levels]
    columns += [(f"TPR@{_level_name(lv)}FPR, ties random (%)",
                 lambda r, lv=lv: _cell(_metric(r, "tpr_at_fpr_randomized", lv), True))
                for lv in randomized]
    return markdown_table(["attack", *(h for h, _ in columns)],
                          [[name, *(cell(r) for _, cell in columns)]
                           for name, r in attacks.items()])


def epsilon_sentence(privacy: Mapping[str, Any] | None, clip_norm: float) -> str:
    """The DP-SGD line of a summary ('' without DP)."""
    if not privacy:
        return ""
    return (f"DP-SGD: noise multiplier {privacy['noise_multiplier']}, clip {clip_norm}, "
            f"{privacy['steps']} steps at sampling rate {privacy['sampling_rate']:.4f}: "
            f"**epsilon ~ {privacy['epsilon']:.2f}** at delta = {privacy['delta']:g} "
            f"({privacy['accountant']}).\n\n")


# ----------------------------------------------------------------------------- figures


def roc_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str = "") -> Figure:
    """Log-log ROC curves (the low-FPR corner matters: Carlini et al. 2022) with the chance line.

    ``curves`` maps an attack name to (membership labels, scores); x is the
    false positive rate, y the true positive rate.
    """
    fig = Figure(figsize=(5.2, 5.0), dpi=110)
    ax = fig.add_subplot()
    smallest = 1.0
    for name, (labels, scores) in curves.items():
        fpr, tpr, _ = metrics.roc_curve(labels, scores)
        auc = metrics.roc_auc(labels, scores)
        low = metrics.tpr_at_fpr(labels, scores, (0.001,))["0.001"]
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f}, TPR@0.1% {100 * low:.2f}%)", lw=1.4)
        smallest = min(smallest, 1.0 / max(1, int(np.sum(~np.asarray(labels, bool)))))
    ax.plot([smallest, 1], [smallest, 1], "k--", lw=1, label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(smallest, 1)
    ax.set_ylim(smallest, 1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(True, which="major", alpha=0.3)
    return fig


def privacy_curve_figure(points: Sequence[Mapping[str, Any]], title: str = "") -> Figure:
    """Attack AUC and TPR@0.1%FPR against epsilon (left) and target test accuracy (right).

    ``points``: dicts with ``epsilon`` (None for no DP), ``target_test_acc``,
    ``name`` and ``attacks`` (name -> {"auc", "tpr_at_0.1%fpr"}).
    """
    finite = [p["epsilon"] for p in points if p["epsilon"] is not None]
    no_dp_x = 2 * max(finite) if finite else 1.0  # where the undefended runs are drawn
    xs_eps = [no_dp_x if p["epsilon"] is None else p["epsilon"] for p in points]
    xs_acc = [100 * p["target_test_acc"] for p in points]
    fig = Figure(figsize=(10, 7), dpi=110)
    axes = fig.subplots(2, 2, sharey="row")
    dp = [i for i, p in enumerate(points) if p["epsilon"] is not None]
    baselines = [i for i, p in enumerate(points) if p["epsilon"] is None]
    markers = "*sD^v"
    for color, name in enumerate(points[0]["attacks"]):
        for row, (key, label) in enumerate((("auc", "attack AUC"),
                                            ("tpr_at_0.1%fpr", "TPR at 0.1% FPR (%)"))):
            scale = 1 if key == "auc" else 100
            ys = np.asarray([scale * p["attacks"][name][key] for p in points])
            for col, xs in enumerate((np.asarray(xs_eps), np.asarray(xs_acc))):
                ax = axes[row, col]
                order = sorted(dp, key=lambda i: xs[i])  # the DP runs as one line
                ax.plot(xs[order], ys[order], "o-", color=f"C{color}", label=name)
                for m, i in enumerate(baselines):  # each undefended run as its own marker
                    ax.plot(xs[i], ys[i], markers[m % len(markers)], color=f"C{color}", ms=9,
                            mfc="none")
            axes[row, 0].set_ylabel(label)
    for m, i in enumerate(baselines):  # legend entries for the baseline markers
        axes[0, 1].plot([], [], markers[m % len(markers)], color="gray", mfc="none", ms=9,
                        label=f"{points[i].get('name', 'no DP')} (no DP)")
    for col in range(2):
        axes[0, col].axhline(0.5, color="gray", ls="--", lw=1)
        axes[1, col].axhline(0.1, color="gray", ls="--", lw=1)
    for row in range(2):
        axes[row, 0].set_xscale("log")
        axes[row, 0].xaxis.set_minor_formatter(ticker.NullFormatter())
        axes[row, 0].set_xticks(sorted(set(xs_eps)))  # one labelled tick per run
        axes[row, 0].set_xticklabels([f"{x:.3g}" if x != no_dp_x else "no DP"
                                      for x in sorted(set(xs_eps))])
        axes[row, 0].axvline(no_dp_x, color="gray", ls=":", lw=1)
    axes[1, 0].set_xlabel("epsilon (log scale)")
    axes[1, 1].set_xlabel("target test accuracy (%)")
    axes[0, 1].legend(fontsize=8)
    fig.suptitle(title)
    return fig


def reference_sweep_figure(sweep: Sequence[dict], baseline: dict, title: str = "") -> Figure:
    """AUC and TPR@0.1%FPR (mean ± std over targets) against the number of reference models."""
    fig = Figure(figsize=(10, 4.2), dpi=110)
    axes = fig.subplots(1, 2)
    counts = [row["num_references"] for row in sweep]
    names = list(dict.fromkeys(name for row in sweep for name in row["attacks"]))
    for ax, key, label in ((axes[0], "auc", "AUC"),
                           (axes[1], "tpr_at_fpr_0.001", "TPR at 0.1% FPR")):
        for name in names:  # an attack is drawn at the counts where it is available
            rows = [row for row in sweep if name in row["attacks"]]
            mean = [row["attacks"][name][key]["mean"] for row in rows]
            std = [row["attacks"][name][key]["std"] for row in rows]
            ax.errorbar([row["num_references"] for row in rows], mean, yerr=std, marker="o",
                        ms=3, capsize=2, lw=1.2, label=name)
        ax.axhline(baseline[key]["mean"], color="k", ls=":", lw=1, label="global_loss")
        ax.axhline(0.5 if key == "auc" else 0.001, color="gray", ls="--", lw=1, label="chance")
        ax.set_xscale("log", base=2)
        ax.set_xticks(counts)
        ax.set_xticklabels([str(c) for c in counts])
        ax.set_xlabel("reference models")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return fig


def confusion_figure(panels: Sequence[tuple[str, Mapping[str, Any]]], class_names: Sequence[str],
                     title: str = "") -> Figure:
    """Row-normalised confusion matrices side by side; ``panels`` = (title, report with
    ``confusion`` [true, predicted] counts and ``accuracy``)."""
    fig = Figure(figsize=(4.4 * len(panels), 4.3), dpi=100)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (name, report) in zip(axes, panels, strict=True):
        counts = np.asarray(report["confusion"], np.float64)
        rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(class_names)):
            for j in range(len(class_names)):
                ax.text(j, i, f"{rates[i, j]:.2f}\n({int(counts[i, j])})", ha="center",
                        va="center", fontsize=7, color="white" if rates[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(class_names)), class_names, rotation=45, fontsize=8)
        ax.set_yticks(range(len(class_names)), class_names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{name}: acc {100 * report['accuracy']:.1f}%", fontsize=10)
    fig.suptitle(title, fontsize=10)
    return fig


def curves_figure(histories: Mapping[str, Sequence[Mapping[str, Any]]],
                  max_lines: int = 8, columns: int = 4) -> Figure:
    """Training curves: per trained phase, loss (top) and accuracy (bottom) against epoch.

    ``histories`` maps a phase to its ``history.jsonl`` rows (epoch, model, loss,
    train_acc and, with validation, val_loss/val_acc). Up to ``max_lines`` models
    are drawn one line each; more as their mean with a min-max band. Training is
    solid, validation dashed.
    """
    names = list(histories) or ["(no training)"]
    cols = min(len(names), columns)
    blocks = -(-len(names) // cols)
    fig = Figure(figsize=(3.4 * cols + 0.6, 5.0 * blocks), dpi=100)
    axes = np.asarray(fig.subplots(2 * blocks, cols, squeeze=False))
    for i, name in enumerate(names):
        top, bottom = axes[2 * (i // cols), i % cols], axes[2 * (i // cols) + 1, i % cols]
        rows = histories.get(name, [])
        models = sorted({r["model"] for r in rows})
        epochs = sorted({r["epoch"] for r in rows})
        for ax, keys, label in ((top, ("loss", "val_loss"), "loss"),
                                (bottom, ("train_acc", "val_acc"), "accuracy")):
            for key, style in zip(keys, ("-", "--"), strict=True):
                if not any(key in r for r in rows):
                    continue
                table = np.full((len(models), len(epochs)), np.nan)
                for r in rows:
                    if key in r:
                        table[models.index(r["model"]), epochs.index(r["epoch"])] = r[key]
                what = "validation" if key.startswith("val") else "training"
                if len(models) <= max_lines:
                    for m, line in enumerate(table):
                        ax.plot(epochs, line, style, color=f"C{m % 10}", lw=1,
                                label=what if m == 0 else None)
                else:
                    ax.fill_between(epochs, np.nanmin(table, 0), np.nanmax(table, 0),
                                    color="C0" if style == "-" else "C1", alpha=0.25)
                    ax.plot(epochs, np.nanmean(table, 0), style, color="C0" if style == "-"
                            else "C1", lw=1.4, label=f"{what} (mean, min-max of {len(models)})")
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
            ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        top.set_title(f"{name} ({len(models)} model{'s' if len(models) != 1 else ''})",
                      fontsize=9)
        bottom.set_xlabel("epoch")
        if rows:
            top.legend(fontsize=7)
    for j in range(len(names), blocks * cols):  # empty cells of the last block
        axes[2 * (j // cols), j % cols].set_visible(False)
        axes[2 * (j // cols) + 1, j % cols].set_visible(False)
    return fig


# ----------------------------------------------------------------------------- image grids


def to_uint8(images) -> np.ndarray:
    """[..., H, W, 1] float images in [0, 1] -> uint8 [..., H, W]."""
    return (np.clip(np.asarray(images)[..., 0], 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def image_grid(rows: Sequence[Sequence[np.ndarray]], captions: Sequence[Sequence[str]],
               pad: int = 4, caption_height: int = 13) -> Image.Image:
    """A white mosaic of equally sized uint8 grey tiles, each with its caption above it."""
    h, w = rows[0][0].shape
    ncols = max(len(r) for r in rows)
    cell_h, cell_w = h + caption_height + pad, w + pad
    canvas = np.full((len(rows) * cell_h + pad, ncols * cell_w + pad), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            top, left = i * cell_h + caption_height + pad, j * cell_w + pad
            canvas[top:top + h, left:left + w] = tile
    image = Image.fromarray(canvas, mode="L")
    draw = ImageDraw.Draw(image)
    for i, labels in enumerate(captions):
        for j, text in enumerate(labels):
            draw.text((j * cell_w + pad, i * cell_h + pad), text, fill=0)
    return image
