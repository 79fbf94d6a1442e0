"""Attribute inference by overlearning (seed Task 3): does a gender model leak race?

  python experiments/attribute.py --data_dir=../shared/data               # the seed's full run
  python experiments/attribute.py --num_targets=5                          # mean ± std over 5 targets
  python experiments/attribute.py --epochs=2 --attack_epochs=2 --max_examples=3000  # smoke test

Writes results.json, confusion.png and summary.md to --workdir.
"""

import sys

from absl import app, flags, logging

from jaxpet import attribute, data, membership

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Folder holding UTKFace (e.g. ../shared/data with "
                    "UTKFace-64px.tar.gz); default: $JAXPET_DATA_DIR.")
flags.DEFINE_string("workdir", "runs/attribute_utkface", "Output folder.")
flags.DEFINE_integer("seed", 0, "Seed for the split, model initialisation and data order.")
flags.DEFINE_string("target_attribute", "gender", "Attribute the target model is trained to predict.")
flags.DEFINE_string("attribute", "race", "Attribute the attacker infers from the representation.")
flags.DEFINE_enum("layer", "fc2", list(attribute.LAYERS),
                  "Target layer given to the attacker (fc2: the last hidden layer).")
flags.DEFINE_list("compare_layers", [], "More target layers to attack the same way (e.g. "
                  "conv3,fc1), reported beside --layer with their untrained-target controls.")
flags.DEFINE_integer("image_size", 50, "Images are resized to this square size (seed: 50).")
flags.DEFINE_float("test_fraction", 0.1, "Fraction held out for testing (seed: 0.1).")
flags.DEFINE_integer("max_examples", None, "Use a seeded subset of this many examples (smoke runs).")
flags.DEFINE_integer("num_targets", 1, "Targets trained with different seeds in one vmapped call; "
                     "every number is reported as mean and std over them.")
flags.DEFINE_integer("epochs", 50, "Target training epochs (seed: 50).")
flags.DEFINE_integer("batch_size", 128, "Target batch size (seed: 128).")
flags.DEFINE_integer("attack_epochs", 50, "Attack MLP training epochs (seed: 50).")
flags.DEFINE_integer("attack_batch_size", 128, "Attack MLP batch size (seed: 128).")
flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16"],
                  "Compute precision; parameters stay float32.")

_FIELDS = ("data_dir", "workdir", "seed", "target_attribute", "attribute", "layer", "image_size",
           "test_fraction", "max_examples", "num_targets", "epochs", "batch_size", "attack_epochs",
           "attack_batch_size", "precision")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        config = attribute.AttributeConfig(**{name: FLAGS[name].value for name in _FIELDS},
                                           compare_layers=tuple(FLAGS.compare_layers))
        config.validate()
        membership.check_workdir(config.workdir)
    except ValueError as e:
        raise app.UsageError(str(e))
    try:
        attribute.run(config)
    except (data.DataError, attribute.InputError) as e:  # bad data or split: one clear line
        sys.exit(f"error: {e}")
    logging.info("Done: %s", config.workdir)
    print(open(f"{config.workdir}/summary.md").read())


if __name__ == "__main__":
    app.run(main)
