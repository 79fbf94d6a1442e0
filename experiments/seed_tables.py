"""Reruns the seed's Tables 1-4 (membership inference) beside the seed's numbers.

  python experiments/seed_tables.py                                  # all 12 cases, full size (GPU)
  python experiments/seed_tables.py --preset=quick --datasets=mnist

Each case's outputs are in <workdir>/<case>/; the table is <workdir>/seed_tables.md.
"""

from jaxpet import cli
from jaxpet.experiments import seed_tables

if __name__ == "__main__":
    cli.main(seed_tables)
