"""LiRA (Carlini et al., S&P 2022) and RMIA (Zarifzadeh et al., ICML 2024) from saved logits.

Two halves:

* Pure numpy attacks. Every model's logits on a pool of candidates (and their
  augmented queries, e.g. a horizontal flip) are turned once into per-model
  signals (:class:`Signals`); each attack then scores one target model from
  the signals of a set of reference models whose membership is known
  (``keep``). :func:`leave_one_out` makes every model the target in turn,
  with all others as references; :func:`reference_sweep` repeats it with
  fewer references.
* The experiment: :func:`train_and_save_logits` trains all N models in one
  vmapped call on a balanced keep mask and saves their logits once
  (``logits.npz``, reused on rerun); :func:`run` scores every attack and
  writes the results. ``experiments/lira.py`` only parses flags.

Array layout: logits ``[K, N, A, C]`` (models, examples, queries, classes);
signals ``[K, N, A]``; keep masks bool ``[K, N]``. Every score is oriented so
that higher means "more likely a member".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import shutil
import time
from typing import Any, Sequence

from absl import logging
import jax
import numpy as np
from scipy import special

from jaxpet import data, membership, metrics, models, privacy, reporting, splits, training

# FPR levels reported for every attack (0.01% is resolvable only with >= 10,000 non-members).
FPR_LEVELS = (0.01, 0.001, 0.0001, 0.0)
ATTACKS = ("lira_online", "lira_online_fixed_variance", "lira_offline",
           "lira_offline_fixed_variance", "rmia_online", "rmia_offline", "global_loss")
DEFENSES = ("none", "dpsgd")
DATASETS = ("cifar10", "mnist")
_MIN_STD = 1e-6  # floor on fitted standard deviations (a reference set of identical scores)


# --------------------------------------------------------------------------- signals


def _labels_for(logits: np.ndarray, labels) -> np.ndarray:
    labels = np.asarray(labels)
    if logits.ndim < 1 or logits.shape[-1] < 2:
        raise ValueError(f"logits need a class axis of size >= 2, got shape {logits.shape}.")
    try:
        labels = np.broadcast_to(labels, logits.shape[:-1])
    except ValueError:
        raise ValueError(f"labels of shape {labels.shape} do not broadcast to the logits' "
                         f"{logits.shape[:-1]} (logits without the class axis).") from None
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= logits.shape[-1]:
        raise ValueError(f"labels must be in [0, {logits.shape[-1]}), got "
                         f"{labels.min()}..{labels.max()}.")
    return labels.astype(np.int64)[..., None]


def true_class_log_prob(logits, labels) -> np.ndarray:
    """log softmax(logits)[label], float64; ``labels`` broadcast to ``logits.shape[:-1]``."""
    logits = np.asarray(logits, np.float64)
    y = _labels_for(logits, labels)
    return np.take_along_axis(logits, y, -1)[..., 0] - special.logsumexp(logits, axis=-1)


def logit_scaled_confidence(logits, labels) -> np.ndarray:
    """LiRA's phi = log p_y - log sum_{j != y} p_j, computed from logits without forming p.

    Equal to ``z_y - logsumexp_{j != y} z_j``: the softmax normaliser cancels, so the
    result stays finite even when p_y rounds to 1 in float32 (a memorised example).
    """
    logits = np.asarray(logits, np.float64)
    y = _labels_for(logits, labels)
    others = logits.copy()
    np.put_along_axis(others, y, -np.inf, axis=-1)
    return np.take_along_axis(logits, y, -1)[..., 0] - special.logsumexp(others, axis=-1)


@dataclasses.dataclass(frozen=True)
class Signals:
    """Per-model signals of every candidate and population example, computed once from logits.

    ``phi``: logit-scaled confidence (LiRA), ``log_p``: log probability of the true class
    (RMIA, loss baseline), both ``[K, N, A]``; ``population_log_p`` ``[K, Z, A]`` on RMIA's
    reference population (examples no model trained on), or None.
    """

    phi: np.ndarray
    log_p: np.ndarray
    population_log_p: np.ndarray | None = None

    @property
    def num_models(self) -> int:
        return self.phi.shape[0]

    @classmethod
    def from_logits(cls, logits, labels, population_logits=None, population_labels=None) -> "Signals":
        """``logits`` [K, N, A, C] with ``labels`` [N]; the population alike ([K, Z, A, C], [Z])."""
        logits = np.asarray(logits)
        if logits.ndim != 4:
            raise ValueError(f"logits must be [models, examples, queries, classes], got shape "
                             f"{logits.shape}.")
        labels = np.asarray(labels)
        if labels.shape != (logits.shape[1],):
            raise ValueError(f"labels must be [{logits.shape[1]}] (one per example), got shape "
                             f"{labels.shape}.")
        population = None
        if population_logits is not None:
            population_logits = np.asarray(population_logits)
            population_labels = np.asarray(population_labels)
            if population_logits.ndim != 4 or population_logits.shape[0] != logits.shape[0] \
                    or population_logits.shape[2:] != logits.shape[2:]:
                raise ValueError(f"population logits {population_logits.shape} must be [K, Z, A, C] "
                                 f"with K, A, C as the candidates' {logits.shape}.")
            if population_labels.shape != (population_logits.shape[1],):
                raise ValueError(f"population labels must be [{population_logits.shape[1]}], "
                                 f"got shape {population_labels.shape}.")
            population = true_class_log_prob(population_logits, population_labels[:, None])
        return cls(phi=logit_scaled_confidence(logits, labels[:, None]),
                   log_p=true_class_log_prob(logits, labels[:, None]), population_log_p=population)

    def queries(self, num: int) -> "Signals":
        """The first ``num`` queries only (e.g. 1: the original image without its flip)."""
        if not 1 <= num <= self.phi.shape[2]:
            raise ValueError(f"num queries must be in [1, {self.phi.shape[2]}], got {num}.")
        pop = None if self.population_log_p is None else self.population_log_p[:, :, :num]
        return Signals(self.phi[:, :, :num], self.log_p[:, :, :num], pop)


# --------------------------------------------------------------------------- reference statistics


def _check_reference(target, ref, ref_keep, use=None):
    """Validated float64 target [N, A], references [M, N, A] and their (IN, OUT) masks [M, N]."""
    target = np.asarray(target, np.float64)
    ref = np.asarray(ref, np.float64)
    ref_keep = np.asarray(ref_keep)
    if target.ndim != 2:
        raise ValueError(f"target scores must be [examples, queries], got shape {target.shape}.")
    if ref.ndim != 3 or ref.shape[1:] != target.shape:
        raise ValueError(f"reference scores must be [models, {target.shape[0]}, {target.shape[1]}] "
                         f"to match the target's {target.shape}, got shape {ref.shape}.")
    if ref_keep.shape != ref.shape[:2]:
        raise ValueError(f"reference keep mask must be {ref.shape[:2]} (models, examples), "
                         f"got shape {ref_keep.shape}.")
    if ref.shape[0] < 1:
        raise ValueError("At least one reference model is needed.")
    keep = ref_keep.astype(bool)
    use = np.ones_like(keep) if use is None else np.asarray(use, bool)
    if use.shape != keep.shape:
        raise ValueError(f"use mask must be {keep.shape} like the keep mask, got shape {use.shape}.")
    return target, ref, keep & use, ~keep & use


def equalized_use(ref_keep, seed: int | Sequence[int] = 0) -> np.ndarray:
    """Bool [M, N]: which reference scores to use so every example has equally many IN and OUT.

    Each example keeps only as many IN (and OUT) references as the example with the
    fewest has, chosen at random per example (Carlini et al.'s code keeps the first
    ones, which is fine for all K-1 references but not for subsets of them). In
    leave-one-out on a balanced keep mask the other models hold one IN reference fewer
    exactly when the target trained on the example; without equalizing, that count (and
    so the noise of the fitted statistics) would tell membership. With a random drop,
    which references serve as IN or OUT is independent of the target's membership, for
    any subset of them. A group that some example lacks entirely is not capped.
    """
    ref_keep = np.asarray(ref_keep, bool)
    rng = np.random.default_rng(seed)
    use = np.zeros_like(ref_keep)
    for mask in (ref_keep, ~ref_keep):
        cap = int(mask.sum(0).min())
        if cap < 1:
            use |= mask
            continue
        priority = np.where(mask, rng.random(mask.shape), np.inf)
        rank = np.argsort(np.argsort(priority, axis=0), axis=0)
        use |= mask & (rank < cap)
    return use


def _group_moments(values, mask):
    """Per-example mean and unbiased variance [N, A] over the rows in ``mask``; NaN if undefined."""
    w = mask.astype(np.float64)[:, :, None]
    n = w.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (w * values).sum(0) / n
        var = (w * (values - np.nan_to_num(mean)) ** 2).sum(0) / (n - 1)
    return n, np.where(n >= 1, mean, np.nan), np.where(n >= 2, var, np.nan)


def _pooled_std(values, masks) -> np.ndarray:
    """Global std per query [A]: within-example deviations pooled over examples and groups.

    Falls back to the std of all selected scores when no example has two in a group.
    """
    sq = dof = 0.0
    for mask in masks:
        n, mean, _ = _group_moments(values, mask)
        w = mask.astype(np.float64)[:, :, None]
        sq = sq + (w * (values - np.nan_to_num(mean)) ** 2).sum((0, 1))
        dof = dof + np.maximum(n - 1, 0).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        std = np.sqrt(sq / dof)
    if np.any(dof == 0):
        chosen = np.concatenate([values[m] for m in masks])
        std = np.where(dof > 0, std, chosen.std(0) if len(chosen) else 1.0)
    return np.maximum(std, _MIN_STD)


def _pooled_mean(values, mask) -> np.ndarray:
    """Mean per query [A] of all scores in ``mask`` (NaN if none)."""
    chosen = values[mask]
    return chosen.mean(0) if len(chosen) else np.full(values.shape[2], np.nan)


def _log_normal_pdf(x, mean, std):
    return -np.log(std) - 0.5 * ((x - mean) / std) ** 2 - 0.5 * np.log(2 * np.pi)


# --------------------------------------------------------------------------- attacks


def lira_online(target_phi, ref_phi, ref_keep, *, use=None,
                fixed_variance: bool = False) -> np.ndarray:
    """LiRA online: log N(phi; mu_in, s_in) - log N(phi; mu_out, s_out), averaged over queries.

    Args:
      target_phi: [N, A] the target model's phi on each example and query.
      ref_phi: [M, N, A] the reference models' phi; ``ref_keep`` [M, N] their membership.
      use: bool [M, N], which reference scores to use (default all; see :func:`equalized_use`).
      fixed_variance: one global std (per query) for IN and OUT instead of per example
        (better with few references; the ranking does not depend on its value).

    Per-example stds need two references in the group; with fewer the global std is used.
    An example with no IN (OUT) reference gets mu_in = mu_out + delta (mu_out = mu_in -
    delta), delta being the mean gap between all IN and all OUT reference scores; one
    with no reference at all gets the means of all IN and all OUT scores.
    """
    target, ref, ins, outs = _check_reference(target_phi, ref_phi, ref_keep, use)
    if not ins.any() or not outs.any():
        raise ValueError("LiRA online needs both IN and OUT reference scores; the references "
                         f"hold {int(ins.sum())} IN and {int(outs.sum())} OUT.")
    glob = _pooled_std(ref, (ins, outs))
    pooled_in, pooled_out = _pooled_mean(ref, ins), _pooled_mean(ref, outs)
    _, mu_in, var_in = _group_moments(ref, ins)
    _, mu_out, var_out = _group_moments(ref, outs)
    neither = np.isnan(mu_in) & np.isnan(mu_out)
    mu_in, mu_out = np.where(neither, pooled_in, mu_in), np.where(neither, pooled_out, mu_out)
    delta = pooled_in - pooled_out
    mu_in = np.where(np.isnan(mu_in), mu_out + delta, mu_in)
    mu_out = np.where(np.isnan(mu_out), mu_in - delta, mu_out)
    if fixed_variance:
        std_in = std_out = np.broadcast_to(glob, target.shape)
    else:
        std_in = np.maximum(np.where(np.isnan(var_in), glob ** 2, var_in) ** 0.5, _MIN_STD)
        std_out = np.maximum(np.where(np.isnan(var_out), glob ** 2, var_out) ** 0.5, _MIN_STD)
    llr = _log_normal_pdf(target, mu_in, std_in) - _log_normal_pdf(target, mu_out, std_out)
    return llr.mean(-1)


def lira_offline(target_phi, ref_phi, ref_keep, *, use=None,
                 fixed_variance: bool = False) -> np.ndarray:
    """LiRA offline: one-sided test against the OUT Gaussian, log Phi((phi - mu_out) / s_out).

    Only OUT references are used. The log of the one-sided p-value is averaged over
    queries (it stays finite far in the tail, where Phi itself rounds to 1 and ties).
    An example with no OUT reference is compared with the mean of all OUT scores.
    """
    target, ref, _, outs = _check_reference(target_phi, ref_phi, ref_keep, use)
    if not outs.any():
        raise ValueError("LiRA offline needs OUT reference scores; every reference trained on "
                         "every example.")
    glob = _pooled_std(ref, (outs,))
    _, mu_out, var_out = _group_moments(ref, outs)
    mu_out = np.where(np.isnan(mu_out), _pooled_mean(ref, outs), mu_out)
    if fixed_variance:
        std = np.broadcast_to(glob, target.shape)
    else:
        std = np.maximum(np.where(np.isnan(var_out), glob ** 2, var_out) ** 0.5, _MIN_STD)
    return special.log_ndtr((target - mu_out) / std).mean(-1)


def global_loss(target_log_p) -> np.ndarray:
    """The global-threshold baseline (Yeom et al.): minus the target's loss, averaged over queries."""
    target_log_p = np.asarray(target_log_p, np.float64)
    if target_log_p.ndim != 2:
        raise ValueError(f"target log-probabilities must be [examples, queries], got shape "
                         f"{target_log_p.shape}.")
    return target_log_p.mean(-1)


