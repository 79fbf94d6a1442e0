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
    fig.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; floats printed as given (format them before)."""
    lines = ["| " + " | ".join(map(str, headers)) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"
