"""Audit your own model: the membership-inference risk of any Flax classifier on your data.

The data flow of :func:`run`: load the data (a jaxpet dataset, or your ``.npz``
of images or feature vectors: :mod:`jaxpet.data.arrays`); draw the candidate
pool and RMIA's population (from the held-out part); take the target (trained
here on a recorded half of the pool, or yours, restored from a Flax checkpoint
with the indices of its training examples: :mod:`jaxpet.training.restore`);
lay out the N reference models (:func:`jaxpet.splits.reference_layout`: online
on random halves of the pool, a balanced keep mask; offline on as many examples
as the target outside the candidates, every candidate OUT for all); train them
at once and query every model (:func:`jaxpet.stages.ensemble_logits`, one stage
of the run store, reused while its settings and data are unchanged); score the
target with every reference-family attack of the registry (LiRA, RMIA, the loss
baseline, label-only); check each attack's calibration on a reference scored as
the target (:func:`self_check`); report the metrics, the ROC, every candidate's
scores and the most exposed training examples.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from jaxpet import (
    attacks as attacks_lib,
    calibration,
    classifiers,
    config as config_lib,
    files,
    page,
    progress,
    report,
    runs,
    splits,
    stages,
    training,
)
from jaxpet.attacks import lira as lira_attack, reference, registry
from jaxpet.config import same_as, setting
from jaxpet.data import arrays as arrays_lib
from jaxpet.experiments import settings
from jaxpet.training import restore

BUILTIN_MODELS = classifiers.BUILTIN_CLASSIFIERS
BUILTIN_DATASETS = arrays_lib.NORMALIZED
TARGETS = ("train", "checkpoint")
_TRAIN = training.TrainConfig


@dataclasses.dataclass(frozen=True)
class Config:
    """What to audit (model, data, target) and how the references are trained."""

    model: str = setting("seed_cnn", "The model: an import path module:function to a function "
                         "that takes num_classes and returns a Flax module called as "
                         "module(x, train) (or an NNX class or factory f(num_classes, rngs) "
                         "returning an nnx.Module called as module(x)), or one of jaxpet's: "
                         "seed_cnn (the seed's CNN), mlp, "
                         "wrn (WideResNet-28-2, the published LiRA/RMIA model; its recipe is "
                         "--optimizer=sgd --learning_rate=0.1 --momentum=0.9 --weight_decay=5e-4 "
                         "--schedule=lira_cosine --augment=flip_crop --batch_size=256 "
                         "--epochs=100).")
    data: str = setting("cifar10", "cifar10, mnist, tfds:<name> (any TensorFlow Datasets "
                        "image-classification dataset, e.g. tfds:fashion_mnist), or a path to an "
                        ".npz with 'images' (uint8 or float, NHWC) or 'features' (float vectors) "
                        "and 'labels', optionally a held-out 'test_images'/'test_features' + "
                        "'test_labels' (else RMIA's population is set aside from the training "
                        "part) and 'num_classes'.")
    data_dir: str | None = settings.data_dir()
    preprocess: str = setting("dataset", "What the model sees: dataset (jaxpet's normalisation "
                              "for mnist and cifar10; pixels / 255 for other uint8 images; "
                              "floats as stored), unit (uint8 pixels / 255, in [0, 1]) or raw "
                              "(values as stored). Match what your target was trained on.",
                              choices=arrays_lib.PREPROCESS)
    workdir: str = setting("runs/audit", "Output folder.")
    seed: int = setting(0, "Seed for the pool, the member sets, initialisation and data order.",
                        low=0)
    target: str = setting("train", "train: jaxpet trains the target on a random half of the pool "
                          "(recorded); checkpoint: your trained target from --target_checkpoint "
                          "with its training examples in --target_members.", choices=TARGETS)
    target_checkpoint: str | None = setting(None, "Your target's Flax variables, written with "
                                            "flax.serialization.to_bytes, or an orbax "
                                            "checkpoint folder of its Linen variables or its "
                                            "nnx.state.",
                                            when=("target", ("checkpoint",)))
    target_members: str | None = setting(None, "A .npy or .txt of the indices (into the training "
                                         "part of the data) your target trained on.",
                                         when=("target", ("checkpoint",)))
    num_references: int = setting(8, "N reference models, trained at once on random halves of "
                                  "the pool; even.", low=2)
    references: str = setting("online", "online: each reference trains on a random half of the "
                              "whole pool (every attack); offline: on as many examples as the "
                              "target, drawn outside the candidates, so every candidate is OUT "
                              "for every reference (the offline attacks and the loss baseline).",
                              choices=splits.REFERENCE_MODES)
    pool_size: int | None = setting(None, "Candidates drawn from the training part (default: all "
                                    "of it, half of it with --references=offline, whose "
                                    "references train on the rest; with --target=checkpoint, the "
                                    "target's members and as many non-members).", low=4)
    population_size: int = setting(1000, "Held-out examples used as RMIA's population.", low=1)
    epochs: int = same_as(_TRAIN, "epochs", default=20,
                          help="Training epochs of the target and every reference.")
    batch_size: int = same_as(_TRAIN, "batch_size")
    optimizer: str = same_as(_TRAIN, "optimizer")
    learning_rate: float = same_as(_TRAIN, "learning_rate")
    momentum: float = same_as(_TRAIN, "momentum", when=("optimizer", ("sgd",)))
    weight_decay: float = same_as(_TRAIN, "weight_decay")
    schedule: str = same_as(_TRAIN, "schedule")
    lr_decay: float = same_as(_TRAIN, "lr_decay", when=("schedule", ("exponential",)))
    augment: str = same_as(_TRAIN, "augment")  # images only
    flip_queries: bool = setting(True, "Query each image's horizontal flip too and average the "
                                 "two (images only; turn off where a flip changes the class, "
                                 "e.g. digits).")
    label_only_shift: int = settings.label_only_shift()  # images only; flips with --flip_queries
    label_only_translations: str = settings.label_only_translations()
    rmia_signal: str = settings.rmia_signal()
    lira_convention: str = settings.lira_convention()
    rmia_convention: str = settings.rmia_convention()
    rmia_offline_a: float = same_as(reference.AttackConfig, "rmia_offline_a")
    query_mode: str = settings.lira_query_mode()
    fpr_rule: str = settings.fpr_rule()
    width_scale: float = settings.width_scale(
        "Multiplies the widths of jaxpet's built-in --model (seed_cnn and mlp; wrn's widen "
        "factor 2, rounded); refused for your own model, and where the rounded widths do not "
        "change.")
    precision: str = settings.precision()  # jaxpet's built-in models only
    strategy: str = settings.strategy()
    checkpoint_every: int = settings.checkpoint_every()
    eval_batch_size: int = same_as(_TRAIN, "eval_batch_size", default=256,
                                   help="Examples per prediction call (memory only; under "
                                   "--query_mode=train_batch_stats the logits' batches are "
                                   "LiRA's 5,000 and this sizes the label-only queries only).")
    num_exposed: int = setting(16, "Most exposed training examples listed (and drawn, for "
                               "images).", low=1, high=256)

    def __post_init__(self):
        config_lib.check(self)
        if self.num_references % 2:
            raise config_lib.ConfigError(f"--num_references must be even (every candidate is in "
                                         f"exactly half of them), got {self.num_references}.")
        if self.target == "checkpoint" and not (self.target_checkpoint and self.target_members):
            raise config_lib.ConfigError("--target=checkpoint needs --target_checkpoint and "
                                         "--target_members.")

    def train_config(self) -> training.TrainConfig:
        return config_lib.pick(self, training.TrainConfig)


# Named configurations; explicit flags override them. "quick" fits a 2-core CPU in minutes.
PRESETS: dict[str, dict[str, Any]] = {
    "full": {},
    "quick": dict(model="mlp", data="mnist", pool_size=2000, num_references=8, epochs=30,
                  batch_size=64, flip_queries=False, workdir="runs/audit_quick"),
}
PRESET_HELP = ("full: the flags' defaults (the seed CNN on CIFAR-10, every training example a "
               "candidate); quick: the README's worked example with the built-in MLP (MNIST, a "
               "2,000-example pool, 8 references, 30 epochs), about a minute on a 2-core CPU.")

# Settings that cannot change the trained models or their logits: paths (the data and the
# target's checkpoint enter the key as digests, its members as the target's keep mask),
# scoring knobs, memory and execution choices, the report's length.
NOT_IN_LOGITS = ("data", "data_dir", "workdir", "target_checkpoint", "target_members",
                 "rmia_signal", "lira_convention", "rmia_convention", "rmia_offline_a",
                 "fpr_rule", "strategy", "checkpoint_every", "eval_batch_size", "num_exposed")

# The files a run writes besides config.json and results.json.
OUTPUTS = ("summary.md", "roc.png", "scores.npz", "exposed.png")


def summary_path(config: Config) -> str:
    return f"{config.workdir}/summary.md"


@dataclasses.dataclass(frozen=True)
class Sources:
    """Python objects standing for the config's strings (:func:`jaxpet.audit`'s arguments);
    None: the string says. ``model``: a Linen module, an NNX class or factory; ``data`` and
    ``population``: (x, y); ``members``: indices or a boolean mask; ``target``: Linen
    variables or a live ``nnx.Module``; ``recipe``: the user's optimiser and augmentation."""

    model: Any = None
    data: tuple[np.ndarray, np.ndarray] | None = None
    population: tuple[np.ndarray, np.ndarray] | None = None
    members: Any = None
    target: Any = None
    recipe: training.Recipe | None = None


