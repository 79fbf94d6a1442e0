"""Membership inference with shadow models (seed Task 1), end to end.

  python experiments/membership.py --dataset=cifar10              # the seed's full run (GPU)
  python experiments/membership.py --dataset=cifar10 --preset=quick  # a few minutes on a CPU

Writes results.json, predictions.npz, roc.png and summary.md to --workdir.
Flags given explicitly override the preset's values.
"""

import sys

from absl import app, flags, logging

from jaxpet import data, membership, training

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", "cifar10", list(membership.DATASETS), "Dataset to attack.")
flags.DEFINE_string("data_dir", None, "Folder with the datasets in their release layouts "
                    "(default: $JAXPET_DATA_DIR; else a TFDS download).")
flags.DEFINE_string("workdir", None, "Output folder (default: runs/membership_<dataset>[_<preset>]). "
                    "Rerunning with the same config reuses the finished phases saved there.")
flags.DEFINE_enum("preset", "seed", sorted(membership.PRESETS),
                  "seed: the write-up's full configuration; quick: a reduced CIFAR/MNIST run for a CPU "
                  "(quarter-width CNNs, 2,500 members, 15 epochs).")
flags.DEFINE_integer("seed", 0, "Seed for splits, model initialisation and data order.")
flags.DEFINE_integer("epochs", None, "Target and shadow training epochs (seed preset: 50).")
flags.DEFINE_integer("attack_epochs", None, "Attack MLP training epochs (seed preset: 50).")
flags.DEFINE_integer("train_size", None, "Members per model (default: a quarter of the train split).")
flags.DEFINE_integer("val_size", None, "Validation slice of each out part, for early stopping (seed: 1000).")
flags.DEFINE_integer("num_posteriors", None, "Sorted posteriors fed to the attack: 3 or 10.")
flags.DEFINE_enum("defense", None, list(membership.DEFENSES),
                  "none; dropout_early_stopping (dropout 0.5 and early stopping on validation); or "
                  "dpsgd (DP-SGD: GroupNorm CNNs, per-example clipping, Gaussian noise; epsilon "
                  "reported).")
flags.DEFINE_enum("norm", None, ["batch", "group", "none"],
                  "CNN normalisation (default: batch, the seed's; group under --defense=dpsgd, which "
                  "refuses batch).")
flags.DEFINE_float("dp_noise_multiplier", None, "DP-SGD noise std / clip norm (default 1.0).")
flags.DEFINE_float("dp_clip_norm", None, "DP-SGD per-example gradient clip norm (default 1.0).")
flags.DEFINE_float("dp_delta", None, "delta at which DP-SGD's epsilon is reported (default 1e-5).")
flags.DEFINE_enum("strategy", None, list(training.STRATEGIES),
                  "How the ensemble's models run: auto (fastest measured on this backend), vmap, "
                  "map (lax.map), loop (one model at a time). Results do not depend on it.")
flags.DEFINE_integer("checkpoint_every", None, "Epochs between checkpoints of a training phase "
                     "(default 5); a rerun resumes an interrupted phase from its last checkpoint.")
flags.DEFINE_integer("num_shadow", None, "Shadow models, trained together in one vmapped call (seed: 1).")
flags.DEFINE_enum("precision", None, ["float32", "bfloat16"], "Compute precision; parameters stay float32.")
flags.DEFINE_integer("batch_size", None, "Target/shadow batch size (seed: 128).")
flags.DEFINE_integer("patience", None, "Early-stopping patience in epochs.")
flags.DEFINE_float("width_scale", None, "Multiplies the seed CNN widths (1.0 = the seed's).")

_OVERRIDABLE = ("seed", "epochs", "attack_epochs", "train_size", "val_size", "num_posteriors", "defense",
                "num_shadow", "precision", "batch_size", "patience", "width_scale", "data_dir",
                "dp_noise_multiplier", "dp_clip_norm", "dp_delta", "strategy", "checkpoint_every",
                "norm")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    overrides = {name: FLAGS[name].value for name in _OVERRIDABLE if FLAGS[name].value is not None}
    suffix = "" if FLAGS.preset == "seed" else f"_{FLAGS.preset}"
    workdir = FLAGS.workdir or f"runs/membership_{FLAGS.dataset}{suffix}"
    try:
        config = membership.make_config(FLAGS.preset, dataset=FLAGS.dataset, workdir=workdir, **overrides)
        config.validate()
        membership.check_workdir(config.workdir)
    except ValueError as e:
        raise app.UsageError(str(e))
    try:
        results = membership.run(config)
    except data.DataError as e:  # a clear one-line error, not a traceback
        sys.exit(f"error: {e}")
    logging.info("Done: %s", config.workdir)
    print(open(f"{config.workdir}/summary.md").read())
    del results


if __name__ == "__main__":
    app.run(main)
