"""Scoring reference-family membership attacks: leave-one-out over models, metrics, reference
sweeps.

Each model of an ensemble in turn is the target and the others its reference
models (:func:`leave_one_out`); :func:`reference_sweep` repeats it with fewer
references. The attacks are looked up by name in the registry, so one added
there is scored here (and by the LiRA experiment) without further changes.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import time
from typing import Any

from absl import logging
import numpy as np

from jaxpet import metrics
from jaxpet.attacks import registry
from jaxpet.attacks.lira import CONVENTIONS, Signals, equalized_use
from jaxpet.attacks.rmia import CONVENTIONS as RMIA_CONVENTIONS
from jaxpet.attacks.signals import negative_loss
from jaxpet.config import check, setting


@registry.register("global_loss", family="reference", uses_references=False,
                   description="Yeom et al.'s loss baseline: the target's log p_y, "
                               "no reference used")
def global_loss(signals: Signals, target, references, ref_keep, use, config) -> np.ndarray:
    """The global-threshold baseline: minus the target's loss, averaged over queries."""
    del references, ref_keep, use, config
    return negative_loss(np.asarray(signals.log_p[target], np.float64))


def _resolve(attacks: Sequence[str] | None) -> list[registry.MembershipAttack]:
    """The registry's reference attacks named in ``attacks`` (None: all); ValueError on unknown
    names."""
    if attacks is None:
        return list(registry.list_attacks("reference"))
    if isinstance(attacks, str):
        raise TypeError(f"attacks must be a sequence of names, got the str {attacks!r}.")
    return [registry.get_attack(name, "reference") for name in attacks]


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """Knobs of the scoring (not of training): queries used, RMIA's a and gamma, LiRA's
    convention (:data:`jaxpet.attacks.lira.CONVENTIONS`) and the FPR rule of TPR@FPR
    (:data:`jaxpet.metrics.FPR_RULES`: "le" counts FPR <= level, "lt" FPR < level as LiRA's
    plotting code does)."""

    num_queries: int = 2  # 1: the original image only; 2: also its horizontal flip
    rmia_offline_a: float = setting(0.3, "RMIA offline: a in Pr(x) = ((1 + a) Pr_OUT(x) + "
                                    "(1 - a)) / 2 (rmia_offline_fitted_a fits it instead).",
                                    low=0, high=1)
    rmia_gamma: float = setting(2.0, "RMIA: x dominates z when its likelihood ratio against z "
                                "is at least gamma.", low=0, low_open=True)
    lira_convention: str = setting(
        "paper",
        "How LiRA fits its Gaussians: paper (means, unbiased variances, the fixed variance "
        "pooled within examples, one-sided offline test: Carlini et al. 2022 as written) or code "
        "(medians, population variances, one global std of all IN scores, two-sided offline: the "
        "authors' released plotting code).",
        choices=tuple(CONVENTIONS))
    fpr_rule: str = setting(
        "le",
        "TPR at FPR counts thresholds with FPR <= the level (le) or < it (lt, LiRA's plotting "
        "code).",
        choices=metrics.FPR_RULES)
    rmia_convention: str = setting(
        "paper",
        "How RMIA (Zarifzadeh et al., ICML 2024) estimates Pr(x) and combines the queries: paper "
        "(Pr(x) the references' mean, x dominates z when LR >= gamma, the fraction of z "
        "dominated averaged over queries: the paper as written) or code (20% trimmed means over "
        "the references, LR > gamma, and per (x, z) pair a majority vote over queries, x "
        "dominating z on more than half of them: the authors' released code, "
        "privacytrustlab/ml_privacy_meter research/2024_rmia/main.py). --rmia_offline_a applies "
        "to both; the released CIFAR-10 configs use 0.3.",
        choices=tuple(RMIA_CONVENTIONS))
    # rmia_offline_fitted_a's a when it was fitted beforehand, where the references' members
    # are (None: fitted on the references' scores of the candidates, the usual case).
    rmia_fitted_a: float | None = None

    def __post_init__(self):
        if self.num_queries < 1:
            raise ValueError(f"num_queries must be >= 1, got {self.num_queries}.")
        if self.rmia_fitted_a is not None and not 0 <= self.rmia_fitted_a <= 1:
            raise ValueError(f"rmia_fitted_a must be in [0, 1], got {self.rmia_fitted_a}.")
        check(self)


