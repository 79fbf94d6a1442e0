"""Attribute inference by overlearning (seed Task 3) on UTKFace, end to end.

  python experiments/attribute.py --data_dir=../shared/data
  python experiments/attribute.py --data_dir=../shared/data --preset=quick  # minutes on a CPU

--preset=quick uses 5,000 faces instead of all of them, 10 target and 20 attack epochs
instead of 50 each, and attacks conv3 beside fc2, in runs/attribute_utkface_quick; flags
given beside it override it.

Writes results.json, confusion.png and summary.md.
"""

from jaxpet import cli
from jaxpet.experiments import attribute

if __name__ == "__main__":
    cli.main(attribute)
