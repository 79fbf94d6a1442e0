"""Attribute inference by overlearning (seed Task 3; Song & Shmatikov, ICLR 2020), end to end.

A LeNet target is trained on one attribute (gender); an attacker who sees the
target's internal representation of faces trains an MLP to predict another
attribute the target was never taught (race). Two controls bracket the
result: the same attack on the raw pixels (what the representation adds over
the input) and on an untrained, randomly initialised target (the floor).

:func:`run` is the whole experiment; ``experiments/attribute.py`` only parses
flags into an :class:`AttributeConfig`. ``--num_targets=K`` trains K targets
(different seeds, same data) in one vmapped call; every attack model of the
run (K on trained targets, K on untrained ones) is trained in one more.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from jaxpet import data, membership, metrics, models, reporting, splits, training

LAYERS = ("conv1", "conv2", "conv3", "fc1", "fc2")
NUM_POOLS = 3  # LeNet's 2x2 max-pools: the image side must survive them
MIN_IMAGE_SIZE = 2**NUM_POOLS


class InputError(ValueError):
    """A bad flag or a dataset/split the experiment cannot use; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class AttributeConfig:
    """Every knob of one attribute-inference run; defaults are the seed's full configuration."""

    dataset: str = "utkface"
    data_dir: str | None = None
    workdir: str = "runs/attribute"
    seed: int = 0
    target_attribute: str = "gender"  # what the target is trained on
    attribute: str = "race"  # what the attacker infers
    layer: str = "fc2"  # the target's representation given to the attacker (last hidden layer)
    compare_layers: tuple[str, ...] = ()  # more layers attacked the same way, for comparison
    image_size: int = 50
    test_fraction: float = 0.1
    max_examples: int | None = None  # seeded subset of the usable examples (smoke runs)
    num_targets: int = 1
    epochs: int = 50
    batch_size: int = 128
    learning_rate: float = 1e-3
    lr_decay: float = 0.96
    weight_decay: float = 1e-4
    attack_epochs: int = 50
    attack_batch_size: int = 128
    attack_learning_rate: float = 1e-3
    attack_weight_decay: float = 1e-7
    precision: str = "float32"

    def validate(self) -> None:
        """Raises InputError naming the bad flag; checks that need no data."""
        if self.layer not in LAYERS:
            raise InputError(f"--layer must be one of {LAYERS}, got {self.layer!r}.")
        unknown = [x for x in self.compare_layers if x not in LAYERS]
        if unknown:
            raise InputError(f"--compare_layers: unknown {unknown}; known: {LAYERS}.")
        if self.image_size < MIN_IMAGE_SIZE:
            raise InputError(f"--image_size={self.image_size} is too small for the LeNet target "
                             f"({NUM_POOLS} 2x2 max-pools need at least {MIN_IMAGE_SIZE} pixels).")
        if self.attribute == self.target_attribute:
            raise InputError(f"--attribute and --target_attribute are both {self.attribute!r}; "
                             "the attack must infer an attribute the target was not trained on.")
        if not 0 < self.test_fraction < 1:
            raise InputError(f"--test_fraction must be in (0, 1), got {self.test_fraction}.")
        for name in ("num_targets", "epochs", "batch_size", "attack_epochs", "attack_batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name} must be positive, got {getattr(self, name)}.")
        if self.max_examples is not None and self.max_examples < 4:
            raise InputError(f"--max_examples must be at least 4, got {self.max_examples}.")
        if self.precision not in models.PRECISIONS:
            raise InputError(f"--precision must be one of {sorted(models.PRECISIONS)}, "
                             f"got {self.precision!r}.")

    def target_train_config(self) -> training.TrainConfig:
        return training.TrainConfig(epochs=self.epochs, batch_size=self.batch_size,
                                    learning_rate=self.learning_rate, lr_decay=self.lr_decay,
                                    weight_decay=self.weight_decay)

    def attack_train_config(self) -> training.TrainConfig:
        return training.TrainConfig(epochs=self.attack_epochs, batch_size=self.attack_batch_size,
                                    learning_rate=self.attack_learning_rate, lr_decay=self.lr_decay,
                                    weight_decay=self.attack_weight_decay)


@dataclasses.dataclass(frozen=True)
class AttributeSplit:
    """Positions into the usable examples: the target's and the attacker's halves of train, and test."""

    target: np.ndarray
    attack: np.ndarray
    test: np.ndarray


