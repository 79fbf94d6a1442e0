"""Model inversion (seed Task 2): MI-FACE on the AT&T faces, end to end.

Stages: hold out validation faces per person; train the target face MLP and an
independent evaluator of another architecture (one stage of the run store,
reused while their settings and the data are unchanged); invert all 40 people
with :func:`jaxpet.attacks.mi_face` for each iteration budget, with the
stopping rules and with the comparison variants; score the reconstructions
(MSE, SSIM, identification); time vmap against a loop; draw the figures.

On the AT&T face MLP (pixels in [0, 1]), the paper's cost with lambda = 0.1
from a black image barely moves in 100 steps (p is 1e-7..1e-4, so the gradient
is tiny); from a grey start with the seed's cross entropy, every class yields
a faint but recognisable face. The experiment reports both.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import functools
from typing import Any

from absl import logging
import numpy as np

from jaxpet import (
    config as config_lib,
    data,
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
from jaxpet.attacks import mi_face, reconstruction
from jaxpet.benchmark import inversion as inversion_timing
from jaxpet.config import same_as, setting

EVALUATORS = ("cnn", "lenet", "mlp")
INITS = ("gray", "black")
INPUT_NORMS = ("pm1", "unit")
# The seed write-up's target (Task 2): 100% train / 95.31% validation accuracy.
SEED_TARGET = {"train_acc": 1.0, "val_acc": 0.9531, "train_loss": 0.003, "val_loss": 0.154}
# Alternatives run at 100 iterations beside the main setting, to show what each choice does.
VARIANTS: dict[str, dict[str, Any]] = {
    "paper_cost_black": dict(loss="one_minus_p", init="black"),
    "paper_cost_gray": dict(loss="one_minus_p", init="gray"),
    "paper_cost_gray_step10": dict(loss="one_minus_p", init="gray", step_size=10.0),
    "cross_entropy_black": dict(loss="cross_entropy", init="black"),
    "cross_entropy_gray_denoise_sharpen": dict(loss="cross_entropy", init="gray",
                                               process="denoise_sharpen"),
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Every knob of the AT&T faces inversion run; defaults are the seed's Task 2 setting."""

    data_dir: str | None = setting(None, "Folder holding att_faces (folder, .tar.gz or .zip); "
                                   "default $JAXPET_DATA_DIR.")
    workdir: str = setting("runs/inversion", "Output folder.")
    seed: int = setting(0, "Seed for the holdout split and the models (the evaluator uses "
                        "seed+1).", low=0)
    val_per_person: int = setting(3, "Images of each person held out for validation (seed: 3 "
                                  "of 10).", low=1, high=9)
    target_hidden: int = setting(3000, "Sigmoid units of the target face MLP (Fredrikson: 3000).",
                                 low=1)
    epochs: int = same_as(training.TrainConfig, "epochs", default=30,
                          help="Target training epochs.")
    evaluator_epochs: int = same_as(training.TrainConfig, "epochs", default=30,
                                    help="Evaluator training epochs.")
    batch_size: int = same_as(training.TrainConfig, "batch_size", default=64,
                              help="Training batch size of both models.")
    learning_rate: float = same_as(training.TrainConfig, "learning_rate", help="Adam learning "
                                   "rate of both models (plain Adam: no decay, no L2).")
    input_norm: str = setting("pm1", "What the models see: pm1 = (pixel - 0.5) / 0.5, which "
                              "reproduces the seed's train loss of 0.003; unit = pixels in [0, 1]. "
                              "The attack's pixels are in [0, 1] either way.", choices=INPUT_NORMS)
    evaluator: str = setting("cnn", "Independent model that judges the reconstructions: cnn "
                             "(LeNet at half width), lenet (full width; slow on a CPU) or mlp "
                             "(512 ReLU units).", choices=EVALUATORS)
    step_size: float = setting(0.1, "Gradient step lambda on the pixels (seed and paper: 0.1).",
                               low=0, low_open=True, high=1e4)
    loss: str = setting("cross_entropy", "What each step descends: cross_entropy (-log p, the "
                        "seed's) or one_minus_p (the paper's cost). Best image and stopping rules "
                        "always use the cost 1 - p.", choices=mi_face.LOSSES)
    init: str = setting("gray", "Start image: gray (0.5, the model's zero input under pm1) or "
                        "black (0).", choices=INITS)
    process: str = setting("none", "Process step between iterations (the paper's denoise/"
                           "sharpen); off by default.", choices=mi_face.PROCESSES)
    iterations: tuple[int, ...] = setting((5, 10, 100), "Fixed iteration budgets to run and draw.",
                                          low=1, high=1_000_000)
    max_iterations: int = setting(1000, "Stopping-rule run: at most this many steps (alpha).",
                                  low=1, high=1_000_000)
    patience: int = setting(100, "Stopping-rule run: beta, the window of --stopping; 0 turns "
                            "it off.", low=0)
    stopping: str = setting("window", "Stopping-rule run, how beta is read: window (Fredrikson "
                            "et al.'s Algorithm 1: stop when the cost is no lower than any of "
                            "the last beta costs) or no_new_best (stop after beta steps without "
                            "a new lowest cost).", choices=mi_face.STOPPING_RULES)
    cost_threshold: float = setting(0.01, "Stopping-rule run: stop once the cost 1 - p is at most "
                                    "this (gamma); a negative value turns it off.", low=-1, high=1)
    figure_people: int = setting(6, "People (rows) in iterations.png.", low=1)
    time_loop: bool = setting(True, "Also time a Python loop over classes against the vmapped "
                              "call.")
    speed_iterations: int = setting(100, "Iterations per class in the vmap-against-loop timing.",
                                    low=1, high=1_000_000, when=("time_loop", (True,)))
    variants: tuple[str, ...] = setting(tuple(VARIANTS), "Alternative settings run at 100 "
                                        "iterations for comparison (empty: none).",
                                        choices=tuple(VARIANTS))

    def __post_init__(self):
        config_lib.check(self)
        if not self.iterations:
            raise config_lib.ConfigError("--iterations needs at least one budget, e.g. 5,10,100.")

    def attack_config(self, budget: int, stopping_rules: bool = False,
                      **overrides) -> mi_face.MIFaceConfig:
        """MI-FACE's config for a fixed budget, or for the stopping-rule run."""
        values: dict[str, Any] = dict(step_size=self.step_size, max_iterations=budget,
                                      process=self.process, loss=self.loss)
        if stopping_rules:
            values.update(patience=self.patience or None, stopping=self.stopping,
                          cost_threshold=self.cost_threshold if self.cost_threshold >= 0 else None)
        values.update(overrides)
        return mi_face.MIFaceConfig(**values)

    def train_config(self, epochs: int) -> training.TrainConfig:
        """The target's (``epochs``: --epochs) or the evaluator's: plain Adam, no decay, no L2.
        --patience is MI-FACE's beta here, not early stopping's, so it is not passed on."""
        return config_lib.pick(self, training.TrainConfig, epochs=epochs, lr_decay=1.0,
                               weight_decay=0.0, patience=training.TrainConfig.patience)

    def check_sizes(self, num_classes: int, num_train: int) -> None:
        """The checks that need the data's size."""
        if self.figure_people > num_classes:
            raise config_lib.ConfigError(f"--figure_people={self.figure_people} is more than "
                                         f"the {num_classes} people — use at most that.")
        if self.batch_size > num_train:
            raise config_lib.ConfigError(f"--batch_size={self.batch_size} is larger than the "
                                         f"{num_train} training faces — lower it.")


