"""Audit your own model: the membership-inference risk of any Flax classifier on your data.

Stages: load the data (a jaxpet dataset, or your ``.npz`` of images or feature
vectors); draw the candidate pool and RMIA's population (from the held-out
part); take the target (trained here on a recorded half of the pool, or yours,
loaded from a Flax checkpoint with the indices of its training examples);
train N reference models at once, online on random halves of the pool (a
balanced keep mask: every candidate in exactly half of them), offline on as
many examples as the target outside the candidates (every candidate OUT for
all); query every model once (one stage of the run store, reused while
settings and data are unchanged); score the target with every reference-family
attack of the registry (LiRA, RMIA, the loss baseline, label-only); check each
attack's calibration on a reference scored as the target (:func:`self_check`);
report the metrics, the ROC, every candidate's scores and the most exposed
training examples.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pathlib
from typing import Any, Callable

import flax.linen as nn
from flax import serialization, traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from jaxpet import (calibration, config as config_lib, data, metrics, models, progress, report,
                    runs, splits, training)
from jaxpet import attacks as attacks_lib
from jaxpet.attacks import lira as lira_attack
from jaxpet.attacks import reference, registry
from jaxpet.config import setting
from jaxpet.experiments import settings

BUILTIN_MODELS = ("seed_cnn", "mlp", "wrn")
BUILTIN_DATASETS = ("cifar10", "mnist")
TARGETS = ("train", "checkpoint")


@dataclasses.dataclass(frozen=True)
class Config:
    """What to audit (model, data, target) and how the references are trained."""

    model: str = setting("seed_cnn", "The model: an import path module:function to a function "
                         "that takes num_classes and returns a Flax module called as "
                         "module(x, train), or one of jaxpet's: seed_cnn (the seed's CNN), mlp, "
                         "wrn (WideResNet-28-2, the published LiRA/RMIA model; its recipe is "
                         "--optimizer=sgd --learning_rate=0.1 --momentum=0.9 --weight_decay=5e-4 "
                         "--schedule=lira_cosine --augment --batch_size=256 --epochs=100).")
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
                              choices=("dataset", "unit", "raw"))
    workdir: str = setting("runs/audit", "Output folder.")
    seed: int = setting(0, "Seed for the pool, the member sets, initialisation and data order.",
                        low=0)
    target: str = setting("train", "train: jaxpet trains the target on a random half of the pool "
                          "(recorded); checkpoint: your trained target from --target_checkpoint "
                          "with its training examples in --target_members.", choices=TARGETS)
    target_checkpoint: str | None = setting(None, "Your target's Flax variables, written with "
                                            "flax.serialization.to_bytes.",
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
                              choices=("online", "offline"))
    pool_size: int | None = setting(None, "Candidates drawn from the training part (default: all "
                                    "of it, half of it with --references=offline, whose "
                                    "references train on the rest; with --target=checkpoint, the "
                                    "target's members and as many non-members).", low=4)
    population_size: int = setting(1000, "Held-out examples used as RMIA's population.", low=1)
    epochs: int = setting(20, "Training epochs of the target and every reference.", low=1)
    batch_size: int = setting(128, "Batch size per model.", low=1)
    optimizer: str = setting("adam", "adam, or sgd (with --momentum); both with coupled L2 "
                             "--weight_decay.", choices=training.OPTIMIZERS)
    learning_rate: float = setting(1e-3, "Initial learning rate.", low=0, low_open=True, high=10)
    momentum: float = setting(0.9, "SGD momentum.", low=0, high=1, high_open=True,
                              when=("optimizer", ("sgd",)))
    weight_decay: float = setting(1e-4, "L2 weight decay.", low=0, high=1)
    schedule: str = setting("exponential", "Learning-rate schedule: exponential (x --lr_decay per "
                            "epoch), constant, or cosine (to 0 over the epochs).",
                            choices=training.SCHEDULES)
    lr_decay: float = setting(0.96, "Per-epoch factor of the exponential schedule.", low=0,
                              low_open=True, high=1, when=("schedule", ("exponential",)))
    augment: bool = setting(False, "Train with random flips and 4-pixel crops (images only).")
    flip_queries: bool = setting(True, "Query each image's horizontal flip too and average the "
                                 "two (images only; turn off where a flip changes the class, "
                                 "e.g. digits).")
    label_only_shift: int = settings.label_only_shift()  # images only; flips with --flip_queries
    label_only_translations: str = settings.label_only_translations()
    rmia_signal: str = settings.rmia_signal()
    lira_convention: str = settings.lira_convention()
    rmia_convention: str = settings.rmia_convention()
    rmia_offline_a: float = setting(0.3, "RMIA offline: a in Pr(x) = ((1 + a) Pr_OUT(x) + "
                                    "(1 - a)) / 2 (rmia_offline_fitted_a fits it instead).",
                                    low=0, high=1)
    query_mode: str = settings.lira_query_mode()
    fpr_rule: str = settings.fpr_rule()
    width_scale: float = settings.width_scale()
    precision: str = settings.precision()
    strategy: str = settings.strategy()
    checkpoint_every: int = settings.checkpoint_every()
    eval_batch_size: int = setting(256, "Examples per prediction call (memory only; under "
                                   "--query_mode=train_batch_stats the logits' batches are "
                                   "LiRA's 5,000 and this sizes the label-only queries only).",
                                   low=1)
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

    def train_config(self, epochs: int | None = None) -> training.TrainConfig:
        return training.TrainConfig(
            epochs=epochs or self.epochs, batch_size=self.batch_size,
            learning_rate=self.learning_rate, lr_decay=self.lr_decay,
            weight_decay=self.weight_decay, optimizer=self.optimizer, momentum=self.momentum,
            schedule=self.schedule, augment="flip_crop" if self.augment else "none")


# The files a run writes besides config.json and results.json.
OUTPUTS = ("summary.md", "roc.png", "scores.npz", "exposed.png")


def summary_path(config: Config) -> str:
    return f"{config.workdir}/summary.md"


@dataclasses.dataclass(frozen=True, eq=False)
class AuditData:
    """Training part (candidates) and held-out part (population) as model inputs."""

    x: np.ndarray
    y: np.ndarray
    test_x: np.ndarray | None  # None: no held-out part (the population comes from train)
    test_y: np.ndarray | None
    num_classes: int
    kind: str  # "images" or "features"
    preprocess: Any
    digest: str
    source: str


def load_data(config: Config) -> AuditData:
    """A jaxpet dataset by name, or the user's .npz; every inconsistency is a clear error."""
    if config.data in BUILTIN_DATASETS or config.data.startswith("tfds:"):
        ds = data.load_dataset(config.data, config.data_dir)
        if ds.test is None or len(ds.test) == 0:
            raise data.DataError(f"--data={config.data} has no held-out split for RMIA's "
                                 "population — use an .npz with test_images and test_labels.")
        preprocess = (data.normalizer(config.data) if config.data in BUILTIN_DATASETS
                      and config.preprocess == "dataset" else _scaling(config, np.uint8))
        return AuditData(ds.train.images, ds.train.labels, ds.test.images, ds.test.labels,
                         len(ds.class_names), "images", preprocess, ds.digest,
                         str(ds.info.get("source")))
    path = pathlib.Path(config.data)
    if path.suffix != ".npz":
        raise config_lib.ConfigError(f"--data={config.data} is neither a jaxpet dataset "
                                     f"({', '.join(BUILTIN_DATASETS)}) nor an .npz file.")
    try:
        arrays = runs.read_npz(path)
    except (OSError, ValueError) as e:
        raise data.DataError(f"cannot read --data={path} ({e}) — give an .npz written with "
                             "numpy.savez (no pickled objects).") from e
    kind = "images" if "images" in arrays else "features" if "features" in arrays else None
    if kind is None or "labels" not in arrays:
        raise data.DataError(f"--data={path} needs 'images' or 'features', and 'labels'; it "
                             f"holds {sorted(arrays)}.")
    x, y = arrays[kind], arrays["labels"]
    test_x, test_y = arrays.get(f"test_{kind}"), arrays.get("test_labels")
    if (test_x is None) != (test_y is None):
        raise data.DataError(f"--data={path} has only one of 'test_{kind}' and 'test_labels'; "
                             "give both (a held-out part) or neither.")
    if test_x is None:  # no held-out part: the population is set aside from the training part
        test_x, test_y = x[:0], y[:0]
    num_classes = int(max(y.max(initial=0), test_y.max(initial=0))) + 1
    if "num_classes" in arrays:  # stated: every label must be below it
        stated = int(arrays["num_classes"])
        if num_classes > stated:
            raise data.DataError(f"--data={path}: labels go up to {num_classes - 1}, outside "
                                 f"[0, {stated}) of its num_classes={stated}.")
        num_classes = stated
    for name, xs, ys in (("", x, y), ("test_", test_x, test_y)):
        if len(xs) != len(ys):
            raise data.DataError(f"--data={path}: {name}{kind} holds {len(xs)} examples but "
                                 f"{name}labels {len(ys)} — they must match one to one.")
        if not np.issubdtype(ys.dtype, np.integer) or ys.ndim != 1 or ys.min(initial=0) < 0:
            raise data.DataError(f"--data={path}: {name}labels must be non-negative integers "
                                 f"[N], got {ys.dtype} of shape {ys.shape}.")
        if kind == "images" and xs.ndim != 4:
            raise data.DataError(f"--data={path}: {name}images must be NHWC [N, H, W, C], got "
                                 f"shape {xs.shape}.")
        if np.issubdtype(xs.dtype, np.floating) and not np.isfinite(xs).all():
            raise data.DataError(f"--data={path}: {name}{kind} holds NaN or infinity.")
    if kind == "images" and np.issubdtype(x.dtype, np.integer) and x.dtype != np.uint8:
        if x.min(initial=0) < 0 or x.max(initial=0) > 255 or test_x.min(initial=0) < 0 \
                or test_x.max(initial=0) > 255:
            raise data.DataError(f"--data={path}: integer images must hold pixels in 0..255 "
                                 f"(got {x.dtype} from {x.min()} to {x.max()}).")
        x, test_x = x.astype(np.uint8), test_x.astype(np.uint8)
    preprocess = _scaling(config, x.dtype)
    if x.dtype != np.uint8:
        x, test_x = x.astype(np.float32), test_x.astype(np.float32)
    digest = runs.digest(x, y, test_x, test_y)
    if len(test_x) == 0:
        test_x = test_y = None
    return AuditData(x, y.astype(np.int32), test_x,
                     None if test_y is None else test_y.astype(np.int32), num_classes, kind,
                     preprocess, digest, str(path))


