"""The throughput benchmark: every (workload, precision, conv form, K, strategy) cell, then mi_face.

Cells are measured one by one (a time budget stops the sweep between cells) and
the results file is rewritten after each, so an interrupted sweep keeps its
measurements. Speed-ups are ratios of images/s measured in the same run.
After a model's last cell, its memory estimate (:mod:`jaxpet.benchmark.memory`:
bytes per model from XLA's compiled memory analysis, and the largest K the
device holds) is logged and written beside the cells. A cell that runs out of
device memory is recorded as such and the sweep goes on.
"""

from __future__ import annotations

import dataclasses
import time

from absl import logging
import jax

from jaxpet import config as config_lib, layers, models, runs
from jaxpet.benchmark import inversion, memory, throughput, torch_reference
from jaxpet.benchmark import profile as profile_lib
from jaxpet.benchmark.workloads import STRATEGIES, WORKLOADS, Cell
from jaxpet.config import setting


@dataclasses.dataclass(frozen=True)
class Config:
    """The sweep: which cells to measure and how big each is."""

    workloads: tuple[str, ...] = setting(("mnist_shadow", "cifar10_shadow"), "Workloads to "
                                         "measure.", choices=tuple(WORKLOADS))
    num_models: tuple[int, ...] = setting((1, 2, 4), "K values to sweep.", low=1)
    strategies: tuple[str, ...] = setting(STRATEGIES, "vmap (the product), map (lax.map over "
                                          "models in one program), loop (the K=1 program called K "
                                          "times), torch (PyTorch reference, one model after "
                                          "another; skipped when torch is not installed).",
                                          choices=STRATEGIES)
    conv_impls: tuple[str, ...] = setting(("auto",), "Convolution forms: conv (nn.Conv), "
                                          "patches (lax patches + one matmul), slices (shifted "
                                          "slices + one matmul), auto (slices on CPU, conv "
                                          "elsewhere).", choices=layers.CONV_IMPLS)
    pool_impls: tuple[str, ...] = setting(("auto",), "2x2 max-pooling forms: window "
                                          "(nn.max_pool), reshape (a max over a reshaped view, "
                                          "its gradient one masked pass; same results), auto "
                                          "(reshape on CPU, window elsewhere).",
                                          choices=layers.POOL_IMPLS)
    batchnorm_impls: tuple[str, ...] = setting(("auto",), "BatchNorm forms: flax "
                                               "(nn.BatchNorm), fused (same statistics, a "
                                               "hand-written two-pass gradient), auto (fused on "
                                               "CPU, flax elsewhere).",
                                               choices=layers.BATCHNORM_IMPLS)
    precisions: tuple[str, ...] = setting(("float32",), "Compute precisions.",
                                          choices=tuple(models.PRECISIONS))
    examples_per_model: int = setting(512, "Members per model (one timed epoch over them).", low=1)
    batch_size: int = setting(128, "Batch size per model.", low=1)
    workdir: str = setting("runs/benchmark", "Output folder.")
    max_seconds: float = setting(0.0, "Start no new cell after this many seconds (0: no limit).",
                                 low=0)
    peak_flops: float | None = setting(None, "The chip's peak FLOP/s for the precision measured, "
                                       "for chips missing from workloads.PEAK_FLOPS (default: "
                                       "look it up; unknown chips report 'unknown').", low=0,
                                       low_open=True)
    inversion_classes: int = setting(40, "mi_face timing: classes inverted (0: skip it).", low=0)
    inversion_iterations: int = setting(100, "mi_face timing: gradient steps per class.", low=1)
    profile: bool = setting(False, "Also trace one epoch of each model at K=1 with "
                            "jax.profiler and report where a training step's time goes "
                            "(matmul, im2col, BatchNorm, pooling, other; ms per step).")
    memory_estimate: bool = setting(True, "Estimate each model's device memory (parameters, "
                                    "optimiser state, BatchNorm statistics, activations at "
                                    "--batch_size) from XLA's compiled memory analysis of the "
                                    "vmapped epoch, and the largest K that fits the device.")
    memory_fit_models: tuple[int, ...] = setting((2, 4), "The two ensemble sizes whose compiled "
                                                 "epochs the memory line bytes(K) = fixed + "
                                                 "per_model * K is fitted through (K=1 compiles "
                                                 "to a leaner program, off the line; a size "
                                                 "measured with vmap reuses its compiled epoch).",
                                                 low=1, when=("memory_estimate", (True,)))
    device_memory_gib: float | None = setting(None, "Device memory the largest K is fitted into, "
                                              "GiB (default: the accelerator's bytes_limit; on "
                                              "CPU the machine's physical memory).", low=0,
                                              low_open=True, when=("memory_estimate", (True,)))

    def __post_init__(self):
        config_lib.check(self)
        if not self.workloads or not self.num_models or not self.strategies:
            raise config_lib.ConfigError("--workloads, --num_models and --strategies each need at "
                                         "least one value — nothing would be measured.")
        if self.examples_per_model < self.batch_size:
            raise config_lib.ConfigError(
                f"--examples_per_model={self.examples_per_model} is smaller than one batch "
                f"(--batch_size={self.batch_size}) — raise it or lower --batch_size.")
        if self.inversion_classes == 0 and self.inversion_iterations != 100:
            raise config_lib.ConfigError("--inversion_iterations has no effect with "
                                         "--inversion_classes=0 — drop one of them.")
        if self.memory_estimate and len(self.memory_fit_models) != 2:
            raise config_lib.ConfigError(f"--memory_fit_models takes two ensemble sizes (a line "
                                         f"through two points), got "
                                         f"{len(self.memory_fit_models)}.")
        if self.peak_flops is not None and len(self.precisions) != 1:
            raise config_lib.ConfigError("--peak_flops is one chip's peak for one precision: give "
                                         "a single --precisions with it.")


