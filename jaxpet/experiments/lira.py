"""LiRA and RMIA from N models trained at once on a balanced keep mask, end to end.

Stages: draw the candidate pool and RMIA's population, train N models on a
balanced keep mask (every pool example in exactly half of them), save every
model's logits on the pool and its horizontal flips (one stage of the run
store, reused when the training settings and the data are unchanged), then
score each model in turn as the target with the others as references, with
every registered reference-family attack, and sweep the number of references.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from absl import logging
import numpy as np

from jaxpet import (
    config as config_lib,
    data,
    dpsgd,
    files,
    models,
    page,
    progress,
    report,
    runs,
    splits,
    stages,
    training,
)
from jaxpet.attacks import lira as lira_attack, reference, rmia as rmia_attack
from jaxpet.config import same_as, setting
from jaxpet.experiments import settings

DEFENSES = ("none", "dpsgd")
MODELS = ("seed_cnn", "wrn")
RECIPES = ("adam", "lira")
DATASETS = ("cifar10", "mnist")


@dataclasses.dataclass(frozen=True)
class Config:
    """Every knob of one LiRA/RMIA run; the defaults are the full CIFAR-10 setting (16 models)."""

    preset: str = setting("full", "The preset this config came from (recorded).", flag=False)
    dataset: str = setting("cifar10", "Dataset to attack.", choices=DATASETS)
    data_dir: str | None = settings.data_dir()
    workdir: str | None = setting(None, "Output folder (default: runs/lira_<dataset>). Its "
                                  "stages/ keeps the logits, reused while the training settings "
                                  "and the data match.")
    seed: int = setting(0, "Seed for the pool, the keep mask, initialisation and data order.",
                        low=0)
    num_models: int = setting(16, "N, models trained together in one ensemble call; even, since "
                              "every example is a member of exactly half of them, and at least "
                              "4: with 2, the one other model is IN exactly where the target is "
                              "OUT, so a target's references would give its membership away.",
                              low=4)
    pool_size: int | None = setting(None, "Candidate examples drawn at random from the train "
                                    "split (default: all of it); each model trains on half.",
                                    low=2)
    population_size: int = setting(10_000, "Test-split examples used as RMIA's reference "
                                   "population z (capped at the split's size).", low=1)
    epochs: int = same_as(training.TrainConfig, "epochs", help="Training epochs of every model "
                          "(the LiRA recipe's published count is 100).")
    model: str = setting("seed_cnn", "Architecture: seed_cnn (the seed's CNN, --width_scale) or "
                         "wrn (WideResNet, --wrn_depth/--wrn_width; WRN-28-2 is the model of "
                         "every published LiRA/RMIA CIFAR-10 figure).", choices=MODELS)
    wrn_depth: int = setting(28, "WideResNet depth, 6n+4.", low=10, when=("model", ("wrn",)))
    wrn_width: int = setting(2, "WideResNet widen factor.", low=1, when=("model", ("wrn",)))
    recipe: str = setting("adam", "Training recipe: adam (the seed's: Adam, lr x0.96 per epoch, "
                          "--learning_rate, --batch_size) or lira (LiRA's and RMIA's: SGD "
                          "momentum 0.9, weight decay 5e-4, lr 0.1 on a cosine schedule, batch "
                          "256, flips and 4-pixel shifts).", choices=RECIPES)
    batch_size: int = same_as(training.TrainConfig, "batch_size", help="Batch size per model "
                              "(--recipe=adam).", when=("recipe", ("adam",)))
    learning_rate: float = same_as(training.TrainConfig, "learning_rate", help="Adam learning "
                                   "rate, decayed x0.96 per epoch (--recipe=adam).",
                                   when=("recipe", ("adam",)))
    width_scale: float = settings.width_scale(when=("model", ("seed_cnn",)))  # wrn: --wrn_width
    precision: str = settings.precision()
    defense: str = setting("none", "Training defence: none, or dpsgd (GroupNorm CNNs, "
                           "per-example clipping and Gaussian noise; epsilon reported).",
                           choices=DEFENSES)
    dp_noise_multiplier: float = settings.dp_noise_multiplier()
    dp_clip_norm: float = settings.dp_clip_norm()
    dp_delta: float = settings.dp_delta()
    strategy: str = settings.strategy()
    checkpoint_every: int = settings.checkpoint_every()
    augment_training: bool = setting(False, "Train with random horizontal flips and 4-pixel "
                                     "crops (the published LiRA/RMIA models' recipe).")
    augment_queries: bool = setting(True, "Query each example's horizontal flip too and average "
                                    "over both queries, as both papers do (scoring only).")
    query_mode: str = settings.lira_query_mode()
    num_targets: int | None = setting(None, "How many models (0, 1, ...) to score as the target "
                                      "in turn (default: all).", low=1)
    rmia_offline_a: float = same_as(reference.AttackConfig, "rmia_offline_a")
    rmia_gamma: float = same_as(reference.AttackConfig, "rmia_gamma")
    rmia_signal: str = settings.rmia_signal()
    rmia_convention: str = settings.rmia_convention()
    lira_convention: str = settings.lira_convention()  # the summary reports the other too
    fpr_rule: str = settings.fpr_rule()
    max_reference_sweep: int | None = setting(None, "Largest number of reference models in the "
                                              "sweep 1, 2, 4, ... (default: num_models - 1).",
                                              low=1)
    eval_batch_size: int = same_as(training.TrainConfig, "eval_batch_size", default=256,
                                   help="Images per prediction call (memory only). Under "
                                   "--query_mode=train_batch_stats the batch is part of the "
                                   "convention: LiRA's 5,000.", when=("query_mode", ("eval",)))

    def __post_init__(self):
        config_lib.check(self)
        if self.num_models % 2:
            raise config_lib.ConfigError(
                f"--num_models must be even: the balanced keep mask puts every example in "
                f"exactly half the models, got {self.num_models}.")
        if self.num_targets is not None and self.num_targets > self.num_models:
            raise config_lib.ConfigError(f"--num_targets must be at most --num_models="
                                         f"{self.num_models}, got {self.num_targets}.")
        if self.max_reference_sweep is not None and self.max_reference_sweep > self.num_models - 1:
            raise config_lib.ConfigError(
                f"--max_reference_sweep={self.max_reference_sweep} exceeds the "
                f"{self.num_models - 1} other models a target has — use at most that.")
        if self.model == "wrn" and self.defense == "dpsgd":
            raise config_lib.ConfigError("--model=wrn uses BatchNorm, which mixes examples and so "
                                         "breaks DP-SGD's per-example bound — use the seed CNN "
                                         "(GroupNorm under --defense=dpsgd).")
        if self.model == "wrn":
            models.wide_resnet_blocks(self.wrn_depth)  # 6n+4, or a clear error
        if self.recipe == "lira" and self.dataset == "mnist":
            raise config_lib.ConfigError("--recipe=lira flips images, which does not preserve "
                                         "digit labels: use it with --dataset=cifar10.")
        if self.augment_training and self.dataset == "mnist":
            raise config_lib.ConfigError("--augment_training flips images, which does not "
                                         "preserve digit labels: use it with --dataset=cifar10.")

    @property
    def output_dir(self) -> str:
        return self.workdir or config_lib.default_workdir(f"lira_{self.dataset}", self.preset,
                                                          PRESETS)

    def check_sizes(self, dataset: data.Dataset) -> None:
        if self.pool_size is not None and self.pool_size > len(dataset.train):
            raise config_lib.ConfigError(f"--pool_size={self.pool_size} is larger than the train "
                                         f"split ({len(dataset.train)}) — lower it.")
        test = population_split(dataset)
        if self.population_size > len(test):
            raise config_lib.ConfigError(
                f"--population_size={self.population_size} is larger than the test split "
                f"({len(test)}) it is drawn from — use at most {len(test)}.")
        members = (self.pool_size or len(dataset.train)) // 2
        batch = self.train_config().batch_size
        if batch > members:
            raise config_lib.ConfigError(f"the batch of {batch} (--batch_size, or the lira "
                                         f"recipe's 256) is larger than a model's ~{members} "
                                         "members — lower it or enlarge --pool_size.")
        pool = self.pool_size or len(dataset.train)
        stages.check_memory(self.make_model(), self.train_config(),
                            np.zeros((1, *dataset.train.images.shape[1:]), np.float32),
                            self.num_models, queried=pool + self.population_size,
                            num_classes=len(dataset.class_names),
                            queries=2 if self.augment_queries else 1, pool_size=pool,
                            flag="--num_models")

    def attack_config(self) -> reference.AttackConfig:
        return reference.AttackConfig(num_queries=2 if self.augment_queries else 1,
                                      rmia_offline_a=self.rmia_offline_a,
                                      rmia_gamma=self.rmia_gamma,
                                      lira_convention=self.lira_convention,
                                      rmia_convention=self.rmia_convention,
                                      fpr_rule=self.fpr_rule)

    def other_attack_config(self) -> reference.AttackConfig:
        """The other LiRA convention and FPR rule: the paper's if this run uses the code's, the
        code's (with its strict FPR rule) otherwise."""
        return dataclasses.replace(
            self.attack_config(),
            lira_convention="code" if self.lira_convention == "paper" else "paper",
            fpr_rule="lt" if self.lira_convention == "paper" else "le")

    def training_key(self, dataset: data.Dataset) -> dict:
        """The logits stage's key: every setting but :data:`NOT_IN_LOGITS`, sizes resolved."""
        return stages.stage_key(self, ignore=NOT_IN_LOGITS, data=dataset.digest,
                                pool_size=self.pool_size or len(dataset.train),
                                population_size=min(self.population_size,
                                                    len(population_split(dataset))))

    def make_model(self):
        """The architecture every model of the run shares."""
        if self.model == "wrn":
            return models.wide_resnet(self.wrn_depth, self.wrn_width, precision=self.precision)
        return models.seed_cnn(self.dataset, "target", precision=self.precision,
                               width_scale=self.width_scale,
                               norm="group" if self.defense == "dpsgd" else "batch")

    def train_config(self) -> training.TrainConfig:
        """The recipe's TrainConfig (augmentation on with --augment_training or the lira
        recipe; DP-SGD with --defense=dpsgd)."""
        dp = dict(dpsgd=self.defense == "dpsgd", dp_clip_norm=self.dp_clip_norm,
                  dp_noise_multiplier=self.dp_noise_multiplier)  # for the lira recipe
        if self.recipe == "lira":
            return models.lira_recipe(epochs=self.epochs, **dp)
        return config_lib.pick(self, training.TrainConfig, **dp,
                               augment="flip_crop" if self.augment_training else "none")


