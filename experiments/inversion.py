"""Model inversion (mi_face, seed Task 2) on AT&T faces, end to end.

  python experiments/inversion.py --data_dir=../shared/data

Trains the face MLP target and an evaluator of another architecture, inverts
all 40 people in one vmapped call per iteration budget (5, 10, 100 and a run
with Fredrikson's stopping rules), and writes results.json, summary.md,
inversions.npz, iterations.png and all_classes.png to --workdir.
"""

from absl import app, flags, logging

from jaxpet import inversion

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Folder holding att_faces (folder, .tar.gz or .zip); "
                    "default $JAXPET_DATA_DIR.")
flags.DEFINE_string("workdir", "runs/inversion", "Output folder.")
flags.DEFINE_integer("seed", 0, "Seed for the holdout split and the models (the evaluator uses seed+1).")
flags.DEFINE_integer("val_per_person", 3, "Images of each person held out for validation (seed: 3 of 10).")
flags.DEFINE_integer("target_hidden", 3000, "Sigmoid units of the target face MLP (Fredrikson: 3000).")
flags.DEFINE_integer("epochs", 30, "Target training epochs (seed: 30).")
flags.DEFINE_integer("evaluator_epochs", 30, "Evaluator training epochs.")
flags.DEFINE_integer("batch_size", 64, "Training batch size of both models (seed: 64).")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate of both models (plain Adam: no decay, no L2).")
flags.DEFINE_enum("input_norm", "pm1", list(inversion.INPUT_NORMS),
                  "What the models see: pm1 = (pixel - 0.5) / 0.5, which reproduces the seed's train "
                  "loss of 0.003; unit = pixels in [0, 1]. The attack's pixels are in [0, 1] either way.")
flags.DEFINE_enum("evaluator", "cnn", list(inversion.EVALUATORS),
                  "Independent model that judges the reconstructions: cnn (LeNet at half width), "
                  "lenet (full width; slow on a CPU) or mlp (512 ReLU units).")
flags.DEFINE_float("step_size", 0.1, "Gradient step lambda on the pixels (seed and paper: 0.1).")
flags.DEFINE_enum("loss", "cross_entropy", list(inversion.LOSSES),
                  "What each step descends: cross_entropy (-log p, the seed's) or one_minus_p (the "
                  "paper's cost). Best image and stopping rules always use the cost 1 - p.")
flags.DEFINE_enum("init", "gray", list(inversion.INITS),
                  "Start image: gray (0.5, the model's zero input under pm1) or black (0).")
flags.DEFINE_enum("process", "none", list(inversion.PROCESSES),
                  "Process step between iterations (the paper's denoise/sharpen); off by default.")
flags.DEFINE_list("iterations", ["5", "10", "100"], "Fixed iteration budgets to run and draw.")
flags.DEFINE_integer("max_iterations", 1000, "Stopping-rule run: at most this many steps (alpha).")
flags.DEFINE_integer("patience", 100, "Stopping-rule run: stop after this many steps without a new "
                     "best cost (beta); 0 turns it off.")
flags.DEFINE_float("cost_threshold", 0.01, "Stopping-rule run: stop once the cost 1 - p is at most "
                   "this (gamma); a negative value turns it off.")
flags.DEFINE_integer("figure_people", 6, "People (rows) in iterations.png.")
flags.DEFINE_bool("time_loop", True, "Also time a Python loop over classes against the vmapped call.")
flags.DEFINE_integer("speed_iterations", 100, "Iterations per class in the vmap-against-loop timing.")
flags.DEFINE_list("variants", list(inversion.VARIANTS),
                  f"Alternative settings run at 100 iterations for comparison; any of "
                  f"{sorted(inversion.VARIANTS)}, or empty.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        iterations = tuple(int(i) for i in FLAGS.iterations)
    except ValueError:
        raise app.UsageError(f"--iterations must be integers, got {FLAGS.iterations}.")
    config = inversion.ExperimentConfig(
        data_dir=FLAGS.data_dir, workdir=FLAGS.workdir, seed=FLAGS.seed,
        val_per_person=FLAGS.val_per_person, target_hidden=FLAGS.target_hidden, epochs=FLAGS.epochs,
        evaluator_epochs=FLAGS.evaluator_epochs, batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate, input_norm=FLAGS.input_norm, evaluator=FLAGS.evaluator,
        step_size=FLAGS.step_size, loss=FLAGS.loss, init=FLAGS.init, process=FLAGS.process,
        iterations=iterations, max_iterations=FLAGS.max_iterations,
        patience=FLAGS.patience or None,
        cost_threshold=FLAGS.cost_threshold if FLAGS.cost_threshold >= 0 else None,
        figure_people=FLAGS.figure_people, time_loop=FLAGS.time_loop,
        speed_iterations=FLAGS.speed_iterations,
        variants=tuple(v for v in FLAGS.variants if v))
    try:
        config.validate()
    except ValueError as e:
        raise app.UsageError(str(e))
    inversion.run(config)
    logging.info("Done: %s", config.workdir)
    print(open(f"{config.workdir}/summary.md").read())


if __name__ == "__main__":
    app.run(main)