def _scaling(config: Config, dtype) -> data.Normalize:
    """uint8 pixels / 255 (dataset, unit), or values as stored (raw, and floats)."""
    scale = 255.0 if dtype == np.uint8 and config.preprocess != "raw" else 1.0
    return data.Normalize(mean=(0.0,), std=(1.0,), scale=scale)


def make_model(config: Config, num_classes: int) -> nn.Module:
    """The user's (or a built-in) Flax module for ``num_classes`` classes."""
    if config.model == "seed_cnn":
        return models.SeedCNN(*(max(1, round(w * config.width_scale)) for w in (128, 256, 256)),
                              num_classes=num_classes, dtype=models.compute_dtype(config.precision))
    if config.model == "wrn":  # --width_scale scales the widen factor 2
        return models.wide_resnet(28, max(1, round(2 * config.width_scale)),
                                  num_classes=num_classes, precision=config.precision)
    if config.model == "mlp":
        return models.MLP(hidden_sizes=(max(1, round(256 * config.width_scale)),),
                          num_classes=num_classes, dtype=models.compute_dtype(config.precision))
    module_name, _, function = config.model.partition(":")
    if not module_name or not function:
        raise config_lib.ConfigError(f"--model={config.model} is not module:function nor one of "
                                     f"{', '.join(BUILTIN_MODELS)}.")
    try:
        factory: Callable = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as e:
        raise config_lib.ConfigError(f"--model={config.model} does not resolve ({e}) — check the "
                                     "path, and that its folder is on PYTHONPATH.") from e
    model = factory(num_classes)
    if not isinstance(model, nn.Module):
        raise config_lib.ConfigError(f"--model={config.model} returned a "
                                     f"{type(model).__name__}, not a Flax module.")
    return model


