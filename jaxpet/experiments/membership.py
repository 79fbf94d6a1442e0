"""Membership inference with shadow models (seed Task 1): split, train, attack, report.

Data flows one way: the dataset's train split is cut into the seed's four
quarters; the target and the shadow model(s) are trained (each a stage of the
run store, reused when its settings and data are unchanged, checkpointed
while it trains); their posteriors on balanced member / non-member sets are
the observations every registered shadow-family attack scores; the metrics
and figures are written last.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from absl import logging
import numpy as np

from jaxpet import attacks, config as config_lib, data, dpsgd, models, report, runs, splits, training
from jaxpet.config import setting
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
    epochs: int = setting(50, "Target and shadow training epochs.", low=1)
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
    patience: int = setting(10, "Early-stopping patience in epochs.", low=1,
                            when=("defense", _ES))
    num_shadow: int = setting(1, "Shadow models, trained together in one vmapped call.", low=1)
    label_only_shift: int = settings.label_only_shift()
    label_only_translations: str = settings.label_only_translations()
    label_only_flips: bool | None = settings.label_only_flips(when=("dataset", ("cifar10",)))
    label_only_attack_model: str = settings.label_only_attack_model()
    precision: str = settings.precision()
    batch_size: int = setting(128, "Target/shadow batch size.", low=1)
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
        suffix = "" if self.preset == "seed" else f"_{self.preset}"
        return self.workdir or f"runs/membership_{self.dataset}{suffix}"

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
    def model_norm(self) -> str:
        return self.norm or ("group" if self.defense == "dpsgd" else "batch")

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
        """Everything the trained ``role`` depends on: the training settings and the data's
        content (not the attack's knobs), so runs differing only in the attack share them."""
        skip = ("preset", "data_dir", "workdir", "stage_dir", "num_posteriors", "attack_epochs",
                "strategy", "checkpoint_every", "dp_delta", "norm", "thresholds", "confidence",
                "threshold_criterion",
                # the queries are keyed by label_only_queries below; the model is the attack's
                "label_only_translations", "label_only_flips", "label_only_attack_model")
        skip += ("num_shadow",) if role == "target" else ()
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        key = {**fields, "norm": self.model_norm, "data": dataset.digest,
               "train_size": self.part_size(len(dataset.train)),
               "label_only_queries": self.label_only_queries.key()}
        # Validation from unused data changes the sets; the seed's layout keeps its old keys.
        source = self.val_source(len(dataset.train))
        return {**key, "val_source": source} if source == "unused" else key


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
        raise config_lib.ConfigError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}.")
    return Config(**{**PRESETS[preset], "preset": preset, **overrides})


# The files a run writes besides config.json and results.json.
OUTPUTS = ("predictions.npz", "roc.png", "summary.md")


def summary_path(config: Config) -> str:
    return f"{config.output_dir}/summary.md"


def _balanced(members: np.ndarray, non_members: np.ndarray, rng: np.random.Generator):
    """Equal numbers of members and non-members (chance = 50%), sampled without replacement."""
    n = min(len(members), len(non_members))
    return (np.sort(rng.choice(members, n, replace=False)),
            np.sort(rng.choice(non_members, n, replace=False)))


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


