"""Trains K seed CNNs at once on real data and reports each model's accuracy.

  python experiments/train_ensemble.py --dataset=mnist --num_models=4 --epochs=1
  python experiments/train_ensemble.py --preset=quick     # a few minutes on a CPU

Writes results.json and summary.md; a rerun reuses the trained ensemble.
"""

from jaxpet import cli
from jaxpet.experiments import train_ensemble

if __name__ == "__main__":
    cli.main(train_ensemble)