def _check_rmia_knobs(gamma, offline_a):
    if not gamma > 0:
        raise ValueError(f"RMIA gamma must be > 0, got {gamma}.")
    if not 0 <= offline_a <= 1:
        raise ValueError(f"RMIA offline a must be in [0, 1], got {offline_a}.")


def _offline_marginal(mean_out, offline_a):
    """Pr(x) from OUT references only: (1/2)((1 + a) Pr_OUT(x) + (1 - a)) (RMIA, offline)."""
    return 0.5 * ((1 + offline_a) * mean_out + (1 - offline_a))


def _dominated_fraction(log_ratio_x, log_ratio_z, gamma):
    """Per query, the fraction of z with ratio_x / ratio_z >= gamma; averaged over queries."""
    fractions = []
    for a in range(log_ratio_x.shape[1]):
        z = np.sort(log_ratio_z[:, a])
        count = np.searchsorted(z, log_ratio_x[:, a] - np.log(gamma), side="right")
        fractions.append(count / len(z))
    return np.mean(fractions, axis=0)


def rmia(target_log_p, ref_log_p, ref_keep, target_population_log_p, ref_population_log_p, *,
         use=None, online: bool = True, offline_a: float = 0.3, gamma: float = 2.0) -> np.ndarray:
    """RMIA: the fraction of population examples z that x dominates, averaged over queries.

    x dominates z when (Pr(x|theta) / Pr(x)) / (Pr(z|theta) / Pr(z)) >= gamma, with
    Pr(.|theta) the target's probability of the true class and Pr(.) its mean over
    reference models. Online, Pr(x) = (mean_IN + mean_OUT) / 2 (the references'
    average with IN and OUT weighted equally); offline, only OUT references are used
    and Pr(x) = ((1 + a) mean_OUT + (1 - a)) / 2. The population was never trained on,
    so Pr(z) is always the offline formula (in online mode too). Online, an example
    with no IN reference falls back to the offline formula, one with no OUT reference
    to mean_IN.

    Args:
      target_log_p: [N, A] log Pr(x|theta); ref_log_p [M, N, A] with ``ref_keep`` [M, N]
        and ``use`` (as in :func:`lira_online`).
      target_population_log_p: [Z, A]; ref_population_log_p: [M, Z, A].
    """
    _check_rmia_knobs(gamma, offline_a)
    target, ref, ins, outs = _check_reference(target_log_p, ref_log_p, ref_keep, use)
    pop_target, pop_ref, _, _ = _check_reference(
        target_population_log_p, ref_population_log_p,
        np.zeros(np.shape(ref_population_log_p)[:2], bool))
    if pop_ref.shape[0] != ref.shape[0] or pop_target.shape[1] != target.shape[1]:
        raise ValueError(f"population scores {pop_ref.shape} must come from the same {ref.shape[0]} "
                         f"reference models and {target.shape[1]} queries as the candidates'.")
    probs = np.exp(ref)
    _, mean_in, _ = _group_moments(probs, ins)
    _, mean_out, _ = _group_moments(probs, outs)
    offline_x = _offline_marginal(np.where(np.isnan(mean_out), _pooled_mean(probs, outs), mean_out),
                                  offline_a)
    if online:
        both = 0.5 * (mean_in + mean_out)
        marginal_x = np.where(np.isnan(mean_in), offline_x, np.where(np.isnan(mean_out), mean_in, both))
    else:
        if not outs.any():
            raise ValueError("RMIA offline needs OUT reference scores; every reference trained "
                             "on every example.")
        marginal_x = offline_x
    marginal_z = _offline_marginal(np.exp(pop_ref).mean(0), offline_a)
    tiny = np.finfo(np.float64).tiny  # every reference's probability underflowed to 0
    log_ratio_x = target - np.log(np.maximum(marginal_x, tiny))
    log_ratio_z = pop_target - np.log(np.maximum(marginal_z, tiny))
    return _dominated_fraction(log_ratio_x, log_ratio_z, gamma)


