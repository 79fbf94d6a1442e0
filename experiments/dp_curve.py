"""DP-SGD as a membership-inference defence: attack strength against epsilon and accuracy.

  python experiments/dp_curve.py --dataset=cifar10 --preset=quick   # 3 runs: minutes on a CPU
  python experiments/dp_curve.py --dataset=cifar10 --preset=quick --noise_multipliers=0.5,1,2

Writes results.json, privacy_curve.png and privacy_curve.md to the workdir.
"""

from jaxpet import cli
from jaxpet.experiments import dp_curve

if __name__ == "__main__":
    cli.main(dp_curve)