# Settings that cannot change the trained target and evaluator (the attack's, the report's,
# and where files go).
CLASSIFIERS_KEY_IGNORE = ("data_dir", "workdir", "step_size", "loss", "init", "process",
                          "iterations", "max_iterations", "patience", "stopping",
                          "cost_threshold", "figure_people", "time_loop", "speed_iterations",
                          "variants")

# Named configurations; explicit flags override them.
PRESETS = {
    "seed": {},
    "quick": dict(workdir="runs/inversion_quick", epochs=15, evaluator_epochs=15,
                  evaluator="mlp", max_iterations=300, speed_iterations=10,
                  variants=("paper_cost_black",)),
}
PRESET_HELP = ("seed: the seed's Task 2 setting (30 epochs, the CNN evaluator, every variant, "
               "loop timing at 100 iterations); quick: a reduced run for a CPU (15 epochs, the "
               "MLP evaluator, at most 300 stopping-rule steps, one variant, loop timing at 10 "
               "iterations).")


# The files a run writes besides config.json and results.json.
OUTPUTS = ("iterations.png", "all_classes.png", "inversions.npz", "summary.md")


def summary_path(config: Config) -> str:
    return f"{config.workdir}/summary.md"


def input_normalizer(input_norm: str, scale: float) -> data.Normalize:
    """Maps pixels (uint8 with scale 255, attack pixels in [0, 1] with scale 1) to model inputs."""
    if input_norm == "pm1":
        return data.Normalize(mean=(0.5,), std=(0.5,), scale=scale)
    return data.Normalize(mean=(0.0,), std=(1.0,), scale=scale)


