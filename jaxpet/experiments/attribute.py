"""Attribute inference by overlearning (seed Task 3; Song & Shmatikov, ICLR 2020), end to end.

A LeNet target is trained on one attribute (gender); an attacker who sees the
target's internal representation of faces trains an MLP to predict another
attribute the target was never taught (race). Two controls bracket the
result: the same attack on the raw pixels (what the representation adds over
the input) and on an untrained, randomly initialised target (the floor).

``--num_targets=K`` trains K targets (different seeds, same data) in one
ensemble call (a stage of the run store, reused while the target's settings
and the data are unchanged); every attack model of a layer (K on trained
targets, K on untrained ones) is trained in one more.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from jaxpet import config as config_lib, data, models, report, runs, splits, training
from jaxpet.attacks.attribute import aggregate, attack_report, extract_representations, standardize
from jaxpet.config import setting
from jaxpet.experiments import settings

LAYERS = ("conv1", "conv2", "conv3", "fc1", "fc2")
NUM_POOLS = 3  # LeNet's 2x2 max-pools: the image side must survive them
MIN_IMAGE_SIZE = 2**NUM_POOLS


@dataclasses.dataclass(frozen=True)
class Config:
    """Every knob of one attribute-inference run; defaults are the seed's full configuration."""

    dataset: str = setting("utkface", "Dataset with per-example attributes.", choices=("utkface",))
    data_dir: str | None = setting(None, "Folder holding UTKFace (e.g. ../shared/data with "
                                   "UTKFace-64px.tar.gz); default: $JAXPET_DATA_DIR.")
    workdir: str = setting("runs/attribute_utkface", "Output folder.")
    seed: int = setting(0, "Seed for the split, model initialisation and data order.", low=0)
    target_attribute: str = setting("gender", "Attribute the target model is trained to predict.")
    attribute: str = setting("race", "Attribute the attacker infers from the representation.")
    layer: str = setting("fc2", "Target layer given to the attacker (fc2: the last hidden "
                         "layer).", choices=LAYERS)
    compare_layers: tuple[str, ...] = setting((), "More target layers to attack the same way "
                                              "(e.g. conv3,fc1), reported beside --layer with "
                                              "their untrained-target controls.", choices=LAYERS)
    image_size: int = setting(50, "Images are resized to this square size.", low=MIN_IMAGE_SIZE,
                              high=1024)
    test_fraction: float = setting(0.1, "Fraction held out for testing.", low=0, high=1,
                                   low_open=True, high_open=True)
    max_examples: int | None = setting(None, "Use a seeded subset of this many examples (smoke "
                                       "runs).", low=4)
    num_targets: int = setting(1, "Targets trained with different seeds in one ensemble call; "
                               "every number is reported as mean and std over them.", low=1)
    epochs: int = setting(50, "Target training epochs.", low=1)
    batch_size: int = setting(128, "Target batch size.", low=1)
    learning_rate: float = setting(1e-3, "Target Adam learning rate.", low=0, low_open=True,
                                   high=10)
    lr_decay: float = setting(0.96, "Learning rate factor per epoch (target and attack).", low=0,
                              low_open=True, high=1)
    weight_decay: float = setting(1e-4, "Target L2 weight decay (coupled, as PyTorch's Adam).",
                                  low=0, high=1)
    attack_epochs: int = setting(50, "Attack MLP training epochs.", low=1)
    attack_batch_size: int = setting(128, "Attack MLP batch size.", low=1)
    attack_learning_rate: float = setting(1e-3, "Attack MLP Adam learning rate.", low=0,
                                          low_open=True, high=10)
    attack_weight_decay: float = setting(1e-7, "Attack MLP L2 weight decay.", low=0, high=1)
    precision: str = settings.precision()

    def __post_init__(self):
        config_lib.check(self)
        if self.layer in self.compare_layers:
            raise config_lib.ConfigError(f"--compare_layers repeats --layer={self.layer}, which "
                                         "is attacked anyway — drop it from the list.")
        if self.attribute == self.target_attribute:
            raise config_lib.ConfigError(
                f"--attribute and --target_attribute are both {self.attribute!r}; the attack "
                "must infer an attribute the target was not trained on.")

    def target_train_config(self) -> training.TrainConfig:
        return training.TrainConfig(epochs=self.epochs, batch_size=self.batch_size,
                                    learning_rate=self.learning_rate, lr_decay=self.lr_decay,
                                    weight_decay=self.weight_decay)

    def attack_train_config(self) -> training.TrainConfig:
        return training.TrainConfig(epochs=self.attack_epochs, batch_size=self.attack_batch_size,
                                    learning_rate=self.attack_learning_rate, lr_decay=self.lr_decay,
                                    weight_decay=self.attack_weight_decay)


