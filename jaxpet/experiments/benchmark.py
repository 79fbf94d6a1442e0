"""The throughput benchmark: every (workload, precision, conv form, K, strategy) cell, then mi_face.

Cells are measured one by one (a time budget stops the sweep between cells) and
the results file is rewritten after each, so an interrupted sweep keeps its
measurements. Speed-ups are ratios of images/s measured in the same run.
"""

from __future__ import annotations

import dataclasses
import time

from absl import logging

from jaxpet import config as config_lib, models, runs
from jaxpet.benchmark import inversion, throughput, torch_reference
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
    conv_impls: tuple[str, ...] = setting(("auto",), "Convolution forms.",
                                          choices=models.CONV_IMPLS)
    pool_impls: tuple[str, ...] = setting(("window",), "2x2 max-pooling forms: window "
                                          "(nn.max_pool) or reshape (a max over a reshaped "
                                          "view; same results).", choices=models.POOL_IMPLS)
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
        if self.peak_flops is not None and len(self.precisions) != 1:
            raise config_lib.ConfigError("--peak_flops is one chip's peak for one precision: give "
                                         "a single --precisions with it.")


# The files a run writes besides config.json and results.json.
OUTPUTS = ("benchmark.md",)


def summary_path(config: Config) -> str:
    return f"{config.workdir}/benchmark.md"


def _cells(config: Config, strategies):
    for workload in config.workloads:
        for precision in config.precisions:
            for conv_impl in config.conv_impls:
                for pool_impl in config.pool_impls:
                    for k in config.num_models:
                        for strategy in strategies:
                            if strategy == "torch" and (conv_impl != config.conv_impls[0]
                                                        or pool_impl != config.pool_impls[0]
                                                        or precision != "float32"):
                                continue  # one float32 PyTorch reference per workload and K
                            yield Cell(workload, strategy, k, conv_impl, precision, pool_impl)


def run(config: Config) -> dict:
    """Measures every cell, then mi_face; writes results.json and benchmark.md after each."""
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
        rows, inversion_row = [], None

        def write():
            runs.write_text(summary_path(config), markdown(rows, inversion_row))
            return run_.finish({"cells": rows, "inversion": inversion_row})

        for cell in _cells(config, strategies):
            if config.max_seconds and time.perf_counter() - start > config.max_seconds:
                logging.warning("Time budget spent; stopping the sweep.")
                break
            row = throughput.measure(cell, config.examples_per_model, config.batch_size,
                                     peak=config.peak_flops)
            logging.info("%s: %.0f images/s, compile %.1fs", cell, row["images_per_s"],
                         row["compile_seconds"])
            rows.append(row)
            write()
        if config.inversion_classes:
            inversion_row = inversion.measure_inversion(config.inversion_classes,
                                                        config.inversion_iterations)
        return write()


def markdown(rows: list[dict], inversion_row: dict | None = None) -> str:
    """A table of the measured cells; vmap's speed-up over the loop and over PyTorch, each a
    ratio of images/s measured in the same run."""
    cell_key = lambda r: (r["workload"], r["num_models"], r["conv_impl"], r["precision"],
                          r.get("pool_impl"))
    loop = {cell_key(r): r["images_per_s"] for r in rows if r["strategy"] == "loop"}
    torch = {(r["workload"], r["num_models"]): r["images_per_s"]
             for r in rows if r["strategy"] == "torch"}
    lines = ["| workload | strategy | K | conv | pool | precision | images/s | model-epochs/s | "
             "compile s | TFLOP/s | % of peak | peak mem (GiB) | vmap / loop | vmap / torch |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        key = cell_key(r)
        vmap = r["strategy"] == "vmap"
        over_loop = f"{r['images_per_s'] / loop[key]:.2f}x" if vmap and key in loop else ""
        torch_key = (r["workload"], r["num_models"])
        over_torch = (f"{r['images_per_s'] / torch[torch_key]:.2f}x"  # float32 against float32
                      if vmap and torch_key in torch and r["precision"] == "float32" else "")
        tflops = f"{r['flop_per_s'] / 1e12:.2f}" if r["flop_per_s"] else "n/a"
        frac = f"{100 * r['fraction_of_peak']:.1f}" if r["fraction_of_peak"] else "unknown"
        mem = f"{r['peak_memory_bytes'] / 2**30:.2f}" if r["peak_memory_bytes"] else "n/a"
        lines.append(f"| {r['workload']} | {r['strategy']} | {r['num_models']} | "
                     f"{r['conv_impl_resolved']} | {r.get('pool_impl', '-')} | {r['precision']} | "
                     f"{r['images_per_s']:.0f} | "
                     f"{r['model_epochs_per_s']:.3f} | {r['compile_seconds']:.1f} | {tflops} | "
                     f"{frac} | {mem} | {over_loop} | {over_torch} |")
    if inversion_row:
        i = inversion_row
        lines += ["", f"mi_face, {i['classes']} classes x {i['iterations']} iterations "
                  f"({i['backend']}): vmapped {i['vmap_seconds']:.2f} s, loop over classes "
                  f"{i['loop_seconds']:.2f} s ({i['ratio']:.1f}x)."]
    return "\n".join(lines) + "\n"
