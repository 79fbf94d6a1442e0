"""Score membership attacks from logits computed anywhere (PyTorch, ...): no training here.

The models were trained elsewhere: a target and N >= 2 reference models, each on a known
subset of the candidates (``keep``). Their logits on the candidates, and for RMIA on a
population that no model trained on, are all a reference-family attack reads.
:class:`LogitsInputs` holds and checks them, :func:`read_inputs` reads them from an ``.npz``
(the format: ``docs/score_logits.md``), :func:`score` runs every attack of the registry those
inputs can feed (the audit's scoring, :mod:`jaxpet.experiments.audit`, without its training),
and :func:`run` writes the audit's outputs: results.json, summary.md, roc.png, scores.npz and
report.html. What the logits cannot feed is recorded as not available, with the reason: the
label-only attack (it needs label-only queries of the models), RMIA without a population,
and an attack whose reference sides (IN, OUT) the keep mask does not give.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, cast

import numpy as np

from jaxpet import calibration, config as config_lib, files, page, report, runs
from jaxpet.attacks import lira as lira_attack, reference, registry, rmia
from jaxpet.config import ConfigError, same_as, setting
from jaxpet.experiments import audit, settings


@dataclasses.dataclass(frozen=True)
class Config:
    """Where the logits are, where the outputs go, and the scoring knobs of the audit."""

    logits: str | None = setting(None, "The .npz of your models' logits (required): 'logits' "
                                 "[models, examples, (queries,) classes], 'labels' [examples], "
                                 "'keep' bool [models, examples] (which examples each model "
                                 "trained on), 'target' (the target model's index; the others "
                                 "are its references) and, for RMIA, 'population_logits' with "
                                 "'population_labels' on examples no model trained on. How to "
                                 "write it from PyTorch: docs/score_logits.md.")
    workdir: str = setting("runs/score", "Output folder.")
    rmia_signal: str = settings.rmia_signal()
    lira_convention: str = settings.lira_convention()
    rmia_convention: str = settings.rmia_convention()
    rmia_offline_a: float = same_as(reference.AttackConfig, "rmia_offline_a")
    fpr_rule: str = settings.fpr_rule()
    num_exposed: int = same_as(audit.Config, "num_exposed",
                               help="Most exposed training examples of the target listed.")

    def __post_init__(self):
        config_lib.check(self)


# No preset: every run's inputs are the user's own logits.
PRESETS: dict[str, dict[str, Any]] = {}

# The files a run writes besides config.json and results.json.
OUTPUTS = ("summary.md", "roc.png", "scores.npz")

# The .npz's arrays: the first four required, the population pair optional (RMIA needs it).
FIELDS = ("logits", "labels", "keep", "target", "population_logits", "population_labels")
REQUIRED = FIELDS[:4]
# The reference attacks that read the population (RMIA's).
POPULATION_ATTACKS = ("rmia_online", "rmia_offline", "rmia_offline_fitted_a")
# What fit_offline_a gives where it fits nothing: outside its grid in [0, 1], so never a fit.
_NOT_FITTED = -1.0


def summary_path(config: Config) -> str:
    return f"{config.workdir}/summary.md"


# ----------------------------------------------------------------------------- inputs


def _floats(name: str, value) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind != "f":
        raise ConfigError(f"{name} must be floating-point; got {array.dtype} — write "
                          f"{name}.astype(np.float32).")
    if array.ndim not in (3, 4) or 0 in array.shape:
        layout = "population" if name.startswith("population") else "examples"
        raise ConfigError(f"{name} must be [models, {layout}, classes] or [models, {layout}, "
                          f"queries, classes], none of them empty; got shape {array.shape}.")
    bad = ~np.isfinite(array)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ConfigError(f"{name} holds {int(bad.sum())} NaN or infinite values (the first at "
                          f"{name}[{', '.join(map(str, where))}]) — score finite logits only "
                          "(a diverged model's are not).")
    return array if array.ndim == 4 else array[:, :, None, :]


def _labels(name: str, value, count: int, of: str, classes: int) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "iu" or array.shape != (count,):
        raise ConfigError(f"{name} must be [{count}] integers (one class per {of} of the logits); "
                          f"got {array.dtype} of shape {array.shape}.")
    if count and (array.min() < 0 or array.max() >= classes):
        raise ConfigError(f"{name} must be in [0, {classes}) (the logits hold {classes} "
                          f"classes); got values from {array.min()} to {array.max()}.")
    return array.astype(np.int64)


@dataclasses.dataclass(frozen=True)
class LogitsInputs:
    """Every model's logits on the candidates, their labels and each model's membership, checked
    on construction (one :class:`~jaxpet.config.ConfigError` naming the array and the fix).

    ``logits`` float [models, examples, queries, classes] ([models, examples, classes] is
    taken as one query); ``labels`` int [examples]; ``keep`` bool [models, examples];
    ``target`` the target's model index, every other model one of its references;
    ``population_logits`` [models, population, (queries,) classes] with
    ``population_labels`` [population], examples no model trained on (RMIA's population),
    or neither.
    """

    logits: np.ndarray
    labels: np.ndarray
    keep: np.ndarray
    target: int = 0
    population_logits: np.ndarray | None = None
    population_labels: np.ndarray | None = None

    def __post_init__(self):
        logits = _floats("logits", self.logits)
        models, examples, queries, classes = logits.shape
        if models < 3:
            raise ConfigError(f"logits hold {models} model(s): a target and at least 2 "
                              "references are needed — add the logits of more reference models.")
        if classes < 2:
            raise ConfigError(f"logits hold {classes} class: a classifier's logits have one "
                              "entry per class, at least 2.")
        labels = _labels("labels", self.labels, examples, "example", classes)
        keep = np.asarray(self.keep)
        if keep.dtype != bool:
            raise ConfigError(f"keep must be boolean; got {keep.dtype} — write "
                              "keep.astype(bool).")
        if keep.shape != (models, examples):
            raise ConfigError(f"keep must be [models, examples] = [{models}, {examples}] as the "
                              f"logits; got shape {keep.shape}.")
        target = np.asarray(self.target)
        if target.ndim != 0 or target.dtype.kind not in "iu":
            raise ConfigError(f"target must be one integer, the target model's index; got "
                              f"{target.dtype} of shape {target.shape}.")
        if not 0 <= int(target) < models:
            raise ConfigError(f"target must be in [0, {models}) (the logits hold {models} "
                              f"models); got {int(target)}.")
        members = int(keep[int(target)].sum())
        if members in (0, examples):
            raise ConfigError(f"keep[{int(target)}] (the target's) marks {members} of {examples} "
                              "examples as members: the attacks need members and non-members "
                              "of the target among the examples.")
        population, population_labels = self.population_logits, self.population_labels
        if (population is None) != (population_labels is None):
            given, missing = (("population_logits", "population_labels") if population_labels
                              is None else ("population_labels", "population_logits"))
            raise ConfigError(f"{given} needs {missing} (RMIA reads both) — add {missing} or "
                              f"drop {given}.")
        if population is not None:
            population = _floats("population_logits", population)
            if np.ndim(self.population_logits) != np.ndim(self.logits) or (
                    population.shape[0], *population.shape[2:]) != (models, queries, classes):
                raise ConfigError(
                    f"population_logits must be laid out as the logits, with their models, "
                    f"queries and classes ({models}, {queries}, {classes}); got shape "
                    f"{np.shape(self.population_logits)} beside logits "
                    f"{np.shape(self.logits)}.")
            population_labels = _labels("population_labels", population_labels,
                                        population.shape[1], "population example", classes)
        for name, value in (("logits", logits), ("labels", labels), ("keep", keep),
                            ("target", int(target)), ("population_logits", population),
                            ("population_labels", population_labels)):
            object.__setattr__(self, name, value)

    @property
    def num_models(self) -> int:
        return self.logits.shape[0]

    @property
    def num_queries(self) -> int:
        return self.logits.shape[2]

    @property
    def order(self) -> np.ndarray:
        """The models' indices with the target first, the references after in their order."""
        return np.r_[self.target, np.delete(np.arange(self.num_models), self.target)]


def read_inputs(path) -> LogitsInputs:
    """The :class:`LogitsInputs` of an ``.npz`` (read whole, checksums checked, never
    unpickled); any problem is one ConfigError naming ``--logits`` and the fix."""
    flag = f"--logits={path}"
    if not pathlib.Path(path).is_file():
        raise ConfigError(f"{flag} does not exist or is not a file — give the .npz of your "
                          "models' logits (docs/score_logits.md).")
    try:
        arrays = files.read_npz(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{flag} cannot be read: {e} — write it with np.savez "
                          "(docs/score_logits.md).") from e
    missing = [name for name in REQUIRED if name not in arrays]
    unknown = sorted(set(arrays) - set(FIELDS))
    if missing or unknown:
        what = (f"has no {', '.join(repr(n) for n in missing)}" if missing else "")
        if unknown:
            what += (f"{' and ' if what else ''}holds {', '.join(repr(n) for n in unknown)}, "
                     "which is not one of its arrays")
        raise ConfigError(f"{flag} {what} — it must hold {', '.join(REQUIRED)} and optionally "
                          f"population_logits with population_labels (docs/score_logits.md).")
    try:
        return LogitsInputs(**cast(dict[str, Any], arrays))  # checked there, target included
    except ConfigError as e:
        raise ConfigError(f"{flag}: {e}") from e


# ----------------------------------------------------------------------------- scoring


@dataclasses.dataclass(frozen=True)
class Scored(audit.Scored):
    """The audit's scored attacks (:class:`jaxpet.experiments.audit.Scored`: row 0 of ``keep``
    the target's membership), with the input's model index of each row of ``keep`` and the
    attacks these logits cannot feed (name -> reason)."""

    order: np.ndarray
    not_available: dict[str, str]


def attack_config(config: Config, inputs: LogitsInputs) -> reference.AttackConfig:
    return config_lib.pick(config, reference.AttackConfig, num_queries=inputs.num_queries)


def runnable(signals: lira_attack.Signals, keep: np.ndarray) -> tuple[list[str], dict[str, str]]:
    """(the reference attacks these signals and this keep mask (row 0 the target) can feed,
    every other one with the reason it is not available)."""
    skipped: dict[str, str] = {}
    references = keep[1:]
    sides = {"in": references.any(0).any(), "out": (~references).any(0).any()}
    names = []
    for name in registry.attack_names("reference"):
        attack = registry.get_attack(name)
        lacking = [side for side in attack.compares if not sides[side]]
        if not attack.runs_on(signals):
            skipped[name] = ("it needs each model's predicted labels on augmented queries "
                             "(label-only queries), which logits do not give")
        elif name in POPULATION_ATTACKS and signals.population_log_p is None:
            skipped[name] = ("it needs population_logits and population_labels (every model's "
                             "logits on examples none of them trained on)")
        elif lacking:
            skipped[name] = (f"it compares each example with {lacking[0].upper()} references, "
                             f"and no reference is {lacking[0].upper()} for any example")
        else:
            names.append(name)
    skipped.update(reference.not_available(names, references, None, keep[0]))
    return [n for n in names if n not in skipped], skipped


def fitted_a(signals: lira_attack.Signals, keep: np.ndarray,
             attack_config: reference.AttackConfig) -> float | None:
    """RMIA offline's a as rmia_offline_fitted_a fits it on the references' scores of the
    examples (each of two references plays the target in turn), or None where no reference
    has members and non-members among the examples to fit it on."""
    x, population = signals.queries(attack_config.num_queries).rmia
    assert population is not None
    a = rmia.fit_offline_a(x[1:], keep[1:], population[1:], gamma=attack_config.rmia_gamma,
                           conv=attack_config.rmia_convention, fallback=_NOT_FITTED)
    return None if a == _NOT_FITTED else a


def score(inputs: LogitsInputs, config: Config = Config()) -> Scored:
    """The target scored by its references with every attack the inputs can feed, as the audit
    scores its target: the metrics, the calibration check (the first reference scored as the
    target by the others, :func:`jaxpet.experiments.audit.self_check`) and the members the
    ranking attack (LiRA) finds most exposed. Arrays only: no file is read or written."""
    order = inputs.order
    keep = inputs.keep[order]
    population = None if inputs.population_logits is None else inputs.population_logits[order]
    signals = lira_attack.Signals.from_logits(inputs.logits[order], inputs.labels, population,
                                              inputs.population_labels,
                                              rmia_signal=config.rmia_signal)
    knobs = attack_config(config, inputs)
    names, skipped = runnable(signals, keep)
    a = None
    if "rmia_offline_fitted_a" in names:
        a = fitted_a(signals, keep, knobs)
        if a is None:
            names.remove("rmia_offline_fitted_a")
            skipped["rmia_offline_fitted_a"] = (
                "no reference has both members and non-members among the examples to fit a on "
                f"(rmia_offline scores them with the fixed a = {config.rmia_offline_a:g})")
    # The a fitted here is the one the attack fits itself (the same references and scores);
    # the calibration check fits its own on its references, as the audit's does.
    scores = reference.attack_scores(
        signals, keep, 0, list(range(1, inputs.num_models)),
        knobs if a is None else dataclasses.replace(knobs, rmia_fitted_a=a), attacks=names)
    attacks = {name: reference.attack_metrics(keep[0], s, fpr_rule=config.fpr_rule)
               for name, s in scores.items()}
    check = audit.self_check(signals, keep, keep[0], knobs, names)
    ranking = next((n for n in ("lira_online", "lira_offline") if n in scores), names[0])
    return Scored(scores, keep, attacks, a, check, ranking,
                  audit._most_exposed(scores[ranking], keep[0], config.num_exposed),
                  order=order, not_available=skipped)


# ----------------------------------------------------------------------------- the run


def refuse_unused(config: Config, inputs: LogitsInputs) -> None:
    """Refuses RMIA's settings where no attack reads them (no population)."""
    if inputs.population_logits is None:
        config_lib.refuse_no_effect(
            config, ("rmia_signal", "rmia_convention", "rmia_offline_a"),
            f"--logits={config.logits} holds no population_logits, so RMIA does not run")


def run(config: Config, inputs: LogitsInputs | None = None) -> dict[str, Any]:
    """Scores the logits of ``config.logits`` (or ``inputs``, arrays from Python:
    :func:`jaxpet.score_logits`); writes results.json, summary.md, roc.png, scores.npz (every
    example's scores) and report.html."""
    if config.logits is None and inputs is None:
        raise ConfigError("--logits is required: the .npz of your models' logits "
                          "(docs/score_logits.md).")
    with runs.Run(config.workdir, config, outputs=OUTPUTS, on_finish=page.write_page) as run_:
        inputs = inputs if inputs is not None else read_inputs(config.logits)
        refuse_unused(config, inputs)
        with run_.timed("scoring"):
            scored = score(inputs, config)
        results = run_.finish(_results(config, inputs, scored))
        _write_outputs(run_.path, config, inputs, scored, results)
        return results


def _results(config: Config, inputs: LogitsInputs, scored: Scored) -> dict:
    """results.json's figures (run_.finish adds the config and the provenance)."""
    population = inputs.population_logits
    return {
        "data": {"source": config.logits,
                 "digest": files.digest({f: getattr(inputs, f) for f in FIELDS}),
                 "models": inputs.num_models, "target_model": inputs.target,
                 "references": inputs.num_models - 1, "examples": inputs.logits.shape[1],
                 "queries": inputs.num_queries, "num_classes": inputs.logits.shape[3],
                 "target_members": int(scored.keep[0].sum()),
                 "reference_members": float(scored.keep[1:].sum(1).mean()),
                 "population_size": None if population is None else population.shape[1]},
        "attacks": scored.attacks,
        "not_available": scored.not_available,
        "rmia_fitted_a": scored.fitted_a,
        "calibration": scored.check,
        "most_exposed": [{"index": int(i), "score": float(scored.ranked[i]),
                          "attack": scored.ranking} for i in scored.exposed],
    }


def _write_outputs(path, config: Config, inputs: LogitsInputs, scored: Scored,
                   results: dict) -> None:
    """scores.npz (the audit's arrays, ``models``: the input's index of each row of ``keep``),
    roc.png and summary.md."""
    target_keep = scored.keep[0]
    files.write_npz(path / "scores.npz", indices=np.arange(len(target_keep)),
                    membership=target_keep, keep=scored.keep, models=scored.order,
                    labels=inputs.labels,
                    **{f"score_{name}": s for name, s in scored.scores.items()})
    files.save_figure(report.roc_figure(
        {name: (target_keep, s) for name, s in scored.scores.items()},
        title=f"model {inputs.target} scored by {inputs.num_models - 1} references"),
        path / "roc.png")
    files.write_text(summary_path(config), summary_markdown(results))


def summary_markdown(results: dict) -> str:
    """Every attack's AUC and TPR at low FPR, those not available and why, the calibration
    check and the most exposed examples."""
    c, d = results["config"], results["data"]
    exposed = report.markdown_table(["example", f"{results['most_exposed'][0]['attack']} score"],
                                    [[e["index"], f"{e['score']:.4g}"]
                                     for e in results["most_exposed"]])
    missing = "".join(f"- `{name}`: {why}.\n" for name, why in results["not_available"].items())
    missing = f"\nNot available from these inputs:\n\n{missing}\n" if missing else "\n"
    fitted = ("" if results.get("rmia_fitted_a") is None else
              f"rmia_offline_fitted_a used a = {results['rmia_fitted_a']:g}, fitted on the "
              "references' scores of the examples (each of two plays the target in turn).\n\n")
    population = ("no RMIA population" if d["population_size"] is None else
                  f"RMIA population {d['population_size']} examples")
    return (f"# Membership attacks on model {d['target_model']} of `{d['source']}`\n\n"
            f"Scored from logits computed outside jaxpet (nothing trained here). Target: model "
            f"{d['target_model']}, {d['target_members']} members of {d['examples']} examples; "
            f"{d['references']} reference models with {d['reference_members']:.1f} members "
            f"each (mean); {population}; {d['queries']} quer"
            f"{'ies' if d['queries'] > 1 else 'y'} per example, {d['num_classes']} classes; "
            f"LiRA convention {c['lira_convention']}, RMIA convention {c['rmia_convention']}, "
            f"TPR at FPR {'<' if c['fpr_rule'] == 'lt' else '<='} level. Backend "
            f"{results['provenance']['backend']}.\n\n"
            f"## Attacks\n\n{report.attack_table(results['attacks'])}{missing}{fitted}"
            "'ties random' breaks a block of tied scores straddling the level at random, so "
            "that the FPR is the level exactly.\n\n"
            f"{calibration.markdown(results.get('calibration'))}"
            f"## Most exposed training examples\n\n{exposed}")