# --------------------------------------------------------------------------- evaluation


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """Knobs of the scoring (not of training): queries used and RMIA's a and gamma."""

    num_queries: int = 2  # 1: the original image only; 2: also its horizontal flip
    rmia_offline_a: float = 0.3
    rmia_gamma: float = 2.0

    def __post_init__(self):
        if self.num_queries < 1:
            raise ValueError(f"num_queries must be >= 1, got {self.num_queries}.")
        _check_rmia_knobs(self.rmia_gamma, self.rmia_offline_a)


def attack_scores(signals: Signals, keep, target: int, references: Sequence[int],
                  config: AttackConfig = AttackConfig(), *, use=None,
                  attacks: Sequence[str] = ATTACKS) -> dict[str, np.ndarray]:
    """Scores [N] of every attack on model ``target`` with models ``references`` as references.

    ``use`` (bool [len(references), N]) picks the reference scores used, default all.
    """
    keep = np.asarray(keep, bool)
    references = np.asarray(references, np.int64)
    if keep.shape != signals.phi.shape[:2]:
        raise ValueError(f"keep mask {keep.shape} must be [models, examples] = {signals.phi.shape[:2]}.")
    if not 0 <= target < keep.shape[0]:
        raise ValueError(f"target must be in [0, {keep.shape[0]}), got {target}.")
    if len(references) < 1 or target in references or references.min() < 0 \
            or references.max() >= keep.shape[0] or len(set(references.tolist())) != len(references):
        raise ValueError(f"references must be distinct models in [0, {keep.shape[0]}) other than the "
                         f"target {target}, got {references.tolist()}.")
    unknown = set(attacks) - set(ATTACKS)
    if unknown:
        raise ValueError(f"unknown attacks {sorted(unknown)}; known: {ATTACKS}.")
    s = signals.queries(min(config.num_queries, signals.phi.shape[2]))
    ref_keep = keep[references]
    if use is not None and np.shape(use) != ref_keep.shape:
        raise ValueError(f"use mask must be {ref_keep.shape} (references, examples), got "
                         f"{np.shape(use)}.")
    out = {}
    for name in attacks:
        if name.startswith("lira"):
            fn = lira_online if name.startswith("lira_online") else lira_offline
            out[name] = fn(s.phi[target], s.phi[references], ref_keep,
                           use=use, fixed_variance=name.endswith("fixed_variance"))
        elif name.startswith("rmia"):
            if s.population_log_p is None:
                raise ValueError("RMIA needs population signals; build Signals with population_logits.")
            out[name] = rmia(s.log_p[target], s.log_p[references], ref_keep,
                             s.population_log_p[target], s.population_log_p[references], use=use,
                             online=name == "rmia_online", offline_a=config.rmia_offline_a,
                             gamma=config.rmia_gamma)
        else:
            out[name] = global_loss(s.log_p[target])
    return out