def _check_model(model: nn.Module, sample, num_classes: int, name: str) -> None:
    try:
        out = jax.eval_shape(lambda x: model.init_with_output(
            jax.random.PRNGKey(0), x, train=False)[0], sample)
    except Exception as e:  # noqa: BLE001 - any tracing failure means the model does not fit
        raise config_lib.ConfigError(f"--model={name} cannot take inputs of shape "
                                     f"{tuple(sample.shape[1:])} ({type(e).__name__}: "
                                     f"{str(e).splitlines()[0] if str(e) else ''}).") from e
    if getattr(out, "shape", None) != (1, num_classes):
        raise config_lib.ConfigError(f"--model={name} returns {getattr(out, 'shape', out)} for "
                                     f"one example; it needs one logit per class: (1, "
                                     f"{num_classes}).")


def _member_indices(config: Config, pool_size: int) -> np.ndarray:
    path = pathlib.Path(config.target_members)
    try:
        indices = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, dtype=np.int64)
    except (OSError, ValueError) as e:
        raise data.DataError(f"cannot read --target_members={path} ({e}).") from e
    indices = np.asarray(indices).ravel()
    if not np.issubdtype(indices.dtype, np.integer):
        raise data.DataError(f"--target_members={path} must hold integer indices.")
    if indices.size == 0 or indices.min() < 0 or indices.max() >= pool_size:
        raise data.DataError(f"--target_members={path}: indices must be in [0, {pool_size}) "
                             "(the training part of the data).")
    if len(np.unique(indices)) != len(indices):
        raise data.DataError(f"--target_members={path} repeats indices; give each once.")
    return np.sort(indices)


