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
flags.DEFINE_list("strategies", list(benchmark.STRATEGIES), "vmap (the product) and/or loop.")
flags.DEFINE_list("conv_impls", ["auto"], f"Convolution forms: {models.CONV_IMPLS}.")
flags.DEFINE_list("precisions", ["float32"], "float32 and/or bfloat16.")
flags.DEFINE_integer("examples_per_model", 512, "Members per model (one timed epoch over them).")
flags.DEFINE_integer("batch_size", 128, "Batch size per model.")
flags.DEFINE_string("workdir", "runs/benchmark", "Output folder.")
flags.DEFINE_float("max_seconds", 0, "Start no new cell after this many seconds (0: no limit).")


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
    ]
    for ok, message in checks:
        if not ok:
            raise app.UsageError(message)
    start = time.perf_counter()
    rows = []
    for workload in FLAGS.workloads:
        for precision in FLAGS.precisions:
            for conv_impl in FLAGS.conv_impls:
                for k in ks:
                    for strategy in FLAGS.strategies:
                        if FLAGS.max_seconds and time.perf_counter() - start > FLAGS.max_seconds:
                            logging.warning("Time budget spent; stopping the sweep.")
                            break
                        cell = benchmark.Cell(workload, strategy, k, conv_impl, precision)
                        row = benchmark.measure(cell, FLAGS.examples_per_model, FLAGS.batch_size)
                        logging.info("%s: %.0f images/s, compile %.1fs", cell, row["images_per_s"],
                                     row["compile_seconds"])
                        rows.append(row)
                        reporting.write_json(f"{FLAGS.workdir}/benchmark.json", rows)
                        reporting.write_text(f"{FLAGS.workdir}/benchmark.md", benchmark.markdown(rows))
    print(benchmark.markdown(rows))


if __name__ == "__main__":
    app.run(main)
