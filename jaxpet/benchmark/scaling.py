"""Multi-process scaling of the ensemble trainer: models per second for 1, 2, 4, ... processes.

Each process count is one run of :mod:`jaxpet.launch` (one device per process on a CPU),
every process training its share of one ensemble of the MNIST shadow CNN on synthetic
data of the real shape, through :func:`jaxpet.training.train_ensemble` as the experiments
do. Two series, each measured after the first (compiling) epoch:

* same total work: K models whatever the process count (strong scaling);
* same work per process: K per process (weak scaling; efficiency = the one-process
  epoch time over the P-process one).

On a machine with fewer cores than processes the processes share the cores, so the
figures show the runtime's overheads (collectives over gloo, per-process compilation,
the gathered metrics), not a speed-up; on a multi-GPU host or a pod slice each process
has its own chip.

    python -m jaxpet.benchmark.scaling --process_counts=1,2,4 --out=runs/scaling
"""

from __future__ import annotations

from collections.abc import Sequence
import json
import os
import pathlib
import subprocess
import sys
import time

from absl import app, flags, logging
import numpy as np

from jaxpet import distributed, files, report

_WORKER = "--scaling_worker"


def _worker(argv: Sequence[str]) -> None:
    """One process of a measured run: ``--scaling_worker OUT K EPOCHS EXAMPLES``."""
    out, num_models, epochs, examples = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    distributed.initialize()
    import jax  # after the runtime starts

    from jaxpet import data, models, splits, training
    from jaxpet.benchmark.workloads import synthetic_pool

    images, labels = synthetic_pool((28, 28, 1), 4 * examples)
    members = splits.random_member_sets(np.arange(len(images)), num_models, examples, seed=0)
    model = models.seed_cnn("mnist", "shadow")
    tick = time.perf_counter()
    result = training.train_ensemble(model, images, labels, members,
                                     training.TrainConfig(epochs=epochs, batch_size=64),
                                     preprocess=data.normalizer("mnist"))
    total = time.perf_counter() - tick
    timed = [float(np.max(h["seconds"])) for h in result.history[1:]]
    files.write_json(out, {
        "processes": distributed.process_count(), "devices": jax.device_count(),
        "models": num_models, "examples_per_model": examples, "epochs_timed": len(timed),
        "epoch_seconds": float(np.mean(timed)), "seconds_incl_compile": total,
        "models_per_second": num_models / float(np.mean(timed)),
        "images_per_second": num_models * examples / float(np.mean(timed))})


def measure(process_counts: Sequence[int], models_total: int, models_per_process: int,
            epochs: int, examples: int, out: pathlib.Path) -> dict:
    """Both series for every process count (one launched run per cell); the cells."""
    cells = []
    for series, models_at in (("same total work", lambda p: models_total),
                              ("same work per process", lambda p: models_per_process * p)):
        for processes in process_counts:
            path = out / f"cell_{series.replace(' ', '_')}_{processes}.json"
            command = [sys.executable, "-m", "jaxpet.launch", f"--num_processes={processes}",
                       "--local_devices=1", "--", sys.executable, "-m",
                       "jaxpet.benchmark.scaling", _WORKER, str(path),
                       str(models_at(processes)), str(epochs), str(examples)]
            logging.info("%s: %d processes, %d models", series, processes, models_at(processes))
            done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
            if done.returncode != 0:
                raise RuntimeError(f"the {processes}-process run failed:\n{done.stderr[-3000:]}")
            cells.append({"series": series, **json.loads(path.read_text())})
    return {"cells": cells, "cpu_count": os.cpu_count(), "epochs": epochs}


def efficiencies(cells: Sequence[dict]) -> list[dict]:
    """Each cell with its speed-up over one process (same total work) or its weak-scaling
    efficiency (same work per process: one process's epoch time over this one's)."""
    rows = []
    for cell in cells:
        one = next(c for c in cells if c["series"] == cell["series"] and c["processes"] == 1)
        ratio = (cell["models_per_second"] / one["models_per_second"]
                 if cell["series"] == "same total work"
                 else one["epoch_seconds"] / cell["epoch_seconds"])
        rows.append({**cell, "ratio": ratio})
    return rows


