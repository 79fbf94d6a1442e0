"""RMIA (Zarifzadeh et al., ICML 2024): membership by pairwise likelihood ratios against a population.

x is scored by the fraction of population examples z it dominates, comparing
the target's probability of each (relative to the reference models' average)
with factor gamma. Reference checks and group statistics come from
:mod:`jaxpet.attacks.lira`.
"""

from __future__ import annotations

import numpy as np

from jaxpet import metrics
from jaxpet.attacks import registry
from jaxpet.attacks.lira import Signals, check_reference, group_moments, pooled_mean


def check_rmia_knobs(gamma, offline_a) -> None:
    """ValueError unless gamma > 0 and a is in [0, 1]."""
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
    check_rmia_knobs(gamma, offline_a)
    target, ref, ins, outs = check_reference(target_log_p, ref_log_p, ref_keep, use)
    pop_target, pop_ref, _, _ = check_reference(
        target_population_log_p, ref_population_log_p,
        np.zeros(np.shape(ref_population_log_p)[:2], bool))
    if pop_ref.shape[0] != ref.shape[0] or pop_target.shape[1] != target.shape[1]:
        raise ValueError(f"population scores {pop_ref.shape} must come from the same {ref.shape[0]} "
                         f"reference models and {target.shape[1]} queries as the candidates'.")
    probs = np.exp(ref)
    _, mean_in, _ = group_moments(probs, ins)
    _, mean_out, _ = group_moments(probs, outs)
    offline_x = _offline_marginal(np.where(np.isnan(mean_out), pooled_mean(probs, outs), mean_out),
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


A_GRID = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))


def fit_offline_a(log_p, ref_keep, population_log_p, *, use=None, gamma: float = 2.0,
                  grid=A_GRID, pseudo_targets: int = 2) -> float:
    """RMIA offline's a fitted on the reference models alone, as the paper does: each of the
    first ``pseudo_targets`` references in turn plays the target, the others are its OUT
    references, and the a of ``grid`` with the best mean AUC is kept (ties: the smallest).

    ``log_p`` [M, N, A] and ``ref_keep`` [M, N] are the references' signals and membership,
    ``population_log_p`` [M, Z, A]. No target-model information enters, so the fit cannot
    leak the target's membership.
    """
    log_p = np.asarray(log_p, np.float64)
    keep = np.asarray(ref_keep, bool)
    use = np.ones_like(keep) if use is None else np.asarray(use, bool)
    m = log_p.shape[0]
    if m < 2:
        return 0.3  # one reference cannot play target and reference at once
    best, best_auc = None, -np.inf
    for a in grid:
        aucs = []
        for t in range(min(pseudo_targets, m)):
            others = np.array([k for k in range(m) if k != t])
            labels = keep[t]
            if labels.all() or not labels.any() or not (~keep[others] & use[others]).any():
                continue
            scores = rmia(log_p[t], log_p[others], keep[others], population_log_p[t],
                          population_log_p[others], use=use[others], online=False,
                          offline_a=float(a), gamma=gamma)
            aucs.append(metrics.roc_auc(labels, scores))
        if aucs and np.mean(aucs) > best_auc + 1e-12:
            best, best_auc = float(a), float(np.mean(aucs))
    return 0.3 if best is None else best


# --------------------------------------------------------------------------- registered attacks


def _rmia(online: bool, fit_a: bool = False):
    """:func:`rmia` in the reference family's signature, with ``config``'s a and gamma (a fitted
    on the references with ``fit_a``)."""
    def attack(signals: Signals, target, references, ref_keep, use, config) -> np.ndarray:
        x, population = signals.rmia
        if population is None:
            raise ValueError("RMIA needs population signals; build Signals with population_logits.")
        a = config.rmia_offline_a
        if fit_a:
            a = fit_offline_a(x[references], ref_keep, population[references], use=use,
                              gamma=config.rmia_gamma)
        return rmia(x[target], x[references], ref_keep, population[target],
                    population[references], use=use, online=online, offline_a=a,
                    gamma=config.rmia_gamma)

    return attack


registry.register("rmia_online", family="reference",
                  description="RMIA online: fraction of population z that x dominates, IN and OUT "
                              "references")(_rmia(online=True))
registry.register("rmia_offline", family="reference",
                  description="RMIA offline: as rmia_online with OUT references only")(
                      _rmia(online=False))
registry.register("rmia_offline_fitted_a", family="reference",
                  description="RMIA offline with a fitted on the references (each plays the "
                              "target in turn), as the paper tunes it")(
                      _rmia(online=False, fit_a=True))
