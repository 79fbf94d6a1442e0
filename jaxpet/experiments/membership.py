"""Membership inference with shadow models (seed Task 1): split, train, attack, report.

Data flows one way: the dataset's train split is cut into the seed's four
quarters; the target and the shadow model(s) are member sets like any other,
each role trained and queried for its logits by the shared stage
(:func:`jaxpet.stages.ensemble_logits`, reused when its settings and data are
unchanged, checkpointed while it trains); the posteriors on balanced member /
non-member sets, read from the saved logits, are the observations every
registered shadow-family attack scores; the metrics and figures are written last.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from absl import logging
import jax
import numpy as np

from jaxpet import (
    attacks,
    config as config_lib,
    data,
    dpsgd,
    files,
    models,
    page,
    report,
    runs,
    splits,
    stages,
    training,
)
from jaxpet.config import same_as, setting
from jaxpet.experiments import settings

DEFENSES = ("none", "dropout_early_stopping", "dpsgd")
DATASETS = ("cifar10", "mnist")
_ES = ("dropout_early_stopping",)


@dataclasses.dataclass(frozen=True)
class Config:
    """Every knob of one membership run; defaults are the seed's full CIFAR-10 configuration."""

    preset: str = setting("seed", "The preset this config came from (recorded).", flag=False)
    dataset: str = setting("cifar10", "Dataset to attack.", choices=DATASETS)
    data_dir: str | None = settings.data_dir()
    workdir: str | None = setting(None, "Output folder (default: runs/membership_<dataset>"
                                  "[_<preset>]). A rerun reuses the finished stages saved there.")
    stage_dir: str | None = setting(None, "Where finished stages are kept (default: "
                                    "<workdir>/stages).", flag=False)
    seed: int = setting(0, "Seed for splits, model initialisation and data order.", low=0)
    epochs: int = same_as(training.TrainConfig, "epochs",
                          help="Target and shadow training epochs.")
    attack_epochs: int = setting(50, "Attack MLP training epochs.", low=1)
    train_size: int | None = setting(None, "Members per model (default: a quarter of the train "
                                     "split).", low=2)
    val_size: int = setting(1000, "Validation examples per role (early stopping), drawn from the "
                            "examples outside the four parts when 2x this many are left, else "
                            "from the start of each out part (the seed's full configuration).",
                            low=0)
    num_posteriors: int = setting(10, "Sorted posteriors fed to the attack MLP: 3 or 10.",
                                  choices=(3, 10))
    thresholds: str = setting("per_class", "Threshold attacks: one threshold per true class "
                              "fitted on the shadow (per_class, Song & Mittal's code) or one for "
                              "all (global). The summary also reports the other.",
                              choices=attacks.THRESHOLD_SCOPES)
    confidence: str = setting("true_class", "The confidence attack's signal: the true class's "
                              "probability (true_class, Song & Mittal) or the top posterior "
                              "(max). The summary also reports the other.",
                              choices=attacks.CONFIDENCES)
    threshold_criterion: str = setting(
        "balanced_accuracy", "Threshold attacks: how each threshold is chosen on the shadow. "
        "balanced_accuracy maximises 0.5 * (TPR + TNR), as Song & Mittal (USENIX Security "
        "2021, 'Systematic Evaluation of Privacy Risks of Machine Learning Models') do in "
        "their code's _thre_setting; accuracy maximises the share classified right (jaxpet's "
        "earlier choice). The label-only threshold attack keeps accuracy.",
        choices=attacks.shadow.THRESHOLD_CRITERIA)
    defense: str = setting("none", "none; dropout_early_stopping (dropout and early stopping on "
                           "validation); or dpsgd (DP-SGD: GroupNorm CNNs, per-example clipping, "
                           "Gaussian noise; epsilon reported).", choices=DEFENSES)
    dropout_rate: float = setting(0.5, "Dropout rate of the dropout_early_stopping defence.",
                                  low=0, high=1, high_open=True, when=("defense", _ES))
    patience: int = same_as(training.TrainConfig, "patience", when=("defense", _ES))
    num_shadow: int = setting(1, "Shadow models, trained together in one vmapped call.", low=1)
    label_only_shift: int = settings.label_only_shift()
    label_only_translations: str = settings.label_only_translations()
    label_only_flips: bool | None = settings.label_only_flips(when=("dataset", ("cifar10",)))
    label_only_attack_model: str = settings.label_only_attack_model()
    precision: str = settings.precision()
    batch_size: int = same_as(training.TrainConfig, "batch_size",
                              help="Target/shadow batch size.")
    width_scale: float = settings.width_scale()
    dp_noise_multiplier: float = settings.dp_noise_multiplier()
    dp_clip_norm: float = settings.dp_clip_norm()
    dp_delta: float = settings.dp_delta()
    norm: str | None = setting(None, "CNN normalisation (default: batch, the seed's; group under "
                               "--defense=dpsgd, which refuses batch).", choices=models.NORMS)
    strategy: str = settings.strategy()
    checkpoint_every: int = settings.checkpoint_every()

    def __post_init__(self):
        config_lib.check(self)
        if self.defense == "dropout_early_stopping" and self.val_size == 0:
            raise config_lib.ConfigError("--defense=dropout_early_stopping needs --val_size > 0 "
                                         "for early stopping.")
        if self.defense == "dpsgd" and self.norm == "batch":
            raise config_lib.ConfigError("--defense=dpsgd needs per-example normalisation: "
                                         "--norm=group or none.")

    @property
    def output_dir(self) -> str:
        return self.workdir or config_lib.default_workdir(f"membership_{self.dataset}",
                                                          self.preset, PRESETS)

    @property
    def label_only_queries(self) -> attacks.label_only.Queries:
        """The label-only attacks' augmentations: translations (the ring, as Choquette-Choo et
        al.'s code, or the diamond), and flips on CIFAR-10 unless turned off (a flip keeps an
        object's class, not a digit's)."""
        flips = self.label_only_flips
        flips = self.dataset == "cifar10" if flips is None else flips
        return attacks.label_only.Queries(max_shift=self.label_only_shift, flips=flips,
                                          shifts=self.label_only_translations)

    @property
    def label_only_attack(self) -> attacks.label_only.LabelOnlyAttackConfig:
        """The ``label_only`` attack's model: one pooled MLP trained for --attack_epochs, or
        one net per class (theirs)."""
        return attacks.label_only.LabelOnlyAttackConfig(
            attack_model=self.label_only_attack_model, pooled_epochs=self.attack_epochs)

    @property
    def attack_config(self) -> attacks.ShadowAttackConfig:
        """The shadow-family attacks' settings (the attack MLP's and the thresholds')."""
        return attacks.ShadowAttackConfig(
            top_k=self.num_posteriors, epochs=self.attack_epochs, thresholds=self.thresholds,
            confidence=self.confidence, threshold_criterion=self.threshold_criterion)

    @property
    def model_norm(self) -> str:
        return self.norm or ("group" if self.defense == "dpsgd" else "batch")

    def make_model(self, role: str):
        """The seed's CNN for ``role`` (target or shadow), with this run's defence and sizes."""
        dropout = self.dropout_rate if self.defense == "dropout_early_stopping" else 0.0
        return models.seed_cnn(self.dataset, role, dropout_rate=dropout, precision=self.precision,
                               width_scale=self.width_scale, norm=self.model_norm)

    def train_config(self) -> training.TrainConfig:
        """The target's and shadows' TrainConfig: this config's training settings, DP-SGD or
        early stopping as the defence says."""
        return config_lib.pick(self, training.TrainConfig, dpsgd=self.defense == "dpsgd",
                               early_stopping=self.defense == "dropout_early_stopping")

    def part_size(self, pool_size: int) -> int:
        return pool_size // 4 if self.train_size is None else self.train_size

    def check_sizes(self, pool_size: int) -> None:
        """The checks that need the data's size."""
        quarter = pool_size // 4
        if self.part_size(pool_size) > quarter:
            raise config_lib.ConfigError(
                f"--train_size={self.train_size} is larger than a quarter of the {pool_size} "
                f"training examples ({quarter}) — use at most {quarter}.")
        if self.batch_size > self.part_size(pool_size):
            raise config_lib.ConfigError(
                f"--batch_size={self.batch_size} is larger than a model's "
                f"{self.part_size(pool_size)} members — lower it.")
        self.val_source(pool_size)

    def val_source(self, pool_size: int) -> str:
        """Where the validation sets come from (see splits.validation_source)."""
        part = self.part_size(pool_size)
        try:
            return splits.validation_source(pool_size, part, self.val_size)
        except ValueError:
            unused, room = pool_size - 4 * part, (pool_size - 2 * self.val_size) // 4
            fix = f"lower --val_size below {part}" + (
                f", or --train_size to at most {room}" if room >= 2 else "")
            raise config_lib.ConfigError(
                f"--val_size={self.val_size} leaves no non-member to evaluate with "
                f"--train_size={part}: the two validation sets fit neither in the {unused} "
                f"examples the four parts leave unused (needs {2 * self.val_size}) nor inside an "
                f"out part of {part} — {fix}.") from None

    def training_key(self, dataset: data.Dataset, role: str = "shadow") -> dict:
        """The key of ``role``'s stage: every setting but :data:`NOT_IN_STAGE` (the target's
        also not --num_shadow), sizes, normalisation and label-only queries resolved, and the
        data's content; runs differing only in the attack share the trained roles."""
        pool_size = len(dataset.train)
        source = self.val_source(pool_size)
        return stages.stage_key(
            self, ignore=NOT_IN_STAGE + (("num_shadow",) if role == "target" else ()),
            data=dataset.digest, norm=self.model_norm, train_size=self.part_size(pool_size),
            label_only_queries=self.label_only_queries.key(), saved=SAVED,
            # Validation from unused data changes the sets; the seed's layout has no entry.
            **({"val_source": source} if source == "unused" else {}))