def attack_scores(signals: Signals, keep, target: int, references: Sequence[int] | np.ndarray,
                  config: AttackConfig = AttackConfig(), *, use=None,
                  attacks: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Scores [N] of each attack on model ``target`` with models ``references`` as references.

    ``attacks`` names reference-family attacks of the registry (default: all of them,
    in registration order); ``use`` (bool [len(references), N]) picks the reference
    scores used, default all.
    """
    keep = np.asarray(keep, bool)
    references = np.asarray(references, np.int64)
    if keep.shape != signals.phi.shape[:2]:
        raise ValueError(f"keep mask {keep.shape} must be [models, examples] = "
                         f"{signals.phi.shape[:2]}.")
    if not 0 <= target < keep.shape[0]:
        raise ValueError(f"target must be in [0, {keep.shape[0]}), got {target}.")
    if len(references) < 1 or target in references or references.min() < 0 \
            or references.max() >= keep.shape[0] \
            or len(set(references.tolist())) != len(references):
        raise ValueError(f"references must be distinct models in [0, {keep.shape[0]}) other than "
                         f"the target {target}, got {references.tolist()}.")
    chosen = _resolve(attacks)
    if attacks is None:  # every attack whose inputs these signals carry
        chosen = [a for a in chosen if a.runs_on(signals)]
    s = signals.queries(min(config.num_queries, signals.phi.shape[2]))
    ref_keep = keep[references]
    if use is not None and np.shape(use) != ref_keep.shape:
        raise ValueError(f"use mask must be {ref_keep.shape} (references, examples), got "
                         f"{np.shape(use)}.")
    missing = not_available([a.name for a in chosen], ref_keep, use, keep[target])
    if missing and attacks is not None:
        name, why = next(iter(missing.items()))
        raise ValueError(f"{name} is not available here: {why}.")
    return {a.name: a.fn(s, target, references, ref_keep, use, config) for a in chosen
            if a.name not in missing}


def not_available(attacks: Sequence[str], ref_keep, use=None, target_keep=None,
                  ) -> dict[str, str]:
    """The attacks of ``attacks`` whose figure would mean nothing with these references
    (``ref_keep`` [M, N], ``use`` as in :func:`attack_scores`) and this target's membership
    ``target_keep`` [N], each with the reason.

    An attack compares each example with the reference sides of its ``compares`` (IN and OUT
    online, OUT offline); an example lacking one is scored by the attack's fallback. That is
    harmless while which examples fall back is unrelated to the target's membership (a
    random subset of references), and meaningless when it follows it: two models, each the
    other's only reference, give every member of one the fallback for "no IN" and every
    non-member the one for "no OUT", and an AUC far below chance. Refused when the lack of a
    side and the target's membership correlate by more than 0.5 in absolute value."""
    ref_keep = np.asarray(ref_keep, bool)
    used = np.ones_like(ref_keep) if use is None else np.asarray(use, bool)
    lacks = {"in": ~(ref_keep & used).any(0), "out": ~(~ref_keep & used).any(0)}
    out: dict[str, str] = {}
    if target_keep is None:
        return out
    member = np.asarray(target_keep, np.float64)
    for name in attacks:
        for side in registry.get_attack(name).compares:
            lack = lacks[side].astype(np.float64)
            if lack.std() == 0 or member.std() == 0:
                continue
            corr = float(np.corrcoef(lack, member)[0, 1])
            if abs(corr) > 0.5:
                out[name] = (f"which examples have no {side.upper()} reference follows the "
                             f"target's membership (correlation {corr:+.2f}), so the attack's "
                             "fallback, not the model, would tell members from non-members — "
                             "use more references, each example IN some and OUT others")
                break
    return out


def attack_metrics(labels, scores, fpr_levels: Sequence[float] = metrics.FPR_LEVELS,
                   fpr_rule: str = "le") -> dict:
    """AUC, balanced accuracy at the best threshold and TPR at each FPR level: by thresholds
    on the score (``tpr_at_fpr``) and with ties broken at random (``tpr_at_fpr_randomized``,
    :func:`jaxpet.metrics.tpr_at_fpr_randomized`; they differ only where scores tie)."""
    fpr, tpr, _ = metrics.roc_curve(labels, scores)
    return {"auc": metrics.roc_auc(labels, scores),
            "balanced_accuracy": float(np.max(1 - (fpr + (1 - tpr)) / 2)),
            "tpr_at_fpr": metrics.tpr_at_fpr(labels, scores, fpr_levels, rule=fpr_rule),
            "tpr_at_fpr_randomized": metrics.tpr_at_fpr_randomized(labels, scores, fpr_levels)}


def _flatten(report: dict) -> dict[str, float]:
    flat = {"auc": report["auc"], "balanced_accuracy": report["balanced_accuracy"]}
    flat.update({f"tpr_at_fpr_{k}": v for k, v in report["tpr_at_fpr"].items()})
    flat.update({f"tpr_at_fpr_randomized_{k}": v
                 for k, v in report.get("tpr_at_fpr_randomized", {}).items()})
    return flat


