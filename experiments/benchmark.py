"""Benchmarks the ensemble trainer: K models per strategy, against PyTorch, and mi_face.

  python experiments/benchmark.py                                     # CPU-sized default sweep
  python experiments/benchmark.py --preset=quick                      # a few minutes on a CPU
  python experiments/benchmark.py --workloads=cifar10_shadow --num_models=1,8,64,256 \
      --examples_per_model=12500 --conv_impls=conv,patches --precisions=float32,bfloat16

Writes results.json and benchmark.md after every cell.
"""

from jaxpet import cli
from jaxpet.experiments import benchmark

if __name__ == "__main__":
    cli.main(benchmark)
