"""Reruns the seed's Tables 1-4 (membership inference) beside the seed's numbers.

  python experiments/seed_tables.py                  # all 12 cases, full size (GPU)
  python experiments/seed_tables.py --preset=quick   # two CIFAR-10 cases, reduced: minutes on a CPU
  python experiments/seed_tables.py --preset=quick --datasets=mnist --cases=  # every MNIST case

Each case's outputs are in <workdir>/<case>/; the table is <workdir>/seed_tables.md.
"""

from jaxpet import cli
from jaxpet.experiments import seed_tables

if __name__ == "__main__":
    cli.main(seed_tables)
