r"""LiRA and RMIA membership inference with N models trained at once, end to end.

  python experiments/lira.py --dataset=cifar10 --num_models=16        # the full setting (GPU)
  python experiments/lira.py --dataset=cifar10 --num_models=16 --pool_size=5000 \
      --width_scale=0.25 --epochs=20 --workdir=runs/lira_cifar10_quick  # a reduced CPU run

Trains --num_models seed CNNs on a balanced keep mask over the pool (every
example in exactly half the models), saves their logits once to
<workdir>/logits.npz (a rerun with the same training flags reuses them, so the
scoring flags can be changed for free), then scores every model as the target
in turn with the others as references. Writes results.json, summary.md,
roc.png and sweep.png to --workdir.
"""

import sys

from absl import app, flags, logging

from jaxpet import data, lira, models, training

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", "cifar10", list(lira.DATASETS), "Dataset to attack.")
flags.DEFINE_string("data_dir", None, "Folder with the datasets in their release layouts "
                    "(default: $JAXPET_DATA_DIR; else a TFDS download).")
flags.DEFINE_string("workdir", None, "Output folder (default: runs/lira_<dataset>). It keeps "
                    "logits.npz, reused when the training flags match and refused when they differ.")
flags.DEFINE_integer("seed", 0, "Seed for the pool, the keep mask, initialisation and data order.")
flags.DEFINE_integer("num_models", 16, "N, models trained together in one vmapped call; even, "
                     "since every example is a member of exactly half of them.")
flags.DEFINE_integer("pool_size", None, "Candidate examples drawn at random from the train split "
                     "(default: all of it); each model trains on half of them.")
flags.DEFINE_integer("population_size", 10_000, "Test-split examples used as RMIA's reference "
                     "population z (capped at the split's size).")
flags.DEFINE_integer("epochs", 50, "Training epochs of every model.")
flags.DEFINE_integer("batch_size", 128, "Batch size per model.")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate (decayed x0.96 per epoch).")
flags.DEFINE_float("width_scale", 1.0, "Multiplies the seed target CNN's widths (0.25: quick CPU runs).")
flags.DEFINE_enum("precision", "float32", sorted(models.PRECISIONS),
                  "Compute precision; parameters stay float32.")
flags.DEFINE_enum("defense", "none", list(lira.DEFENSES),
                  "Training defence: none, or dpsgd (GroupNorm CNNs, per-example clipping and "
                  "Gaussian noise; epsilon reported).")
flags.DEFINE_float("dp_noise_multiplier", 1.0, "DP-SGD noise std / clip norm (> 0).")
flags.DEFINE_float("dp_clip_norm", 1.0, "DP-SGD per-example gradient clip norm.")
flags.DEFINE_float("dp_delta", 1e-5, "delta in (0, 1) at which DP-SGD's epsilon is reported.")
flags.DEFINE_enum("strategy", "auto", list(training.STRATEGIES),
                  "How the ensemble's models run (results do not depend on it).")
flags.DEFINE_integer("checkpoint_every", 5, "Epochs between checkpoints; a rerun of an "
                     "interrupted run resumes from the last one.")
flags.DEFINE_bool("augment_training", False, "Train with random horizontal flips and 4-pixel "
                  "crops (the published LiRA/RMIA models' recipe).")
flags.DEFINE_bool("augment_queries", True, "Query each example's horizontal flip too and average "
                  "over both queries, as both papers do (scoring only: the logits hold both).")
flags.DEFINE_integer("num_targets", None, "How many models (0, 1, ...) to score as the target in "
                     "turn (default: all).")
flags.DEFINE_float("rmia_offline_a", 0.3, "RMIA offline: a in Pr(x) = ((1 + a) Pr_OUT(x) + (1 - a)) / 2.")
flags.DEFINE_float("rmia_gamma", 2.0, "RMIA: x dominates z when its likelihood ratio against z "
                   "is at least gamma.")
flags.DEFINE_integer("max_reference_sweep", None, "Largest number of reference models in the "
                     "sweep 1, 2, 4, ... (default: num_models - 1).")
flags.DEFINE_integer("eval_batch_size", 256, "Images per prediction call (memory only).")

_FIELDS = ("data_dir", "seed", "num_models", "pool_size", "population_size", "epochs", "batch_size",
           "learning_rate", "width_scale", "precision", "defense", "augment_training",
           "augment_queries", "num_targets",
           "rmia_offline_a", "rmia_gamma", "max_reference_sweep", "eval_batch_size",
           "dp_noise_multiplier", "dp_clip_norm", "dp_delta", "strategy", "checkpoint_every")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    values = {name: FLAGS[name].value for name in _FIELDS}
    workdir = FLAGS.workdir or f"runs/lira_{FLAGS.dataset}"
    try:
        config = lira.LiraConfig(dataset=FLAGS.dataset, workdir=workdir, **values)
        config.validate()
    except ValueError as e:
        raise app.UsageError(str(e))
    try:
        lira.run(config)
    except (data.DataError, lira.WorkdirMismatchError) as e:  # one line, not a traceback
        sys.exit(f"error: {e}")
    logging.info("Done: %s", config.workdir)
    print(open(f"{config.workdir}/summary.md").read())


if __name__ == "__main__":
    app.run(main)
