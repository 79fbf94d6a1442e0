"""Model inversion (mi_face, seed Task 2) on AT&T faces, end to end.

  python experiments/inversion.py --data_dir=../shared/data
  python experiments/inversion.py --data_dir=../shared/data --preset=quick  # minutes on a CPU

--preset=quick trains for 15 epochs with the MLP evaluator, caps the stopping-rule run at 300
steps, runs one variant and times the loop at 10 iterations, in runs/inversion_quick; flags
given beside it override it.

Writes results.json, summary.md, inversions.npz, iterations.png and all_classes.png.
"""

from jaxpet import cli
from jaxpet.experiments import inversion

if __name__ == "__main__":
    cli.main(inversion)