def bound(cell: dict) -> float:
    """The best ratio the machine allows when all processes share its CPU cores (each
    XLA CPU process already uses every core): 1 for the same total work, 1/P for the same
    work per process (P times the work on the same cores)."""
    return 1.0 if cell["series"] == "same total work" else 1.0 / cell["processes"]


def markdown(measured: dict) -> str:
    rows = [[r["series"], r["processes"], r["models"], f"{r['epoch_seconds']:.2f}",
             f"{r['models_per_second']:.2f}", f"{r['ratio']:.2f}", f"{bound(r):.2f}",
             f"{r['ratio'] / bound(r):.0%}"]
            for r in efficiencies(measured["cells"])]
    return (f"# Multi-process scaling ({measured['cpu_count']} CPU cores, one device per "
            "process)\n\n" + report.markdown_table(
                ["series", "processes", "models", "s / epoch", "models / s",
                 "speed-up (total) or efficiency (per process)", "bound on shared cores",
                 "of the bound"], rows)
            + "\nThe processes share the machine's cores, so the ratios are bounded by the "
            "last-but-one column: what is lost below it is the runtime's overhead "
            "(collectives over gloo, per-process programs, the gathered metrics), not a "
            "missing speed-up.\n")


def figure(measured: dict):
    import matplotlib.figure

    fig = matplotlib.figure.Figure(figsize=(6, 3.8))
    ax = fig.add_subplot()
    for series, color in (("same total work", "C0"), ("same work per process", "C1")):
        cells = [c for c in measured["cells"] if c["series"] == series]
        counts = [c["processes"] for c in cells]
        ax.plot(counts, [c["models_per_second"] for c in cells], marker="o", color=color,
                label=series)
        one = next(c for c in cells if c["processes"] == 1)["models_per_second"]
        # On shared cores both series are bounded by one process's rate (see bound()).
        ax.plot(counts, [one] * len(counts), linestyle="--", color=color, alpha=0.6,
                label=f"{series}: bound on shared cores")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("processes (one CPU device each)")
    ax.set_ylabel("model-epochs per second")
    ax.set_xticks(sorted({c["processes"] for c in measured["cells"]}))
    ax.set_title(f"jaxpet across processes, {measured['cpu_count']} CPU cores")
    ax.legend(fontsize="small", loc="lower left")
    fig.tight_layout()
    return fig


_COUNTS = flags.DEFINE_list("process_counts", ["1", "2", "4"], "Process counts to measure.")
_MODELS = flags.DEFINE_integer("models_total", 8, "Models of the same-total-work series.",
                               lower_bound=1)
_PER_PROCESS = flags.DEFINE_integer("models_per_process", 2, "Models per process of the "
                                    "same-work-per-process series.", lower_bound=1)
_EPOCHS = flags.DEFINE_integer("epochs", 4, "Epochs per run (the first, compiling, is not "
                               "timed).", lower_bound=2)
_EXAMPLES = flags.DEFINE_integer("examples_per_model", 512, "Members per model.", lower_bound=64)
_OUT = flags.DEFINE_string("out", "runs/scaling", "Output folder (scaling.json, scaling.md, "
                           "scaling.png).")


def main(argv: Sequence[str]) -> None:
    out = pathlib.Path(_OUT.value)
    counts = [int(c) for c in _COUNTS.value]
    if 1 not in counts or any(c < 1 for c in counts):
        raise app.UsageError("--process_counts needs 1 (the baseline) and counts >= 1.")
    measured = measure(sorted(counts), _MODELS.value, _PER_PROCESS.value, _EPOCHS.value,
                       _EXAMPLES.value, out)
    files.write_json(out / "scaling.json", {**measured, "rows": efficiencies(measured["cells"])})
    files.write_text(out / "scaling.md", markdown(measured))
    files.save_figure(figure(measured), out / "scaling.png", dpi=100)
    print(markdown(measured))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == _WORKER:
        _worker(sys.argv[2:])
    else:
        app.run(main)