# The files a run writes besides config.json and results.json.
OUTPUTS = ("confusion.png", "summary.md")


def summary_path(config: Config) -> str:
    return f"{config.workdir}/summary.md"


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


def _counts(values, class_names) -> dict[str, int]:
    counts = np.bincount(values, minlength=len(class_names))
    return {name: int(c) for name, c in zip(class_names, counts)}


def prepare(config: Config, dataset: data.Dataset) -> Prepared:
    """Drops examples missing either attribute, subsets, resizes and splits; errors on a bad split."""
    names, attrs = dataset.attribute_names, dataset.train.attributes
    for flag, attr in (("attribute", config.attribute),
                       ("target_attribute", config.target_attribute)):
        if attr not in attrs or attr not in names:
            known = sorted(set(attrs) & set(names))
            raise config_lib.ConfigError(f"--{flag}={attr!r} is not an attribute of "
                                         f"{dataset.name}; known: {known}.")
    keep = (attrs[config.attribute] >= 0) & (attrs[config.target_attribute] >= 0)
    usable = np.flatnonzero(keep)
    if config.max_examples is not None and config.max_examples > len(usable):
        raise config_lib.ConfigError(f"--max_examples={config.max_examples} is more than the "
                                     f"{len(usable)} usable examples — use at most that, or "
                                     "leave it out for all of them.")
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
            raise config_lib.ConfigError(
                f"The split leaves class(es) {empty} empty in the {what} ({len(part)} examples "
                f"of {len(usable)}); use more data (--max_examples) or another --seed.")
    for flag, size, part in (("batch_size", config.batch_size, split.target),
                             ("attack_batch_size", config.attack_batch_size, split.attack)):
        if size > len(part):
            raise config_lib.ConfigError(f"--{flag}={size} is larger than the {len(part)} "
                                         "examples it trains on — lower it.")
    info = {
        "examples_total": len(dataset.train),
        "skipped_names": int(dataset.info.get("skipped_names", 0)),
        "missing_attribute": int((~keep).sum()),
        "usable": int(keep.sum()),
        "used": len(usable),
        "target_train": len(split.target), "attack_train": len(split.attack),
        "test": len(split.test),
        "class_counts": _counts(labels, class_names),
        "class_counts_attack_train": _counts(labels[split.attack], class_names),
        "class_counts_test": _counts(labels[split.test], class_names),
        "target_class_counts": _counts(target_labels, target_class_names),
    }
    return Prepared(images, target_labels, labels, tuple(class_names), tuple(target_class_names),
                    split, info)