def _train_role(role: _Role, model, config: Config, dataset: data.Dataset, preprocess, seed: int,
                checkpoint_dir: str) -> tuple[dict[str, np.ndarray], dict]:
    """Trains all models of a role in one ensemble call; posteriors on balanced in/out sets."""
    train, test = dataset.train, dataset.test
    early = config.defense == "dropout_early_stopping"
    train_config = training.TrainConfig(
        epochs=config.epochs, batch_size=config.batch_size, early_stopping=early,
        patience=config.patience, dpsgd=config.defense == "dpsgd",
        dp_clip_norm=config.dp_clip_norm, dp_noise_multiplier=config.dp_noise_multiplier)
    logging.info("Training %s: %d model(s), %s members each", role.name, role.members.num_models,
                 role.members.counts.tolist())
    result = training.train_ensemble(
        model, train.images, train.labels, role.members, train_config, seed=seed,
        validation=role.validation, preprocess=preprocess, log_prefix=f"{role.name} ",
        mesh=training.default_mesh(config.strategy), strategy=config.strategy,
        checkpoint_dir=checkpoint_dir, checkpoint_every=config.checkpoint_every)
    variables = result.variables()
    train_eval = training.evaluate(model, variables, train.images, train.labels, role.members,
                                   preprocess=preprocess)
    test_sets = splits.MemberSets.replicate(np.arange(len(test)), role.members.num_models)
    test_eval = training.evaluate(model, variables, test.images, test.labels, test_sets,
                                  preprocess=preprocess)
    rng = np.random.default_rng(seed + 7)
    chosen = [_balanced(role.members.member(k), role.non_members[k], rng)
              for k in range(role.members.num_models)]
    # One vmapped pass of all K models over every example any of them is evaluated on.
    pool = np.unique(np.concatenate([np.concatenate(c) for c in chosen]))
    pool_post = training.predict(model, variables, train.images[pool], preprocess=preprocess)
    pool_correct = attacks.label_only.query_correct(model, variables, train.images[pool],
                                                    train.labels[pool], config.label_only_queries,
                                                    preprocess=preprocess)
    correct = []
    post, labels, membership, indices, owner = [], [], [], [], []
    for k, (ins, outs) in enumerate(chosen):
        idx = np.concatenate([ins, outs])
        post.append(pool_post[k, np.searchsorted(pool, idx)])
        correct.append(pool_correct[k, np.searchsorted(pool, idx)])
        labels.append(train.labels[idx])
        membership.append(np.r_[np.ones(len(ins), np.int32), np.zeros(len(outs), np.int32)])
        indices.append(idx)
        owner.append(np.full(len(idx), k, np.int32))
    arrays = {"posteriors": np.concatenate(post), "correct": np.concatenate(correct),
              "labels": np.concatenate(labels),
              "membership": np.concatenate(membership), "indices": np.concatenate(indices),
              "model": np.concatenate(owner)}
    info = {"train_acc": train_eval["accuracy"].tolist(), "test_acc": test_eval["accuracy"].tolist(),
            "seconds": result.seconds, "epochs_run": len(result.history),
            "best_epoch": np.asarray(result.state.best_epoch).tolist() if early else None,
            "final_loss": result.history[-1]["loss"].tolist(),
            "members_min": int(role.members.counts.min())}  # what the DP accounting needs
    return arrays, info


