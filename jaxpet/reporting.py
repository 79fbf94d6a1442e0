"""Writing results: atomic JSON/NPZ files, log-log ROC plots and Markdown tables."""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any, Mapping, Sequence

import numpy as np

from jaxpet import metrics


def _atomic_write(path: pathlib.Path, write) -> pathlib.Path:
    """Writes through a temp file in the same folder and renames, so a crash leaves no half file."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide results from other users
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _jsonable(obj):
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def write_json(path, obj: Any) -> pathlib.Path:
    text = json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n"
    return _atomic_write(path, lambda f: f.write(text.encode()))


def read_json(path) -> Any:
    with open(path) as f:
        return json.load(f)


def write_npz(path, **arrays) -> pathlib.Path:
    return _atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def read_npz(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def write_text(path, text: str) -> pathlib.Path:
    return _atomic_write(path, lambda f: f.write(text.encode()))


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path, title: str = "") -> pathlib.Path:
    """Log-log ROC curves (Carlini et al.'s view: the low-FPR corner matters) with the chance line.

    ``curves`` maps an attack name to (membership labels, scores).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 5.0), dpi=110)
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
    return save_figure(fig, path)


def save_figure(fig, path, dpi: int | None = None) -> pathlib.Path:
    """Lays out, writes (creating the folder) and closes a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_privacy_curve(points: Sequence[Mapping[str, Any]], path, title: str = "") -> pathlib.Path:
    """Attack AUC and TPR@0.1%FPR against epsilon (left) and target test accuracy (right).

    ``points``: dicts with ``epsilon`` (None for no DP), ``target_test_acc`` and
    ``attacks`` (name -> {"auc", "tpr_at_0.1%fpr"}).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = [p["epsilon"] for p in points if p["epsilon"] is not None]
    no_dp_x = 2 * max(finite) if finite else 1.0  # where the undefended runs are drawn
    xs_eps = [no_dp_x if p["epsilon"] is None else p["epsilon"] for p in points]
    xs_acc = [100 * p["target_test_acc"] for p in points]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharey="row")
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
    from matplotlib import ticker

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
    return save_figure(fig, path, dpi=110)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; floats printed as given (format them before)."""
    lines = ["| " + " | ".join(map(str, headers)) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"