# The files a run writes besides config.json and results.json.
OUTPUTS = ("benchmark.md",)


def summary_path(config: Config) -> str:
    return f"{config.workdir}/benchmark.md"


def _cells(config: Config, strategies):
    forms = [(c, p, b) for c in config.conv_impls for p in config.pool_impls
             for b in config.batchnorm_impls]
    for workload in config.workloads:
        for precision in config.precisions:
            for conv_impl, pool_impl, batchnorm_impl in forms:
                for k in config.num_models:
                    for strategy in strategies:
                        if strategy == "torch" and ((conv_impl, pool_impl, batchnorm_impl)
                                                    != forms[0] or precision != "float32"):
                            continue  # one float32 PyTorch reference per workload and K
                        yield Cell(workload, strategy, k, conv_impl, precision, pool_impl,
                                   batchnorm_impl)


def _model_key(cell: Cell) -> tuple:
    return cell.workload, cell.precision, cell.conv_impl, cell.pool_impl, cell.batchnorm_impl


def _row_model_key(row: dict) -> tuple:
    return (row["workload"], row["precision"], row["conv_impl"], row["pool_impl"],
            row.get("batchnorm_impl", "auto"))


def _memory_row(config: Config, cell: Cell) -> dict:
    """The memory estimate of ``cell``'s model, or a row naming why there is none."""
    device_bytes = None if config.device_memory_gib is None else int(
        config.device_memory_gib * memory.GIB)
    try:
        row = memory.estimate_workload(
            cell.workload, precision=cell.precision, conv_impl=cell.conv_impl,
            pool_impl=cell.pool_impl, batchnorm_impl=cell.batchnorm_impl,
            examples_per_model=config.examples_per_model,
            batch_size=config.batch_size, fit_models=config.memory_fit_models,
            device_bytes=device_bytes)
    except ValueError as e:  # e.g. a backend without memory analysis: the timings still count
        logging.warning("No memory estimate for %s: %s", cell.workload, e)
        return {"workload": cell.workload, "precision": cell.precision,
                "conv_impl": cell.conv_impl, "pool_impl": cell.pool_impl,
                "batchnorm_impl": cell.batchnorm_impl, "error": str(e)}
    logging.info("%s", memory.describe(row))
    return row