def holdout_split(labels: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class holdout: ``per_class`` random images of each class go to validation."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) <= per_class:
            raise config_lib.ConfigError(f"Class {c} has {len(idx)} images; holding out "
                                         f"{per_class} leaves none to train on — lower "
                                         "--val_per_person.")
        val.append(idx[:per_class])
        train.append(idx[per_class:])
    return (np.sort(np.concatenate(train)).astype(np.int32),
            np.sort(np.concatenate(val)).astype(np.int32))


def make_evaluator(name: str, num_classes: int):
    """The evaluator: a model of another architecture than the target, trained on the same faces."""
    if name == "cnn":  # LeNet at half width: 4x cheaper than "lenet" on a CPU
        return models.LeNet(features=(8, 16, 32), hidden_sizes=(64,), num_classes=num_classes)
    if name == "lenet":
        return models.LeNet(num_classes=num_classes)
    if name == "mlp":
        return models.MLP(hidden_sizes=(512,), num_classes=num_classes, activation="relu")
    raise ValueError(f"evaluator must be one of {EVALUATORS}, got {name!r}.")


def _describe(model) -> str:
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
              if f.name in ("hidden_sizes", "features", "activation", "num_classes")}
    return f"{type(model).__name__}({', '.join(f'{k}={v}' for k, v in fields.items())})"


def train_classifier(model, faces: data.Split, train_idx, val_idx,
                     train_config: training.TrainConfig, *, seed: int, preprocess,
                     what: str) -> tuple[Any, dict]:
    """Trains one model (K=1 ensemble); returns its variables and accuracies."""
    members = splits.MemberSets.from_lists([train_idx])
    validation = splits.MemberSets.from_lists([val_idx])
    result = training.train_ensemble(model, faces.images, faces.labels, members, train_config,
                                     seed=seed, validation=validation, preprocess=preprocess,
                                     log_prefix=f"{what}: ")
    variables = result.variables()
    info = {"architecture": _describe(model), "epochs": train_config.epochs,
            "seconds": result.seconds}
    for name, sets in (("train", members), ("val", validation)):
        ev = training.evaluate(model, variables, faces.images, faces.labels, sets,
                               preprocess=preprocess)
        info[f"{name}_acc"] = float(ev["accuracy"][0])
        info[f"{name}_loss"] = float(ev["loss"][0])
    logging.info("%s: train acc %.4f, val acc %.4f (%.0fs)", what, info["train_acc"],
                 info["val_acc"], result.seconds)
    return training.take_model(variables, 0), info


def train_classifiers(config: Config, target, evaluator, faces: data.Split, train_idx,
                      val_idx) -> tuple[dict[str, np.ndarray], dict]:
    """The classifiers stage: the target, then the evaluator with another seed as well as
    another architecture (nothing shared with the target); their variables and infos."""
    preprocess = input_normalizer(config.input_norm, 255.0)
    target_vars, target_info = train_classifier(
        target, faces, train_idx, val_idx, config.train_config(config.epochs), seed=config.seed,
        preprocess=preprocess, what="target")
    eval_vars, eval_info = train_classifier(
        evaluator, faces, train_idx, val_idx, config.train_config(config.evaluator_epochs),
        seed=config.seed + 1, preprocess=preprocess, what="evaluator")
    return ({**files.tree_to_arrays("target", target_vars),
             **files.tree_to_arrays("evaluator", eval_vars)},
            {"target": target_info, "evaluator": eval_info})


def start_image(init: str, image_shape) -> np.ndarray:
    """The attack's start image: gray (0.5) or black (0)."""
    return np.full(image_shape, 0.5 if init == "gray" else 0.0, np.float32)