# The settings that cannot change the saved logits: where files go, how the ensemble runs,
# memory-only sizes, and every scoring knob (the stage always saves both queries).
NOT_IN_LOGITS = ("preset", "data_dir", "workdir", "strategy", "checkpoint_every",
                 "eval_batch_size", "augment_queries", "num_targets", "rmia_offline_a",
                 "rmia_gamma", "rmia_signal", "rmia_convention", "lira_convention", "fpr_rule",
                 "max_reference_sweep", "dp_delta", "pool_size", "population_size")

# Named configurations; explicit flags override them. "quick" fits a 2-core CPU in minutes.
PRESETS = {
    "full": {},
    "quick": dict(num_models=8, pool_size=1000, population_size=500, width_scale=0.25,
                  epochs=10),
}
PRESET_HELP = ("full: 16 seed CNNs on all of CIFAR-10's train split (a GPU run); quick: 8 "
               "quarter-width CNNs on a 1,000-example pool for 10 epochs (a CPU run).")

# The files a run writes besides config.json and results.json.
OUTPUTS = ("roc.png", "sweep.png", "summary.md", "scores.npz")


def summary_path(config: Config) -> str:
    return f"{config.output_dir}/summary.md"


def population_split(dataset: data.Dataset) -> data.Split:
    """The test split RMIA's population is drawn from (a dataset without one is refused)."""
    if dataset.test is None or len(dataset.test) == 0:
        raise config_lib.ConfigError(f"{dataset.name} has no test split to draw RMIA's "
                                     "population from.")
    return dataset.test