def summarize(per_target: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Mean and std over targets of each metric in :func:`attack_metrics` reports."""
    flats = [_flatten(r) for r in per_target]
    return {k: {"mean": float(np.mean([f[k] for f in flats])),
                "std": float(np.std([f[k] for f in flats]))} for k in flats[0]}


def _check_keep(signals: Signals, keep) -> np.ndarray:
    keep = np.asarray(keep)
    if keep.ndim != 2 or keep.shape != signals.phi.shape[:2]:
        raise ValueError(f"keep mask {keep.shape} must be [models, examples] = "
                         f"{signals.phi.shape[:2]}.")
    if keep.shape[0] < 2:
        raise ValueError(f"Leave-one-out needs num_models >= 2 (a target and a reference), "
                         f"got {keep.shape[0]}.")
    return keep.astype(bool)


def _targets(num_models: int, targets) -> list[int]:
    targets = list(range(num_models)) if targets is None else [int(t) for t in targets]
    if not targets or min(targets) < 0 or max(targets) >= num_models:
        raise ValueError(f"targets must be models in [0, {num_models}), got {targets}.")
    return targets


def _choose_references(num_models: int, target: int, count: int | None, seed: int) -> np.ndarray:
    """Positions among the other models (all of them, or ``count`` drawn at random)."""
    if count is None or count == num_models - 1:
        return np.arange(num_models - 1)
    rng = np.random.default_rng([seed, target, count])
    return np.sort(rng.choice(num_models - 1, count, replace=False))


def leave_one_out(signals: Signals, keep, *, targets: Sequence[int] | None = None,
                  num_references: int | None = None, config: AttackConfig = AttackConfig(),
                  attacks: Sequence[str] | None = None, seed: int = 0,
                  keep_scores_of: int | None = None) -> dict:
    """Each model of ``targets`` (default all) in turn is the target; the others are references.

    The IN/OUT groups of the K-1 others are first equalized (:func:`equalized_use`);
    ``num_references`` < K-1 then keeps that many of them, drawn at random (seeded by
    ``seed``, the target and the count). Equalizing first makes each example's IN/OUT
    counts independent of the target's membership for every subset size. ``attacks``
    as in :func:`attack_scores` (default: every reference attack). Returns
    ``per_target`` (attack -> list of :func:`attack_metrics`), ``summary`` (attack ->
    metric -> mean/std over targets) and, for target ``keep_scores_of``, its ``scores``
    and ``labels``.
    """
    keep = _check_keep(signals, keep)
    num_models = keep.shape[0]
    targets = _targets(num_models, targets)
    if num_references is not None and not 1 <= num_references <= num_models - 1:
        raise ValueError(f"num_references must be in [1, {num_models - 1}], got {num_references}.")
    attacks = [a.name for a in _resolve(attacks) if attacks is not None or a.runs_on(signals)]
    per_target: dict[str, list] = {name: [] for name in attacks}
    result: dict[str, Any] = {"not_available": {}}
    for t in targets:
        others = np.array([k for k in range(num_models) if k != t])
        use = equalized_use(keep[others], seed=[seed, t])
        if min((keep[others] & use).sum(0).min(), (~keep[others] & use).sum(0).min()) < 1:
            raise ValueError(
                f"Leave-one-out cannot give every example both IN and OUT references among the "
                f"{num_models - 1} models other than model {t}, so which references an example "
                "gets would depend on the target's membership and every attack would be "
                "miscalibrated; with a balanced keep mask use at least 4 models.")
        chosen = _choose_references(num_models, t, num_references, seed)
        missing = not_available(attacks, keep[others[chosen]], use[chosen], keep[t])
        result["not_available"].update(missing)
        scores = attack_scores(signals, keep, t, others[chosen], config, use=use[chosen],
                               attacks=[a for a in attacks if a not in missing])
        for name, s in scores.items():
            per_target[name].append(attack_metrics(keep[t], s, fpr_rule=config.fpr_rule))
        if t == keep_scores_of:
            result["scores"], result["labels"] = scores, keep[t]
    # An attack not available for some target is not reported: a mean over the other targets
    # would be a figure of another setting.
    per_target = {name: reports for name, reports in per_target.items()
                  if name not in result["not_available"]}
    result["per_target"] = per_target
    result["summary"] = {name: summarize(reports) for name, reports in per_target.items()}
    result["targets"] = targets
    return result


def sweep_counts(num_models: int, max_references: int | None = None) -> list[int]:
    """Reference counts 1, 2, 4, ... below the largest, then the largest (default K-1)."""
    if num_models < 2:
        raise ValueError(f"A reference sweep needs num_models >= 2, got {num_models}.")
    top = num_models - 1 if max_references is None else min(max_references, num_models - 1)
    if top < 1:
        raise ValueError(f"max_references must be >= 1, got {max_references}.")
    counts, c = [], 1
    while c < top:
        counts.append(c)
        c *= 2
    return counts + [top]


def reference_sweep(signals: Signals, keep, counts: Sequence[int], *, targets=None,
                    config: AttackConfig = AttackConfig(), seed: int = 0) -> list[dict]:
    """:func:`leave_one_out` summaries for each number of references in ``counts``.

    Covers every registered reference attack that uses the references.
    """
    attacks = [a.name for a in registry.list_attacks("reference")
               if a.uses_references and a.runs_on(signals)]
    rows = []
    for count in counts:
        tick = time.perf_counter()
        res = leave_one_out(signals, keep, targets=targets, num_references=count, config=config,
                            attacks=attacks, seed=seed)
        rows.append({"num_references": int(count), "attacks": res["summary"],
                     "not_available": res["not_available"]})
        logging.info("Sweep: %d reference model(s) scored in %.1fs; %s", count,
                     time.perf_counter() - tick, ", ".join(
                         f"{name} AUC {s['auc']['mean']:.4f}" for name, s in
                         list(res["summary"].items())[:1]) or "no attack available")
    return rows
