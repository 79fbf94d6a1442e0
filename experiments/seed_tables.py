"""Reruns the seed's Tables 1-4 (membership inference) and writes them beside the seed's numbers.

  python experiments/seed_tables.py                      # all 12 cases, full size (GPU)
  python experiments/seed_tables.py --preset=quick --datasets=mnist

Cases that differ only in the attack (3 vs 10 posteriors) share one trained
target and shadow through a common phase folder. Each case's full outputs are
in <workdir>/<case>/; the table is <workdir>/seed_tables.md.
"""

import os
import sys
import time

from absl import app, flags, logging

from jaxpet import data, membership, reporting

FLAGS = flags.FLAGS
flags.DEFINE_list("datasets", ["cifar10", "mnist"], "Datasets whose tables to rerun.")
flags.DEFINE_enum("preset", "seed", sorted(membership.PRESETS), "Configuration preset (see membership.py).")
flags.DEFINE_string("workdir", "runs/seed_tables", "Output folder.")
flags.DEFINE_string("data_dir", None, "Dataset folder (default: $JAXPET_DATA_DIR).")
flags.DEFINE_integer("seed", 0, "Seed for every case.")
flags.DEFINE_list("cases", [], "Only these case names (e.g. cifar10_p10_e50); default all.")
flags.DEFINE_float("max_seconds", 0, "Start no new case after this many seconds (0: no limit).")
flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16"], "Compute precision.")
flags.DEFINE_float("width_scale", None, "Override the preset's CNN width scale.")
flags.DEFINE_integer("train_size", None, "Override the preset's members per model.")
flags.DEFINE_integer("val_size", None, "Override the preset's validation size.")
flags.DEFINE_integer("attack_epochs", None, "Override the preset's attack epochs.")


def main(argv):
    del argv
    start = time.perf_counter()
    unknown = set(FLAGS.datasets) - set(membership.DATASETS)
    if unknown:
        raise app.UsageError(f"--datasets: unknown {sorted(unknown)}; known: {membership.DATASETS}.")
    names = {c.name for c in membership.SEED_CASES}
    if set(FLAGS.cases) - names:
        raise app.UsageError(f"--cases: unknown {sorted(set(FLAGS.cases) - names)}; known: {sorted(names)}.")
    # Order: the headline 50-epoch cases first, so a time limit keeps the most important ones.
    cases = [c for c in membership.SEED_CASES if c.dataset in FLAGS.datasets and (not FLAGS.cases or c.name in FLAGS.cases)]
    cases.sort(key=lambda c: (c.epochs != 50 or c.defense != "none", c.defense != "none", FLAGS.datasets.index(c.dataset)))
    rows = []
    for case in cases:
        if FLAGS.max_seconds and time.perf_counter() - start > FLAGS.max_seconds:
            logging.warning("Time budget spent; skipping %s", case.name)
            continue
        config = membership.make_config(
            FLAGS.preset, dataset=case.dataset, workdir=f"{FLAGS.workdir}/{case.name}",
            phase_dir=f"{FLAGS.workdir}/phases", data_dir=FLAGS.data_dir, seed=FLAGS.seed,
            epochs=case.epochs, num_posteriors=case.num_posteriors, defense=case.defense,
            precision=FLAGS.precision, width_scale=FLAGS.width_scale, train_size=FLAGS.train_size,
            val_size=FLAGS.val_size, attack_epochs=FLAGS.attack_epochs)
        logging.info("Case %s", case.name)
        try:
            results = membership.run(config)
        except data.DataError as e:
            sys.exit(f"error: {e}")
        rows.append(case)
        # The table holds every case finished in this workdir, by this run or an earlier one.
        table = membership.seed_table_markdown(_finished_cases(FLAGS.workdir, FLAGS.preset))
        reporting.write_text(f"{FLAGS.workdir}/seed_tables.md", "# Seed Tables 1-4, rerun\n\n" + table)
    print(open(f"{FLAGS.workdir}/seed_tables.md").read() if rows else "No case ran.")


def _finished_cases(workdir, preset):
    finished = []
    for case in membership.SEED_CASES:
        path = f"{workdir}/{case.name}/results.json"
        if not os.path.exists(path):
            continue
        results = reporting.read_json(path)
        c = results["config"]
        note = (f"{preset}: {results['data']['members_per_model']} members, width x{c['width_scale']}, "
                f"{c['attack_epochs']} attack epochs, {results['backend']} {results['devices'][0]}")
        finished.append((case, results, note))
    return finished


if __name__ == "__main__":
    app.run(main)