def split_examples(num_examples: int, test_fraction: float, seed: int) -> AttributeSplit:
    """Seeded split: ``test_fraction`` for testing, the rest halved between target and attacker."""
    order = np.random.default_rng(seed).permutation(num_examples)
    num_test = int(round(test_fraction * num_examples))
    train = order[num_test:]
    half = len(train) // 2
    return AttributeSplit(np.sort(train[:half]), np.sort(train[half:]), np.sort(order[:num_test]))


@dataclasses.dataclass(frozen=True)
class Prepared:
    """The usable examples (resized, uint8), both attributes, the split and what was dropped."""

    images: np.ndarray
    target_labels: np.ndarray
    labels: np.ndarray  # the attacked attribute
    class_names: tuple[str, ...]
    target_class_names: tuple[str, ...]
    split: AttributeSplit
    info: dict


def prepare(config: AttributeConfig, dataset: data.Dataset) -> Prepared:
    """Drops examples missing either attribute, subsets, resizes and splits; errors on a bad split."""
    names, attrs = dataset.attribute_names, dataset.train.attributes
    for flag, attr in (("attribute", config.attribute), ("target_attribute", config.target_attribute)):
        if attr not in attrs or attr not in names:
            known = sorted(set(attrs) & set(names))
            raise InputError(f"--{flag}={attr!r} is not an attribute of {dataset.name}; known: {known}.")
    keep = (attrs[config.attribute] >= 0) & (attrs[config.target_attribute] >= 0)
    usable = np.flatnonzero(keep)
    if config.max_examples is not None and config.max_examples < len(usable):
        rng = np.random.default_rng(config.seed + 17)
        usable = np.sort(rng.choice(usable, config.max_examples, replace=False))
    images = data.resize_images(dataset.train.images[usable], (config.image_size,) * 2)
    labels = attrs[config.attribute][usable]
    target_labels = attrs[config.target_attribute][usable]
    class_names = names[config.attribute]
    target_class_names = names[config.target_attribute]
    split = split_examples(len(usable), config.test_fraction, config.seed)
    for what, part, values, classes in (
            ("attacker's training part", split.attack, labels, class_names),
            ("test part", split.test, labels, class_names),
            ("target's training part", split.target, target_labels, target_class_names)):
        counts = np.bincount(values[part], minlength=len(classes))
        empty = [classes[c] for c in np.flatnonzero(counts == 0)]
        if empty:
            raise InputError(f"The split leaves class(es) {empty} empty in the {what} "
                             f"({len(part)} examples of {len(usable)}); use more data "
                             "(--max_examples) or another --seed.")
    info = {
        "examples_total": len(dataset.train),
        "skipped_names": int(dataset.info.get("skipped_names", 0)),
        "missing_attribute": int((~keep).sum()),
        "usable": int(keep.sum()),
        "used": len(usable),
        "target_train": len(split.target), "attack_train": len(split.attack), "test": len(split.test),
        "class_counts": _counts(labels, class_names),
        "class_counts_attack_train": _counts(labels[split.attack], class_names),
        "class_counts_test": _counts(labels[split.test], class_names),
        "target_class_counts": _counts(target_labels, target_class_names),
    }
    return Prepared(images, target_labels, labels, tuple(class_names), tuple(target_class_names),
                    split, info)


def _counts(values, class_names) -> dict[str, int]:
    counts = np.bincount(values, minlength=len(class_names))
    return {name: int(c) for name, c in zip(class_names, counts)}


@functools.partial(jax.jit, static_argnames=("model", "preprocess", "layer"))
def _represent_batch(model, preprocess, layer, variables, x):
    return jax.vmap(lambda v: models.representation(model, v, preprocess(x), layer))(variables)


def extract_representations(model, variables, images, layer: str, *, preprocess=data.IDENTITY,
                            batch_size: int = 512) -> np.ndarray:
    """Layer ``layer`` of each of K models on ``images``: float32 [K, N, D], in padded batches."""
    n = images.shape[0]
    batch_size = min(batch_size, n)
    out = []
    for start in range(0, n, batch_size):
        x = jnp.asarray(images[start:start + batch_size])
        real = x.shape[0]
        if real < batch_size:  # pad so every batch reuses one compiled program
            x = jnp.concatenate([x, jnp.repeat(x[-1:], batch_size - real, axis=0)])
        reps = _represent_batch(model, preprocess, layer, variables, x)
        out.append(np.asarray(reps, np.float32)[:, :real])
    return np.concatenate(out, axis=1)


def standardize(features: np.ndarray, num_fit: int) -> np.ndarray:
    """Per-feature z-scores with the statistics of the first ``num_fit`` rows (the attacker's data).

    Puts representations of trained and untrained targets on one scale, so
    the attack MLP's fixed learning rate suits both.
    """
    fit = features[..., :num_fit, :]
    mean, std = fit.mean(-2, keepdims=True), fit.std(-2, keepdims=True)
    return ((features - mean) / np.maximum(std, 1e-6)).astype(np.float32)