# The settings that cannot change a role's stage: where files go, how the ensemble runs, every
# attack knob, and those resolved in the key (norm, train_size, the label-only queries').
NOT_IN_STAGE = ("preset", "data_dir", "workdir", "stage_dir", "strategy", "checkpoint_every",
                "num_posteriors", "attack_epochs", "thresholds", "confidence",
                "threshold_criterion", "label_only_attack_model", "dp_delta", "norm",
                "train_size", "label_only_shift", "label_only_translations", "label_only_flips")
# What a role's stage saves (in its key, so a stage saved in another form is never read as it).
SAVED = "logits on the candidates and the test split, label-only correctness on the probe"

# Named configurations; explicit flags override them. "quick" fits a 2-core CPU in minutes.
PRESETS = {
    "seed": {},
    "quick": dict(train_size=2500, val_size=500, epochs=15, attack_epochs=10, width_scale=0.25),
}
PRESET_HELP = ("seed: the write-up's full configuration; quick: a reduced run for a CPU "
               "(quarter-width CNNs, 2,500 members, 15 epochs).")


def get_config(preset: str = "seed", **overrides) -> Config:
    """A preset's config with ``overrides`` applied."""
    if preset not in PRESETS:
        raise config_lib.ConfigError(f"--preset must be one of {', '.join(PRESETS)}, got "
                                     f"{preset!r}.")
    return Config(**{**PRESETS[preset], "preset": preset, **overrides})