def run(config: Config, sources: Sources = Sources()) -> dict[str, Any]:
    """The audit; writes results.json, summary.md, roc.png, scores.npz (every candidate's
    scores) and, for images, exposed.png. The command line's run, and :func:`jaxpet.audit`'s
    with its Python objects as ``sources``."""
    with runs.Run(config.workdir, config, outputs=OUTPUTS,
                  on_finish=page.write_page) as run_:
        audit = _arrays(config, sources)
        model, sample = _model(config, audit, sources.model)
        train_config = _train_config(config, sources.recipe, model, sample)
        members = _members(config, sources.members, len(audit.x))
        audit, available, pool, population = _candidates(config, audit, members)
        queries = 2 if audit.kind == "images" and config.flip_queries else 1
        stages.check_memory(model, train_config, sample, config.num_references + 1,
                            queried=len(pool) + len(population), num_classes=audit.num_classes,
                            queries=queries, pool_size=len(pool), flag="--num_references",
                            besides=1)
        target_keep, target_vars, target_digest = _target(config, model, sample, pool, members,
                                                          sources.target)
        layout = reference_layout(config, target_keep, pool, np.setdiff1d(available, pool))
        probe = _label_only_probe(config, audit, queries)
        key = stages.stage_key(
            config, ignore=NOT_IN_LOGITS, data=audit.digest,
            model=classifiers.identity(model, sample), preprocess=repr(audit.preprocess),
            pool=pool, population=population, target_digest=target_digest,
            target_keep=target_keep, reference_examples=layout.extra,
            reference_train_keep=layout.train_keep, label_only=probe.key() if probe else None,
            **_recipe_identity(train_config, model, sample))
        # The target, when trained here, is model 0; the references follow. They train on the
        # candidates, then on the examples only offline references train on.
        train_at = np.concatenate([pool, layout.extra])
        sets = ([np.r_[target_keep, np.zeros(len(layout.extra), bool)]]
                if target_vars is None else []) + list(layout.train_keep)

        def train_and_query():
            offline = {"reference_logits": audit.x[layout.extra]} if len(layout.extra) else {}
            return stages.ensemble_logits(
                model, audit.x[train_at], audit.y[train_at],
                splits.MemberSets.from_mask(np.stack(sets)), train_config,
                queries={"logits": audit.x[pool], "population_logits": audit.test_x[population],
                         **offline}, seed=config.seed, preprocess=audit.preprocess,
                flips=queries == 2, query_mode=config.query_mode,
                eval_batch_size=config.eval_batch_size, prepend=target_vars,
                label_only_probe=probe and (probe, audit.x[pool], audit.y[pool]),
                execution=stages.Execution(config.strategy, str(run_.stages.checkpoint_dir(
                    "logits", key)), config.checkpoint_every, "audit "))

        run_.expect("audit", config.epochs * len(sets) * target_keep.sum(), stage="logits")
        run_.expect("logits", (len(sets) + (target_vars is not None)) * queries * (
            len(pool) + len(population) + len(layout.extra)) * progress.FORWARD, stage="logits")
        with run_.timed("train_and_logits"):
            saved, info, _ = run_.stages.run("logits", key, train_and_query)
        _check_finite(saved, trained_target=target_vars is None)
        with run_.timed("scoring"):
            scored = _score(config, saved, audit, pool, population, target_keep, layout, queries)
        target = {k: v[0] for k, v in stages.accuracy(
            saved["logits"][:1], audit.y[pool], target_keep[None],
            saved["population_logits"][:1], audit.test_y[population]).items()}
        results = run_.finish(_results(config, audit, pool, population, target_keep, layout,
                                       queries, target, scored, info, train_config))
        _write_outputs(config, run_.path, audit, pool, target_keep, scored, results)
        return results


