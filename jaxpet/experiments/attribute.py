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

from jaxpet import (
    config as config_lib,
    data,
    files,
    models,
    page,
    report,
    runs,
    splits,
    stages,
    training,
)
from jaxpet.attacks import attribute as attribute_attack
from jaxpet.attacks.attribute import aggregate
from jaxpet.config import same_as, setting
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
    epochs: int = same_as(training.TrainConfig, "epochs", help="Target training epochs.")
    batch_size: int = same_as(training.TrainConfig, "batch_size", help="Target batch size.")
    learning_rate: float = same_as(training.TrainConfig, "learning_rate",
                                   help="Target Adam learning rate.")
    lr_decay: float = same_as(training.TrainConfig, "lr_decay", help="Learning rate factor per "
                              "epoch (target and attack).")
    weight_decay: float = same_as(training.TrainConfig, "weight_decay", help="Target L2 weight "
                                  "decay (coupled, as PyTorch's Adam).")
    attack_epochs: int = same_as(training.TrainConfig, "epochs", help="Attack MLP training "
                                 "epochs.")
    attack_batch_size: int = same_as(training.TrainConfig, "batch_size",
                                     help="Attack MLP batch size.")
    attack_learning_rate: float = same_as(training.TrainConfig, "learning_rate",
                                          help="Attack MLP Adam learning rate.")
    attack_weight_decay: float = same_as(training.TrainConfig, "weight_decay", default=1e-7,
                                         help="Attack MLP L2 weight decay.")
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
        return config_lib.pick(self, training.TrainConfig)

    def attack_train_config(self) -> training.TrainConfig:
        """The target's settings with the attack's own (the learning rate decay is shared)."""
        return dataclasses.replace(
            self.target_train_config(), epochs=self.attack_epochs,
            batch_size=self.attack_batch_size, learning_rate=self.attack_learning_rate,
            weight_decay=self.attack_weight_decay)


# Settings that cannot change the trained targets (the attack's, and where files go).
TARGETS_KEY_IGNORE = ("data_dir", "workdir", "layer", "compare_layers", "attack_epochs",
                      "attack_batch_size", "attack_learning_rate", "attack_weight_decay")

# Named configurations; explicit flags override them.
PRESETS = {
    "seed": {},
    "quick": dict(workdir="runs/attribute_utkface_quick", max_examples=5000, epochs=10,
                  attack_epochs=20, compare_layers=("conv3",)),
}
PRESET_HELP = ("seed: the seed's full configuration (all 23,705 usable UTKFace faces, 50 "
               "epochs each); quick: a reduced run for a CPU (5,000 faces, 10 target and 20 "
               "attack epochs, fc2 and conv3 attacked).")


# The files a run writes besides config.json and results.json.
OUTPUTS = ("confusion.png", "summary.md")


def summary_path(config: Config) -> str:
    return f"{config.workdir}/summary.md"


@dataclasses.dataclass(frozen=True)
class AttributeSplit:
    """Positions into the usable examples: the target's and the attacker's halves of train,
    and test."""

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
    return {name: int(c) for name, c in zip(class_names, counts, strict=True)}


def prepare(config: Config, dataset: data.Dataset) -> Prepared:
    """Drops examples missing either attribute, subsets, resizes and splits; errors on a bad
    split."""
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


def train_targets(target, prepared: Prepared, train_config: training.TrainConfig,
                  num_targets: int, *, seed: int, preprocess, checkpoint_dir: str
                  ) -> tuple[dict[str, np.ndarray], dict]:
    """The targets stage: K targets (seeds ``seed``...) trained on the target attribute in one
    ensemble call; their variables as arrays, and their training seconds and accuracy."""
    result = training.train_ensemble(
        target, prepared.images, prepared.target_labels,
        splits.MemberSets.replicate(prepared.split.target, num_targets), train_config, seed=seed,
        preprocess=preprocess, log_prefix="target ", checkpoint_dir=checkpoint_dir)
    return (files.tree_to_arrays("trained", result.variables()),
            {"seconds": result.seconds, "train_acc": float(result.history[-1]["train_acc"].mean())})


def attack_layer(run_: runs.Run, config: Config, prepared, target, variables, attack, layer: str,
                 attack_config: training.TrainConfig, preprocess):
    """One layer's representations of the attacker's and the test images under every target in
    ``variables`` (K trained, then K untrained), then one attack MLP per target, in one call."""
    split = prepared.split
    used, n_attack = np.concatenate([split.attack, split.test]), len(split.attack)
    with run_.timed(f"representations_{layer}"):
        features = attribute_attack.layer_features(
            target, variables, prepared.images[used], layer, num_fit=n_attack,
            preprocess=preprocess)
    with run_.timed(f"attack_{layer}"):
        return attribute_attack.attack_features(
            attack, features, prepared.labels[used], n_attack, attack_config,
            class_names=prepared.class_names, seed=config.seed + 2000,
            log_prefix=f"attack {layer} ")