# The files a run writes besides config.json and results.json.
OUTPUTS = ("predictions.npz", "roc.png", "summary.md")


def summary_path(config: Config) -> str:
    return f"{config.output_dir}/summary.md"


@dataclasses.dataclass
class _Role:
    """One role (target or shadows): its K member sets, non-member pools and validation sets."""

    name: str
    members: splits.MemberSets
    non_members: list[np.ndarray]  # per model
    validation: splits.MemberSets | None


def _roles(split: splits.QuarterSplit, num_shadow: int, seed: int):
    """The target and shadow roles; validation as ``split.val_source`` says."""
    validation = lambda sets: splits.MemberSets.from_lists(sets) if split.val_size else None
    target = _Role("target", splits.MemberSets.from_lists([split.target_in]),
                   [split.target_out_eval], validation([split.target_val]))
    if num_shadow == 1:  # The seed: shadow-in are members, shadow-out non-members.
        members = splits.MemberSets.from_lists([split.shadow_in])
        return target, _Role("shadow", members, [split.shadow_out_eval],
                             validation([split.shadow_val]))
    # Each shadow gets its own random half of the shadow pool.
    pool = np.concatenate([split.shadow_in, split.shadow_out])
    members = splits.random_member_sets(pool, num_shadow, len(split.shadow_in), seed=seed + 1)
    rng = np.random.default_rng(seed + 2)
    non_members = [rng.permutation(np.setdiff1d(pool, members.member(k)))
                   for k in range(num_shadow)]
    if split.val_source == "unused":  # one validation set outside the pool serves every shadow
        return target, _Role("shadow", members, non_members,
                             validation([split.shadow_val] * num_shadow))
    # No room outside the parts: each shadow's validation is the start of its non-members.
    size = split.val_size
    return target, _Role("shadow", members, [o[size:] for o in non_members],
                         validation([o[:size] for o in non_members]))