def _check_finite(saved: dict, trained_target: bool) -> None:
    """Refuses logits with NaN or infinity (a model whose training diverged), naming it."""
    bad = [k for k in range(len(saved["logits"]))
           if not all(np.isfinite(saved[name][k]).all() for name in
                      ("logits", "population_logits", "reference_logits") if name in saved)]
    if bad:
        k, count = bad[0], f"{len(bad)} of {len(saved['logits'])} models"
        if k == 0 and not trained_target:
            raise config_lib.ConfigError(f"your target gives NaN or infinite logits ({count}) "
                                         "— check its variables and --preprocess.")
        which = "the target" if k == 0 else f"reference {k}"
        raise config_lib.ConfigError(
            f"{which} gives NaN or infinite logits after training ({count}) — its training "
            "diverged: lower the learning rate (or clip the gradients).")


def _arrays(config: Config, sources: Sources) -> arrays_lib.LabelledArrays:
    """The data --data names, or the arrays given from Python, checked as an .npz's are."""
    if sources.data is None:
        if sources.population is not None:
            raise config_lib.ConfigError("population= goes with data given as arrays; a "
                                         f"dataset by name (data={config.data!r}) has its own "
                                         "held-out part.")
        return arrays_lib.load_arrays(config.data, config.data_dir, config.preprocess)
    x, y = sources.data
    # Images: NHWC, or uint8 stacks without a channel axis (refused with that fix, as an
    # .npz's are); anything else is feature vectors.
    kind = "images" if x.ndim == 4 or (x.ndim == 3 and x.dtype == np.uint8) else "features"
    arrays = {kind: x, "labels": y}
    if sources.population is not None:
        test_y = np.asarray(sources.population[1])
        unseen = (np.setdiff1d(test_y, y) if test_y.dtype.kind in "iu"
                  else np.zeros(0, np.int64))  # other kinds: from_arrays refuses them
        if len(unseen):
            raise config_lib.ConfigError(
                f"population= holds class {unseen[0]}, which no example of data= has — the "
                "held-out part's labels must be classes of the data (the model's outputs).")
        arrays.update({f"test_{kind}": sources.population[0], "test_labels": test_y})
    return arrays_lib.from_arrays(arrays, "data", "arrays", config.preprocess)