def draw(config: Config, dataset: data.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The candidate pool (train split), RMIA's population (test split) and the balanced keep
    mask [N, pool]: every candidate a member of exactly half the models."""
    key = config.training_key(dataset)
    rng = np.random.default_rng(config.seed)
    pool = np.sort(rng.choice(len(dataset.train), key["pool_size"], replace=False))
    population = np.sort(rng.choice(len(population_split(dataset)), key["population_size"],
                                    replace=False))
    return pool, population, splits.balanced_keep_mask(len(pool), config.num_models, config.seed)


def train_and_query(config: Config, dataset: data.Dataset, checkpoint_dir: str):
    """The logits stage: N models trained on a balanced keep mask, queried on pool + population
    (each image and its flip)."""
    pool, population, keep = draw(config, dataset)
    images, labels = dataset.train.images[pool], dataset.train.labels[pool]
    test = population_split(dataset)
    logging.info("Training %d models at once, each on about half (%d-%d) of %d pool examples",
                 config.num_models, keep.sum(1).min(), keep.sum(1).max(), len(pool))
    arrays, info = stages.ensemble_logits(
        config.make_model(), images, labels, splits.MemberSets.from_mask(keep),
        config.train_config(), seed=config.seed, preprocess=data.normalizer(config.dataset),
        queries={"logits": images, "population_logits": test.images[population]},
        execution=stages.Execution(config.strategy, checkpoint_dir, config.checkpoint_every,
                                   "lira "),
        query_mode=config.query_mode, eval_batch_size=config.eval_batch_size)
    return {**arrays, "keep": keep, "labels": labels,
            "population_labels": test.labels[population],
            "pool_indices": pool.astype(np.int64),
            "population_indices": population.astype(np.int64)}, info


def _accuracies(saved: dict) -> dict:
    """Per-model accuracy (original query) on its members, pool non-members and the population,
    and their means."""
    per = stages.accuracy(saved["logits"], saved["labels"], saved["keep"],
                          saved["population_logits"], saved["population_labels"])
    return {**{k: float(np.mean(v)) for k, v in per.items()}, "per_model": per}


def score(config: Config, saved: dict) -> dict[str, Any]:
    """Every target scored by every reference-family attack under this run's conventions and
    the other ones, the a that rmia_offline_fitted_a used, and the reference-count sweep."""
    signals = lira_attack.Signals.from_logits(saved["logits"], saved["labels"],
                                              saved["population_logits"],
                                              saved["population_labels"],
                                              rmia_signal=config.rmia_signal)
    keep = saved["keep"].astype(bool)
    targets = list(range(config.num_targets or keep.shape[0]))
    attack_config, other_config = config.attack_config(), config.other_attack_config()
    return {"signals": signals, "keep": keep, "targets": targets,
            "main": reference.leave_one_out(signals, keep, targets=targets, config=attack_config,
                                            seed=config.seed, keep_scores_of=0),
            "other": reference.leave_one_out(signals, keep, targets=targets, config=other_config,
                                             seed=config.seed),
            "fitted_a": _fitted_a(signals, keep, targets, attack_config, config.seed)}


def run(config: Config, dataset: data.Dataset | None = None) -> dict[str, Any]:
    """Trains (or reuses) the logits, scores every attack, writes results.json, summary.md,
    roc.png (every attack on target model 0) and sweep.png. ``dataset`` overrides loading."""
    with runs.Run(config.output_dir, config, outputs=OUTPUTS,
                  on_finish=page.write_page) as run_:
        with run_.timed("load_data"):
            if dataset is None:
                dataset = data.load_dataset(config.dataset, config.data_dir)
        config.check_sizes(dataset)
        key = config.training_key(dataset)
        # The run's ETA: about half the pool trained per model and epoch, then every model's
        # logits on pool and population, original and flipped.
        run_.expect("lira", config.epochs * config.num_models * key["pool_size"] / 2,
                    stage="logits")
        run_.expect("logits", 2 * config.num_models * (key["pool_size"] + key["population_size"])
                    * progress.FORWARD, stage="logits")
        with run_.timed("train_and_logits"):
            saved, info, reused = run_.stages.run("logits", key, lambda: train_and_query(
                config, dataset, str(run_.stages.checkpoint_dir("logits", key))))
        with run_.timed("scoring"):
            scored = score(config, saved)
        with run_.timed("sweep"):
            keep = scored["keep"]
            sweep = reference.reference_sweep(
                scored["signals"], keep,
                reference.sweep_counts(keep.shape[0], config.max_reference_sweep),
                targets=scored["targets"], config=config.attack_config(), seed=config.seed)
        results = run_.finish(results_of(config, dataset, saved, info, reused, scored, sweep))
        write_outputs(run_.path, config, scored, sweep, results)
        logging.info("Results in %s", run_.path)
        return results


def results_of(config: Config, dataset: data.Dataset, saved: dict, info: dict, reused: bool,
               scored: dict, sweep: list) -> dict[str, Any]:
    """results.json's figures (run.finish adds the config, provenance and timings)."""
    keep, main, other = scored["keep"], scored["main"], scored["other"]
    attack_config, other_config = config.attack_config(), config.other_attack_config()
    for name, s in main["summary"].items():
        logging.info("%-28s AUC %.4f±%.4f  TPR@0.1%%FPR %.2f%%", name, s["auc"]["mean"],
                     s["auc"]["std"], 100 * s["tpr_at_fpr_0.001"]["mean"])
    return {
        "data": {"dataset": config.dataset, "source": dataset.info.get("source"),
                 "digest": dataset.digest, "pool_size": int(keep.shape[1]),
                 "population_size": int(saved["population_labels"].shape[0]),
                 "members_per_model": keep.sum(1).tolist(),
                 "non_members_per_target": int((~keep[0]).sum()),
                 "queries": attack_config.num_queries},
        "models": _accuracies(saved),
        "targets": scored["targets"],
        "attacks": main["summary"],
        "conventions": {"lira": attack_config.lira_convention,
                        "fpr_rule": attack_config.fpr_rule},
        "rmia_fitted_a": scored["fitted_a"],
        "other_conventions": {"lira": other_config.lira_convention,
                              "fpr_rule": other_config.fpr_rule,
                              "attacks": other["summary"]},
        "per_target": main["per_target"],
        "sweep": sweep,
        "reused_logits": reused,
        # At report time, for the smallest member set (the largest sampling rate).
        "privacy": (dpsgd.training_epsilon(config.dp_noise_multiplier, config.batch_size,
                                           int(keep.sum(1).min()), config.epochs,
                                           config.dp_delta)
                    if config.defense == "dpsgd" else None),
        "seconds": {"training": float(info["train_seconds"]),
                    "predict": float(info["predict_seconds"])},
        "published": PUBLISHED,
    }


def write_outputs(path, config: Config, scored: dict, sweep: list, results: dict) -> None:
    """scores.npz (target model 0's scores, in the layout compare.py overlays), roc.png,
    sweep.png and summary.md."""
    main, num_models = scored["main"], scored["keep"].shape[0]
    files.write_npz(path / "scores.npz", membership=main["labels"].astype(np.int32),
                    **{f"score_{name}": s for name, s in main["scores"].items()})
    files.save_figure(report.roc_figure(
        {name: (main["labels"], main["scores"][name]) for name in main["scores"]},
        title=f"{config.dataset}: {num_models} models, target model 0"), path / "roc.png")
    files.save_figure(report.reference_sweep_figure(
        sweep, main["summary"]["global_loss"],
        title=f"{config.dataset}: {len(scored['targets'])} target(s), {num_models} models"),
        path / "sweep.png")
    files.write_text(path / "summary.md", summary_markdown(results))


_RULE = {"le": "<=", "lt": "<"}
_QUERY_MODE_WORDS = {"train_batch_stats": (
    ", queried as LiRA's inference.py does: raw weights in training mode, BatchNorm on the "
    "statistics of each query batch (up to "
    f"{training.QUERY_BATCH_SIZES['train_batch_stats']:,} consecutive examples)")}
_CONVENTION_NOTE = (
    "paper: Gaussian centres are means, variances unbiased, the fixed variance pooled within "
    "examples, the offline test one-sided (Carlini et al. 2022 as written); code: medians, "
    "population variances, the fixed variance one std of all IN scores (used for OUT too), the "
    "offline score two-sided, TPR at FPR < level (the authors' released plot.py). RMIA and the "
    "loss baseline change only through the FPR rule.")


# Published CIFAR-10 figures the summary compares with (their models: WRN28-2 with augmentation).
_LIRA_CODE = "LiRA code (Carlini et al.), 16 WRN28-2 models on CIFAR-10"
PUBLISHED = {
    "lira_online": {"auc": 0.668, "tpr_at_fpr_0.001": 0.017, "source": _LIRA_CODE},
    "lira_online_fixed_variance": {"auc": 0.686, "tpr_at_fpr_0.001": 0.059, "source": _LIRA_CODE},
    "rmia_online": {"auc": 0.7225, "tpr_at_fpr_0.001": None,
                    "source": "RMIA paper (Zarifzadeh et al.), 254 reference models on CIFAR-10"},
}


def _fitted_a(signals, keep, targets, attack_config, seed) -> list[float]:
    """The a that rmia_offline_fitted_a used for each target: fitted on the same equalized
    references as :func:`reference.leave_one_out` scores it with."""
    x, population = signals.queries(min(attack_config.num_queries, signals.phi.shape[2])).rmia
    out = []
    for t in targets:
        others = np.array([k for k in range(keep.shape[0]) if k != t])
        use = lira_attack.equalized_use(keep[others], seed=[seed, t])
        out.append(rmia_attack.fit_offline_a(x[others], keep[others], population[others],
                                             use=use, gamma=attack_config.rmia_gamma,
                                             conv=attack_config.rmia_convention))
    return out


def _a_range(values) -> str:
    if not values:
        return "not recorded"
    return (f"a = {min(values):.1f}" if min(values) == max(values)
            else f"a from {min(values):.1f} to {max(values):.1f}, median {np.median(values):.1f}")


def _model_words(c: dict) -> str:
    if c.get("model", "seed_cnn") == "wrn":
        return f"WRN-{c['wrn_depth']}-{c['wrn_width']} models"
    return f"seed CNNs (width x{c['width_scale']})"


def _recipe_words(c: dict) -> str:
    if c.get("recipe", "adam") == "lira":
        return ("LiRA/RMIA recipe: SGD momentum 0.9, weight decay 5e-4, lr 0.1 cosine, batch 256, "
                "random flips and crops")
    augment = "random flips and crops" if c["augment_training"] else "no training augmentation"
    return f"Adam lr {c['learning_rate']}, batch {c['batch_size']}, {augment}"


def summary_markdown(results: dict) -> str:
    """Every attack (mean ± std over targets), the published figures and the reference sweep."""
    c, d, m = results["config"], results["data"], results["models"]
    table = report.attack_table(results["attacks"])
    conv = results.get("conventions", {"lira": "paper", "fpr_rule": "le"})
    other = results.get("other_conventions")
    other_section = "" if other is None else (
        f"## Under the other conventions: LiRA {other['lira']}, FPR {_RULE[other['fpr_rule']]} "
        f"level\n\n{report.attack_table(other['attacks'])}\n{_CONVENTION_NOTE}\n\n")
    published = []
    for name, p in results["published"].items():
        ours = results["attacks"][name]
        tpr = "-" if p["tpr_at_fpr_0.001"] is None else f"{100 * p['tpr_at_fpr_0.001']:.1f}"
        published.append([name, p["source"], f"{p['auc']:.4f}", tpr, f"{ours['auc']['mean']:.4f}",
                          f"{100 * ours['tpr_at_fpr_0.001']['mean']:.2f}"])
    published_table = report.markdown_table(
        ["attack", "published setting", "published AUC", "published TPR@0.1%FPR (%)", "our AUC",
         "our TPR@0.1%FPR (%)"], published)

    def cell(s):
        return f"{s['auc']['mean']:.4f} / {100 * s['tpr_at_fpr_0.001']['mean']:.2f}"

    swept = list(dict.fromkeys(name for row in results["sweep"] for name in row["attacks"]))
    sweep_rows = [[row["num_references"]] + [cell(row["attacks"][name]) if name in row["attacks"]
                                             else "n/a" for name in swept]
                  for row in results["sweep"]]
    sweep_table = report.markdown_table(["references"] + swept, sweep_rows) + (
        "\nn/a: not available with that many references (which examples lack an IN or OUT "
        "reference follows the target's membership; see results.json's sweep).\n"
        if any(row.get("not_available") for row in results["sweep"]) else "")
    negatives = d["non_members_per_target"]
    secs = results["seconds"]
    augment = "flips and crops" if c["augment_training"] else "no augmentation"
    return (
        f"# LiRA and RMIA: {c['dataset']}\n\n"
        f"{report.epsilon_sentence(results.get('privacy'), c['dp_clip_norm'])}"
        f"{c['num_models']} {_model_words(c)} ({c['precision']}, {c['epochs']} epochs, "
        f"{_recipe_words(c)}), "
        f"each trained on a random half of a {d['pool_size']}-example pool from the train split "
        f"(balanced keep mask). Model accuracy: members {100 * m['train_acc']:.2f}%, pool "
        f"non-members {100 * m['pool_non_member_acc']:.2f}%, test {100 * m['test_acc']:.2f}%. "
        f"{len(results['targets'])} model(s) scored as the target in turn with the other "
        f"{c['num_models'] - 1} as references (leave-one-out); {d['queries']} "
        f"quer{'ies' if d['queries'] > 1 else 'y'} per example "
        f"({'original + horizontal flip' if d['queries'] > 1 else 'original only'}"
        f"{_QUERY_MODE_WORDS.get(c.get('query_mode', 'eval'), '')}); RMIA "
        f"a={c['rmia_offline_a']} (rmia_offline_fitted_a fits it on each target's references: "
        f"{_a_range(results.get('rmia_fitted_a'))}), "
        f"gamma={c['rmia_gamma']}, Pr(x|theta) = {c.get('rmia_signal', 'softmax')}, population "
        f"{d['population_size']} "
        f"test images. Backend {results['provenance']['backend']}; training "
        f"{secs['training']:.0f} s, logits {secs['predict']:.0f} s"
        f"{' (reused)' if results['reused_logits'] else ''}, scoring {secs['scoring']:.0f} s, "
        f"sweep {secs['sweep']:.0f} s.\n\n"
        f"## Attacks (mean ± std over target models)\n\nLiRA convention {conv['lira']}, "
        f"TPR at FPR {_RULE[conv['fpr_rule']]} level.\n\n{table}\n"
        f"Each target has about {negatives} non-members, so the smallest non-zero FPR is "
        f"{100 / max(negatives, 1):.3f}%; TPR at lower FPR levels equals TPR@0%FPR.\n\n"
        f"{other_section}"
        f"## Published figures (CIFAR-10)\n\n{published_table}\n"
        "Not a like-for-like comparison: the published models are WideResNet-28-2 trained with "
        "augmentation (flips and crops) on 25,000 of 50,000 images for 100+ epochs; ours are the "
        f"seed's small CNN trained with Adam and {augment}, on the pool above. Overfitting, and "
        "so leakage, differs accordingly.\n\n"
        f"## Number of reference models (AUC / TPR@0.1%FPR %, mean over targets)\n\n{sweep_table}\n"
        "With fewer than all other models the references are drawn at random per target; online "
        "LiRA then fills examples missing IN or OUT references from the global IN/OUT gap, and "
        "per-example variances fall back to the global one below two references per group. With "
        "one reference, online LiRA thus compares the target's score with the reference's, "
        "shifted by that global gap when the reference trained on the example: a "
        "well-regularised estimate that can beat 2-8 references, whose per-example means come "
        "from one or two scores each.\n")