def attack_metrics(labels, scores, fpr_levels: Sequence[float] = FPR_LEVELS) -> dict:
    """AUC, balanced accuracy at the best threshold and TPR at each FPR level."""
    fpr, tpr, _ = metrics.roc_curve(labels, scores)
    return {"auc": metrics.roc_auc(labels, scores),
            "balanced_accuracy": float(np.max(1 - (fpr + (1 - tpr)) / 2)),
            "tpr_at_fpr": metrics.tpr_at_fpr(labels, scores, fpr_levels)}


def _flatten(report: dict) -> dict[str, float]:
    flat = {"auc": report["auc"], "balanced_accuracy": report["balanced_accuracy"]}
    flat.update({f"tpr_at_fpr_{k}": v for k, v in report["tpr_at_fpr"].items()})
    return flat


def summarize(per_target: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Mean and std over targets of each metric in :func:`attack_metrics` reports."""
    flats = [_flatten(r) for r in per_target]
    return {k: {"mean": float(np.mean([f[k] for f in flats])),
                "std": float(np.std([f[k] for f in flats]))} for k in flats[0]}


def _check_keep(signals: Signals, keep) -> np.ndarray:
    keep = np.asarray(keep)
    if keep.ndim != 2 or keep.shape != signals.phi.shape[:2]:
        raise ValueError(f"keep mask {keep.shape} must be [models, examples] = {signals.phi.shape[:2]}.")
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
                  attacks: Sequence[str] = ATTACKS, seed: int = 0,
                  keep_scores_of: int | None = None) -> dict:
    """Each model of ``targets`` (default all) in turn is the target; the others are references.

    The IN/OUT groups of the K-1 others are first equalized (:func:`equalized_use`);
    ``num_references`` < K-1 then keeps that many of them, drawn at random (seeded by
    ``seed``, the target and the count). Equalizing first makes each example's IN/OUT
    counts independent of the target's membership for every subset size. Returns
    ``per_target`` (attack -> list of :func:`attack_metrics`), ``summary`` (attack ->
    metric -> mean/std over targets) and, for target ``keep_scores_of``, its ``scores``
    and ``labels``.
    """
    keep = _check_keep(signals, keep)
    num_models = keep.shape[0]
    targets = _targets(num_models, targets)
    if num_references is not None and not 1 <= num_references <= num_models - 1:
        raise ValueError(f"num_references must be in [1, {num_models - 1}], got {num_references}.")
    per_target: dict[str, list] = {name: [] for name in attacks}
    result: dict[str, Any] = {}
    for t in targets:
        others = np.array([k for k in range(num_models) if k != t])
        use = equalized_use(keep[others], seed=[seed, t])
        chosen = _choose_references(num_models, t, num_references, seed)
        scores = attack_scores(signals, keep, t, others[chosen], config, use=use[chosen],
                               attacks=attacks)
        for name, s in scores.items():
            per_target[name].append(attack_metrics(keep[t], s))
        if t == keep_scores_of:
            result["scores"], result["labels"] = scores, keep[t]
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
    """:func:`leave_one_out` summaries for each number of references in ``counts``."""
    attacks = [a for a in ATTACKS if a != "global_loss"]  # it uses no reference
    rows = []
    for count in counts:
        tick = time.perf_counter()
        res = leave_one_out(signals, keep, targets=targets, num_references=count, config=config,
                            attacks=attacks, seed=seed)
        rows.append({"num_references": int(count), "attacks": res["summary"]})
        logging.info("Sweep: %d reference model(s) scored in %.1fs; LiRA online AUC %.4f", count,
                     time.perf_counter() - tick, res["summary"]["lira_online"]["auc"]["mean"])
    return rows


# --------------------------------------------------------------------------- the experiment


@dataclasses.dataclass(frozen=True)
class LiraConfig:
    """Every knob of one LiRA/RMIA run; the defaults are the full CIFAR-10 setting (16 models)."""

    dataset: str = "cifar10"
    data_dir: str | None = None
    workdir: str = "runs/lira_cifar10"
    seed: int = 0
    num_models: int = 16
    pool_size: int | None = None  # candidates drawn from the train split; None: all of it
    population_size: int = 10_000  # RMIA's z, drawn from the test split (capped at its size)
    epochs: int = 50
    batch_size: int = 128
    learning_rate: float = 1e-3
    width_scale: float = 1.0
    precision: str = "float32"
    defense: str = "none"  # "dpsgd": GroupNorm CNNs trained with DP-SGD (epsilon reported)
    dp_noise_multiplier: float = 1.0
    dp_clip_norm: float = 1.0
    dp_delta: float = 1e-5
    strategy: str = "auto"  # training.STRATEGIES; no effect on results
    checkpoint_every: int = 5  # epochs between orbax checkpoints while training
    augment_training: bool = False  # random flips and crops while training (the papers' recipe)
    augment_queries: bool = True  # score with the horizontal flip as a second query
    num_targets: int | None = None  # models scored as the target in turn; None: all
    rmia_offline_a: float = 0.3
    rmia_gamma: float = 2.0
    max_reference_sweep: int | None = None  # largest reference count in the sweep; None: K-1
    eval_batch_size: int = 256  # images per predict call (bounds memory, not results)

    def validate(self, train_size: int | None = None) -> None:
        """Raises ValueError naming the bad flag; cheap checks run before any data is loaded."""
        if self.dataset not in DATASETS:
            raise ValueError(f"--dataset must be one of {DATASETS}, got {self.dataset!r}.")
        if self.defense not in DEFENSES:
            raise ValueError(f"--defense must be one of {DEFENSES}, got {self.defense!r}.")
        if self.defense == "dpsgd":
            privacy.check_dpsgd_flags(self.dp_noise_multiplier, self.dp_clip_norm, self.dp_delta)
        training.check_run_flags(self.strategy, self.checkpoint_every)
        if self.augment_training and self.dataset == "mnist":
            raise ValueError("--augment_training flips images, which does not preserve digit "
                             "labels: use it with --dataset=cifar10 only.")
        if self.num_models < 2:
            raise ValueError(f"--num_models must be >= 2 (a target and a reference), "
                             f"got {self.num_models}.")
        if self.num_models % 2:
            raise ValueError(f"--num_models must be even: the balanced keep mask puts every example "
                             f"in exactly half the models, got {self.num_models}.")
        for name in ("epochs", "batch_size", "population_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be positive, got {getattr(self, name)}.")
        if self.pool_size is not None and self.pool_size < 2:
            raise ValueError(f"--pool_size must be at least 2, got {self.pool_size}.")
        if self.learning_rate <= 0 or self.width_scale <= 0:
            raise ValueError("--learning_rate and --width_scale must be positive, got "
                             f"{self.learning_rate} and {self.width_scale}.")
        if self.precision not in models.PRECISIONS:
            raise ValueError(f"--precision must be one of {sorted(models.PRECISIONS)}, "
                             f"got {self.precision!r}.")
        if self.num_targets is not None and not 1 <= self.num_targets <= self.num_models:
            raise ValueError(f"--num_targets must be in [1, {self.num_models}], got {self.num_targets}.")
        if self.max_reference_sweep is not None and self.max_reference_sweep < 1:
            raise ValueError(f"--max_reference_sweep must be >= 1, got {self.max_reference_sweep}.")
        if not 0 <= self.rmia_offline_a <= 1:
            raise ValueError(f"--rmia_offline_a must be in [0, 1], got {self.rmia_offline_a}.")
        if not self.rmia_gamma > 0:
            raise ValueError(f"--rmia_gamma must be > 0, got {self.rmia_gamma}.")
        if train_size is not None and self.pool_size is not None and self.pool_size > train_size:
            raise ValueError(f"--pool_size={self.pool_size} is larger than the train split "
                             f"({train_size}).")

    def attack_config(self) -> AttackConfig:
        return AttackConfig(num_queries=2 if self.augment_queries else 1,
                            rmia_offline_a=self.rmia_offline_a, rmia_gamma=self.rmia_gamma)

    def training_fields(self, dataset: data.Dataset) -> dict:
        """Everything that changes the saved logits (not the scoring knobs), sizes resolved."""
        fields = {k: getattr(self, k) for k in (
            "dataset", "seed", "num_models", "epochs", "batch_size", "learning_rate", "width_scale",
            "precision", "defense")}
        if self.augment_training:  # only when on, so earlier runs' fingerprints stay valid
            fields["augment_training"] = True
        if self.defense == "dpsgd":
            fields.update(dp_noise_multiplier=self.dp_noise_multiplier, dp_clip_norm=self.dp_clip_norm)
        fields["pool_size"] = self.pool_size or len(dataset.train)
        fields["population_size"] = min(self.population_size, len(dataset.test))
        fields["train_split_size"] = len(dataset.train)
        fields["test_split_size"] = len(dataset.test)
        return fields


class WorkdirMismatchError(ValueError):
    """The workdir holds logits of another training configuration."""


def fingerprint(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def _flip(images: np.ndarray) -> np.ndarray:
    return images[:, :, ::-1, :]


def _train_models(config: LiraConfig, model, images, labels, members: splits.MemberSets, preprocess,
                  checkpoint_dir: str | None = None):
    """Trains the K models in one ensemble call, checkpointed every ``checkpoint_every`` epochs."""
    train_config = training.TrainConfig(
        epochs=config.epochs, batch_size=config.batch_size, learning_rate=config.learning_rate,
        augment="flip_crop" if config.augment_training else "none",
        dpsgd=config.defense == "dpsgd", dp_clip_norm=config.dp_clip_norm,
        dp_noise_multiplier=config.dp_noise_multiplier)
    mesh = training.default_mesh(config.strategy)
    return training.train_ensemble(model, images, labels, members, train_config, seed=config.seed,
                                   preprocess=preprocess, log_prefix="lira ", mesh=mesh,
                                   strategy=config.strategy, checkpoint_dir=checkpoint_dir,
                                   checkpoint_every=config.checkpoint_every)


def _query_logits(model, variables, images, preprocess, batch_size) -> np.ndarray:
    """Logits [K, N, 2, C] of every model on the images and their horizontal flips."""
    views = [training.predict(model, variables, x, preprocess=preprocess, batch_size=batch_size,
                              logits=True) for x in (images, _flip(images))]
    return np.stack(views, axis=2).astype(np.float32)


def train_and_save_logits(config: LiraConfig, dataset: data.Dataset) -> dict[str, Any]:
    """Trains N models on a balanced keep mask over the pool and saves their logits once.

    Writes ``<workdir>/logits.npz``: ``logits`` [K, N, 2, C] on the pool (original,
    flipped), ``population_logits`` [K, Z, 2, C] on RMIA's population (test split),
    ``keep`` [K, N], labels, indices, the training fields and their fingerprint. A
    rerun with the same training fields reuses the file; different ones are refused.
    """
    config.validate(len(dataset.train))
    if dataset.test is None or len(dataset.test) == 0:
        raise ValueError(f"{dataset.name} has no test split to draw RMIA's population from.")
    fields = config.training_fields(dataset)
    stamp = fingerprint(fields)
    path = pathlib.Path(config.workdir) / "logits.npz"
    if path.exists():
        saved = reporting.read_npz(path)
        if "fingerprint" not in saved or "training_fields" not in saved:
            raise WorkdirMismatchError(f"{path} was not written by this experiment; pass another "
                                       "--workdir or delete it.")
        saved_fields = json.loads(str(saved["training_fields"]))
        if str(saved["fingerprint"]) != stamp:
            diff = "; ".join(f"{k}: saved {saved_fields.get(k)!r}, now {fields.get(k)!r}"
                             for k in sorted(set(saved_fields) | set(fields))
                             if saved_fields.get(k) != fields.get(k))
            raise WorkdirMismatchError(
                f"--workdir={config.workdir} holds logits.npz of a different configuration "
                f"({diff}); pass another --workdir or delete {path}.")
        logging.info("Reusing the saved logits in %s (fingerprint %s)", path, stamp)
        return {**saved, "reused": True}

    rng = np.random.default_rng(config.seed)
    pool = np.sort(rng.choice(len(dataset.train), fields["pool_size"], replace=False))
    population = np.sort(rng.choice(len(dataset.test), fields["population_size"], replace=False))
    keep = splits.balanced_keep_mask(len(pool), config.num_models, config.seed)
    images, labels = dataset.train.images[pool], dataset.train.labels[pool]
    model = models.seed_cnn(config.dataset, "target", precision=config.precision,
                            width_scale=config.width_scale,
                            norm="group" if config.defense == "dpsgd" else "batch")
    preprocess = data.normalizer(config.dataset)
    logging.info("Training %d models at once, each on about half (%d-%d) of %d pool examples",
                 config.num_models, keep.sum(1).min(), keep.sum(1).max(), len(pool))
    checkpoints = pathlib.Path(config.workdir) / f"checkpoints-{stamp}"
    result = _train_models(config, model, images, labels, splits.MemberSets.from_mask(keep),
                           preprocess, str(checkpoints))
    variables = result.variables()
    tick = time.perf_counter()
    logits = _query_logits(model, variables, images, preprocess, config.eval_batch_size)
    population_logits = _query_logits(model, variables, dataset.test.images[population], preprocess,
                                      config.eval_batch_size)
    logging.info("Logits of %d models on %d pool + %d population examples (x2 queries) in %.1fs",
                 config.num_models, len(pool), len(population), time.perf_counter() - tick)
    arrays = {
        "logits": logits, "population_logits": population_logits, "keep": keep,
        "labels": labels, "population_labels": dataset.test.labels[population],
        "pool_indices": pool.astype(np.int64), "population_indices": population.astype(np.int64),
        "final_loss": np.asarray(result.history[-1]["loss"], np.float32),
        "train_seconds": np.float64(result.seconds),
        "predict_seconds": np.float64(time.perf_counter() - tick),
        "training_fields": np.array(json.dumps(fields, sort_keys=True)),
        "fingerprint": np.array(stamp),
    }
    reporting.write_npz(path, **arrays)
    shutil.rmtree(checkpoints, ignore_errors=True)  # logits.npz holds what the run needs now
    logging.info("Saved logits to %s", path)
    return {**arrays, "reused": False}


def _accuracies(saved: dict) -> dict:
    """Per-model accuracy (original query) on its members, pool non-members and the population."""
    keep = saved["keep"].astype(bool)
    hits = saved["logits"][:, :, 0].argmax(-1) == saved["labels"][None]
    test = saved["population_logits"][:, :, 0].argmax(-1) == saved["population_labels"][None]
    per = {"train_acc": [float(h[k].mean()) for h, k in zip(hits, keep)],
           "pool_non_member_acc": [float(h[~k].mean()) for h, k in zip(hits, keep)],
           "test_acc": test.mean(1).tolist()}
    return {**{k: float(np.mean(v)) for k, v in per.items()}, "per_model": per}


def run(config: LiraConfig, dataset: data.Dataset | None = None) -> dict[str, Any]:
    """The whole experiment: train (or reuse) logits, score every attack, write the outputs.

    Writes ``config.json``, ``logits.npz``, ``results.json``, ``summary.md``, ``roc.png``
    (all attacks on target model 0) and ``sweep.png`` to ``config.workdir``. ``dataset``
    overrides loading ``config.dataset`` (tests pass a small synthetic one).
    """
    config.validate()
    workdir = membership.check_workdir(config.workdir)
    timings: dict[str, float] = {}
    tick = time.perf_counter()
    if dataset is None:
        dataset = data.load_dataset(config.dataset, config.data_dir)
    timings["load_data"] = time.perf_counter() - tick
    config.validate(len(dataset.train))
    reporting.write_json(workdir / "config.json", dataclasses.asdict(config))

    tick = time.perf_counter()
    saved = train_and_save_logits(config, dataset)
    timings["train_and_logits"] = time.perf_counter() - tick

    tick = time.perf_counter()
    signals = Signals.from_logits(saved["logits"], saved["labels"], saved["population_logits"],
                                  saved["population_labels"])
    keep = saved["keep"].astype(bool)
    num_models = keep.shape[0]
    targets = list(range(config.num_targets or num_models))
    attack_config = config.attack_config()
    main = leave_one_out(signals, keep, targets=targets, config=attack_config, seed=config.seed,
                         keep_scores_of=0)
    timings["scoring"] = time.perf_counter() - tick
    tick = time.perf_counter()
    counts = sweep_counts(num_models, config.max_reference_sweep)
    sweep = reference_sweep(signals, keep, counts, targets=targets, config=attack_config,
                            seed=config.seed)
    timings["sweep"] = time.perf_counter() - tick
    for name in ATTACKS:
        s = main["summary"][name]
        logging.info("%-28s AUC %.4f±%.4f  TPR@0.1%%FPR %.2f%%", name, s["auc"]["mean"],
                     s["auc"]["std"], 100 * s["tpr_at_fpr_0.001"]["mean"])

    results = {
        "config": dataclasses.asdict(config),
        "data": {"dataset": config.dataset, "source": dataset.info.get("source"),
                 "pool_size": int(keep.shape[1]),
                 "population_size": int(saved["population_labels"].shape[0]),
                 "members_per_model": keep.sum(1).tolist(),
                 "non_members_per_target": int((~keep[0]).sum()),
                 "queries": attack_config.num_queries},
        "models": _accuracies(saved),
        "targets": targets,
        "attacks": main["summary"],
        "per_target": main["per_target"],
        "sweep": sweep,
        "reused_logits": bool(saved["reused"]),
        # At report time, for the smallest member set (the largest sampling rate).
        "privacy": (privacy.training_epsilon(config.dp_noise_multiplier, config.batch_size,
                                             int(keep.sum(1).min()), config.epochs, config.dp_delta)
                    if config.defense == "dpsgd" else None),
        "seconds": {**timings, "training": float(saved["train_seconds"]),
                    "predict": float(saved["predict_seconds"])},
        "backend": jax.default_backend(),
        "devices": [d.device_kind for d in jax.devices()],
        "jax_version": jax.__version__,
        "published": PUBLISHED,
    }
    reporting.write_json(workdir / "results.json", results)
    reporting.plot_roc({name: (main["labels"], main["scores"][name]) for name in ATTACKS},
                       workdir / "roc.png",
                       title=f"{config.dataset}: {num_models} models, target model 0")
    plot_sweep(sweep, main["summary"]["global_loss"], workdir / "sweep.png",
               title=f"{config.dataset}: {len(targets)} target(s), {num_models} models")
    reporting.write_text(workdir / "summary.md", summary_markdown(results))
    logging.info("Results in %s", workdir)
    return results


# --------------------------------------------------------------------------- reporting

# Published CIFAR-10 figures the summary compares with (their models: WRN28-2 with augmentation).
_LIRA_CODE = "LiRA code (Carlini et al.), 16 WRN28-2 models on CIFAR-10"
PUBLISHED = {
    "lira_online": {"auc": 0.668, "tpr_at_fpr_0.001": 0.017, "source": _LIRA_CODE},
    "lira_online_fixed_variance": {"auc": 0.686, "tpr_at_fpr_0.001": 0.059, "source": _LIRA_CODE},
    "rmia_online": {"auc": 0.7225, "tpr_at_fpr_0.001": None,
                    "source": "RMIA paper (Zarifzadeh et al.), 254 reference models on CIFAR-10"},
}


def plot_sweep(sweep: Sequence[dict], baseline: dict, path, title: str = "") -> pathlib.Path:
    """AUC and TPR@0.1%FPR (mean ± std over targets) against the number of reference models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), dpi=110)
    counts = [row["num_references"] for row in sweep]
    for ax, key, label in ((axes[0], "auc", "AUC"), (axes[1], "tpr_at_fpr_0.001", "TPR at 0.1% FPR")):
        for name in sweep[0]["attacks"]:
            mean = [row["attacks"][name][key]["mean"] for row in sweep]
            std = [row["attacks"][name][key]["std"] for row in sweep]
            ax.errorbar(counts, mean, yerr=std, marker="o", ms=3, capsize=2, lw=1.2, label=name)
        ax.axhline(baseline[key]["mean"], color="k", ls=":", lw=1, label="global_loss")
        ax.axhline(0.5 if key == "auc" else 0.001, color="gray", ls="--", lw=1, label="chance")
        ax.set_xscale("log", base=2)
        ax.set_xticks(counts)
        ax.set_xticklabels([str(c) for c in counts])
        ax.set_xlabel("reference models")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return reporting.save_figure(fig, path)