def _model(config: Config, audit: arrays_lib.LabelledArrays, given=None):
    """The model --model names (or the object given from Python), checked to take the data's
    examples and to give one logit per class, with a one-example sample of its inputs;
    settings it would not use are refused."""
    if given is None:
        model = classifiers.classifier(config.model, audit.num_classes,
                                       width_scale=config.width_scale,
                                       precision=config.precision)
    else:
        model = classifiers.from_object(given, audit.num_classes)
    sample = audit.preprocess(audit.x[:1])
    classifiers.check_classifier(model, sample, audit.num_classes, config.model,
                                 flag="model" if given is not None else None)
    refuse_unused(config, audit, model)
    return model, sample


def _train_config(config: Config, recipe, model, sample) -> training.TrainConfig:
    """The flags' recipe, or the user's optimiser and augmentation, checked on this model's
    parameters and a batch of its inputs; flags of the menu it replaces are refused."""
    train_config = config.train_config()
    if recipe is None:
        return train_config
    if recipe.optimizer is not None:
        config_lib.refuse_no_effect(
            config, ("optimizer", "learning_rate", "momentum", "weight_decay", "schedule",
                     "lr_decay"), "optimizer= is your optax optimiser, which holds its own rate, "
            "schedule and weight decay")
    if recipe.augment is not None:
        config_lib.refuse_no_effect(config, ("augment",), "augment= is your function")
    params = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False),
                            sample)["params"]
    training.check_recipe(recipe, params, np.repeat(sample, config.batch_size, axis=0))
    return dataclasses.replace(train_config, user_recipe=recipe)


