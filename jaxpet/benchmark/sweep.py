"""The benchmark's sweep: which cells, in what order, and what is kept of each measured one.

Cells are measured one after another; the rows, each model's memory estimate and
step profile accumulate in a :class:`Sweep`, which calls back after every change
so the caller can rewrite its results (an interrupted sweep keeps what it
measured). A model's memory estimate and profile follow its last cell, so the
cells' compile times are their own (the estimate may reuse their compiled
programs). A cell that runs out of device memory is recorded as such and the
sweep goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
import dataclasses
from typing import Any

from absl import logging
import jax

from jaxpet import config as config_lib
from jaxpet.benchmark import memory, tables, throughput, torch_reference
from jaxpet.benchmark.workloads import Cell


def usable_strategies(strategies: Sequence[str]) -> list[str]:
    """``strategies`` without ``torch`` when torch is not installed (with a warning saying how
    to install it); refuses a sweep that would then measure nothing."""
    strategies = list(strategies)
    if "torch" in strategies and not torch_reference.torch_available():
        logging.warning("torch is not installed: skipping the PyTorch reference "
                        "(pip install %s to include it).", torch_reference.TORCH_PIN)
        strategies.remove("torch")
        if not strategies:
            raise config_lib.ConfigError(f"--strategies=torch needs torch, which is not "
                                         f"installed — pip install {torch_reference.TORCH_PIN} "
                                         "or add a JAX strategy.")
    return strategies


def cells(workloads: Sequence[str], precisions: Sequence[str], num_models: Sequence[int],
          strategies: Sequence[str], *, conv_impls: Sequence[str] = ("auto",),
          pool_impls: Sequence[str] = ("auto",), batchnorm_impls: Sequence[str] = ("auto",)
          ) -> Iterator[Cell]:
    """Every cell in sweep order: workload, precision, layer forms, K, strategy (innermost).

    One float32 PyTorch reference per workload and K: its cells come with the first layer
    forms only (PyTorch has its own)."""
    forms = [(c, p, b) for c in conv_impls for p in pool_impls for b in batchnorm_impls]
    for workload in workloads:
        for precision in precisions:
            for conv_impl, pool_impl, batchnorm_impl in forms:
                for k in num_models:
                    for strategy in strategies:
                        if strategy == "torch" and ((conv_impl, pool_impl, batchnorm_impl)
                                                    != forms[0] or precision != "float32"):
                            continue
                        yield Cell(workload, strategy, k, conv_impl, precision, pool_impl,
                                   batchnorm_impl)


def model_key(cell: Cell) -> tuple:
    """What names a cell's model (every strategy and K of it trains the same network)."""
    return cell.workload, cell.precision, cell.conv_impl, cell.pool_impl, cell.batchnorm_impl


def row_model_key(row: dict) -> tuple:
    """:func:`model_key` of a measured row."""
    return (row["workload"], row["precision"], row["conv_impl"], row["pool_impl"],
            row.get("batchnorm_impl", "auto"))