@dataclasses.dataclass(frozen=True)
class Sweep:
    """Every MI-FACE run of the experiment, scored."""

    budgets: dict[str, dict]  # "<budget>" and "stopping_rules" -> report
    images: dict[int, np.ndarray]  # fixed budget -> reconstructions [classes, H, W, 1]
    timings: dict[int, tuple]  # fixed budget -> ScoredInversion.timing
    stopping_images: np.ndarray  # the stopping-rule run's reconstructions
    variants: dict[str, dict]  # variant name -> report


def invert_sweep(config: Config, invert: Callable[..., reconstruction.ScoredInversion],
                 image_shape, num_classes: int) -> Sweep:
    """Each fixed budget of --iterations, the stopping-rule run, then each of --variants at 100
    iterations; ``invert(attack, init=..., what=...)`` runs and scores one."""
    budgets, images, timings, variants = {}, {}, {}, {}
    start = start_image(config.init, image_shape)
    # Progress in gradient steps of one image (each class is one image per step); the
    # stopping-rules run is counted at its cap.
    steps = sum(set(config.iterations)) + config.max_iterations + 100 * len(config.variants)
    with progress.phase("inversion", num_classes * steps, unit="image steps") as phase:
        for budget in sorted(set(config.iterations)):
            done = invert(config.attack_config(budget), init=start, what=f"{budget} iterations")
            budgets[str(budget)], images[budget], timings[budget] = (
                done.report, done.images, done.timing)
            phase.advance(num_classes * budget)
        stopped = invert(config.attack_config(config.max_iterations, stopping_rules=True),
                         init=start, what="stopping rules")
        budgets["stopping_rules"] = stopped.report
        phase.advance(num_classes * config.max_iterations)
        for name in config.variants:
            overrides = dict(VARIANTS[name])
            init = start_image(overrides.pop("init", config.init), image_shape)
            variants[name] = invert(config.attack_config(100, **overrides), init=init,
                                    what=f"variant {name}").report
            phase.advance(num_classes * 100)
    return Sweep(budgets, images, timings, stopped.images, variants)


# The display stretch of the figures' extra rows: per image, these percentiles -> 0 and 255.
STRETCH_PERCENTILES = (1.0, 99.0)
STRETCH_TEXT = "stretched per image (p1-p99)"


def stretch(images, percentiles=STRETCH_PERCENTILES) -> np.ndarray:
    """[..., H, W, 1] float images -> uint8 [..., H, W], each image's own [p1, p99] mapped
    linearly to [0, 255] (clipped outside).

    A display aid: reconstructions spread over far fewer grey levels than real faces
    (see ``pixel_spread``), so unstretched they print as grey squares. Percentiles rather
    than min/max so a few outlying pixels do not flatten the rest. A constant image
    has nothing to stretch and stays mid-grey (128).
    """
    x = np.asarray(images, np.float32)[..., 0]
    lo, hi = np.percentile(x, percentiles, axis=(-2, -1), keepdims=True)
    span = hi - lo
    scaled = np.where(span > 0, (x - lo) / np.where(span > 0, span, 1.0) * 255.0, 127.5)
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


def pixel_spread(images, percentiles=STRETCH_PERCENTILES) -> float:
    """Mean over images of p99 - p1 of the pixels, in grey levels of 255: how much there is
    to see before stretching."""
    x = np.asarray(images, np.float32)[..., 0]
    lo, hi = np.percentile(x, percentiles, axis=(-2, -1))
    return float(np.mean(hi - lo) * 255)


def iterations_figure(people, real, budget_images: dict[int, np.ndarray], class_names):
    """The seed's figure: each row a person, a real image then the reconstructions per budget;
    under it the same images stretched per image (p1-p99), the raw row unchanged."""
    rows, captions = [], []
    for c in people:
        rows.append([report.to_uint8(real[c])]
                    + [report.to_uint8(images[c]) for images in budget_images.values()])
        captions.append([f"{class_names[c]} real"] + [
            f"{b} iterations" if b != 1 else "1 iteration" for b in budget_images])
        rows.append([stretch(real[c])] + [stretch(images[c]) for images in budget_images.values()])
        captions.append(["p1-p99 stretched"] + [f"{b} it. stretched" for b in budget_images])
    return report.image_grid(rows, captions)