def _attack_rows(role: _Role, seed: int) -> dict[str, np.ndarray]:
    """The examples each model is observed on: equal numbers of its members and non-members
    (chance = 50%), sampled without replacement, as rows of (example index, membership, model)."""
    rng = np.random.default_rng(seed + 7)
    sizes = np.array([min(len(role.members.member(k)), len(role.non_members[k]))
                      for k in range(role.members.num_models)])
    chosen = [np.sort(rng.choice(pool, n, replace=False)) for k, n in enumerate(sizes)
              for pool in (role.members.member(k), role.non_members[k])]
    return {"indices": np.concatenate(chosen),
            "membership": np.repeat(np.tile(np.array([1, 0], np.int32), len(sizes)),
                                    np.repeat(sizes, 2)),
            "model": np.repeat(np.arange(len(sizes), dtype=np.int32), 2 * sizes)}


def _train_and_query(role: _Role, config: Config, dataset: data.Dataset, seed: int,
                     checkpoint_dir: str) -> tuple[dict[str, np.ndarray], dict]:
    """A role's stage: its models trained in one ensemble call, their logits on the
    candidates (every member and every attack example: what accuracy and the posteriors
    need) and on the test split, and the label-only queries on the attack examples (the
    probe); with the rows the attacks observe and each model's members among the candidates."""
    train, test, train_config = dataset.train, dataset.test, config.train_config()
    if test is None:
        raise data.DataError(f"{dataset.name} has no test split to measure test accuracy on.")
    rows, member_mask = _attack_rows(role, seed), role.members.mask(len(train))
    probe = np.unique(rows["indices"])
    candidates = np.union1d(probe, np.flatnonzero(member_mask.any(0)))
    logging.info("Training %s: %d model(s), %s members each", role.name, role.members.num_models,
                 role.members.counts.tolist())
    arrays, info = stages.ensemble_logits(
        config.make_model(role.name), train.images, train.labels, role.members,
        train_config, seed=seed, preprocess=data.normalizer(config.dataset), flips=False,
        queries={"logits": train.images[candidates], "test_logits": test.images},
        label_only_probe=(config.label_only_queries, train.images[probe], train.labels[probe]),
        validation=role.validation, execution=stages.Execution(
            config.strategy, checkpoint_dir, config.checkpoint_every, f"{role.name} "))
    return ({**arrays, **rows, "candidates": candidates, "probe": probe,
             "keep": member_mask[:, candidates], "labels": train.labels[candidates],
             "test_labels": test.labels},
            {"seconds": info["train_seconds"], "predict_seconds": info["predict_seconds"],
             "epochs_run": info["epochs_run"], "best_epoch": info["best_epoch"],
             "members_min": int(role.members.counts.min())})  # what the DP accounting needs


# Posteriors from saved logits exactly as training.predict computes them (float32, in jit).
_softmax = jax.jit(jax.nn.softmax)


@dataclasses.dataclass
class _Observed:
    """A role as the attacks and the report see it, read from its stage's arrays."""

    posteriors: attacks.LabeledPosteriors  # the attack rows
    indices: np.ndarray  # each row's example
    info: dict  # the stage's, with each model's train_acc (members) and test_acc (test split)