def _pool(config: Config, available: np.ndarray, members: np.ndarray | None,
          rng) -> np.ndarray:
    """The candidates: ``pool_size`` random ``available`` training examples (default all); for
    a user's target, all its members plus as many non-members (or up to ``pool_size`` in all)."""
    size, n = config.pool_size, len(available)
    if size is not None and size > n:
        raise config_lib.ConfigError(f"--pool_size={size} is larger than the {n} training "
                                     "examples available — lower it.")
    if members is None:
        if size is None and config.references == "offline":  # the rest trains the references
            size = n // 2
        return available if size is None else np.sort(rng.choice(available, size, replace=False))
    size = min(n, 2 * len(members)) if size is None else size
    if size <= len(members):
        raise config_lib.ConfigError(f"--pool_size={size} leaves no room for non-members beside "
                                     f"the target's {len(members)} members — raise it.")
    outside = np.setdiff1d(available, members)
    return np.sort(np.concatenate([members, rng.choice(outside, size - len(members),
                                                       replace=False)]))


def _load_target(config: Config, model, sample):
    """The user's target variables as a K=1 ensemble, checked leaf by leaf against the model."""
    init = jax.device_get(model.init(jax.random.PRNGKey(0), sample, train=False))
    template = {"params": init["params"], "batch_stats": init.get("batch_stats", {})}

    def refuse(why):
        return config_lib.ConfigError(
            f"--target_checkpoint={config.target_checkpoint} does not fit the model "
            f"--model={config.model} ({why}) — save the variables of this very architecture "
            "with flax.serialization.to_bytes.")

    try:
        state = serialization.msgpack_restore(pathlib.Path(config.target_checkpoint).read_bytes())
    except (OSError, ValueError, TypeError) as e:
        raise refuse(f"{type(e).__name__}: {e}") from e
    if not isinstance(state, dict) or "params" not in state:
        raise refuse("no 'params' collection in it")
    variables = {"params": state["params"], "batch_stats": state.get("batch_stats", {})}
    shapes = lambda tree: {k: np.shape(v) for k, v in
                           traverse_util.flatten_dict(tree, sep="/").items()}
    expected, found = shapes(template), shapes(variables)
    if expected != found:
        wrong = sorted(k for k in expected.keys() | found.keys()
                       if expected.get(k) != found.get(k))
        raise refuse(f"{wrong[0]}: expected {expected.get(wrong[0])}, got {found.get(wrong[0])}")
    return jax.tree.map(lambda x: jnp.asarray(x)[None], variables)  # a K=1 ensemble


