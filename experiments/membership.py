"""Membership inference with shadow models (seed Task 1), end to end.

  python experiments/membership.py --dataset=cifar10 --preset=quick  # a few minutes on a CPU
  python experiments/membership.py --dataset=cifar10                 # the seed's full run (GPU)

Writes config.json, results.json, predictions.npz, roc.png and summary.md to the workdir;
finished stages (trained target and shadows) are reused by a rerun. Flags given explicitly
override the preset's values; --help lists every flag with its default.
"""

from jaxpet import cli
from jaxpet.experiments import membership

if __name__ == "__main__":
    cli.main(membership)