def out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a device allocation failure (XLA's RESOURCE_EXHAUSTED, or CUDA's
    out of memory in PyTorch), which ends one cell rather than the sweep."""
    text = f"{type(error).__name__}: {error}"
    return any(s in text for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory",
                                   "OutOfMemoryError"))


def fill_torch_flops(rows: list[dict], gemm: float | None) -> None:
    """Gives PyTorch rows the FLOP/s of the same work: the model's FLOPs per image from a
    float32 JAX cell of the same workload (XLA's cost analysis), times the images/s measured."""
    per_image = {r["workload"]: r["flops_per_epoch"] / (r["num_models"] * r["examples_per_model"])
                 for r in rows if r.get("flops_per_epoch") and r.get("precision") == "float32"
                 and r.get("strategy") != "torch"}
    for r in rows:
        if r.get("strategy") == "torch" and "error" not in r and r["workload"] in per_image:
            r["flop_per_s"] = per_image[r["workload"]] * r["images_per_s"]
            if gemm and r.get("backend") == "torch-cpu":
                r["peak_flops"], r["fraction_of_peak"] = gemm, r["flop_per_s"] / gemm


def cpu_gemm_peak() -> float | None:
    """On a CPU, its measured float32 GEMM rate (the limit its cells are held to, no datasheet
    peak being known); None on an accelerator."""
    if jax.default_backend() != "cpu":
        return None
    gemm = throughput.gemm_flops()
    logging.info("Float32 GEMM on this CPU: %.0f GFLOP/s (the peak of the CPU cells).",
                 gemm / 1e9)
    return gemm


def measure_cell(cell: Cell, examples_per_model: int, batch_size: int,
                 peak: float | None) -> dict[str, Any]:
    """One cell's row (:func:`throughput.measure`), or, when the device runs out of memory, a
    row naming the error; any other failure is raised."""
    try:
        row = throughput.measure(cell, examples_per_model, batch_size, peak=peak)
    except Exception as e:  # an accelerator out of memory: record it, go on
        if not out_of_memory(e):
            raise
        reason = f"out of memory: {str(e).strip().splitlines()[0][:160]}"
        logging.warning("%s: %s", cell, reason)
        return {**dataclasses.asdict(cell), "error": reason}
    logging.info("%s: %.0f images/s, compile %.1fs", cell, row["images_per_s"],
                 row["compile_seconds"])
    return row


def memory_row(cell: Cell, examples_per_model: int, batch_size: int,
               fit_models: Sequence[int], device_bytes: int | None) -> dict[str, Any]:
    """The memory estimate of ``cell``'s model (:func:`memory.estimate_workload`), or a row
    naming why there is none (e.g. a backend without memory analysis: the timings still count)."""
    try:
        row = memory.estimate_workload(
            cell.workload, precision=cell.precision, conv_impl=cell.conv_impl,
            pool_impl=cell.pool_impl, batchnorm_impl=cell.batchnorm_impl,
            examples_per_model=examples_per_model, batch_size=batch_size,
            fit_models=fit_models, device_bytes=device_bytes)
    except ValueError as e:
        logging.warning("No memory estimate for %s: %s", cell.workload, e)
        return {"workload": cell.workload, "precision": cell.precision,
                "conv_impl": cell.conv_impl, "pool_impl": cell.pool_impl,
                "batchnorm_impl": cell.batchnorm_impl, "error": str(e)}
    logging.info("%s", memory.describe(row))
    return row


@dataclasses.dataclass
class Sweep:
    """What a sweep has measured so far: the cells' rows, a memory estimate and a step profile
    per model (each after the model's last cell), the CPU's GEMM rate and mi_face's timing.

    ``peak_flops``: the chip's peak, given (None: the datasheet table, or ``gemm`` for float32
    cells). ``memory_fit_models``: the two ensemble sizes the memory line is fitted through
    (None: no estimates); ``device_bytes``: the memory the largest K is fitted into (None: the
    device's). ``on_change`` is called after every row and estimate.
    """

    examples_per_model: int
    batch_size: int
    peak_flops: float | None = None
    gemm: float | None = None
    memory_fit_models: tuple[int, ...] | None = None
    device_bytes: int | None = None
    profile: bool = False
    on_change: Callable[[], Any] = lambda: None
    rows: list[dict] = dataclasses.field(default_factory=list)
    memory_rows: dict[tuple, dict] = dataclasses.field(default_factory=dict)
    profiles: dict[tuple, dict] = dataclasses.field(default_factory=dict)
    inversion: dict | None = None
    last: Cell | None = None  # the last JAX cell measured

    def measure(self, cell: Cell) -> None:
        """Measures ``cell``, first closing the previous model's when ``cell`` starts another."""
        if (cell.strategy != "torch" and self.last is not None
                and model_key(self.last) != model_key(cell)):
            self.finish_model()
        peak = self.peak_flops or (self.gemm if cell.precision == "float32" else None)
        self.rows.append(measure_cell(cell, self.examples_per_model, self.batch_size, peak))
        self.last = cell if cell.strategy != "torch" else self.last
        self.on_change()

    def finish_model(self) -> None:
        """The memory estimate and the profile of the last JAX cell's model (once each)."""
        if self.last is None:
            return
        self._estimate(self.last)
        self._profile(self.last)

    def _estimate(self, cell: Cell) -> None:
        key = model_key(cell)
        if self.memory_fit_models is None or key in self.memory_rows:
            return
        self.memory_rows[key] = row = memory_row(cell, self.examples_per_model, self.batch_size,
                                                 self.memory_fit_models, self.device_bytes)
        for r in self.rows:  # each of the model's vmap rows gets its predicted bytes
            if (r["strategy"] == "vmap" and "per_model_bytes" in row
                    and row_model_key(r) == key):
                r["predicted_memory_bytes"] = (row["fixed_bytes"]
                                               + row["per_model_bytes"] * r["num_models"])
        self.on_change()

    def _profile(self, cell: Cell) -> None:
        """Where one K=1 step of ``cell``'s model spends its time."""
        key = model_key(cell)
        if not self.profile or key in self.profiles:
            return
        one = dataclasses.replace(cell, strategy="vmap", num_models=1)
        self.profiles[key] = throughput.profile_cell(one, self.examples_per_model,
                                                     self.batch_size)
        logging.info("Profile of %s: %s", cell.workload, ", ".join(
            f"{k} {v:.1f} ms" for k, v in self.profiles[key]["categories"].items()))

    def results(self) -> dict[str, Any]:
        """The results so far, as results.json holds them (PyTorch rows given their FLOP/s)."""
        fill_torch_flops(self.rows, self.gemm)
        return {"cells": self.rows, "memory": list(self.memory_rows.values()),
                "profiles": list(self.profiles.values()), "gemm_flop_per_s": self.gemm,
                "inversion": self.inversion}

    def markdown(self) -> str:
        """The summary so far (:func:`tables.markdown`)."""
        return tables.markdown(self.rows, self.inversion, list(self.memory_rows.values()),
                               list(self.profiles.values()), self.gemm)
