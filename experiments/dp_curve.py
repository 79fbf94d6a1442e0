"""DP-SGD as a membership-inference defence: attack strength against epsilon and accuracy.

  python experiments/dp_curve.py --dataset=cifar10 --preset=quick --noise_multipliers=0.5,1,2

Runs the membership experiment once without a defence and once per noise
multiplier with --defense=dpsgd (GroupNorm CNNs, per-example clipping, Gaussian
noise), then writes privacy_curve.png/.json/.md to --workdir. Finished runs in
--workdir are reused.
"""

import sys

from absl import app, flags

from jaxpet import data, membership

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", "cifar10", list(membership.DATASETS), "Dataset to attack.")
flags.DEFINE_string("data_dir", None, "Dataset folder (default: $JAXPET_DATA_DIR).")
flags.DEFINE_string("workdir", None, "Output folder (default: runs/dp_curve_<dataset>_<preset>).")
flags.DEFINE_enum("preset", "quick", sorted(membership.PRESETS), "Membership preset for every run.")
flags.DEFINE_list("noise_multipliers", ["0.5", "1", "2"], "DP-SGD noise multipliers, one run each.")
flags.DEFINE_float("dp_clip_norm", 1.0, "Per-example gradient clip norm.")
flags.DEFINE_float("dp_delta", 1e-5, "delta at which epsilon is reported.")
flags.DEFINE_integer("epochs", None, "Override the preset's training epochs.")
flags.DEFINE_integer("train_size", None, "Override the preset's members per model.")
flags.DEFINE_float("width_scale", None, "Override the preset's CNN width scale.")
flags.DEFINE_integer("seed", 0, "Seed of every run.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        sigmas = [float(s) for s in FLAGS.noise_multipliers]
    except ValueError:
        raise app.UsageError(f"--noise_multipliers must be numbers, got {FLAGS.noise_multipliers}.")
    workdir = FLAGS.workdir or f"runs/dp_curve_{FLAGS.dataset}_{FLAGS.preset}"
    overrides = dict(epochs=FLAGS.epochs, train_size=FLAGS.train_size, width_scale=FLAGS.width_scale)
    try:
        base = membership.make_config(
            FLAGS.preset, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, workdir=workdir,
            seed=FLAGS.seed, dp_clip_norm=FLAGS.dp_clip_norm, dp_delta=FLAGS.dp_delta, **overrides)
        base.validate()
        for s in sigmas:
            membership.MembershipConfig(**{**base.__dict__, "defense": "dpsgd",
                                           "dp_noise_multiplier": s}).validate()
        membership.check_workdir(workdir)
    except ValueError as e:
        raise app.UsageError(str(e))
    try:
        membership.privacy_curve(base, sigmas)
    except data.DataError as e:
        sys.exit(f"error: {e}")
    print(open(f"{workdir}/privacy_curve.md").read())


if __name__ == "__main__":
    app.run(main)