def _observed(stage: runs.Stage) -> _Observed:
    """The attack rows' posteriors, labels and label-only answers, and each model's accuracy:
    from the stage's arrays only."""
    a, model = stage.arrays, stage.arrays["model"]
    rows = np.searchsorted(a["candidates"], a["indices"])
    observed = attacks.LabeledPosteriors(
        np.asarray(_softmax(a["logits"][:, :, 0]))[model, rows], a["labels"][rows],
        a["membership"], correct=a["correct"][model, np.searchsorted(a["probe"], a["indices"])])
    accuracy = stages.accuracy(a["logits"], a["labels"], a["keep"], a["test_logits"],
                               a["test_labels"])
    return _Observed(observed, a["indices"], {**stage.info, **accuracy})


def _other_conventions(config: attacks.ShadowAttackConfig) -> attacks.ShadowAttackConfig:
    """Both threshold switches flipped: Song & Mittal's per-class true-class thresholds against
    one threshold on the top posterior."""
    return dataclasses.replace(
        config, thresholds=next(t for t in attacks.THRESHOLD_SCOPES if t != config.thresholds),
        confidence=next(c for c in attacks.CONFIDENCES if c != config.confidence))


def _attack(config: Config, shadow: _Observed, target: _Observed,
            ) -> tuple[dict[str, attacks.AttackOutput], dict[str, attacks.AttackOutput]]:
    """Every registered shadow-family attack the target's observations allow, then the
    threshold attacks under the other conventions."""
    own = {"label_only": config.label_only_attack}  # the others take config.attack_config
    run_one = lambda fn, attack_config: fn(shadow.posteriors, target.posteriors,
                                           config=attack_config, seed=config.seed)
    outputs = {a.name: run_one(a.fn, own.get(a.name, config.attack_config))
               for a in attacks.registry.list_attacks("shadow")
               if a.runs_on(target.posteriors)}
    other = _other_conventions(config.attack_config)
    return outputs, {name: run_one(attacks.get_attack(name, "shadow").fn, other)
                     for name in attacks.THRESHOLD_ATTACKS}


def _results(config: Config, dataset: data.Dataset, split: splits.QuarterSplit,
             target: _Observed, shadow: _Observed, outputs: dict, other_outputs: dict) -> dict:
    """results.json's sections (runs.Run.finish adds config, timings and provenance)."""
    membership, t, s = target.posteriors.membership, target.info, shadow.info
    other = _other_conventions(config.attack_config)
    return {
        "data": {"dataset": config.dataset, "source": dataset.info.get("source"),
                 "digest": dataset.digest, "pool_size": len(dataset.train),
                 "members_per_model": len(split.target_in), "val_size": config.val_size,
                 "val_source": split.val_source,
                 "label_only_queries": config.label_only_queries.count,
                 "attack_test_members": int(membership.sum()),
                 "attack_test_non_members": int((1 - membership).sum())},
        "target": {"train_acc": t["train_acc"][0], "test_acc": t["test_acc"][0],
                   "epochs_run": t["epochs_run"], "best_epoch": t["best_epoch"]},
        "shadow": {"train_acc": float(np.mean(s["train_acc"])),
                   "test_acc": float(np.mean(s["test_acc"])),
                   "per_model_train_acc": s["train_acc"], "per_model_test_acc": s["test_acc"],
                   "epochs_run": s["epochs_run"]},
        "attacks": {name: out.report for name, out in outputs.items()},
        "conventions": {"thresholds": config.thresholds, "confidence": config.confidence},
        "other_conventions": {"thresholds": other.thresholds, "confidence": other.confidence,
                              "attacks": {name: out.report
                                          for name, out in other_outputs.items()}},
        # At report time, for the smallest member set: --dp_delta needs no retraining.
        "privacy": (dpsgd.training_epsilon(
            config.dp_noise_multiplier, config.batch_size, t["members_min"], t["epochs_run"],
            config.dp_delta) if config.defense == "dpsgd" else None),
        "attack_train_acc": outputs["shadow_mlp"].info["train_acc"],
        "seconds": {"target_training": t["seconds"], "shadow_training": s["seconds"]},
    }