def _recipe_identity(train_config: training.TrainConfig, model, sample) -> dict:
    """The user's recipe in the stage key: what its optimiser and augmentation compute (none
    for the flags' recipe, which the config's settings already key)."""
    if train_config.user_recipe is None:
        return {}
    params = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False),
                            sample)["params"]
    return {"recipe": training.recipe_identity(train_config.user_recipe, params, np.repeat(
        sample, train_config.batch_size, axis=0))}


def _members(config: Config, given, num_examples: int) -> np.ndarray | None:
    """The target's training examples: --target_members's file, or indices (or a boolean
    mask) given from Python; None when jaxpet trains the target."""
    if config.target != "checkpoint":
        return None
    if given is None:
        return arrays_lib.read_indices(config.target_members, num_examples)
    given = np.asarray(given)
    if given.dtype == bool:
        if given.shape != (num_examples,):
            raise config_lib.ConfigError(f"members= is a boolean mask of shape {given.shape}; "
                                         f"it needs one entry per example: ({num_examples},).")
        given = np.flatnonzero(given)
    return arrays_lib.check_indices(given, num_examples, "members=")


def refuse_unused(config: Config, audit: arrays_lib.LabelledArrays, model) -> None:
    """Refuses a setting the user chose that this run would not use, given what it actually
    loaded and built: results.json must never record a setting that changed nothing."""
    if audit.kind != "images":
        config_lib.refuse_no_effect(
            config, ("augment", "flip_queries", "label_only_shift", "label_only_translations"),
            f"--data={config.data} holds feature vectors, which are never flipped, shifted or "
            "cropped (and the label-only attack needs images)")
    if config.data not in BUILTIN_DATASETS and not config.data.startswith("tfds:"):
        config_lib.refuse_no_effect(config, ("data_dir",), f"--data={config.data} is a file; "
                                    "--data_dir only locates jaxpet's named datasets")
    if "preprocess" in config_lib.given(config) and audit.preprocess == arrays_lib.preprocessing(
            config.data, arrays_lib.PREPROCESS[0], audit.x.dtype):
        config_lib.refuse_no_effect(config, ("preprocess",), f"--data={config.data} holds "
                                    f"{audit.x.dtype} {audit.kind}, which it leaves as "
                                    f"--preprocess={arrays_lib.PREPROCESS[0]} does")
    if config.model not in BUILTIN_MODELS:
        config_lib.refuse_no_effect(config, ("width_scale", "precision"), f"--model="
                                    f"{config.model} is built by your factory; jaxpet's widths "
                                    "and precision apply to its built-in models only")
    elif model == classifiers.classifier(config.model, audit.num_classes,
                                         precision=config.precision):
        config_lib.refuse_no_effect(config, ("width_scale",), f"--model={config.model}'s widths, "
                                    "rounded to whole units, are those of --width_scale=1")


def _candidates(config: Config, audit: arrays_lib.LabelledArrays, members: np.ndarray | None):
    """(the data with its held-out part, the training examples available to the pool and the
    references, the pool, RMIA's population as held-out positions). Without a held-out part,
    the population is set aside from the training examples (none of a given target's
    members)."""
    rng = np.random.default_rng(config.seed)
    available = np.arange(len(audit.x))
    if audit.test_x is None:
        outside = available if members is None else np.setdiff1d(available, members)
        if config.population_size >= len(outside):
            raise config_lib.ConfigError(f"--population_size={config.population_size} leaves "
                                         "no training example for the pool — lower it.")
        held = np.sort(np.random.default_rng([config.seed, 2]).choice(
            outside, config.population_size, replace=False))
        audit = audit.holding_out(held)
        available = np.setdiff1d(available, held)
    pool = splits.candidate_pool(available, members, config.pool_size, rng,
                                 offline=config.references == "offline")
    assert audit.test_x is not None
    if config.population_size > len(audit.test_x):
        raise config_lib.ConfigError(f"--population_size={config.population_size} is larger "
                                     f"than the {len(audit.test_x)} held-out examples.")
    if config.batch_size > len(pool) // 2:
        raise config_lib.ConfigError(f"--batch_size={config.batch_size} is larger than a "
                                     f"model's ~{len(pool) // 2} members — lower it.")
    population = np.sort(rng.choice(len(audit.test_x), config.population_size, replace=False))
    return audit, available, pool, population


