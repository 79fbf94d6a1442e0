"""Benchmarks the ensemble trainer: vmapped K models against a loop over K single models.

  python experiments/benchmark.py                                     # CPU-sized default sweep
  python experiments/benchmark.py --workloads=cifar10_shadow --num_models=1,8,64,256 \
      --examples_per_model=12500 --conv_impls=conv,patches --precisions=float32,bfloat16

Writes benchmark.json and benchmark.md to --workdir.
"""

import time

from absl import app, flags, logging

from jaxpet import benchmark, models, reporting

FLAGS = flags.FLAGS
flags.DEFINE_list("workloads", ["mnist_shadow", "cifar10_shadow"], f"Any of {sorted(benchmark.WORKLOADS)}.")
flags.DEFINE_list("num_models", ["1", "2", "4"], "K values to sweep.")
flags.DEFINE_list("strategies", list(benchmark.STRATEGIES),
                  "vmap (the product), map (lax.map over models in one program), loop (the K=1 "
                  "program called K times), torch (PyTorch reference, one model after another; "
                  "skipped when torch is not installed).")
flags.DEFINE_list("conv_impls", ["auto"], f"Convolution forms: {models.CONV_IMPLS}.")
flags.DEFINE_list("precisions", ["float32"], "float32 and/or bfloat16.")
flags.DEFINE_integer("examples_per_model", 512, "Members per model (one timed epoch over them).")
flags.DEFINE_integer("batch_size", 128, "Batch size per model.")
flags.DEFINE_string("workdir", "runs/benchmark", "Output folder.")
flags.DEFINE_float("max_seconds", 0, "Start no new cell after this many seconds (0: no limit).")
flags.DEFINE_float("peak_flops", None, "The chip's peak FLOP/s for the precision measured, for chips "
                   "missing from benchmark.PEAK_FLOPS (default: look it up; unknown chips report "
                   "'unknown').")
flags.DEFINE_integer("inversion_classes", 40, "mi_face timing: classes inverted (0: skip it).")
flags.DEFINE_integer("inversion_iterations", 100, "mi_face timing: gradient steps per class.")


def main(argv):
    del argv
    try:
        ks = [int(k) for k in FLAGS.num_models]
    except ValueError:
        raise app.UsageError(f"--num_models must be integers, got {FLAGS.num_models}.")
    checks = [
        (all(k >= 1 for k in ks), f"--num_models must all be >= 1, got {ks}."),
        (set(FLAGS.workloads) <= set(benchmark.WORKLOADS), f"--workloads: known are {sorted(benchmark.WORKLOADS)}."),
        (set(FLAGS.strategies) <= set(benchmark.STRATEGIES), f"--strategies: known are {benchmark.STRATEGIES}."),
        (set(FLAGS.conv_impls) <= set(models.CONV_IMPLS), f"--conv_impls: known are {models.CONV_IMPLS}."),
        (set(FLAGS.precisions) <= set(models.PRECISIONS), f"--precisions: known are {sorted(models.PRECISIONS)}."),
        (FLAGS.examples_per_model >= 1, "--examples_per_model must be >= 1."),
        (FLAGS.batch_size >= 1, "--batch_size must be >= 1."),
        (FLAGS.peak_flops is None or FLAGS.peak_flops > 0, "--peak_flops must be > 0."),
        (FLAGS.peak_flops is None or len(FLAGS.precisions) == 1,
         "--peak_flops is one chip's peak for one precision: give a single --precisions with it."),
        (FLAGS.inversion_classes >= 0 and FLAGS.inversion_iterations >= 1,
         "--inversion_classes must be >= 0 and --inversion_iterations >= 1."),
    ]
    for ok, message in checks:
        if not ok:
            raise app.UsageError(message)
    strategies = list(FLAGS.strategies)
    if "torch" in strategies:
        from jaxpet import torch_reference

        if not torch_reference.torch_available():
            logging.warning("torch is not installed: skipping the PyTorch reference "
                            "(pip install torch==2.13.0 to include it).")
            strategies.remove("torch")
    start = time.perf_counter()
    rows = []
    inversion = None
    for workload in FLAGS.workloads:
        for precision in FLAGS.precisions:
            for conv_impl in FLAGS.conv_impls:
                for k in ks:
                    for strategy in strategies:
                        if strategy == "torch" and (conv_impl != FLAGS.conv_impls[0]
                                                    or precision != "float32"):
                            continue  # one float32 PyTorch reference per workload and K
                        if FLAGS.max_seconds and time.perf_counter() - start > FLAGS.max_seconds:
                            logging.warning("Time budget spent; stopping the sweep.")
                            break
                        cell = benchmark.Cell(workload, strategy, k, conv_impl, precision)
                        row = benchmark.measure(cell, FLAGS.examples_per_model, FLAGS.batch_size,
                                                peak=FLAGS.peak_flops)
                        logging.info("%s: %.0f images/s, compile %.1fs", cell, row["images_per_s"],
                                     row["compile_seconds"])
                        rows.append(row)
                        _write(rows, inversion)
    if FLAGS.inversion_classes:
        inversion = benchmark.measure_inversion(FLAGS.inversion_classes, FLAGS.inversion_iterations)
        _write(rows, inversion)
    print(benchmark.markdown(rows, inversion))


def _write(rows, inversion):
    reporting.write_json(f"{FLAGS.workdir}/benchmark.json", {"cells": rows, "inversion": inversion})
    reporting.write_text(f"{FLAGS.workdir}/benchmark.md", benchmark.markdown(rows, inversion))


if __name__ == "__main__":
    app.run(main)
