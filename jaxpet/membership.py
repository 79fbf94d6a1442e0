"""Membership inference end to end (seed Task 1): split, train target and shadows, attack, report.

:func:`run` is the whole experiment; ``experiments/membership.py`` only parses
flags into a :class:`MembershipConfig`. Every finished phase (target
training, shadow training, attacks) is saved in the workdir, so an
interrupted run keeps its work and a rerun with the same config resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import shutil
import time
from typing import Any, Callable, Sequence

from absl import logging
import jax
import numpy as np

from jaxpet import attacks, data, metrics, models, privacy, reporting, splits, training

DEFENSES = ("none", "dropout_early_stopping", "dpsgd")
DATASETS = ("cifar10", "mnist")


@dataclasses.dataclass(frozen=True)
class MembershipConfig:
    """Every knob of one membership run; defaults are the seed's full CIFAR-10 configuration."""

    dataset: str = "cifar10"
    data_dir: str | None = None
    workdir: str = "runs/membership"
    seed: int = 0
    epochs: int = 50
    attack_epochs: int = 50
    train_size: int | None = None  # members per model; None: a quarter of the train split
    val_size: int = 1000  # validation slice of each out part (early stopping)
    num_posteriors: int = 10
    defense: str = "none"
    dropout_rate: float = 0.5  # used by the dropout_early_stopping defence
    patience: int = 10
    num_shadow: int = 1
    precision: str = "float32"
    batch_size: int = 128
    width_scale: float = 1.0  # <1 shrinks the seed CNNs (quick CPU preset)
    phase_dir: str | None = None  # where finished phases are kept (default: <workdir>/phases)
    # DP-SGD defence (--defense=dpsgd): GroupNorm CNNs, per-example clipping and noise.
    dp_noise_multiplier: float = 1.0
    dp_clip_norm: float = 1.0
    dp_delta: float = 1e-5
    norm: str | None = None  # CNN normalisation: None = "group" under DP-SGD, else "batch"
    strategy: str = "auto"  # how the ensemble runs (training.STRATEGIES); no effect on results
    checkpoint_every: int = 5  # epochs between checkpoints of a phase still training

    def validate(self, pool_size: int | None = None) -> None:
        """Raises ValueError naming the bad flag; cheap checks run before any data is loaded."""
        if self.dataset not in DATASETS:
            raise ValueError(f"--dataset must be one of {DATASETS}, got {self.dataset!r}.")
        if self.num_posteriors not in (3, 10):
            raise ValueError(f"--num_posteriors must be 3 or 10, got {self.num_posteriors}.")
        if self.defense not in DEFENSES:
            raise ValueError(f"--defense must be one of {DEFENSES}, got {self.defense!r}.")
        for name in ("epochs", "attack_epochs", "num_shadow", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be positive, got {getattr(self, name)}.")
        if self.train_size is not None and self.train_size < 2:
            raise ValueError(f"--train_size must be at least 2, got {self.train_size}.")
        if self.width_scale <= 0:
            raise ValueError(f"--width_scale must be positive, got {self.width_scale}.")
        if self.val_size < 0:
            raise ValueError(f"--val_size must be >= 0, got {self.val_size}.")
        if self.defense == "dropout_early_stopping" and self.val_size == 0:
            raise ValueError("--defense=dropout_early_stopping needs --val_size > 0 for early stopping.")
        if self.norm is not None and self.norm not in models.NORMS:
            raise ValueError(f"--norm must be one of {models.NORMS}, got {self.norm!r}.")
        if self.defense == "dpsgd" and self.norm == "batch":
            raise ValueError("--defense=dpsgd needs per-example normalisation: --norm=group or none.")
        if self.defense == "dpsgd":
            privacy.check_dpsgd_flags(self.dp_noise_multiplier, self.dp_clip_norm, self.dp_delta)
        training.check_run_flags(self.strategy, self.checkpoint_every)
        if not 0 <= self.dropout_rate < 1:
            raise ValueError(f"--dropout_rate must be in [0, 1), got {self.dropout_rate}.")
        if pool_size is not None:
            quarter = pool_size // 4
            if self.part_size(pool_size) > quarter:
                raise ValueError(f"--train_size={self.train_size} is larger than a quarter of the "
                                 f"{pool_size} training examples ({quarter}).")
            if self.val_size >= self.part_size(pool_size):
                raise ValueError(f"--val_size={self.val_size} leaves no non-member to evaluate with "
                                 f"--train_size={self.part_size(pool_size)}.")

    def part_size(self, pool_size: int) -> int:
        return pool_size // 4 if self.train_size is None else self.train_size

    def training_fingerprint(self) -> str:
        """Hash of everything that changes the trained target and shadows (not the attack's knobs),
        so runs that differ only in the attack share the trained models through ``phase_dir``."""
        skip = ("data_dir", "workdir", "phase_dir", "num_posteriors", "attack_epochs", "strategy",
                "checkpoint_every")
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        fields.pop("dp_delta")  # only changes the reported epsilon
        if self.norm is None:  # the default: older runs' fingerprints stay valid
            fields.pop("norm")
        if self.defense != "dpsgd":  # older runs' fingerprints stay valid
            for name in ("dp_noise_multiplier", "dp_clip_norm"):
                fields.pop(name)
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


# Named configurations; explicit flags override them. "quick" fits a 2-core CPU in minutes.
PRESETS = {
    "seed": {},
    "quick": dict(train_size=2500, val_size=500, epochs=15, attack_epochs=10, width_scale=0.25),
}


def make_config(preset: str = "seed", **overrides) -> MembershipConfig:
    """A preset's config with ``overrides`` applied (None values are ignored)."""
    if preset not in PRESETS:
        raise ValueError(f"--preset must be one of {sorted(PRESETS)}, got {preset!r}.")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    return MembershipConfig(**values)


def check_workdir(workdir: str) -> pathlib.Path:
    """Creates the workdir and proves it is writable, before any training."""
    path = pathlib.Path(workdir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"--workdir={workdir} is not writable ({e.strerror}); choose another folder.") from e
    return path


class _Phases:
    """Saves each finished phase as ``<name>-<fingerprint>.npz`` + json; reuses a matching one."""

    def __init__(self, directory: pathlib.Path, fingerprint: str):
        self.dir = directory
        self.fingerprint = fingerprint

    def run(self, name: str, compute: Callable[[], tuple[dict[str, np.ndarray], dict]]):
        stem = f"{name}-{self.fingerprint}"
        arrays_path, meta_path = self.dir / f"{stem}.npz", self.dir / f"{stem}.json"
        if arrays_path.exists() and meta_path.exists():
            meta = reporting.read_json(meta_path)
            if meta.get("fingerprint") == self.fingerprint:
                logging.info("Phase %s: reusing the finished result in %s", name, arrays_path)
                return reporting.read_npz(arrays_path), meta["info"]
        arrays, info = compute()
        reporting.write_npz(arrays_path, **arrays)
        reporting.write_json(meta_path, {"fingerprint": self.fingerprint, "info": info})
        return arrays, info


def _balanced(members: np.ndarray, non_members: np.ndarray, rng: np.random.Generator):
    """Equal numbers of members and non-members (chance = 50%), sampled without replacement."""
    n = min(len(members), len(non_members))
    return np.sort(rng.choice(members, n, replace=False)), np.sort(rng.choice(non_members, n, replace=False))


@dataclasses.dataclass
class _Role:
    """One role (target or shadows): its K member sets, evaluation sets and model."""

    name: str
    members: splits.MemberSets
    non_members: list[np.ndarray]  # per model: non-member pool
    validation: splits.MemberSets | None


def _shadow_sets(split: splits.QuarterSplit, num_shadow: int, val_size: int, seed: int) -> _Role:
    if num_shadow == 1:  # The seed: shadow-in are members, shadow-out non-members.
        non_members = [split.shadow_out]
        members = splits.MemberSets.from_lists([split.shadow_in])
    else:  # Each shadow gets its own random half of the shadow pool.
        pool = np.concatenate([split.shadow_in, split.shadow_out])
        members = splits.random_member_sets(pool, num_shadow, len(split.shadow_in), seed=seed + 1)
        rng = np.random.default_rng(seed + 2)
        non_members = [rng.permutation(np.setdiff1d(pool, members.member(k))) for k in range(num_shadow)]
    validation = splits.MemberSets.from_lists([o[:val_size] for o in non_members]) if val_size else None
    return _Role("shadow", members, [o[val_size:] for o in non_members], validation)


def _train_role(role: _Role, model, config: MembershipConfig, dataset: data.Dataset, preprocess,
                seed: int, checkpoint_dir: str | None = None):
    """Trains all models of a role in one vmapped call; returns posteriors on balanced in/out sets."""
    train, test = dataset.train, dataset.test
    early = config.defense == "dropout_early_stopping"
    train_config = training.TrainConfig(
        epochs=config.epochs, batch_size=config.batch_size, early_stopping=early,
        patience=config.patience, dpsgd=config.defense == "dpsgd",
        dp_clip_norm=config.dp_clip_norm, dp_noise_multiplier=config.dp_noise_multiplier)
    logging.info("Training %s: %d model(s), %s members each", role.name, role.members.num_models,
                 role.members.counts.tolist())
    mesh = training.default_mesh(config.strategy)
    result = training.train_ensemble(model, train.images, train.labels, role.members, train_config,
                                     seed=seed, validation=role.validation, preprocess=preprocess,
                                     log_prefix=f"{role.name} ", mesh=mesh,
                                     strategy=config.strategy, checkpoint_dir=checkpoint_dir,
                                     checkpoint_every=config.checkpoint_every)
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
    post, labels, membership, indices, owner = [], [], [], [], []
    for k, (ins, outs) in enumerate(chosen):
        idx = np.concatenate([ins, outs])
        post.append(pool_post[k, np.searchsorted(pool, idx)])
        labels.append(train.labels[idx])
        membership.append(np.r_[np.ones(len(ins), np.int32), np.zeros(len(outs), np.int32)])
        indices.append(idx)
        owner.append(np.full(len(idx), k, np.int32))
    arrays = {
        "posteriors": np.concatenate(post), "labels": np.concatenate(labels),
        "membership": np.concatenate(membership), "indices": np.concatenate(indices),
        "model": np.concatenate(owner),
    }
    info = {
        "train_acc": train_eval["accuracy"].tolist(), "test_acc": test_eval["accuracy"].tolist(),
        "seconds": result.seconds, "epochs_run": len(result.history),
        "best_epoch": np.asarray(result.state.best_epoch).tolist() if early else None,
        "final_loss": result.history[-1]["loss"].tolist(),
    }
    info["members_min"] = int(role.members.counts.min())  # what the DP accounting needs
    return arrays, info


def run(config: MembershipConfig, dataset: data.Dataset | None = None) -> dict[str, Any]:
    """Runs the whole membership experiment; writes results.json, predictions.npz, roc.png, summary.md.

    ``dataset`` overrides loading ``config.dataset`` (tests pass a small synthetic one).
    """
    config.validate()
    workdir = check_workdir(config.workdir)
    timings: dict[str, float] = {}
    tick = time.perf_counter()
    if dataset is None:
        dataset = data.load_dataset(config.dataset, config.data_dir)
    timings["load_data"] = time.perf_counter() - tick
    pool_size = len(dataset.train)
    config.validate(pool_size)
    part = config.part_size(pool_size)
    val_size = config.val_size
    split = splits.quarter_split(pool_size, config.seed, part_size=part, val_size=val_size)
    reporting.write_json(workdir / "config.json", dataclasses.asdict(config))

    preprocess = data.normalizer(config.dataset)
    dropout = config.dropout_rate if config.defense == "dropout_early_stopping" else 0.0
    norm = config.norm or ("group" if config.defense == "dpsgd" else "batch")
    make = lambda role: models.seed_cnn(config.dataset, role, dropout_rate=dropout,
                                        precision=config.precision, width_scale=config.width_scale,
                                        norm=norm)
    phase_dir = pathlib.Path(config.phase_dir) if config.phase_dir else workdir / "phases"
    fingerprint = config.training_fingerprint()
    phases = _Phases(phase_dir, fingerprint)
    # Epoch checkpoints of a phase still training: a run that dies resumes mid-phase.
    checkpoints = lambda name: str(phase_dir / f"checkpoints-{name}-{fingerprint}")

    target_role = _Role(
        "target", splits.MemberSets.from_lists([split.target_in]), [split.target_out_eval],
        splits.MemberSets.from_lists([split.target_val]) if val_size else None)
    shadow_role = _shadow_sets(split, config.num_shadow, val_size, config.seed)

    tick = time.perf_counter()
    target, target_info = phases.run(
        "target", lambda: _train_role(target_role, make("target"), config, dataset, preprocess,
                                      config.seed, checkpoints("target")))
    shutil.rmtree(checkpoints("target"), ignore_errors=True)  # the phase file holds it now
    timings["target"] = time.perf_counter() - tick
    tick = time.perf_counter()
    shadow, shadow_info = phases.run(
        "shadow", lambda: _train_role(shadow_role, make("shadow"), config, dataset, preprocess,
                                      config.seed + 1000, checkpoints("shadow")))
    shutil.rmtree(checkpoints("shadow"), ignore_errors=True)
    timings["shadow"] = time.perf_counter() - tick

    tick = time.perf_counter()
    attack_config = attacks.ShadowAttackConfig(top_k=config.num_posteriors, epochs=config.attack_epochs)
    mlp, mlp_info = attacks.shadow_mlp_attack(shadow["posteriors"], shadow["membership"],
                                              target["posteriors"], target["membership"],
                                              attack_config, seed=config.seed)
    outputs = {"shadow_mlp": mlp}
    for name in attacks.THRESHOLD_ATTACKS:
        outputs[name] = attacks.threshold_attack(
            name, shadow["posteriors"], shadow["labels"], shadow["membership"],
            target["posteriors"], target["labels"], target["membership"])
    timings["attacks"] = time.perf_counter() - tick

    results = {
        "config": dataclasses.asdict(config),
        "data": {"dataset": config.dataset, "source": dataset.info.get("source"),
                 "pool_size": pool_size, "members_per_model": part, "val_size": val_size,
                 "attack_test_members": int(target["membership"].sum()),
                 "attack_test_non_members": int((1 - target["membership"]).sum())},
        "target": {"train_acc": target_info["train_acc"][0], "test_acc": target_info["test_acc"][0],
                   "epochs_run": target_info["epochs_run"], "best_epoch": target_info["best_epoch"]},
        "shadow": {"train_acc": float(np.mean(shadow_info["train_acc"])),
                   "test_acc": float(np.mean(shadow_info["test_acc"])),
                   "per_model_train_acc": shadow_info["train_acc"],
                   "per_model_test_acc": shadow_info["test_acc"],
                   "epochs_run": shadow_info["epochs_run"]},
        "attacks": {name: out.report for name, out in outputs.items()},
        "privacy": (privacy.training_epsilon(  # at report time: --dp_delta needs no retraining
            config.dp_noise_multiplier, config.batch_size, target_info.get("members_min", part),
            target_info["epochs_run"], config.dp_delta) if config.defense == "dpsgd" else None),
        "attack_train_acc": mlp_info["train_acc"],
        "seconds": {**timings, "target_training": target_info["seconds"],
                    "shadow_training": shadow_info["seconds"]},
        "backend": jax.default_backend(),
        "devices": [d.device_kind for d in jax.devices()],
        "jax_version": jax.__version__,
    }
    reporting.write_json(workdir / "results.json", results)
    reporting.write_npz(
        workdir / "predictions.npz", posteriors=target["posteriors"], labels=target["labels"],
        membership=target["membership"], indices=target["indices"],
        **{f"score_{name}": out.scores for name, out in outputs.items()})
    reporting.plot_roc({name: (target["membership"], out.scores) for name, out in outputs.items()},
                       workdir / "roc.png", title=_title(config, part))
    reporting.write_text(workdir / "summary.md", summary_markdown(results))
    logging.info("Results in %s", workdir)
    return results


def _title(config: MembershipConfig, part: int) -> str:
    return (f"{config.dataset}: {part} members/model, {config.epochs} epochs, top-{config.num_posteriors}, "
            f"defence {config.defense}")


def _pct(x):
    return f"{100 * x:.2f}"


def summary_markdown(results: dict) -> str:
    """The seed's table shape (accuracies in %), then every attack with the modern metrics."""
    c = results["config"]
    t, s, a = results["target"], results["shadow"], results["attacks"]["shadow_mlp"]
    seed_row = reporting.markdown_table(
        ["Posteriors", "Epochs", "Target acc (%)", "Shadow acc (%)", "Attack (%) and metrics"],
        [[c["num_posteriors"], c["epochs"],
          f"Train = {_pct(t['train_acc'])} Test = {_pct(t['test_acc'])}",
          f"Train = {_pct(s['train_acc'])} Test = {_pct(s['test_acc'])}",
          f"Train = {_pct(results['attack_train_acc'])} Test = {_pct(a['accuracy'])} "
          f"Precision = {a['precision']:.2f} Recall = {a['recall']:.2f} F1 = {a['f1']:.2f}"]])
    rows = []
    for name, r in results["attacks"].items():
        tpr = r["tpr_at_fpr"]
        rows.append([name, _pct(r["accuracy"]), f"{r['precision']:.3f}", f"{r['recall']:.3f}",
                     f"{r['f1']:.3f}", f"{r['auc']:.4f}", _pct(tpr["0.01"]), _pct(tpr["0.001"]),
                     _pct(tpr["0.0"])])
    attacks_table = reporting.markdown_table(
        ["attack", "acc (%)", "precision", "recall", "F1", "AUC", "TPR@1%FPR (%)",
         "TPR@0.1%FPR (%)", "TPR@0%FPR (%)"], rows)
    d = results["data"]
    p = results.get("privacy")
    dp = (f"DP-SGD: noise multiplier {p['noise_multiplier']}, clip {c['dp_clip_norm']}, "
          f"{p['steps']} steps at sampling rate {p['sampling_rate']:.4f}: "
          f"**epsilon ~ {p['epsilon']:.2f}** at delta = {p['delta']:g} ({p['accountant']}).\n\n"
          if p else "")
    return (f"# Membership inference: {c['dataset']}\n\n{dp}"
            f"{d['members_per_model']} members per model, defence `{c['defense']}`, "
            f"{c['num_shadow']} shadow model(s), width x{c['width_scale']}, precision {c['precision']}; "
            f"attack tested on {d['attack_test_members']} members + {d['attack_test_non_members']} "
            f"non-members of the target. Backend: {results['backend']} ({', '.join(sorted(set(results['devices'])))}).\n\n"
            f"## Seed table shape\n\n{seed_row}\n## All attacks\n\n{attacks_table}")


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
    SeedCase("cifar10", 10, 30, "none", (100, 69.62), (99.98, 68.91), (70.26, 71.07, .78, .71, .69)),
    SeedCase("cifar10", 3, 30, "none", (99.99, 69.73), (99.98, 69.90), (68.88, 69.90, .79, .70, .67)),
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


def seed_table_markdown(rows: list[tuple[SeedCase, dict, str]]) -> str:
    """Our measured numbers next to the seed's, one line each; ``rows`` = (case, results, note)."""
    def fmt(train, test):
        return f"{train:.2f} / {test:.2f}"

    table = []
    for case, results, note in rows:
        t, s, a = results["target"], results["shadow"], results["attacks"]["shadow_mlp"]
        table.append([
            case.dataset, case.num_posteriors, case.epochs, "dropout+ES" if case.defense == _ES else "-",
            f"seed {fmt(*case.target)}<br>ours {fmt(100 * t['train_acc'], 100 * t['test_acc'])}",
            f"seed {fmt(*case.shadow)}<br>ours {fmt(100 * s['train_acc'], 100 * s['test_acc'])}",
            f"seed {case.attack[1]:.2f} / {case.attack[2]:.2f} / {case.attack[3]:.2f} / {case.attack[4]:.2f}"
            f"<br>ours {100 * a['accuracy']:.2f} / {a['precision']:.2f} / {a['recall']:.2f} / {a['f1']:.2f}",
            f"{a['auc']:.3f}", f"{100 * a['tpr_at_fpr']['0.001']:.2f}",
            f"{max(r['auc'] for r in results['attacks'].values()):.3f}", note,
        ])
    return reporting.markdown_table(
        ["dataset", "posteriors", "epochs", "defence", "target train / test (%)",
         "shadow train / test (%)", "attack test acc (%) / P / R / F1", "attack AUC",
         "TPR@0.1%FPR (%)", "best AUC (any attack)", "configuration"], table)


def privacy_curve(base: MembershipConfig, noise_multipliers: Sequence[float],
                  dataset: data.Dataset | None = None) -> dict[str, Any]:
    """The DP-SGD trade-off users ask for: one undefended run and one per noise multiplier.

    Each point is a full membership run in ``<base.workdir>/<name>/`` (finished
    ones are reused on rerun); writes ``privacy_curve.json``, ``privacy_curve.png``
    (attack AUC and TPR@0.1%FPR against epsilon and against target test accuracy)
    and ``privacy_curve.md`` to ``base.workdir``.
    """
    if not noise_multipliers or any(not s > 0 for s in noise_multipliers):
        raise ValueError(f"--noise_multipliers must be positive numbers, got {list(noise_multipliers)}.")
    workdir = check_workdir(base.workdir)
    if dataset is None:
        dataset = data.load_dataset(base.dataset, base.data_dir)
    # Two undefended baselines: the seed's BatchNorm CNN, and the GroupNorm CNN the DP runs use,
    # so the curve separates the effect of DP-SGD from that of the normalisation.
    runs = [("none", dataclasses.replace(base, defense="none", workdir=str(workdir / "none"))),
            ("none_groupnorm", dataclasses.replace(base, defense="none", norm="group",
                                                   workdir=str(workdir / "none_groupnorm")))]
    runs += [(f"dpsgd_sigma{s:g}", dataclasses.replace(
        base, defense="dpsgd", dp_noise_multiplier=float(s), workdir=str(workdir / f"dpsgd_sigma{s:g}")))
        for s in noise_multipliers]
    points = []
    for name, config in runs:
        done = pathlib.Path(config.workdir) / "results.json"
        if done.exists() and _same_config(reporting.read_json(done)["config"], config):
            results = reporting.read_json(done)
        else:
            results = run(config, dataset)
        privacy_info = results.get("privacy") or {}
        points.append({
            "name": name, "defense": config.defense,
            "noise_multiplier": privacy_info.get("noise_multiplier"),
            "epsilon": privacy_info.get("epsilon"),  # None: no DP
            "target_test_acc": results["target"]["test_acc"],
            "target_train_acc": results["target"]["train_acc"],
            "attacks": {a: {"auc": r["auc"], "tpr_at_0.1%fpr": r["tpr_at_fpr"]["0.001"],
                            "accuracy": r["accuracy"]} for a, r in results["attacks"].items()},
        })
        summary = {"config": dataclasses.asdict(base), "delta": base.dp_delta, "points": points}
        reporting.write_json(workdir / "privacy_curve.json", summary)
    reporting.plot_privacy_curve(points, workdir / "privacy_curve.png",
                                 title=f"{base.dataset}: DP-SGD against membership inference")
    reporting.write_text(workdir / "privacy_curve.md", privacy_curve_markdown(points, base.dp_delta))
    return summary


def _same_config(saved: dict, config: MembershipConfig) -> bool:
    """Whether a saved run is ``config``'s; fields newer than the saved run must be at default."""
    current = json.loads(json.dumps(dataclasses.asdict(config)))
    defaults = json.loads(json.dumps(dataclasses.asdict(MembershipConfig())))
    return all(saved[k] == v if k in saved else v == defaults[k] for k, v in current.items())


def privacy_curve_markdown(points: list[dict], delta: float) -> str:
    rows = []
    for p in points:
        eps = "no DP" if p["epsilon"] is None else f"{p['epsilon']:.2f}"
        a = p["attacks"]
        rows.append([p["name"], eps, _pct(p["target_train_acc"]), _pct(p["target_test_acc"]),
                     f"{a['shadow_mlp']['auc']:.3f}", f"{a['loss']['auc']:.3f}",
                     _pct(max(r["tpr_at_0.1%fpr"] for r in a.values()))])
    return (f"epsilon at delta = {delta:g}\n\n" + reporting.markdown_table(
        ["run", "epsilon", "target train (%)", "target test (%)", "shadow-MLP AUC", "loss AUC",
         "best TPR@0.1%FPR (%)"], rows))