def _target(config: Config, model, sample, pool: np.ndarray, members: np.ndarray | None,
            given=None):
    """The target's membership of the pool, its variables (None: trained here, on exactly
    half the pool, recorded) and the digest of its checkpoint or given variables (None:
    trained here)."""
    if members is None:
        keep = np.zeros(len(pool), bool)
        keep[np.random.default_rng([config.seed, 1]).permutation(len(pool))[
            :len(pool) // 2]] = True
        return keep, None, None
    if given is not None:
        variables, digest = restore.given_variables(given, model, sample, flag="target=")
    else:
        variables, digest = restore.load_variables(config.target_checkpoint, model, sample,
                                                   model_name=config.model)
    return np.isin(pool, members), variables, digest


def _label_only_probe(config: Config, audit: arrays_lib.LabelledArrays, queries: int):
    """Label-only queries (images only): shifts, and flips where --flip_queries allows them."""
    if audit.kind != "images":
        return None
    return attacks_lib.label_only.Queries(max_shift=config.label_only_shift,
                                          shifts=config.label_only_translations,
                                          flips=queries == 2)


def reference_layout(config: Config, target_keep: np.ndarray, pool: np.ndarray,
                     outside: np.ndarray) -> splits.ReferenceLayout:
    """The references' training sets under ``config`` (:func:`jaxpet.splits.reference_layout`):
    online on balanced halves of the pool, offline on examples ``outside`` the candidates."""
    return splits.reference_layout(config.references, target_keep, pool, outside,
                                   config.num_references, config.seed)


@dataclasses.dataclass(frozen=True)
class Scored:
    """Every attack's scores of the candidates and metrics, RMIA's fitted a, the calibration
    check, and the members the ranking attack finds most exposed."""

    scores: dict[str, np.ndarray]
    keep: np.ndarray  # [1 + references, candidates]: row 0 the target's membership
    attacks: dict[str, dict]
    fitted_a: float | None
    check: dict
    ranking: str
    exposed: np.ndarray

    @property
    def ranked(self) -> np.ndarray:
        return self.scores[self.ranking]


def _score(config: Config, saved, audit, pool, population, target_keep, layout,
           queries: int) -> Scored:
    """The target (model 0) scored by the references (models 1..N) with every attack the
    layout and the data allow, and the same attacks checked on reference 1 as the target."""
    signals = lira_attack.Signals.from_logits(
        saved["logits"], audit.y[pool], saved["population_logits"], audit.test_y[population],
        rmia_signal=config.rmia_signal)
    signals = dataclasses.replace(signals, correct=saved.get("correct"))
    all_keep = np.concatenate([target_keep[None], layout.keep])
    attack_config = reference.AttackConfig(num_queries=queries,
                                           rmia_offline_a=config.rmia_offline_a,
                                           lira_convention=config.lira_convention,
                                           rmia_convention=config.rmia_convention,
                                           fpr_rule=config.fpr_rule)
    names = attack_names(config, signals)
    if "reference_logits" in saved and "rmia_offline_fitted_a" in names:
        attack_config = dataclasses.replace(attack_config, rmia_fitted_a=offline_fitted_a(
            config, saved, layout, audit.y[layout.extra], audit.test_y[population],
            attack_config))
    scores = reference.attack_scores(signals, all_keep, 0,
                                     list(range(1, config.num_references + 1)), attack_config,
                                     attacks=names)
    attacks = {name: reference.attack_metrics(target_keep, s, fpr_rule=config.fpr_rule)
               for name, s in scores.items()}
    check = self_check(signals, all_keep, target_keep, attack_config, names)
    ranking = "lira_online" if config.references == "online" else "lira_offline"
    return Scored(scores, all_keep, attacks, attack_config.rmia_fitted_a, check, ranking,
                  _most_exposed(scores[ranking], target_keep, config.num_exposed))


def offline_fitted_a(config: Config, saved: dict, layout: splits.ReferenceLayout, labels,
                     population_labels, attack_config) -> float:
    """RMIA offline's a fitted as the paper tunes it, on the offline references' own training
    examples (``layout.extra``), where each has members: each of two references in turn plays
    the target with the others as its OUT references (:func:`jaxpet.attacks.rmia.fit_offline_a`).
    No candidate and nothing of the target (model 0, left out of both query sets) enters."""
    extra = lira_attack.Signals.from_logits(
        saved["reference_logits"][1:], labels, saved["population_logits"][1:],
        population_labels, rmia_signal=config.rmia_signal).queries(attack_config.num_queries)
    x, population = extra.rmia
    return attacks_lib.rmia.fit_offline_a(
        x, layout.train_keep[:, -len(layout.extra):], population, gamma=attack_config.rmia_gamma,
        conv=attack_config.rmia_convention, fallback=attack_config.rmia_offline_a)


def self_check(signals, all_keep: np.ndarray, target_keep: np.ndarray, attack_config,
               names) -> dict:
    """The calibration check of :func:`jaxpet.calibration.pseudo_target_check` on this run:
    reference 1 scored as the target (row 0 of ``all_keep``) by the other references, on the
    candidates it never trained on, with the target's membership as the claim."""
    unseen = ~all_keep[1]
    if target_keep[unseen].all() or not target_keep[unseen].any():
        return {"skipped": "the reference scored as the target never saw only members (or only "
                           "non-members) of the target, so there is no claim to test"}
    return calibration.pseudo_target_check(signals, all_keep, target_keep, 1,
                                           list(range(2, len(all_keep))), attack_config, names)


def attack_names(config: Config, signals=None) -> list[str]:
    """Every reference-family attack (online references), or those that need no reference
    trained on the target's members (offline); of those, the ones ``signals`` can feed (the
    label-only attack needs image queries)."""
    names = [n for n in registry.attack_names("reference")
             if signals is None or registry.get_attack(n).runs_on(signals)]
    if config.references == "online":
        return list(names)
    return [n for n in names if "offline" in n or not registry.get_attack(n).uses_references]


def _results(config: Config, audit, pool, population, target_keep, layout, queries: int,
             target: dict, scored: Scored, info: dict, train_config) -> dict:
    """results.json's figures (run_.finish adds the config and the provenance)."""
    recipe = train_config.user_recipe
    return {
        "recipe": None if recipe is None else {
            "optimizer": None if recipe.optimizer is None else "your optax optimiser",
            "augment": None if recipe.augment is None else getattr(
                recipe.augment, "__qualname__", type(recipe.augment).__name__)},
        "data": {"source": audit.source, "digest": audit.digest, "kind": audit.kind,
                 "num_classes": audit.num_classes, "pool_size": len(pool),
                 "population_size": len(population), "target_members": int(target_keep.sum()),
                 "queries": queries, "reference_members": float(layout.train_keep.sum(1).mean()),
                 "reference_note": layout.note},
        "target": target,
        "attacks": scored.attacks,
        "rmia_fitted_a": scored.fitted_a,
        "calibration": scored.check,
        "most_exposed": [{"index": int(pool[i]), "score": float(scored.ranked[i]),
                          "attack": scored.ranking} for i in scored.exposed],
        "seconds": {"training": float(info["train_seconds"])},
    }


def _write_outputs(config: Config, path, audit, pool, target_keep, scored: Scored,
                   results: dict) -> None:
    """scores.npz, roc.png, exposed.png (images) and summary.md."""
    files.write_npz(path / "scores.npz", indices=pool, membership=target_keep,
                    keep=scored.keep, labels=audit.y[pool],
                    **{f"score_{name}": s for name, s in scored.scores.items()})
    files.save_figure(report.roc_figure(
        {name: (target_keep, s) for name, s in scored.scores.items()},
        title=f"audit of {config.model}: {config.num_references} references"), path / "roc.png")
    if audit.kind == "images":
        files.save_image(_exposed_figure(audit.x[pool], scored.exposed, scored.ranked, pool),
                         path / "exposed.png")
    files.write_text(summary_path(config), summary_markdown(results))


def _most_exposed(score: np.ndarray, members: np.ndarray, count: int) -> np.ndarray:
    """Positions of the ``count`` members with the highest membership score."""
    positions = np.flatnonzero(members)
    return positions[np.argsort(-score[positions], kind="stable")[:count]]


def _exposed_figure(images, positions, score, pool):
    tiles = []
    for i in positions:
        image = np.asarray(images[i], np.float32)
        image = image / 255.0 if images.dtype == np.uint8 else (image - image.min()) / max(
            float(np.ptp(image)), 1e-12)
        tile = report.to_uint8(image.mean(-1, keepdims=True))
        zoom = max(1, -(-84 // tile.shape[1]))  # small images enlarged so captions fit
        tiles.append(np.kron(tile, np.ones((zoom, zoom), np.uint8)))
    columns = 8
    rows = [tiles[i:i + columns] for i in range(0, len(tiles), columns)]
    captions = [[f"#{pool[i]}: {score[i]:.1f}" for i in positions[j:j + columns]]
                for j in range(0, len(positions), columns)]
    return report.image_grid(rows, captions)


def summary_markdown(results: dict) -> str:
    """Every attack's AUC and TPR at low FPR, the built-in calibration check, the target's
    accuracy and the most exposed examples."""
    c, d, t = results["config"], results["data"], results["target"]
    table = report.attack_table(results["attacks"])
    exposed = report.markdown_table(["training example",
                                     f"{results['most_exposed'][0]['attack']} score"],
                                    [[e["index"], f"{e['score']:.4g}"]
                                     for e in results["most_exposed"]])
    if c.get("references", "online") == "online":
        layout = "each on a random half of the pool (online)"
    else:
        layout = (f"each on {d['reference_members']:.0f} training examples (mean) outside the "
                  "candidates, so every candidate is OUT for all of them (offline)")
    note = f"\n\n**Offline references:** {d['reference_note']}" if d.get("reference_note") else ""
    fitted = ("" if results.get("rmia_fitted_a") is None else
              f"rmia_offline_fitted_a used a = {results['rmia_fitted_a']:g}, fitted on the offline "
              "references' own training examples (each of two plays the target in turn).\n\n")
    return (f"# Membership audit of `{c['model']}` on {d['source']}\n\n"
            f"Target ({c['target']}): {d['target_members']} members of a {d['pool_size']}-example "
            f"pool; accuracy on members {report.pct(t['train_acc'])}%, pool non-members "
            f"{report.pct(t['pool_non_member_acc'])}%, held-out {report.pct(t['test_acc'])}%. "
            f"{c['num_references']} reference models ({_recipe_words(c, results.get('recipe'))}, "
            f"{c['epochs']} epochs), {layout}; "
            f"RMIA population {d['population_size']} held-out examples; {d['queries']} "
            f"quer{'ies' if d['queries'] > 1 else 'y'} per example; LiRA convention "
            f"{c.get('lira_convention', 'paper')}, RMIA convention "
            f"{c.get('rmia_convention', 'paper')}, TPR at FPR "
            f"{'<' if c.get('fpr_rule') == 'lt' else '<='} level. Backend "
            f"{results['provenance']['backend']}.{note}\n\n## Attacks\n\n{table}\n{fitted}"
            "TPR at a fixed FPR counts the thresholds on the score whose FPR is at most the "
            "level, so a block of tied scores (the label-only attack's) is taken whole or not "
            "at all; 'ties random' breaks the straddling block at random so that the FPR is "
            "the level exactly (the expected TPR: the ROC interpolated).\n\n"
            f"{calibration.markdown(results.get('calibration'))}"
            f"## Most exposed training examples\n\n{exposed}")


def _recipe_words(config: dict, recipe: dict | None) -> str:
    """How the summary names the training recipe: the flags' menu, or the user's own."""
    menu = f"{config['optimizer']}, lr {config['learning_rate']}, {config['schedule']} schedule"
    if not recipe:
        return menu
    words = "your optax optimiser" if recipe.get("optimizer") else menu
    return words + (f", augmentation {recipe['augment']}" if recipe.get("augment") else "")
