"""The throughput benchmark: every (workload, precision, conv form, K, strategy) cell, then mi_face.

Cells are measured one by one (a time budget stops the sweep between cells) and
the results file is rewritten after each, so an interrupted sweep keeps its
measurements. Speed-ups are ratios of images/s measured in the same run.
After a model's last cell, its memory estimate (:mod:`jaxpet.benchmark.memory`:
bytes per model from XLA's compiled memory analysis, and the largest K the
device holds) is logged and written beside the cells. A cell that runs out of
device memory is recorded as such and the sweep goes on. The sweep's
bookkeeping is :mod:`jaxpet.benchmark.sweep`, its tables
:mod:`jaxpet.benchmark.tables`.
"""

from __future__ import annotations

import dataclasses
import time

from absl import logging

from jaxpet import config as config_lib, files, layers, models, page, runs, training
from jaxpet.benchmark import inversion, memory, sweep
from jaxpet.benchmark.workloads import STRATEGIES, WORKLOADS
from jaxpet.config import setting


@dataclasses.dataclass(frozen=True)
class Config:
    """The sweep: which cells to measure and how big each is."""

    preset: str = setting("full", "The preset this config came from (recorded).", flag=False)
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
    batch_size: int = config_lib.same_as(training.TrainConfig, "batch_size")
    workdir: str | None = setting(None, "Output folder (default: runs/benchmark[_<preset>]).")
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

    @property
    def output_dir(self) -> str:
        return self.workdir or config_lib.default_workdir("benchmark", self.preset, PRESETS)


PRESETS = {
    "full": {},
    "quick": dict(workloads=("mnist_shadow",), num_models=(1, 2), examples_per_model=256,
                  inversion_classes=8, inversion_iterations=20),
}
PRESET_HELP = ("full: the CPU-sized default sweep (MNIST and CIFAR-10 shadow CNNs, K=1,2,4, "
               "every strategy, mi_face over 40 classes); quick: a few minutes on a CPU "
               "(MNIST only, K=1,2, 256 members, mi_face over 8 classes x 20 steps).")

# The files a run writes besides config.json and results.json.
OUTPUTS = ("benchmark.md",)


def summary_path(config: Config) -> str:
    return f"{config.output_dir}/benchmark.md"


def run(config: Config) -> dict:
    """Measures every cell, then mi_face; writes results.json and benchmark.md after each.

    With --memory_estimate, each model's memory estimate follows its last cell (so the
    cells' compile times are their own; the estimate may reuse their compiled programs)."""
    strategies = sweep.usable_strategies(config.strategies)
    start = time.perf_counter()
    with runs.Run(config.output_dir, config, outputs=OUTPUTS,
                  on_finish=page.write_page) as run_:

        def write():
            results = measured.results()
            files.write_text(summary_path(config), measured.markdown())
            return run_.finish(results)

        measured = sweep.Sweep(
            config.examples_per_model, config.batch_size, peak_flops=config.peak_flops,
            gemm=sweep.cpu_gemm_peak() if config.peak_flops is None else None,
            memory_fit_models=config.memory_fit_models if config.memory_estimate else None,
            device_bytes=None if config.device_memory_gib is None else int(
                config.device_memory_gib * memory.GIB),
            profile=config.profile, on_change=write)
        for cell in sweep.cells(config.workloads, config.precisions, config.num_models,
                                strategies, conv_impls=config.conv_impls,
                                pool_impls=config.pool_impls,
                                batchnorm_impls=config.batchnorm_impls):
            if config.max_seconds and time.perf_counter() - start > config.max_seconds:
                logging.warning("Time budget spent; stopping the sweep.")
                break
            measured.measure(cell)
        measured.finish_model()
        if config.inversion_classes:
            measured.inversion = inversion.measure_inversion(config.inversion_classes,
                                                             config.inversion_iterations)
        return write()