def all_classes_figure(real, recon, class_names, predicted=None, columns: int = 8):
    """Every person's reconstruction under a real image of that person, then the reconstruction
    stretched per image (p1-p99); captions: who the evaluator takes the reconstruction for."""
    rows, captions = [], []
    for start in range(0, len(recon), columns):
        people = range(start, min(start + columns, len(recon)))
        rows.append([report.to_uint8(real[c]) for c in people])
        captions.append([f"{class_names[c]} real" for c in people])
        rows.append([report.to_uint8(recon[c]) for c in people])
        captions.append([f"-> {class_names[predicted[c]]}" if predicted is not None
                         else "inverted" for c in people])
        rows.append([stretch(recon[c]) for c in people])
        captions.append(["stretched p1-p99" for c in people])
    return report.image_grid(rows, captions)


def run(config: Config, dataset=None) -> dict:
    """The whole experiment; writes results.json, summary.md, inversions.npz and the figures."""
    with runs.Run(config.workdir, config, outputs=OUTPUTS, on_finish=page.write_page) as run_:
        if dataset is None:
            dataset = data.load_dataset("att_faces", config.data_dir)
        faces, num_classes = dataset.train, len(dataset.class_names)
        image_shape = faces.images.shape[1:]
        train_idx, val_idx = holdout_split(faces.labels, config.val_per_person, config.seed)
        config.check_sizes(num_classes, len(train_idx))
        target = models.face_mlp(num_classes=num_classes, hidden=config.target_hidden)
        evaluator = make_evaluator(config.evaluator, num_classes)

        key = stages.stage_key(config, ignore=CLASSIFIERS_KEY_IGNORE, data=dataset.digest)
        with run_.timed("classifiers"):
            trained = run_.stages.run("classifiers", key, lambda: train_classifiers(
                config, target, evaluator, faces, train_idx, val_idx))
        target_vars = files.arrays_to_tree("target", trained.arrays)
        pixels = input_normalizer(config.input_norm, 1.0)  # the attack's pixels are in [0, 1]
        target_fn = mi_face.flax_apply(target, pixels)
        classifiers = {"target": (target_fn, target_vars),
                       "evaluator": (mi_face.flax_apply(evaluator, pixels),
                                     files.arrays_to_tree("evaluator", trained.arrays))}

        train_pixels = faces.images[train_idx].astype(np.float32) / 255.0
        train_labels = faces.labels[train_idx]
        person_means = np.stack([train_pixels[train_labels == c].mean(0)
                                 for c in range(num_classes)])
        real = np.stack([train_pixels[np.flatnonzero(train_labels == c)[0]]
                         for c in range(num_classes)])
        invert = functools.partial(reconstruction.invert_and_score, target_fn, target_vars,
                                   image_shape=image_shape, class_means=person_means,
                                   classifiers=classifiers)
        with run_.timed("inversion"):
            sweep = invert_sweep(config, invert, image_shape, num_classes)
        everyone = np.arange(num_classes)
        references = {name: reconstruction.score(np.broadcast_to(image, person_means.shape),
                                                 everyone, person_means, classifiers)
                      for name, image in (("mean_face_of_everyone", train_pixels.mean(0)),
                                          ("start_image", start_image(config.init, image_shape)))}
        speed = inversion_timing.time_vmap_vs_loop(
            target_fn, target_vars, config.attack_config(config.speed_iterations), image_shape,
            sweep.timings.get(config.speed_iterations),
            start_image(config.init, image_shape)) if config.time_loop else None

        figures = write_figures(run_.path, config, dataset.class_names, real, person_means, sweep)
        results = run_.finish({
            "data": {"dataset": dataset.name, "source": dataset.info.get("source"),
                     "digest": dataset.digest},
            "target": {**trained.info["target"], "seed": SEED_TARGET},
            "evaluator": trained.info["evaluator"],
            "budgets": sweep.budgets,
            "variants": sweep.variants,
            "references": references,
            "speed": speed,
            "figures": figures,
        })
        files.write_text(summary_path(config), summary_markdown(results))
        return results