def run(config: Config, dataset: data.Dataset | None = None) -> dict[str, Any]:
    """Runs the experiment; writes results.json, confusion.png, summary.md; returns the results.

    ``dataset`` overrides loading ``config.dataset`` (tests pass a small synthetic one).
    """
    with runs.Run(config.workdir, config, outputs=OUTPUTS) as run_:
        with run_.timed("load_data"):
            if dataset is None:
                dataset = data.load_dataset(config.dataset, config.data_dir)
            prepared = prepare(config, dataset)
        split, images, k = prepared.split, prepared.images, config.num_targets
        logging.info("Attribute inference: %s", {x: prepared.info[x] for x in
                                                 ("used", "target_train", "attack_train", "test")})
        preprocess = data.normalizer(config.dataset)
        dtype = models.compute_dtype(config.precision)
        target = models.LeNet(num_classes=len(prepared.target_class_names), dtype=dtype)
        target_config = config.target_train_config()

        def train_targets():  # K LeNets on the target attribute, one ensemble call
            result = training.train_ensemble(
                target, images, prepared.target_labels,
                splits.MemberSets.replicate(split.target, k), target_config, seed=config.seed,
                preprocess=preprocess, log_prefix="target ",
                checkpoint_dir=str(run_.stages.checkpoint_dir("targets", key)))
            return (runs.tree_to_arrays("trained", result.variables()),
                    {"seconds": result.seconds,
                     "train_acc": float(result.history[-1]["train_acc"].mean())})

        key = {"data": dataset.digest, **{k_: getattr(config, k_) for k_ in (
            "seed", "target_attribute", "attribute", "image_size", "test_fraction",
            "max_examples", "num_targets", "epochs", "batch_size", "learning_rate", "lr_decay",
            "weight_decay", "precision")}}
        # The run's ETA: the targets, then one attack ensemble per layer and the pixel one.
        run_.expect("target", config.epochs * k * len(split.target), stage="targets")
        for layer in (config.layer, *config.compare_layers):  # MLPs: a fraction of a LeNet image
            run_.expect(f"attack {layer}", config.attack_epochs * 2 * k * len(split.attack),
                        cost=0.1)
        run_.expect("pixels", config.attack_epochs * k * len(split.attack), cost=0.1)
        with run_.timed("target"):
            arrays, target_info = run_.stages.run("targets", key, train_targets)
            trained = runs.arrays_to_tree("trained", arrays)
            tests = splits.MemberSets.replicate(split.test, k)
            target_test = training.evaluate(target, trained, images, prepared.target_labels,
                                            tests, preprocess=preprocess)
            untrained = training.init_ensemble(target, target_config,
                                               training.model_keys(config.seed + 1000, k),
                                               preprocess(images[:1])).variables()
            untrained_test = training.evaluate(target, untrained, images, prepared.target_labels,
                                               tests, preprocess=preprocess)

        # Representations of the attacker's and the test images under each (un)trained target,
        # then 2K attack MLPs (K on trained targets, K on untrained ones) in one call.
        used = np.concatenate([split.attack, split.test])
        both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), trained, untrained)
        attack = models.MLP(hidden_sizes=(128, 64), num_classes=len(prepared.class_names),
                            dtype=dtype)
        attack_config = config.attack_train_config()
        train_labels = prepared.labels[split.attack]
        test_labels = prepared.labels[split.test]

        def attack_layer(layer: str):
            n_attack, n_used = len(split.attack), len(used)
            with run_.timed(f"representations_{layer}"):
                features = standardize(extract_representations(
                    target, both, images[used], layer, preprocess=preprocess), n_attack)
            with run_.timed(f"attack_{layer}"):
                pool = features.reshape(-1, features.shape[-1])
                pool_labels = np.tile(prepared.labels[used], 2 * k)
                blocks = [j * n_used + np.arange(n_attack) for j in range(2 * k)]
                attack_result = training.train_ensemble(
                    attack, pool, pool_labels, splits.MemberSets.from_lists(blocks),
                    attack_config, seed=config.seed + 2000, log_prefix=f"attack {layer} ")
                attack_vars = attack_result.variables()
                reports = []
                for j in range(2 * k):
                    rows = pool[j * n_used + n_attack:(j + 1) * n_used]
                    logits = training.predict(
                        attack, jax.tree.map(lambda x: x[j:j + 1], attack_vars), rows)[0]
                    reports.append(attack_report(test_labels, logits.argmax(-1), train_labels,
                                                 prepared.class_names))
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

        with run_.timed("pixels"):  # the same attack MLP on the normalised raw pixels
            pixel_result = training.train_ensemble(
                attack, images, prepared.labels, splits.MemberSets.replicate(split.attack, k),
                attack_config, seed=config.seed + 3000, preprocess=preprocess,
                log_prefix="pixels ")
            pixel_posteriors = training.predict(attack, pixel_result.variables(),
                                                images[split.test], preprocess=preprocess)
            pixel_reports = [attack_report(test_labels, p.argmax(-1), train_labels,
                                           prepared.class_names) for p in pixel_posteriors]

        attack_train_acc = attack_result.history[-1]["train_acc"]
        results = run_.finish({
            "data": {"dataset": dataset.name, "source": dataset.info.get("source"),
                     "digest": dataset.digest, "image_size": config.image_size,
                     "class_names": list(prepared.class_names), **prepared.info},
            "target": {
                "test_acc": float(target_test["accuracy"].mean()),
                "test_acc_std": float(target_test["accuracy"].std()),
                "train_acc": target_info["train_acc"],
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
            "seconds": {"target_training": target_info["seconds"],
                        "attack_training": attack_result.seconds,
                        "pixel_training": pixel_result.seconds},
        })
        runs.save_figure(report.confusion_figure(
            [(title, _panel(results, key_)) for key_, title in _PANELS],
            results["data"]["class_names"],
            title=f"{config.attribute} inferred from a {config.target_attribute} model "
                  f"({config.layer}), {config.num_targets} target(s)"), run_.path / "confusion.png")
        runs.write_text(summary_path(config), summary_markdown(results))
        logging.info("Results in %s", run_.path)
        return results


_PANELS = (("attack", "target representation"), ("pixels", "raw pixels"),
           ("untrained", "untrained target"))


def _panel(results: dict, name: str) -> dict:
    return results["attack"] if name == "attack" else results["controls"][name]


# The seed's Task 3 numbers (accuracies in %, per-class F1 White..Others).
SEED_RESULTS = {"target_test_acc": 86.0, "attack_acc": 51.0, "baseline_acc": 42.52,
                "f1": (0.64, 0.44, 0.39, 0.22, 0.01),
                "class_counts": (8950, 4367, 2497, 3484, 1308)}


def _pct_pm(value, spread) -> str:
    return report.plus_minus(value, spread, scale=100, digits=2)


def summary_markdown(results: dict) -> str:
    """The seed's tables (target and attack accuracy, per-class F1, class counts), ours beside."""
    c, d, t, a = results["config"], results["data"], results["target"], results["attack"]
    seed = SEED_RESULTS if c["dataset"] == "utkface" and c["attribute"] == "race" else None
    headline = report.markdown_table(
        ["", "ours", "seed"],
        [["Target test accuracy (%)", _pct_pm(t["test_acc"], t["test_acc_std"]),
          seed["target_test_acc"] if seed else "-"],
         ["Attack accuracy (%)", _pct_pm(a["accuracy"], a["std"]["accuracy"]),
          seed["attack_acc"] if seed else "-"],
         ["Majority-class baseline (%)", _pct_pm(a["baseline_accuracy"], 0),
          seed["baseline_acc"] if seed else "-"]]
        + [[f"Control: attack on {title} (%)", _pct_pm(_panel(results, key)["accuracy"],
                                                       _panel(results, key)["std"]["accuracy"]),
            "-"] for key, title in _PANELS[1:]])
    rows = []
    for i, name in enumerate(d["class_names"]):
        pc, sd = a["per_class"][name], a["std"]["per_class"][name]
        rows.append([f"Class {i} ({name})", report.plus_minus(pc["precision"], sd["precision"], 1, 2),
                     report.plus_minus(pc["recall"], sd["recall"], 1, 2),
                     report.plus_minus(pc["f1"], sd["f1"], 1, 2),
                     f"{seed['f1'][i]:.2f}" if seed else "-",
                     f"{_panel(results, 'pixels')['per_class'][name]['f1']:.2f}",
                     f"{_panel(results, 'untrained')['per_class'][name]['f1']:.2f}",
                     d["class_counts"][name], seed["class_counts"][i] if seed else "-"])
    per_class = report.markdown_table(
        ["Class", "precision", "recall", "F1", "seed F1", "F1 (pixels)", "F1 (untrained)",
         "samples (ours)", "samples (seed)"], rows)
    return (f"# Attribute inference: {c['attribute']} from a {c['target_attribute']} model "
            f"({d['dataset']})\n\n"
            f"{d['used']} examples used of {d['usable']} usable ({d['missing_attribute']} without "
            f"a {c['attribute']} or {c['target_attribute']} label dropped, {d['skipped_names']} "
            f"unparsable names skipped), {c['image_size']}x{c['image_size']} pixels; target train "
            f"{d['target_train']}, attack train {d['attack_train']}, test {d['test']}. "
            f"Representation: `{c['layer']}`; {c['num_targets']} target(s) (mean ± std over "
            f"targets), {c['epochs']} target epochs, {c['attack_epochs']} attack epochs. Backend: "
            f"{results['provenance']['backend']}.\n\n"
            f"## Accuracy\n\n{headline}\n## Per class (attack on the target representation)\n\n"
            f"{per_class}{_layers_markdown(results)}")


def _layers_markdown(results: dict) -> str:
    """The attack on every compared layer, trained target against untrained (if any)."""
    layers = results.get("layers") or {}
    if not layers:
        return ""
    a, u = results["attack"], results["controls"]["untrained"]
    rows = [[f"`{results['config']['layer']}` (main)", _pct_pm(a["accuracy"], a["std"]["accuracy"]),
             _pct_pm(u["accuracy"], u["std"]["accuracy"])]]
    rows += [[f"`{name}`", _pct_pm(r["attack"]["accuracy"], r["attack"]["std"]["accuracy"]),
              _pct_pm(r["untrained"]["accuracy"], r["untrained"]["std"]["accuracy"])]
             for name, r in layers.items()]
    return ("\n## Attack accuracy by layer (%)\n\n" + report.markdown_table(
        ["layer", "trained target", "untrained target"], rows))
