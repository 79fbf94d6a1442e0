"""LiRA and RMIA membership inference with N models trained at once, end to end.

  python experiments/lira.py --dataset=cifar10                  # the full setting (GPU)
  python experiments/lira.py --dataset=cifar10 --preset=quick   # minutes on a 2-core CPU
  python experiments/lira.py --dataset=cifar10 --num_models=16 --pool_size=5000 \
      --width_scale=0.25 --epochs=20 --workdir=runs/lira_cifar10_quick  # the docs' CPU run

Writes results.json, summary.md, roc.png and sweep.png; the logits are a stage reused by a
rerun with the same training flags and data, so the scoring flags can change for free.
"""

from jaxpet import cli
from jaxpet.experiments import lira

if __name__ == "__main__":
    cli.main(lira)