def run(config: Config, dataset: data.Dataset | None = None) -> dict[str, Any]:
    """The whole experiment; writes config.json, results.json, predictions.npz, roc.png and
    summary.md to the workdir. ``dataset`` overrides loading (tests pass a small one)."""
    with runs.Run(config.output_dir, config, outputs=OUTPUTS, stage_dir=config.stage_dir,
                  on_finish=page.write_page) as run_:
        with run_.timed("load_data"):
            if dataset is None:
                dataset = data.load_dataset(config.dataset, config.data_dir)
        config.check_sizes(len(dataset.train))
        stages.check_memory(config.make_model("shadow"), config.train_config(),
                            np.zeros((1, *dataset.train.images.shape[1:]), np.float32),
                            config.num_shadow, queried=len(dataset.train),
                            num_classes=len(dataset.class_names), pool_size=len(dataset.train),
                            flag="--num_shadow")
        split = splits.quarter_split(len(dataset.train), config.seed,
                                     part_size=config.part_size(len(dataset.train)),
                                     val_size=config.val_size)
        roles = _roles(split, config.num_shadow, config.seed)
        # The run's ETA: each role's members trained every epoch; then the attack MLP on the
        # shadows' member and non-member posteriors, an example of which costs about 1% of a CNN
        # image (a 10-128-2 MLP; measured on the quick preset: 2 s of 56).
        for role in roles:
            run_.expect(role.name, config.epochs * float(role.members.counts.sum()),
                        stage=role.name)
        run_.expect("attack", config.attack_epochs * 2 * float(roles[1].members.counts.sum()),
                    cost=0.01)
        trained = {}
        for role, seed in zip(roles, (config.seed, config.seed + 1000), strict=True):
            key = config.training_key(dataset, role.name)
            train = functools.partial(_train_and_query, role, config, dataset, seed,
                                      str(run_.stages.checkpoint_dir(role.name, key)))
            with run_.timed(role.name):
                trained[role.name] = _observed(run_.stages.run(role.name, key, train))
        target, shadow = trained["target"], trained["shadow"]
        with run_.timed("attacks"):
            outputs, other_outputs = _attack(config, shadow, target)
        results = run_.finish(_results(config, dataset, split, target, shadow, outputs,
                                       other_outputs))
        observed = target.posteriors
        files.write_npz(run_.path / "predictions.npz", posteriors=observed.posteriors,
                        labels=observed.labels, membership=observed.membership,
                        indices=target.indices,
                        **{f"score_{name}": out.scores for name, out in outputs.items()})
        files.save_figure(report.roc_figure(
            {name: (observed.membership, out.scores) for name, out in outputs.items()},
            title=f"{config.dataset}: {results['data']['members_per_model']} members/model, "
                  f"{config.epochs} epochs, top-{config.num_posteriors}, defence "
                  f"{config.defense}"), run_.path / "roc.png")
        files.write_text(run_.path / "summary.md", summary_markdown(results))
        logging.info("Results in %s", run_.path)
        return results


_VALIDATION = {  # summary sentence per splits.QuarterSplit.val_source
    "unused": "Validation: {n} examples per role from the data outside the four parts, so "
              "every out part is evaluated whole. ",
    "out_part": "Validation: the first {n} examples of each out part (the seed's layout); "
                "the rest of each is evaluated. ",
}


_SCOPE = {"per_class": "one threshold per true class, fitted on the shadow (Song & Mittal's "
                        "code; the score is the margin over its class's threshold)",
          "global": "one threshold for all classes, fitted on the shadow"}
_CONF = {"true_class": "the true class's probability", "max": "the top posterior"}