def run(config: Config) -> dict:
    """Measures every cell, then mi_face; writes results.json and benchmark.md after each.

    With --memory_estimate, each model's memory estimate follows its last cell (so the
    cells' compile times are their own; the estimate may reuse their compiled programs)."""
    strategies = list(config.strategies)
    if "torch" in strategies and not torch_reference.torch_available():
        logging.warning("torch is not installed: skipping the PyTorch reference "
                        "(pip install %s to include it).", torch_reference.TORCH_PIN)
        strategies.remove("torch")
        if not strategies:
            raise config_lib.ConfigError(f"--strategies=torch needs torch, which is not "
                                         f"installed — pip install {torch_reference.TORCH_PIN} "
                                         "or add a JAX strategy.")
    start = time.perf_counter()
    with runs.Run(config.workdir, config, outputs=OUTPUTS) as run_:
        rows, inversion_row, memory_rows, profiles = [], None, {}, {}
        gemm = None  # the CPU's measured float32 GEMM rate: the limit its cells are held to
        if config.peak_flops is None and jax.default_backend() == "cpu":
            gemm = throughput.gemm_flops()
            logging.info("Float32 GEMM on this CPU: %.0f GFLOP/s (the peak of the CPU cells).",
                         gemm / 1e9)

        def write():
            fill_torch_flops(rows, gemm)
            runs.write_text(summary_path(config), markdown(
                rows, inversion_row, list(memory_rows.values()), list(profiles.values()), gemm))
            return run_.finish({"cells": rows, "memory": list(memory_rows.values()),
                                "profiles": list(profiles.values()),
                                "gemm_flop_per_s": gemm, "inversion": inversion_row})

        def profile(cell):
            """Where one K=1 step of ``cell``'s model spends its time, once per model."""
            key = _model_key(cell)
            if not config.profile or key in profiles:
                return
            one = dataclasses.replace(cell, strategy="vmap", num_models=1)
            profiles[key] = throughput.profile_cell(one, config.examples_per_model,
                                                    config.batch_size)
            logging.info("Profile of %s: %s", cell.workload, ", ".join(
                f"{k} {v:.1f} ms" for k, v in profiles[key]["categories"].items()))

        def estimate(cell):
            """The memory estimate of ``cell``'s model, once, with each of its vmap rows'
            predicted bytes."""
            key = _model_key(cell)
            if not config.memory_estimate or key in memory_rows:
                return
            memory_rows[key] = estimate_ = _memory_row(config, cell)
            for r in rows:
                if (r["strategy"] == "vmap" and "per_model_bytes" in estimate_
                        and _row_model_key(r) == key):
                    r["predicted_memory_bytes"] = (estimate_["fixed_bytes"]
                                                   + estimate_["per_model_bytes"] * r["num_models"])
            write()

        last = None  # the last JAX cell measured
        for cell in _cells(config, strategies):
            if config.max_seconds and time.perf_counter() - start > config.max_seconds:
                logging.warning("Time budget spent; stopping the sweep.")
                break
            moved_on = last is not None and _model_key(last) != _model_key(cell)
            if cell.strategy != "torch" and moved_on:
                estimate(last)  # the sweep has moved on to another model
                profile(last)
            peak = config.peak_flops or (gemm if cell.precision == "float32" else None)
            try:
                row = throughput.measure(cell, config.examples_per_model, config.batch_size,
                                         peak=peak)
            except Exception as e:  # an accelerator out of memory: record it, go on
                if not out_of_memory(e):
                    raise
                reason = f"out of memory: {str(e).strip().splitlines()[0][:160]}"
                logging.warning("%s: %s", cell, reason)
                row = {**dataclasses.asdict(cell), "error": reason}
            else:
                logging.info("%s: %.0f images/s, compile %.1fs", cell, row["images_per_s"],
                             row["compile_seconds"])
            rows.append(row)
            last = cell if cell.strategy != "torch" else last
            write()
        if last is not None:
            estimate(last)
            profile(last)
        if config.inversion_classes:
            inversion_row = inversion.measure_inversion(config.inversion_classes,
                                                        config.inversion_iterations)
        return write()


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