def attack_report(labels, predictions, train_labels, class_names: Sequence[str]) -> dict:
    """Accuracy, the majority-class baseline, per-class precision/recall/F1 and the confusion matrix.

    The baseline predicts the most frequent class of the attacker's training labels for everyone.
    """
    num_classes = len(class_names)
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    majority = int(np.argmax(np.bincount(train_labels, minlength=num_classes)))
    report = metrics.per_class_report(labels, predictions, num_classes)
    return {
        "accuracy": float(np.mean(labels == predictions)),
        "baseline_accuracy": float(np.mean(labels == majority)),
        "majority_class": class_names[majority],
        "macro_f1": float(report["f1"].mean()),
        "per_class": {name: {"precision": float(report["precision"][c]),
                             "recall": float(report["recall"][c]),
                             "f1": float(report["f1"][c]),
                             "support": int(report["support"][c])}
                      for c, name in enumerate(class_names)},
        "confusion": metrics.confusion_matrix(labels, predictions, num_classes).tolist(),
    }


def aggregate(reports: Sequence[dict]) -> dict:
    """Mean of every number over K reports, plus ``std`` (same shape) and the ``per_target`` reports.

    Strings must agree or become a list; confusion matrices are summed (counts), not averaged.
    """
    def mean(values, key=None):
        first = values[0]
        if isinstance(first, dict):
            return {k: mean([v[k] for v in values], k) for k in first}
        if isinstance(first, str):
            return first if len(set(values)) == 1 else list(values)
        arr = np.asarray(values, np.float64)
        return (arr.sum(0) if key == "confusion" else arr.mean(0)).tolist()

    def std(values):
        first = values[0]
        if isinstance(first, dict):
            return {k: std([v[k] for v in values]) for k in first if not isinstance(first[k], str)}
        return np.asarray(values, np.float64).std(0).tolist()

    return {**mean(list(reports)), "std": std(list(reports)), "per_target": list(reports)}