def write_figures(path, config: Config, class_names, real, person_means, sweep: Sweep) -> dict:
    """iterations.png, all_classes.png and inversions.npz; returns results.json's figures
    section."""
    num_classes = len(class_names)
    largest = max(sweep.images)
    people = np.unique(np.linspace(0, num_classes - 1, min(config.figure_people, num_classes))
                       .round().astype(int))
    files.save_image(iterations_figure(people, real, sweep.images, class_names),
                     path / "iterations.png")
    files.save_image(all_classes_figure(real, sweep.images[largest], class_names,
                                        sweep.budgets[str(largest)]["evaluator_predicted"]),
                     path / "all_classes.png")
    images = {**{f"budget_{b}": v for b, v in sweep.images.items()},
              "budget_stopping_rules": sweep.stopping_images}
    files.write_npz(path / "inversions.npz", person_means=report.to_uint8(person_means),
                    real=report.to_uint8(real),
                    **{k: report.to_uint8(v) for k, v in images.items()})
    return {"iterations": "iterations.png", "all_classes": "all_classes.png",
            "all_classes_budget": largest, "stretch": STRETCH_TEXT,
            # Mean per-image p99 - p1 in grey levels: why the stretched rows exist.
            "pixel_spread": {"real": pixel_spread(real),
                             "reconstruction": pixel_spread(sweep.images[largest])}}


def summary_markdown(results: dict) -> str:
    """Every run (budgets, stopping rules, variants, references) with its scores, and the speed."""
    t, e, c = results["target"], results["evaluator"], results["config"]
    lines = [
        "# Model inversion (mi_face), AT&T faces\n",
        f"Target {t['architecture']}: train {100 * t['train_acc']:.2f}% / validation "
        f"{100 * t['val_acc']:.2f}% (seed: 100 / 95.31). Evaluator {e['architecture']}: "
        f"train {100 * e['train_acc']:.2f}% / validation {100 * e['val_acc']:.2f}%.\n",
        f"Attack: step {c['step_size']}, loss {c['loss']}, start {c['init']}, process "
        f"{c['process']}. MSE/SSIM against the person's mean training image; identified = "
        "top-1 class is the person.\n",
    ]
    rows = []

    def row(name, r):
        its = r.get("iterations")
        rows.append([name, f"{np.mean(its):.0f}" if its is not None else "-",
                     f"{r['cost_mean']:.3f}" if "cost_mean" in r else "-",
                     f"{r['mse_mean']:.4f}", f"{r['ssim_mean']:.3f}",
                     f"{100 * r['target_identified']:.1f}%",
                     f"{100 * r['evaluator_identified']:.1f}%",
                     f"{100 * r['nearest_mean_identified']:.1f}%",
                     f"{r['seconds']:.1f}" if "seconds" in r else "-"])

    for name, r in results["budgets"].items():
        row(name, r)
    for name, r in results.get("variants", {}).items():
        row(f"variant {name}", r)
    for name, r in results["references"].items():
        row(f"reference: {name}", r)
    lines.append(report.markdown_table(
        ["run", "iterations", "cost", "MSE", "SSIM", "target id.", "evaluator id.",
         "nearest-mean id.", "seconds"], rows))
    s = results.get("speed")
    if s:
        lines.append(f"\nSpeed ({s['classes']} classes x {s['iterations']} iterations, "
                     f"{s['backend']}): vmapped {s['vmap_seconds']:.2f}s, Python loop over classes "
                     f"{s['loop_seconds']:.2f}s: {s['ratio']:.1f}x.\n")
    stop = results["budgets"].get("stopping_rules")
    if stop:
        rule = {"window": "Algorithm 1's window: stop when the cost is no lower than any of the "
                          "last beta", "no_new_best": "stop after beta steps without a new best"}
        lines.append(f"\nStopping rules (alpha {stop['max_iterations']}, beta {stop['patience']}"
                     f" read as {rule.get(stop.get('stopping'), 'no new best')}, gamma "
                     f"{stop['cost_threshold']}): {stop['stop_reasons']}.\n")
    f = results.get("figures")
    if f:
        spread = f.get("pixel_spread")
        spread = (f" The raw reconstructions at {f['all_classes_budget']} iterations span about "
                  f"{spread['reconstruction']:.0f}/255 grey levels (p1-p99, mean per image) "
                  f"against {spread['real']:.0f}/255 for the real faces." if spread else "")
        lines.append(
            f"\nFigures: `{f['iterations']}` shows each drawn person's real image and the "
            "reconstruction per iteration budget, with under each raw row the same images "
            f"{f.get('stretch', STRETCH_TEXT)}; `{f['all_classes']}` shows every person's real "
            f"image, the raw reconstruction at {f['all_classes_budget']} iterations (caption: the "
            "evaluator's guess) and that reconstruction stretched. Stretched = each image's own "
            "1st and 99th pixel percentiles mapped linearly to 0 and 255 (clipped outside), for "
            f"display only: every score above uses the raw images.{spread}\n")
    return "\n".join(lines)