def _ms(stat: dict, pct: bool = False) -> str:
    scale = 100 if pct else 1
    digits = 2 if pct else 4
    return f"{scale * stat['mean']:.{digits}f} ± {scale * stat['std']:.{digits}f}"


def summary_markdown(results: dict) -> str:
    """Every attack (mean ± std over targets), the published figures and the reference sweep."""
    c, d, m = results["config"], results["data"], results["models"]
    rows = []
    for name, s in results["attacks"].items():
        rows.append([name, _ms(s["auc"]), _ms(s["balanced_accuracy"], True),
                     *(_ms(s[f"tpr_at_fpr_{level}"], True) for level in FPR_LEVELS)])
    table = reporting.markdown_table(
        ["attack", "AUC", "balanced acc (%)", "TPR@1%FPR (%)", "TPR@0.1%FPR (%)",
         "TPR@0.01%FPR (%)", "TPR@0%FPR (%)"], rows)
    published = []
    for name, p in results["published"].items():
        ours = results["attacks"][name]
        tpr = "-" if p["tpr_at_fpr_0.001"] is None else f"{100 * p['tpr_at_fpr_0.001']:.1f}"
        published.append([name, p["source"], f"{p['auc']:.4f}", tpr, f"{ours['auc']['mean']:.4f}",
                          f"{100 * ours['tpr_at_fpr_0.001']['mean']:.2f}"])
    published_table = reporting.markdown_table(
        ["attack", "published setting", "published AUC", "published TPR@0.1%FPR (%)", "our AUC",
         "our TPR@0.1%FPR (%)"], published)
    def cell(s):
        return f"{s['auc']['mean']:.4f} / {100 * s['tpr_at_fpr_0.001']['mean']:.2f}"

    sweep_rows = [[row["num_references"]] + [cell(s) for s in row["attacks"].values()]
                  for row in results["sweep"]]
    sweep_table = reporting.markdown_table(
        ["references"] + list(results["sweep"][0]["attacks"]), sweep_rows)
    negatives = d["non_members_per_target"]
    secs = results["seconds"]
    p = results.get("privacy")
    dp = (f"Trained with DP-SGD (GroupNorm CNNs): noise multiplier {p['noise_multiplier']}, clip "
          f"{c['dp_clip_norm']}, {p['steps']} steps at sampling rate {p['sampling_rate']:.4f}: "
          f"**epsilon ~ {p['epsilon']:.2f}** at delta = {p['delta']:g} ({p['accountant']}).\n\n"
          if p else "")
    return (
        f"# LiRA and RMIA: {c['dataset']}\n\n{dp}"
        f"{c['num_models']} seed CNNs (width x{c['width_scale']}, {c['precision']}, "
        f"{c['epochs']} epochs, "
        f"Adam lr {c['learning_rate']}, batch {c['batch_size']}, "
        f"{'random flips and crops' if c.get('augment_training') else 'no training augmentation'}), each "
        f"trained on a random half of a {d['pool_size']}-example pool from the train split "
        f"(balanced keep mask). Model accuracy: members {100 * m['train_acc']:.2f}%, pool non-members "
        f"{100 * m['pool_non_member_acc']:.2f}%, test {100 * m['test_acc']:.2f}%. "
        f"{len(results['targets'])} model(s) scored as the target in turn with the other "
        f"{c['num_models'] - 1} as references (leave-one-out); {d['queries']} "
        f"quer{'ies' if d['queries'] > 1 else 'y'} per example "
        f"({'original + horizontal flip' if d['queries'] > 1 else 'original only'}); RMIA "
        f"a={c['rmia_offline_a']}, gamma={c['rmia_gamma']}, population {d['population_size']} test "
        f"images. Backend {results['backend']}; training {secs['training']:.0f} s, logits "
        f"{secs['predict']:.0f} s{' (reused)' if results['reused_logits'] else ''}, scoring "
        f"{secs['scoring']:.0f} s, sweep {secs['sweep']:.0f} s.\n\n"
        f"## Attacks (mean ± std over target models)\n\n{table}\n"
        f"Each target has about {negatives} non-members, so the smallest non-zero FPR is "
        f"{100 / max(negatives, 1):.3f}%; TPR at lower FPR levels equals TPR@0%FPR.\n\n"
        f"## Published figures (CIFAR-10)\n\n{published_table}\n"
        "Not a like-for-like comparison: the published models are WideResNet-28-2 trained with "
        "augmentation (flips and crops) on 25,000 of 50,000 images for 100+ epochs; ours are the "
        f"seed's small CNN trained with Adam and "
        f"{'flips and crops' if c.get('augment_training') else 'no augmentation'}, on the pool "
        "above. Overfitting, "
        "and so leakage, differs accordingly.\n\n"
        f"## Number of reference models (AUC / TPR@0.1%FPR %, mean over targets)\n\n{sweep_table}\n"
        "With fewer than all other models the references are drawn at random per target; online "
        "LiRA then fills examples missing IN or OUT references from the global IN/OUT gap, and "
        "per-example variances fall back to the global one below two references per group. With "
        "one reference, online LiRA thus compares the target's score with the reference's, shifted "
        "by that global gap when the reference trained on the example: a well-regularised "
        "estimate that can beat 2-8 references, whose per-example means come from one or two "
        "scores each.\n")