def run(config: AttributeConfig, dataset: data.Dataset | None = None) -> dict[str, Any]:
    """Runs the experiment; writes results.json, confusion.png, summary.md; returns the results.

    ``dataset`` overrides loading ``config.dataset`` (tests pass a small synthetic one).
    """
    config.validate()
    workdir = membership.check_workdir(config.workdir)
    timings: dict[str, float] = {}
    tick = time.perf_counter()
    if dataset is None:
        dataset = data.load_dataset(config.dataset, config.data_dir)
    prepared = prepare(config, dataset)
    timings["load_data"] = time.perf_counter() - tick
    split, images, k = prepared.split, prepared.images, config.num_targets
    logging.info("Attribute inference: %s", {x: prepared.info[x] for x in
                                             ("used", "target_train", "attack_train", "test")})
    preprocess = data.normalizer(config.dataset)
    dtype = models.compute_dtype(config.precision)

    # Targets: K LeNets on the target attribute, one vmapped call; and K untrained ones.
    tick = time.perf_counter()
    target = models.LeNet(num_classes=len(prepared.target_class_names), dtype=dtype)
    target_config = config.target_train_config()
    result = training.train_ensemble(
        target, images, prepared.target_labels, splits.MemberSets.replicate(split.target, k),
        target_config, seed=config.seed, preprocess=preprocess, log_prefix="target ")
    trained = result.variables()
    tests = splits.MemberSets.replicate(split.test, k)
    target_test = training.evaluate(target, trained, images, prepared.target_labels, tests,
                                    preprocess=preprocess)
    untrained = training.init_ensemble(target, target_config,
                                       training.model_keys(config.seed + 1000, k),
                                       preprocess(images[:1])).variables()
    untrained_test = training.evaluate(target, untrained, images, prepared.target_labels, tests,
                                       preprocess=preprocess)
    timings["target"] = time.perf_counter() - tick

    # Representations of the attacker's and the test images under each (un)trained target,
    # then 2K attack MLPs (K on trained targets, K on untrained ones) in one call.
    used = np.concatenate([split.attack, split.test])
    both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), trained, untrained)
    attack = models.MLP(hidden_sizes=(128, 64), num_classes=len(prepared.class_names), dtype=dtype)
    attack_config = config.attack_train_config()
    train_labels = prepared.labels[split.attack]
    test_labels = prepared.labels[split.test]

    def attack_layer(layer: str):
        tick = time.perf_counter()
        n_attack, n_used = len(split.attack), len(used)
        features = standardize(extract_representations(target, both, images[used], layer,
                                                       preprocess=preprocess), n_attack)
        timings[f"representations_{layer}"] = time.perf_counter() - tick
        tick = time.perf_counter()
        pool = features.reshape(-1, features.shape[-1])
        pool_labels = np.tile(prepared.labels[used], 2 * k)
        blocks = [j * n_used + np.arange(n_attack) for j in range(2 * k)]
        attack_result = training.train_ensemble(
            attack, pool, pool_labels, splits.MemberSets.from_lists(blocks), attack_config,
            seed=config.seed + 2000, log_prefix=f"attack {layer} ")
        attack_vars = attack_result.variables()
        reports = []
        for j in range(2 * k):
            rows = pool[j * n_used + n_attack:(j + 1) * n_used]
            logits = training.predict(attack, jax.tree.map(lambda x: x[j:j + 1], attack_vars), rows)[0]
            reports.append(attack_report(test_labels, logits.argmax(-1), train_labels,
                                         prepared.class_names))
        timings[f"attack_{layer}"] = time.perf_counter() - tick
        return reports, attack_result

    reports, attack_result = attack_layer(config.layer)
    # The same attack on other layers of the same targets: where does the attribute live?
    by_layer = {}
    for layer in config.compare_layers:
        layer_reports, layer_result = attack_layer(layer)
        train_acc = layer_result.history[-1]["train_acc"]
        by_layer[layer] = {
            "attack": aggregate(layer_reports[:k]), "untrained": aggregate(layer_reports[k:]),
            "train_acc": float(train_acc[:k].mean()),
            "untrained_train_acc": float(train_acc[k:].mean())}

    # Pixel control: the same attack MLP on the normalised raw pixels (K attack seeds).
    tick = time.perf_counter()
    pixel_result = training.train_ensemble(
        attack, images, prepared.labels, splits.MemberSets.replicate(split.attack, k),
        attack_config, seed=config.seed + 3000, preprocess=preprocess, log_prefix="pixels ")
    pixel_posteriors = training.predict(attack, pixel_result.variables(), images[split.test],
                                        preprocess=preprocess)
    pixel_reports = [attack_report(test_labels, p.argmax(-1), train_labels, prepared.class_names)
                     for p in pixel_posteriors]
    timings["pixels"] = time.perf_counter() - tick

    attack_train_acc = attack_result.history[-1]["train_acc"]
    results = {
        "config": dataclasses.asdict(config),
        "data": {"dataset": dataset.name, "source": dataset.info.get("source"),
                 "image_size": config.image_size, "class_names": list(prepared.class_names),
                 **prepared.info},
        "target": {
            "test_acc": float(target_test["accuracy"].mean()),
            "test_acc_std": float(target_test["accuracy"].std()),
            "train_acc": float(result.history[-1]["train_acc"].mean()),
            "per_target_test_acc": target_test["accuracy"].tolist(),
            "untrained_test_acc": float(untrained_test["accuracy"].mean()),
        },
        "attack": {**aggregate(reports[:k]), "layer": config.layer,
                   "train_acc": float(attack_train_acc[:k].mean())},
        "controls": {
            "pixels": {**aggregate(pixel_reports),
                       "train_acc": float(pixel_result.history[-1]["train_acc"].mean())},
            "untrained": {**aggregate(reports[k:]), "layer": config.layer,
                          "train_acc": float(attack_train_acc[k:].mean())},
        },
        "layers": by_layer,
        "seconds": {**timings, "target_training": result.seconds,
                    "attack_training": attack_result.seconds,
                    "pixel_training": pixel_result.seconds},
        "backend": jax.default_backend(),
        "devices": [d.device_kind for d in jax.devices()],
        "jax_version": jax.__version__,
    }
    reporting.write_json(workdir / "results.json", results)
    plot_confusion(results, workdir / "confusion.png")
    reporting.write_text(workdir / "summary.md", summary_markdown(results))
    logging.info("Results in %s", workdir)
    return results


_PANELS = (("attack", "target representation"), ("pixels", "raw pixels"),
           ("untrained", "untrained target"))


def _panel(results: dict, name: str) -> dict:
    return results["attack"] if name == "attack" else results["controls"][name]


