"""Trains K seed CNNs at once on real data and prints each model's accuracy.

  python experiments/train_ensemble.py --dataset=mnist --num_models=4 --epochs=1

Each model gets its own random member set of --train_size examples from the
train split, its own initialisation, data order and dropout stream; all K
train in one vmapped, jitted program. Test accuracy is on the test split.
"""

import json
import time

import sys

from absl import app, flags, logging
import jax
import numpy as np

from jaxpet import data, models, splits, training

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", "mnist", ["mnist", "cifar10"], "Dataset to train on.")
flags.DEFINE_string("data_dir", None, "Folder with the datasets in their release layouts "
                    "(default: $JAXPET_DATA_DIR; else TFDS download).")
flags.DEFINE_integer("num_models", 4, "K, the number of models trained at once.")
flags.DEFINE_enum("role", "target", ["target", "shadow"], "Seed CNN width: target or half-width shadow.")
flags.DEFINE_integer("train_size", 15_000, "Members per model, drawn at random from the train split.")
flags.DEFINE_integer("epochs", 1, "Training epochs.")
flags.DEFINE_integer("batch_size", 128, "Batch size per model.")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate (decayed x0.96 per epoch).")
flags.DEFINE_float("dropout", 0.0, "Dropout rate in the CNN.")
flags.DEFINE_enum("precision", "float32", sorted(models.PRECISIONS), "Compute precision (params stay float32).")
flags.DEFINE_integer("seed", 0, "Seed for member sets and model keys.")
flags.DEFINE_enum("strategy", "auto", list(training.STRATEGIES),
                  "How the K models run: auto (the fastest measured on this backend), vmap, map "
                  "(lax.map), loop (one model at a time). The result does not depend on it.")
flags.DEFINE_string("checkpoint_dir", None, "If set, checkpoint the ensemble there every 5 epochs "
                    "and resume from it on rerun.")


def main(argv):
    del argv
    try:
        dataset = data.load_dataset(FLAGS.dataset, FLAGS.data_dir)
    except data.DataError as e:  # a clear one-line error, not a traceback
        sys.exit(f"error: {e}")
    train, test = dataset.train, dataset.test
    if not 1 <= FLAGS.train_size <= len(train):
        raise app.UsageError(f"--train_size must be in [1, {len(train)}], got {FLAGS.train_size}.")
    if FLAGS.num_models < 1:
        raise app.UsageError(f"--num_models must be >= 1, got {FLAGS.num_models}.")
    model = models.seed_cnn(FLAGS.dataset, FLAGS.role, dropout_rate=FLAGS.dropout,
                            precision=FLAGS.precision)
    config = training.TrainConfig(epochs=FLAGS.epochs, batch_size=FLAGS.batch_size,
                                  learning_rate=FLAGS.learning_rate)
    members = splits.random_member_sets(np.arange(len(train)), FLAGS.num_models, FLAGS.train_size,
                                        seed=FLAGS.seed)
    preprocess = data.normalizer(FLAGS.dataset)
    logging.info("Training %d %s-width %s CNNs on %d examples each, backend %s",
                 FLAGS.num_models, FLAGS.role, FLAGS.dataset, FLAGS.train_size, jax.default_backend())
    start = time.perf_counter()
    result = training.train_ensemble(model, train.images, train.labels, members, config,
                                     seed=FLAGS.seed, preprocess=preprocess,
                                     strategy=FLAGS.strategy, checkpoint_dir=FLAGS.checkpoint_dir)
    seconds = time.perf_counter() - start
    train_eval = training.evaluate(model, result.variables(), train.images, train.labels, members,
                                   preprocess=preprocess)
    test_sets = splits.MemberSets.replicate(np.arange(len(test)), FLAGS.num_models)
    test_eval = training.evaluate(model, result.variables(), test.images, test.labels, test_sets,
                                  preprocess=preprocess)
    for k in range(FLAGS.num_models):
        print(f"model {k}: train_acc {train_eval['accuracy'][k]:.4f}  test_acc {test_eval['accuracy'][k]:.4f}")
    print(json.dumps({
        "backend": jax.default_backend(), "num_models": FLAGS.num_models, "epochs": FLAGS.epochs,
        "seconds_incl_compile": round(seconds, 2),
        "images_per_second": round(FLAGS.num_models * FLAGS.train_size * FLAGS.epochs / seconds, 1),
    }))


if __name__ == "__main__":
    app.run(main)