def out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a device allocation failure (XLA's RESOURCE_EXHAUSTED, or CUDA's
    out of memory in PyTorch), which ends one cell rather than the sweep."""
    text = f"{type(error).__name__}: {error}"
    return any(s in text for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory",
                                   "OutOfMemoryError"))


def markdown(rows: list[dict], inversion_row: dict | None = None,
             memory_rows: list[dict] = (), profiles: list[dict] = (),
             gemm: float | None = None) -> str:
    """A table of the measured cells; vmap's speed-up over the loop and over PyTorch, each a
    ratio of images/s measured in the same run; then step profiles and memory estimates."""
    cell_key = lambda r: (r["workload"], r["num_models"], r["conv_impl"], r["precision"],
                          r.get("pool_impl"), r.get("batchnorm_impl"))
    failed = [r for r in rows if "error" in r]
    rows = [r for r in rows if "error" not in r]
    loop = {cell_key(r): r["images_per_s"] for r in rows if r["strategy"] == "loop"}
    torch = {(r["workload"], r["num_models"]): r["images_per_s"]
             for r in rows if r["strategy"] == "torch"}
    lines = []
    if gemm:
        lines += [f"Peak of the CPU cells: this CPU's measured float32 GEMM rate, "
                  f"{gemm / 1e9:.0f} GFLOP/s (the best jitted matmul of "
                  f"{', '.join('x'.join(map(str, s)) for s in throughput.GEMM_SHAPES)}); "
                  "FLOPs from XLA's cost "
                  "analysis of the model's step (PyTorch rows: the same model's FLOPs per "
                  "image).", ""]
    lines += ["| workload | strategy | K | conv | pool | BatchNorm | precision | images/s | "
              "model-epochs/s | compile s | TFLOP/s | % of peak | peak mem (GiB) | vmap / loop | "
              "/ torch |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        key = cell_key(r)
        vmap = r["strategy"] == "vmap"
        over_loop = f"{r['images_per_s'] / loop[key]:.2f}x" if vmap and key in loop else ""
        torch_key = (r["workload"], r["num_models"])
        over_torch = (f"{r['images_per_s'] / torch[torch_key]:.2f}x"  # float32 against float32
                      if r["strategy"] != "torch" and torch_key in torch
                      and r["precision"] == "float32" else "")
        tflops = f"{r['flop_per_s'] / 1e12:.3f}" if r.get("flop_per_s") else "n/a"
        frac = f"{100 * r['fraction_of_peak']:.1f}" if r.get("fraction_of_peak") else "unknown"
        mem = f"{r['peak_memory_bytes'] / 2**30:.2f}" if r["peak_memory_bytes"] else "n/a"
        lines.append(f"| {r['workload']} | {r['strategy']} | {r['num_models']} | "
                     f"{r['conv_impl_resolved']} | {r.get('pool_impl_resolved', r.get('pool_impl', '-'))} | "
                     f"{r.get('batchnorm_impl_resolved', r.get('batchnorm_impl', '-'))} | "
                     f"{r['precision']} | {r['images_per_s']:.0f} | "
                     f"{r['model_epochs_per_s']:.3f} | {r['compile_seconds']:.1f} | {tflops} | "
                     f"{frac} | {mem} | {over_loop} | {over_torch} |")
    if failed:
        lines += ["", "Cells that could not run:", ""]
        lines += [f"- {r['workload']} {r['strategy']} K={r['num_models']} {r['precision']} "
                  f"({r['conv_impl']}, {r['pool_impl']} pool): {r['error']}" for r in failed]
    lines += profile_markdown(profiles)
    lines += memory_markdown(memory_rows)
    if inversion_row:
        i = inversion_row
        lines += ["", f"mi_face, {i['classes']} classes x {i['iterations']} iterations "
                  f"({i['backend']}): vmapped {i['vmap_seconds']:.2f} s, loop over classes "
                  f"{i['loop_seconds']:.2f} s ({i['ratio']:.1f}x)."]
    return "\n".join(lines) + "\n"


def profile_markdown(profiles: list[dict]) -> list[str]:
    """Step profiles as table lines: ms per optimiser step by category, then the top ops."""
    if not profiles:
        return []
    categories = [c for c, _ in profile_lib.CATEGORIES] + ["other"]
    lines = ["", "Where one training step's time goes (K=1, jax.profiler trace of one epoch, "
             "ms per optimiser step summed over ops; ops on both cores overlap, so the total "
             "can exceed the wall time):", "",
             "| workload | precision | conv | pool | BatchNorm | total | "
             + " | ".join(categories) + " | costliest op |",
             "|---|---|---|---|---|---|" + "---|" * len(categories) + "---|"]
    for p in profiles:
        top = p["top_ops"][0] if p["top_ops"] else {"layer": "-", "ms": 0.0}
        lines.append(f"| {p['workload']} | {p['precision']} | {p['conv_impl']} | "
                     f"{p['pool_impl']} | {p['batchnorm_impl']} | {p['total_ms']:.1f} | "
                     + " | ".join(f"{p['categories'].get(c, 0.0):.1f}" for c in categories)
                     + f" | {top['layer']} ({top['ms']:.1f}) |")
    return lines


def memory_markdown(memory_rows: list[dict]) -> list[str]:
    """The memory estimates as table lines (none without estimates)."""
    if not memory_rows:
        return []
    mib = lambda b: f"{b / 2**20:.1f}"
    lines = ["", "Device memory per model (vmapped epoch, from XLA's compiled memory analysis: "
             "bytes(K) = fixed + per model x K, fitted through two compiled sizes; max K: the "
             "largest K whose program fits the device memory; fixed includes the resident "
             "image pool):", "",
             "| workload | precision | conv | pool | batch | per model (MiB) | parameters (MiB) | "
             "optimiser state (MiB) | BatchNorm stats (KiB) | activations + temporaries (MiB) | "
             "fixed (MiB) | fit K | device memory (GiB) | max K |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in memory_rows:
        if "error" in r:
            lines.append(f"| {r['workload']} | {r['precision']} | {r['conv_impl']} | "
                         f"{r['pool_impl']} | no estimate: {r['error']} |")
            continue
        lines.append(
            f"| {r['workload']} | {r['precision']} | {r['conv_impl_resolved']} | "
            f"{r['pool_impl']} | {r['batch_size']} | {mib(r['per_model_bytes'])} | "
            f"{mib(r['parameter_bytes'])} | {mib(r['optimizer_state_bytes'])} | "
            f"{r['batch_stats_bytes'] / 2**10:.1f} | {mib(r['activation_bytes'])} | "
            f"{mib(r['fixed_bytes'])} | {','.join(map(str, r['fit_models']))} | "
            f"{r['device_bytes'] / 2**30:.1f} | {r['max_models']} |")
    return lines