def _model_identity(model: nn.Module, sample) -> dict:
    """What identifies the model in a stage key: its fields, its parameters' shapes and dtypes,
    and the source of its class (an edited layer must not reuse saved logits)."""
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), sample)
    try:
        source = inspect.getsource(type(model))
    except (OSError, TypeError):
        source = None
    return {"repr": repr(model), "source": source,
            "shapes": [f"{'/'.join(map(str, path))}: {leaf.shape} {leaf.dtype}" for path, leaf
                       in traverse_util.flatten_dict(shapes).items()]}


def run(config: Config) -> dict[str, Any]:
    """The audit; writes results.json, summary.md, roc.png, scores.npz (every candidate's
    scores) and, for images, exposed.png."""
    with runs.Run(config.workdir, config, outputs=OUTPUTS) as run_:
        audit = load_data(config)
        model = make_model(config, audit.num_classes)
        sample = audit.preprocess(audit.x[:1])
        _check_model(model, sample, audit.num_classes, config.model)
        if config.augment and audit.kind != "images":
            raise config_lib.ConfigError("--augment flips and crops images; the data holds "
                                         "feature vectors.")
        rng = np.random.default_rng(config.seed)
        n = len(audit.x)
        members = _member_indices(config, n) if config.target == "checkpoint" else None
        available = np.arange(n)
        if audit.test_x is None:  # no held-out part: RMIA's population is set aside from train
            outside = available if members is None else np.setdiff1d(available, members)
            if config.population_size >= len(outside):
                raise config_lib.ConfigError(f"--population_size={config.population_size} leaves "
                                             "no training example for the pool — lower it.")
            held = np.sort(np.random.default_rng([config.seed, 2]).choice(
                outside, config.population_size, replace=False))
            audit = dataclasses.replace(audit, test_x=audit.x[held], test_y=audit.y[held])
            available = np.setdiff1d(available, held)
        pool = _pool(config, available, members, rng)
        if config.population_size > len(audit.test_x):
            raise config_lib.ConfigError(f"--population_size={config.population_size} is larger "
                                         f"than the {len(audit.test_x)} held-out examples.")
        if config.batch_size > len(pool) // 2:
            raise config_lib.ConfigError(f"--batch_size={config.batch_size} is larger than a "
                                         f"model's ~{len(pool) // 2} members — lower it.")
        population = np.sort(rng.choice(len(audit.test_x), config.population_size, replace=False))
        if members is not None:
            target_keep = np.isin(pool, members)
            target_vars = _load_target(config, model, sample)
            checkpoint_digest = runs.digest(pathlib.Path(config.target_checkpoint).read_bytes())
        else:
            target_keep = np.zeros(len(pool), bool)  # exactly half the pool, recorded
            target_keep[np.random.default_rng([config.seed, 1]).permutation(len(pool))[
                :len(pool) // 2]] = True
            target_vars = checkpoint_digest = None
        layout = reference_layout(config, target_keep, pool, np.setdiff1d(available, pool))
        keep = layout.keep
        queries = 2 if audit.kind == "images" and config.flip_queries else 1
        # Label-only queries (images only): shifts, and flips where --flip_queries allows them.
        label_queries = (attacks_lib.label_only.Queries(max_shift=config.label_only_shift,
                                                        shifts=config.label_only_translations,
                                                        flips=queries == 2)
                         if audit.kind == "images" else None)
        key = {"data": audit.digest, "model": _model_identity(model, sample),
               "pool": pool, "population": population, "target": checkpoint_digest,
               "preprocess": repr(audit.preprocess),
               "target_keep": target_keep, "reference_examples": layout.extra,
               "reference_train_keep": layout.train_keep, **{k: getattr(config, k) for k in (
                   "seed", "num_references", "references", "pool_size", "population_size", "epochs",
                   "batch_size", "optimizer", "learning_rate", "momentum", "weight_decay",
                   "schedule", "lr_decay", "augment", "precision", "flip_queries")},
               **({} if config.query_mode == "eval" else {"query_mode": config.query_mode}),
               "reference_logits": bool(len(layout.extra)),
               "label_only": label_queries.key() if label_queries else None}

        def train_and_query():
            # Candidates first, then the examples only offline references train on.
            train_at = np.concatenate([pool, layout.extra])
            sets = ([np.r_[target_keep, np.zeros(len(layout.extra), bool)]]
                    if target_vars is None else []) + list(layout.train_keep)
            result = training.train_ensemble(
                model, audit.x[train_at], audit.y[train_at],
                splits.MemberSets.from_mask(np.stack(sets)),
                config.train_config(), seed=config.seed, preprocess=audit.preprocess,
                log_prefix="audit ", mesh=training.default_mesh(config.strategy),
                strategy=config.strategy, checkpoint_every=config.checkpoint_every,
                checkpoint_dir=str(run_.stages.checkpoint_dir("logits", key)))
            variables = training.query_variables(result.state, config.query_mode)
            if target_vars is not None:  # the user's target is queried as saved
                variables = jax.tree.map(lambda t, r: jnp.concatenate([t, r]), target_vars,
                                         variables)
            eval_mode = config.query_mode == "eval"
            query = lambda x: training.query_logits(
                model, variables, x, preprocess=audit.preprocess, flips=queries == 2,
                mode=config.query_mode, batch_size=config.eval_batch_size if eval_mode else None,
                models_per_call=None if eval_mode else 1)
            arrays = {"logits": query(audit.x[pool]),
                      "population_logits": query(audit.test_x[population])}
            if len(layout.extra):  # offline: the references on their own training data, where
                # rmia_offline_fitted_a can fit its a (no reference has a member among the pool)
                arrays["reference_logits"] = query(audit.x[layout.extra])[1:]
            if label_queries is not None:
                arrays["correct"] = attacks_lib.label_only.query_correct(
                    model, variables, audit.x[pool], audit.y[pool], label_queries,
                    preprocess=audit.preprocess, batch_size=config.eval_batch_size)
            return arrays, {"train_seconds": result.seconds}

        trained = len(keep) + (1 if target_vars is None else 0)
        run_.expect("audit", config.epochs * trained * target_keep.sum(), stage="logits")
        run_.expect("logits", (trained + (target_vars is not None)) * queries
                    * (len(pool) + len(population) + len(layout.extra)) * progress.FORWARD,
                    stage="logits")
        with run_.timed("train_and_logits"):
            saved, info = run_.stages.run("logits", key, train_and_query)
        with run_.timed("scoring"):
            signals = lira_attack.Signals.from_logits(
                saved["logits"], audit.y[pool], saved["population_logits"],
                audit.test_y[population], rmia_signal=config.rmia_signal)
            signals = dataclasses.replace(signals, correct=saved.get("correct"))
            all_keep = np.concatenate([target_keep[None], keep])
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
                                             list(range(1, config.num_references + 1)),
                                             attack_config, attacks=names)
            attacks = {name: reference.attack_metrics(target_keep, s, fpr_rule=config.fpr_rule)
                       for name, s in scores.items()}
            check = self_check(signals, all_keep, target_keep, attack_config, names)
        hits = saved["logits"][0, :, 0].argmax(-1) == audit.y[pool]
        test_hits = saved["population_logits"][0, :, 0].argmax(-1) == audit.test_y[population]
        ranking = "lira_online" if config.references == "online" else "lira_offline"
        exposed = _most_exposed(scores[ranking], target_keep, config.num_exposed)
        results = run_.finish({
            "data": {"source": audit.source, "digest": audit.digest, "kind": audit.kind,
                     "num_classes": audit.num_classes, "pool_size": len(pool),
                     "population_size": len(population), "target_members": int(target_keep.sum()),
                     "queries": queries, "reference_members": float(layout.train_keep.sum(1).mean()),
                     "reference_note": layout.note},
            "target": {"train_acc": float(hits[target_keep].mean()),
                       "pool_non_member_acc": float(hits[~target_keep].mean()),
                       "test_acc": float(test_hits.mean())},
            "attacks": attacks,
            "rmia_fitted_a": attack_config.rmia_fitted_a,
            "calibration": check,
            "most_exposed": [{"index": int(pool[i]), "score": float(scores[ranking][i]),
                              "attack": ranking} for i in exposed],
            "seconds": {"training": float(info["train_seconds"])},
        })
        runs.write_npz(run_.path / "scores.npz", indices=pool, membership=target_keep,
                       **{f"score_{name}": s for name, s in scores.items()})
        runs.save_figure(report.roc_figure(
            {name: (target_keep, s) for name, s in scores.items()},
            title=f"audit of {config.model}: {config.num_references} references"),
            run_.path / "roc.png")
        if audit.kind == "images":
            runs.save_image(_exposed_figure(audit.x[pool], exposed, scores[ranking], pool),
                            run_.path / "exposed.png")
        runs.write_text(summary_path(config), summary_markdown(results))
        return results


@dataclasses.dataclass(frozen=True)
class ReferenceLayout:
    """What the references train on. ``keep`` [N, pool]: their membership of the candidates;
    ``extra``: data indices only they train on (offline); ``train_keep`` [N, pool + extra]:
    their training sets over the candidates followed by ``extra``; ``note``: how the offline
    draw departs from the target's, where the data forces it."""

    keep: np.ndarray
    extra: np.ndarray
    train_keep: np.ndarray
    note: str | None = None


def reference_layout(config: Config, target_keep: np.ndarray, pool: np.ndarray,
                     outside: np.ndarray) -> ReferenceLayout:
    """Online: each reference on a balanced half of the pool, so every candidate is IN for
    exactly half of them whatever the target's membership. Offline: each on as many examples
    as the target, drawn from ``outside`` (training examples that are not candidates), so every
    candidate is OUT for all N of them (:func:`jaxpet.splits.offline_reference_sets`). Either
    way, no candidate's reference counts depend on its membership of the target, which is what
    keeps the attacks calibrated (``tests/test_calibration.py``)."""
    n, size = len(pool), int(target_keep.sum())
    if config.references == "online":
        keep = splits.balanced_keep_mask(n, config.num_references, config.seed)
        return ReferenceLayout(keep, pool[:0], keep)
    if len(outside) == 0:
        raise config_lib.ConfigError(
            "--references=offline trains the references outside the candidates, and the "
            "candidates take every training example — lower --pool_size (with --target=train "
            "offline, half of the training part is candidates by default; with "
            "--target=checkpoint the candidates are its members and as many non-members, so "
            "give a data set with examples beyond those).")
    extra, extra_keep, note = splits.offline_reference_sets(outside, size,
                                                            config.num_references, config.seed)
    keep = np.zeros((config.num_references, n), bool)
    return ReferenceLayout(keep, extra, np.concatenate([keep, extra_keep], 1), note)


def offline_fitted_a(config: Config, saved: dict, layout: ReferenceLayout, labels,
                     population_labels, attack_config) -> float:
    """RMIA offline's a fitted as the paper tunes it, on the offline references' own training
    examples (``layout.extra``), where each has members: each of two references in turn plays
    the target with the others as its OUT references (:func:`jaxpet.attacks.rmia.fit_offline_a`).
    No candidate and nothing of the target enters."""
    extra = lira_attack.Signals.from_logits(
        saved["reference_logits"], labels, saved["population_logits"][1:], population_labels,
        rmia_signal=config.rmia_signal).queries(attack_config.num_queries)
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
    rows = [[name, f"{r['auc']:.4f}", report.pct(r["balanced_accuracy"]),
             *(report.pct(r["tpr_at_fpr"][str(level)]) for level in metrics.DEFAULT_FPR_LEVELS),
             *(report.pct(r["tpr_at_fpr_randomized"][str(level)]) for level in calibration.LEVELS)]
            for name, r in results["attacks"].items()]
    table = report.markdown_table(["attack", "AUC", "balanced acc (%)", "TPR@1%FPR (%)",
                                   "TPR@0.1%FPR (%)", "TPR@0%FPR (%)",
                                   "TPR@1%FPR, ties random (%)",
                                   "TPR@0.1%FPR, ties random (%)"], rows)
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
            f"{c['num_references']} reference models ({c['optimizer']}, lr {c['learning_rate']}, "
            f"{c['schedule']} schedule, {c['epochs']} epochs), {layout}; "
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
