"""Attribute inference by overlearning (seed Task 3) on UTKFace, end to end.

  python experiments/attribute.py --data_dir=../shared/data
  python experiments/attribute.py --epochs=2 --attack_epochs=2 --max_examples=3000  # smoke test

Writes results.json, confusion.png and summary.md.
"""

from jaxpet import cli
from jaxpet.experiments import attribute

if __name__ == "__main__":
    cli.main(attribute)