def run(config: Config, dataset: data.Dataset | None = None) -> dict[str, Any]:
    """The whole experiment; writes config.json, results.json, predictions.npz, roc.png and
    summary.md to the workdir. ``dataset`` overrides loading (tests pass a small one)."""
    with runs.Run(config.output_dir, config, outputs=OUTPUTS, stage_dir=config.stage_dir) as run_:
        with run_.timed("load_data"):
            if dataset is None:
                dataset = data.load_dataset(config.dataset, config.data_dir)
        pool_size = len(dataset.train)
        config.check_sizes(pool_size)
        part = config.part_size(pool_size)
        split = splits.quarter_split(pool_size, config.seed, part_size=part,
                                     val_size=config.val_size)
        preprocess = data.normalizer(config.dataset)
        dropout = config.dropout_rate if config.defense == "dropout_early_stopping" else 0.0
        make = lambda role: models.seed_cnn(config.dataset, role, dropout_rate=dropout,
                                            precision=config.precision,
                                            width_scale=config.width_scale, norm=config.model_norm)
        target_role, shadow_role = _roles(split, config.num_shadow, config.seed)
        # The run's ETA: each role's members trained every epoch; then the attack MLP on the
        # shadows' member and non-member posteriors, an example of which costs about 1% of a CNN
        # image (a 10-128-2 MLP; measured on the quick preset: 2 s of 56).
        for role in (target_role, shadow_role):
            run_.expect(role.name, config.epochs * float(role.members.counts.sum()),
                        stage=role.name)
        run_.expect("attack", config.attack_epochs * 2 * float(shadow_role.members.counts.sum()),
                    cost=0.01)
        trained = {}
        for role, seed in ((target_role, config.seed), (shadow_role, config.seed + 1000)):
            key = config.training_key(dataset, role.name)
            with run_.timed(role.name):
                trained[role.name] = run_.stages.run(role.name, key, lambda: _train_role(
                    role, make(role.name), config, dataset, preprocess, seed,
                    str(run_.stages.checkpoint_dir(role.name, key))))
        (target, target_info), (shadow, shadow_info) = trained["target"], trained["shadow"]

        with run_.timed("attacks"):
            observed = lambda arrays: attacks.LabeledPosteriors(
                arrays["posteriors"], arrays["labels"], arrays["membership"],
                correct=arrays.get("correct"))
            attack_config = attacks.ShadowAttackConfig(
                top_k=config.num_posteriors, epochs=config.attack_epochs,
                thresholds=config.thresholds, confidence=config.confidence,
                threshold_criterion=config.threshold_criterion)
            own_config = {"label_only": config.label_only_attack}  # the rest: attack_config
            outputs = {a.name: a.fn(observed(shadow), observed(target),
                                    config=own_config.get(a.name, attack_config),
                                    seed=config.seed)
                       for a in attacks.registry.list_attacks("shadow")
                       if a.runs_on(observed(target))}
            # The threshold attacks under the other convention (both switches flipped: Song &
            # Mittal's per-class true-class against one threshold on the top posterior).
            other = dataclasses.replace(
                attack_config,
                thresholds=next(t for t in attacks.THRESHOLD_SCOPES if t != config.thresholds),
                confidence=next(c for c in attacks.CONFIDENCES if c != config.confidence))
            other_outputs = {name: attacks.get_attack(name, "shadow").fn(
                observed(shadow), observed(target), config=other, seed=config.seed)
                for name in attacks.THRESHOLD_ATTACKS}
        results = run_.finish({
            "data": {"dataset": config.dataset, "source": dataset.info.get("source"),
                     "digest": dataset.digest, "pool_size": pool_size, "members_per_model": part,
                     "val_size": config.val_size, "val_source": split.val_source,
                     "label_only_queries": config.label_only_queries.count,
                     "attack_test_members": int(target["membership"].sum()),
                     "attack_test_non_members": int((1 - target["membership"]).sum())},
            "target": {"train_acc": target_info["train_acc"][0],
                       "test_acc": target_info["test_acc"][0],
                       "epochs_run": target_info["epochs_run"],
                       "best_epoch": target_info["best_epoch"]},
            "shadow": {"train_acc": float(np.mean(shadow_info["train_acc"])),
                       "test_acc": float(np.mean(shadow_info["test_acc"])),
                       "per_model_train_acc": shadow_info["train_acc"],
                       "per_model_test_acc": shadow_info["test_acc"],
                       "epochs_run": shadow_info["epochs_run"]},
            "attacks": {name: out.report for name, out in outputs.items()},
            "conventions": {"thresholds": config.thresholds, "confidence": config.confidence},
            "other_conventions": {"thresholds": other.thresholds, "confidence": other.confidence,
                                  "attacks": {name: out.report
                                              for name, out in other_outputs.items()}},
            # At report time, for the smallest member set: --dp_delta needs no retraining.
            "privacy": (dpsgd.training_epsilon(
                config.dp_noise_multiplier, config.batch_size, target_info["members_min"],
                target_info["epochs_run"], config.dp_delta) if config.defense == "dpsgd" else None),
            "attack_train_acc": outputs["shadow_mlp"].info["train_acc"],
            "seconds": {"target_training": target_info["seconds"],
                        "shadow_training": shadow_info["seconds"]},
        })
        runs.write_npz(run_.path / "predictions.npz", posteriors=target["posteriors"],
                       labels=target["labels"], membership=target["membership"],
                       indices=target["indices"],
                       **{f"score_{name}": out.scores for name, out in outputs.items()})
        runs.save_figure(report.roc_figure(
            {name: (target["membership"], out.scores) for name, out in outputs.items()},
            title=f"{config.dataset}: {part} members/model, {config.epochs} epochs, "
                  f"top-{config.num_posteriors}, defence {config.defense}"), run_.path / "roc.png")
        runs.write_text(run_.path / "summary.md", summary_markdown(results))
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
    def attacks_table(reports):
        rows = []
        for name, r in reports.items():
            tpr = r["tpr_at_fpr"]
            tied = r.get("tpr_at_fpr_randomized")  # absent from results before it existed
            rows.append([name, pct(r["accuracy"]), f"{r['precision']:.3f}", f"{r['recall']:.3f}",
                         f"{r['f1']:.3f}", f"{r['auc']:.4f}", pct(tpr["0.01"]),
                         pct(tpr["0.001"]), pct(tpr["0.0"]),
                         "-" if tied is None else pct(tied["0.01"]),
                         "-" if tied is None else pct(tied["0.001"])])
        return report.markdown_table(
            ["attack", "acc (%)", "precision", "recall", "F1", "AUC", "TPR@1%FPR (%)",
             "TPR@0.1%FPR (%)", "TPR@0%FPR (%)", "TPR@1%FPR, ties random (%)",
             "TPR@0.1%FPR, ties random (%)"], rows)

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
        f"{attacks_table(other['attacks'])}")
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
            f"{attacks_table(results['attacks'])}{other_section}")
