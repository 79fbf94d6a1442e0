"""Model inversion (mi_face, seed Task 2) on AT&T faces, end to end.

  python experiments/inversion.py --data_dir=../shared/data

Writes results.json, summary.md, inversions.npz, iterations.png and all_classes.png.
"""

from jaxpet import cli
from jaxpet.experiments import inversion

if __name__ == "__main__":
    cli.main(inversion)
