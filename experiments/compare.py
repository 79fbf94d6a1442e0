"""Compares finished runs: one table of their headline figures, rows labelled by what differs.

  python experiments/compare.py runs/membership_cifar10_quick*  --output=runs/compare

Writes compare.md (printed), compare.csv (one row per run, for pandas), roc.png (every run's
ROC curves per attack, from runs that keep per-example scores) and compare.html (the table,
the curves and a link to each run's report.html) to --output, a folder of the comparison's
own: a run's workdir is refused.
"""

import sys

from absl import app, flags

from jaxpet import cli, compare

flags.DEFINE_string("output", "runs/compare", "Folder the comparison is written to (its own: "
                    "not a run's workdir).")
flags.DEFINE_list("attacks", [], "Attacks drawn in roc.png (default: every attack of the runs).")
cli.define_output_flags()
FLAGS = flags.FLAGS


def parse_flags(argv):
    """absl's parse, with an unknown or ill-formed flag as one ``error:`` line (exit 1), as
    every other script reports it; the other arguments are the runs' workdirs."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"error: {e} — see --help for every flag and its values.")


def main(argv):
    cli.apply_output_flags()
    records = cli.guarded(compare.load_runs, argv[1:])
    written = cli.guarded(compare.write_comparison, records, FLAGS.output, FLAGS.attacks or None)
    print(written["markdown"].read_text())
    print(f"Written: {', '.join(str(p) for p in written.values())}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
