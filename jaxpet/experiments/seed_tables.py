"""The seed's Tables 1-4 (membership inference) rerun and set beside the seed's numbers.

Cases that differ only in the attack (3 vs 10 posteriors) share one trained
target and shadow through the shared stage folder ``<workdir>/stages``. Each
case's full outputs are in ``<workdir>/<case>/``; the table is
``<workdir>/seed_tables.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import time

from absl import logging

from jaxpet import config as config_lib, data, files, page, report, runs
from jaxpet.config import inherit, setting
from jaxpet.experiments import membership


@dataclasses.dataclass(frozen=True)
class SeedCase:
    """One row of the seed's Tables 1-4 and the numbers it reported (accuracies in %)."""

    dataset: str
    num_posteriors: int
    epochs: int
    defense: str
    target: tuple[float, float]  # train, test
    shadow: tuple[float, float]
    attack: tuple[float, float, float, float, float]  # train acc, test acc, precision, recall, F1

    @property
    def name(self) -> str:
        suffix = "" if self.defense == "none" else "_dropout_es"
        return f"{self.dataset}_p{self.num_posteriors}_e{self.epochs}{suffix}"


_ES = "dropout_early_stopping"
# Khullar, Zerweck, Keil, Arya, "Privacy Enhancing Technologies, Phase-1" (the seed), Tables 1-4.
SEED_CASES = (
    SeedCase("cifar10", 10, 30, "none", (100, 69.62), (99.98, 68.91), (70.26, 71.07, .78, .71, .69)),  # noqa: E501
    SeedCase("cifar10", 3, 30, "none", (99.99, 69.73), (99.98, 69.90), (68.88, 69.90, .79, .70, .67)),  # noqa: E501
    SeedCase("cifar10", 10, 50, "none", (100, 70.18), (100, 69.17), (73.14, 74.12, .81, .74, .73)),
    SeedCase("cifar10", 3, 50, "none", (100, 69.76), (100, 68.72), (71.66, 72.55, .81, .73, .71)),
    SeedCase("cifar10", 10, 50, _ES, (90.95, 65.23), (79.05, 64.85), (53.51, 50.64, .51, .51, .50)),
    SeedCase("cifar10", 3, 50, _ES, (80.45, 62.60), (87.12, 63.38), (53.26, 51.48, .52, .51, .51)),
    SeedCase("mnist", 10, 30, "none", (100, 98.88), (100, 98.56), (51.31, 51.48, .52, .51, .51)),
    SeedCase("mnist", 3, 30, "none", (100, 98.86), (100, 98.55), (52.06, 52.18, .75, .52, .38)),
    SeedCase("mnist", 10, 50, "none", (100, 98.77), (100, 98.71), (51.62, 51.58, .52, .52, .51)),
    SeedCase("mnist", 3, 50, "none", (100, 98.77), (100, 98.63), (52.49, 52.86, .75, .53, .39)),
    SeedCase("mnist", 10, 50, _ES, (99.31, 98.55), (98.35, 97.11), (51.32, 50.83, .51, .51, .50)),
    SeedCase("mnist", 3, 50, _ES, (99.19, 98.65), (98.40, 97.04), (50.71, 50.07, .50, .50, .37)),
)
CASE_NAMES = tuple(c.name for c in SEED_CASES)


@dataclasses.dataclass(frozen=True)
class Config:
    """Which cases to rerun and the membership preset (with overrides) they run under."""

    datasets: tuple[str, ...] = setting(membership.DATASETS, "Datasets whose tables to rerun.",
                                        choices=membership.DATASETS)
    cases: tuple[str, ...] = setting((), "Only these cases (default: all of --datasets).",
                                     choices=CASE_NAMES)
    preset: str = setting("seed", "The preset this config came from (recorded); every case "
                          "starts from membership.py's preset of that name.",
                          choices=tuple(membership.PRESETS), flag=False)
    workdir: str = setting("runs/seed_tables", "Output folder: one subfolder per case, the "
                           "trained stages shared in <workdir>/stages.")
    max_seconds: float = setting(0.0, "Start no new case after this many seconds (0: no limit).",
                                 low=0)
    data_dir: str | None = inherit(membership.Config, "data_dir")
    seed: int = inherit(membership.Config, "seed", default=0)
    precision: str = inherit(membership.Config, "precision", default="float32")
    width_scale: float | None = inherit(membership.Config, "width_scale")
    train_size: int | None = inherit(membership.Config, "train_size")
    val_size: int | None = inherit(membership.Config, "val_size")
    attack_epochs: int | None = inherit(membership.Config, "attack_epochs")
    batch_size: int | None = inherit(membership.Config, "batch_size")

    def __post_init__(self):
        config_lib.check(self)
        if not self.datasets:
            raise config_lib.ConfigError("--datasets needs at least one dataset.")
        outside = [c for c in self.cases if c.split("_")[0] not in self.datasets]
        if outside:
            raise config_lib.ConfigError(f"--cases {outside} are not of --datasets "
                                         f"{list(self.datasets)} — add their dataset or drop them.")

    def case_config(self, case: SeedCase) -> membership.Config:
        overrides = {k: getattr(self, k) for k in ("width_scale", "train_size", "val_size",
                                                   "attack_epochs", "batch_size")
                     if getattr(self, k) is not None}
        return membership.get_config(
            self.preset, dataset=case.dataset, workdir=f"{self.workdir}/{case.name}",
            stage_dir=f"{self.workdir}/stages", data_dir=self.data_dir, seed=self.seed,
            epochs=case.epochs, num_posteriors=case.num_posteriors, defense=case.defense,
            precision=self.precision, **overrides)