def _label_only_sentence(c: dict, queries: int, label_only: dict | None) -> str:
    """What the label-only attacks queried and fitted; results from before the translation,
    flip and model settings existed read as they ran (the diamond, flips on CIFAR-10, the
    pooled MLP)."""
    shift = c.get("label_only_shift", 1)
    shape = c.get("label_only_translations", "diamond")
    where = ("|dx| + |dy| = " if shape == "ring" and shift > 1 else "|dx| + |dy| <= ")
    flips = c.get("label_only_flips")
    flips = c["dataset"] == "cifar10" if flips is None else flips
    model = c.get("label_only_attack_model", "pooled_mlp")
    if model == "per_class":
        rate = (label_only or {}).get("learning_rate")
        fit = ("`label_only` fits one small net per class, its learning rate"
               + (f" ({rate:g})" if rate is not None else "") + " picked on the shadow")
    else:
        fit = "`label_only` fits one MLP for all classes on the shadow"
    return (f"Label-only attacks (Choquette-Choo et al. 2021) see only the predicted label of "
            f"{queries} augmented copies of each example (the image and its shifts with "
            f"{where}{shift} pixel{'s' if shift != 1 else ''}"
            f"{', with and without a flip' if flips else ''}); {fit}, `label_only_threshold` "
            "thresholds the fraction correct.\n\n")


# The shadow-family attacks' own columns, before the table's AUC and TPR at low FPR.
_SHADOW_COLUMNS = (("acc (%)", lambda r: report.pct(r["accuracy"])),
                   ("precision", lambda r: f"{r['precision']:.3f}"),
                   ("recall", lambda r: f"{r['recall']:.3f}"), ("F1", lambda r: f"{r['f1']:.3f}"))


def summary_markdown(results: dict) -> str:
    """The seed's table shape (accuracies in %), then every attack with the modern metrics."""
    c, pct = results["config"], report.pct
    t, s, a = results["target"], results["shadow"], results["attacks"]["shadow_mlp"]
    seed_row = report.markdown_table(
        ["Posteriors", "Epochs", "Target acc (%)", "Shadow acc (%)", "Attack (%) and metrics"],
        [[c["num_posteriors"], c["epochs"],
          f"Train = {pct(t['train_acc'])} Test = {pct(t['test_acc'])}",
          f"Train = {pct(s['train_acc'])} Test = {pct(s['test_acc'])}",
          f"Train = {pct(results['attack_train_acc'])} Test = {pct(a['accuracy'])} "
          f"Precision = {a['precision']:.2f} Recall = {a['recall']:.2f} F1 = {a['f1']:.2f}"]])
    conv = results.get("conventions")
    other = results.get("other_conventions")
    criterion = {"balanced_accuracy": "balanced accuracy, 0.5 (TPR + TNR)",
                 "accuracy": "accuracy"}[c.get("threshold_criterion", "accuracy")]
    conv_line = "" if conv is None else (
        f"Threshold attacks: {_SCOPE[conv['thresholds']]}; confidence = "
        f"{_CONF[conv['confidence']]}; each threshold chosen by {criterion} on the shadow. "
        "TPR at FPR counts thresholds on the score (a tied block whole or not at all); "
        "'ties random' breaks the block that straddles the level at random.\n\n")
    queries = results["data"].get("label_only_queries")
    if queries:
        conv_line += _label_only_sentence(c, queries, results["attacks"].get("label_only"))
    other_section = "" if other is None else (
        f"\n## Threshold attacks under the other convention\n\n"
        f"{_SCOPE[other['thresholds']][0].upper()}{_SCOPE[other['thresholds']][1:]}; "
        f"confidence = {_CONF[other['confidence']]}.\n\n"
        f"{report.attack_table(other['attacks'], _SHADOW_COLUMNS)}")
    d, p = results["data"], results["provenance"]
    return (f"# Membership inference: {c['dataset']}\n\n"
            f"{report.epsilon_sentence(results.get('privacy'), c['dp_clip_norm'])}"
            f"{d['members_per_model']} members per model, defence `{c['defense']}`, "
            f"{c['num_shadow']} shadow model(s), width x{c['width_scale']}, precision "
            f"{c['precision']}; attack tested on {d['attack_test_members']} members + "
            f"{d['attack_test_non_members']} non-members of the target. "
            f"{_VALIDATION.get(d.get('val_source'), '').format(n=d.get('val_size'))}Backend: "
            f"{p['backend']} ({p['device_kind']}).\n\n"
            f"## Seed table shape\n\n{seed_row}\n## All attacks\n\n{conv_line}"
            f"{report.attack_table(results['attacks'], _SHADOW_COLUMNS)}{other_section}")