def plot_confusion(results: dict, path) -> None:
    """Row-normalised confusion matrices (summed over targets) of the attack and both controls."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = results["data"]["class_names"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.3), dpi=100)
    for ax, (key, title) in zip(axes, _PANELS):
        r = _panel(results, key)
        counts = np.asarray(r["confusion"], np.float64)
        rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, f"{rates[i, j]:.2f}\n({int(counts[i, j])})", ha="center",
                        va="center", fontsize=7, color="white" if rates[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(names)), names, rotation=45, fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title}: acc {100 * r['accuracy']:.1f}%", fontsize=10)
    fig.suptitle(f"{results['config']['attribute']} inferred from a "
                 f"{results['config']['target_attribute']} model ({results['config']['layer']}), "
                 f"{results['config']['num_targets']} target(s)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path)
    plt.close(fig)


# The seed's Task 3 numbers (accuracies in %, per-class F1 White..Others).
SEED_RESULTS = {"target_test_acc": 86.0, "attack_acc": 51.0, "baseline_acc": 42.52,
                "f1": (0.64, 0.44, 0.39, 0.22, 0.01),
                "class_counts": (8950, 4367, 2497, 3484, 1308)}


def _pm(value, spread, scale=100.0, digits=2) -> str:
    text = f"{scale * value:.{digits}f}"
    return text + (f" ± {scale * spread:.{digits}f}" if spread else "")


def summary_markdown(results: dict) -> str:
    """The seed's tables (target and attack accuracy, per-class F1, class counts), ours next to theirs."""
    c, d, t, a = results["config"], results["data"], results["target"], results["attack"]
    seed = SEED_RESULTS if c["dataset"] == "utkface" and c["attribute"] == "race" else None
    headline = reporting.markdown_table(
        ["", "ours", "seed"],
        [["Target test accuracy (%)", _pm(t["test_acc"], t["test_acc_std"]),
          seed["target_test_acc"] if seed else "-"],
         ["Attack accuracy (%)", _pm(a["accuracy"], a["std"]["accuracy"]),
          seed["attack_acc"] if seed else "-"],
         ["Majority-class baseline (%)", _pm(a["baseline_accuracy"], 0),
          seed["baseline_acc"] if seed else "-"]]
        + [[f"Control: attack on {title} (%)", _pm(_panel(results, key)["accuracy"],
                                                   _panel(results, key)["std"]["accuracy"]), "-"]
           for key, title in _PANELS[1:]])
    rows = []
    for i, name in enumerate(d["class_names"]):
        pc, sd = a["per_class"][name], a["std"]["per_class"][name]
        rows.append([f"Class {i} ({name})", _pm(pc["precision"], sd["precision"], 1, 2),
                     _pm(pc["recall"], sd["recall"], 1, 2), _pm(pc["f1"], sd["f1"], 1, 2),
                     f"{seed['f1'][i]:.2f}" if seed else "-",
                     f"{_panel(results, 'pixels')['per_class'][name]['f1']:.2f}",
                     f"{_panel(results, 'untrained')['per_class'][name]['f1']:.2f}",
                     d["class_counts"][name], seed["class_counts"][i] if seed else "-"])
    per_class = reporting.markdown_table(
        ["Class", "precision", "recall", "F1", "seed F1", "F1 (pixels)", "F1 (untrained)",
         "samples (ours)", "samples (seed)"], rows)
    return (f"# Attribute inference: {c['attribute']} from a {c['target_attribute']} model "
            f"({d['dataset']})\n\n"
            f"{d['used']} examples used of {d['usable']} usable ({d['missing_attribute']} without a "
            f"{c['attribute']} or {c['target_attribute']} label dropped, {d['skipped_names']} "
            f"unparsable names skipped), "
            f"{c['image_size']}x{c['image_size']} pixels; target train {d['target_train']}, "
            f"attack train {d['attack_train']}, test {d['test']}. Representation: `{c['layer']}`; "
            f"{c['num_targets']} target(s) (mean ± std over targets), {c['epochs']} target epochs, "
            f"{c['attack_epochs']} attack epochs. Backend: {results['backend']}.\n\n"
            f"## Accuracy\n\n{headline}\n## Per class (attack on the target representation)\n\n"
            f"{per_class}{_layers_markdown(results)}")


def _layers_markdown(results: dict) -> str:
    """The attack on every compared layer, trained target against untrained (if any)."""
    layers = results.get("layers") or {}
    if not layers:
        return ""
    a, u = results["attack"], results["controls"]["untrained"]
    rows = [[f"`{results['config']['layer']}` (main)", _pm(a["accuracy"], a["std"]["accuracy"]),
             _pm(u["accuracy"], u["std"]["accuracy"])]]
    rows += [[f"`{name}`", _pm(r["attack"]["accuracy"], r["attack"]["std"]["accuracy"]),
              _pm(r["untrained"]["accuracy"], r["untrained"]["std"]["accuracy"])]
             for name, r in layers.items()]
    return ("\n## Attack accuracy by layer (%)\n\n" + reporting.markdown_table(
        ["layer", "trained target", "untrained target"], rows))