# Named configurations (each case takes membership.py's preset of the same name); explicit
# flags override them. "quick" fits a 2-core CPU in minutes: two cases sharing one training.
PRESETS = {"seed": {}, "quick": dict(cases=("cifar10_p10_e30", "cifar10_p3_e30"))}
PRESET_HELP = ("seed: every case at the write-up's full configuration; quick: the two 30-epoch "
               "CIFAR-10 cases (one trained target and shadow) at membership's quick preset "
               "(quarter-width CNNs, 2,500 members); --cases= runs every case at it.")

# The files a run writes besides config.json and results.json.
OUTPUTS = ("seed_tables.md",)


def summary_path(config: Config) -> str:
    return f"{config.workdir}/seed_tables.md"


def run(config: Config, datasets: Mapping[str, data.Dataset] | None = None) -> dict:
    """Runs the chosen cases (the headline 50-epoch ones first, so a time limit keeps them) and
    writes the table of every case finished in the workdir, by this run or an earlier one.

    ``datasets`` maps a dataset name to an already loaded dataset (tests pass small ones)."""
    cases = [c for c in SEED_CASES if c.dataset in config.datasets
             and (not config.cases or c.name in config.cases)]
    cases.sort(key=lambda c: (c.epochs != 50 or c.defense != "none", c.defense != "none",
                              config.datasets.index(c.dataset)))
    for case in cases:  # every case's flags are checked before any training
        config.case_config(case)
    start = time.perf_counter()
    with runs.Run(config.workdir, config, outputs=OUTPUTS,
                  on_finish=page.write_page) as run_:
        ran = []
        for case in cases:
            if config.max_seconds and time.perf_counter() - start > config.max_seconds:
                logging.warning("Time budget spent; skipping %s", case.name)
                continue
            logging.info("Case %s", case.name)
            membership.run(config.case_config(case), (datasets or {}).get(case.dataset))
            ran.append(case.name)
            finished = _finished_cases(config.workdir)
            files.write_text(summary_path(config), "# Seed Tables 1-4, rerun\n\n"
                            + seed_table_markdown(finished))
        return run_.finish({"cases_run": ran,
                            "cases_finished": [c.name for c, _ in _finished_cases(config.workdir)]})


def _finished_cases(workdir: str) -> list[tuple[SeedCase, dict]]:
    finished = []
    for case in SEED_CASES:
        try:
            finished.append((case, files.read_json(f"{workdir}/{case.name}/results.json")))
        except FileNotFoundError:
            continue
    return finished


def seed_table_markdown(rows: list[tuple[SeedCase, dict]]) -> str:
    """Our measured numbers next to the seed's, one line each; ``rows`` = (case, results)."""
    def pair(train, test):
        return f"{train:.2f} / {test:.2f}"

    table = []
    for case, results in rows:
        t, s, a = results["target"], results["shadow"], results["attacks"]["shadow_mlp"]
        c, d, p = results["config"], results["data"], results.get("provenance", {})
        table.append([
            case.dataset, case.num_posteriors, case.epochs,
            "dropout+ES" if case.defense == _ES else "-",
            f"seed {pair(*case.target)}<br>ours {pair(100 * t['train_acc'], 100 * t['test_acc'])}",
            f"seed {pair(*case.shadow)}<br>ours {pair(100 * s['train_acc'], 100 * s['test_acc'])}",
            f"seed {case.attack[1]:.2f} / {case.attack[2]:.2f} / {case.attack[3]:.2f} / "
            f"{case.attack[4]:.2f}<br>ours {100 * a['accuracy']:.2f} / {a['precision']:.2f} / "
            f"{a['recall']:.2f} / {a['f1']:.2f}",
            f"{a['auc']:.3f}", report.pct(a["tpr_at_fpr"]["0.001"]),
            f"{max(r['auc'] for r in results['attacks'].values()):.3f}",
            f"{c.get('preset', '?')}: {d['members_per_model']} members, width "
            f"x{c['width_scale']}, {c['attack_epochs']} attack epochs, "
            f"{p.get('backend', '?')} {p.get('device_kind', '')}".rstrip(),
        ])
    return report.markdown_table(
        ["dataset", "posteriors", "epochs", "defence", "target train / test (%)",
         "shadow train / test (%)", "attack test acc (%) / P / R / F1", "attack AUC",
         "TPR@0.1%FPR (%)", "best AUC (any attack)", "configuration"], table)