def run(config: Config, dataset: data.Dataset | None = None) -> dict[str, Any]:
    """Runs the experiment; writes results.json, confusion.png, summary.md; returns the results.

    ``dataset`` overrides loading ``config.dataset`` (tests pass a small synthetic one).
    """
    with runs.Run(config.workdir, config, outputs=OUTPUTS, on_finish=page.write_page) as run_:
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
        attack = models.MLP(hidden_sizes=(128, 64), num_classes=len(prepared.class_names),
                            dtype=dtype)
        target_config, attack_config = config.target_train_config(), config.attack_train_config()
        layers = (config.layer, *config.compare_layers)
        _expect(run_, config, split, layers)

        key = stages.stage_key(config, ignore=TARGETS_KEY_IGNORE, data=dataset.digest)
        with run_.timed("target"):  # K trained targets (a stage), K untrained ones, their tests
            targets = run_.stages.run("targets", key, lambda: train_targets(
                target, prepared, target_config, k, seed=config.seed, preprocess=preprocess,
                checkpoint_dir=str(run_.stages.checkpoint_dir("targets", key))))
            trained = files.arrays_to_tree("trained", targets.arrays)
            untrained = training.init_ensemble(target, target_config, training.model_keys(
                config.seed + 1000, k), preprocess(images[:1])).variables()
            tests = splits.MemberSets.replicate(split.test, k)
            target_test, untrained_test = (
                training.evaluate(target, variables, images, prepared.target_labels, tests,
                                  preprocess=preprocess) for variables in (trained, untrained))

        both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), trained, untrained)
        attacked = {layer: attack_layer(run_, config, prepared, target, both, attack, layer,
                                        attack_config, preprocess) for layer in layers}
        with run_.timed("pixels"):  # the same attack MLP on the normalised raw pixels
            pixels = attribute_attack.train_attacks(
                attack, images, prepared.labels, [split.attack] * k, [split.test] * k,
                attack_config, class_names=prepared.class_names, seed=config.seed + 3000,
                preprocess=preprocess, log_prefix="pixels ")

        results = run_.finish(_results(config, dataset, prepared, targets.info,
                                       (target_test, untrained_test), attacked, pixels))
        files.save_figure(confusion_figure(results), run_.path / "confusion.png")
        files.write_text(summary_path(config), summary_markdown(results))
        logging.info("Results in %s", run_.path)
        return results


def _expect(run_: runs.Run, config: Config, split: AttributeSplit, layers) -> None:
    """The run's ETA: the targets, then one attack ensemble per layer and the pixel one."""
    k, n_attack = config.num_targets, len(split.attack)
    run_.expect("target", config.epochs * k * len(split.target), stage="targets")
    for layer in layers:  # MLPs: a fraction of a LeNet image
        run_.expect(f"attack {layer}", config.attack_epochs * 2 * k * n_attack, cost=0.1)
    run_.expect("pixels", config.attack_epochs * k * n_attack, cost=0.1)


def _results(config: Config, dataset: data.Dataset, prepared: Prepared, target_info: dict,
             target_tests: tuple[dict, dict],
             attacked: dict[str, attribute_attack.AttackOutcome],
             pixels: attribute_attack.AttackOutcome) -> dict:
    """results.json's sections: the data, the targets, the attack on --layer with its controls
    (pixels, untrained targets) and every --compare_layers one."""
    k = config.num_targets

    def halves(outcome):  # the K attacks on trained targets, the K on untrained ones
        acc = outcome.train_acc
        return (aggregate(outcome.reports[:k]), aggregate(outcome.reports[k:]),
                float(acc[:k].mean()), float(acc[k:].mean()))

    attack, untrained, attack_acc, untrained_acc = halves(attacked[config.layer])
    layers = {}
    for layer in config.compare_layers:
        a, u, a_acc, u_acc = halves(attacked[layer])
        layers[layer] = {"attack": a, "untrained": u, "train_acc": a_acc,
                         "untrained_train_acc": u_acc}
    target_test, untrained_test = target_tests
    return {
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
        "attack": {**attack, "layer": config.layer, "train_acc": attack_acc},
        "controls": {
            "pixels": {**aggregate(pixels.reports), "train_acc": float(pixels.train_acc.mean())},
            "untrained": {**untrained, "layer": config.layer, "train_acc": untrained_acc},
        },
        "layers": layers,
        "seconds": {"target_training": target_info["seconds"],
                    "attack_training": attacked[config.layer].seconds,
                    "pixel_training": pixels.seconds},
    }


_PANELS = (("attack", "target representation"), ("pixels", "raw pixels"),
           ("untrained", "untrained target"))


def _panel(results: dict, name: str) -> dict:
    return results["attack"] if name == "attack" else results["controls"][name]


def confusion_figure(results: dict):
    """The confusion matrices of the attack and of its two controls, side by side."""
    c = results["config"]
    return report.confusion_figure(
        [(title, _panel(results, name)) for name, title in _PANELS],
        results["data"]["class_names"],
        title=f"{c['attribute']} inferred from a {c['target_attribute']} model ({c['layer']}), "
              f"{c['num_targets']} target(s)")


# The seed's Task 3 numbers (accuracies in %, per-class F1 White..Others).
SEED_RESULTS: dict[str, Any] = {"target_test_acc": 86.0, "attack_acc": 51.0, "baseline_acc": 42.52,
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
        rows.append([f"Class {i} ({name})",
                     report.plus_minus(pc["precision"], sd["precision"], 1, 2),
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
