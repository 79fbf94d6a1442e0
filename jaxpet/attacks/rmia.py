"""RMIA (Zarifzadeh et al., ICML 2024): membership by pairwise likelihood ratios against a
population.

x is scored by the fraction of population examples z it dominates, comparing
the target's probability of each (relative to the reference models' average)
with factor gamma. Reference checks and group statistics come from
:mod:`jaxpet.attacks.lira`.

Two conventions (:data:`CONVENTIONS`, ``AttackConfig.rmia_convention``), as for LiRA:

* ``"paper"`` (the default): the paper as written. Pr(x) is the plain mean of the
  reference models' Pr(x|theta') (online: IN and OUT means weighted equally), x
  dominates z when LR(x, z) >= gamma, and the score averages over the queries
  (augmentations) the fraction of z that x dominates.
* ``"code"``: what the authors' released code computes (privacytrustlab/ml_privacy_meter
  at d327341, ``research/2024_rmia/main.py``, ``aggregate_signals``, with the CIFAR-10
  ``attack_configs/cifar10/rmia_*.yaml``): Pr(x) and Pr(z) are per-query trimmed means
  over the reference models (``scipy.stats.trim_mean(..., proportiontocut=0.2,
  axis=0)``: of n scores, the int(0.2 n) lowest and as many highest are dropped), online
  over the IN and OUT scores pooled, offline over the OUT scores before the a formula; x
  dominates z when LR > gamma (strictly); and the queries are combined per (x, z) pair by
  majority vote (``torch.mode`` over queries, whose ties go to False on the CPU), so x
  dominates z when the test passes on more than half of the queries: with two queries
  (image and flip), on both. The offline a is ``rmia_offline_a`` in both conventions:
  the released CIFAR-10 configurations set ``offline_a: 0.3`` (jaxpet's default); the
  earlier release (``research/2023_rmia``, Nov. 2023) set 0.33.

"paper" stays the default: it is the method the paper defines and the one every earlier
jaxpet result used, and it mirrors ``lira_convention``'s default. The code's choices are
estimation details (a robust Pr(x), a per-pair vote) that the paper's equations do not
state; "code" is there to reproduce the released numbers. Where the two settings differ
rather than the conventions: jaxpet's population is never trained on, so Pr(z) comes from
the a formula in online mode too (the released code draws z from the target's non-members
in the training pool, which have IN references); and no candidate is also a z (the released
code removes each x's comparison with itself).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from jaxpet import metrics
from jaxpet.attacks import registry
from jaxpet.attacks.lira import Signals, check_reference, group_moments, named, pooled_mean

VOTES = ("average", "majority")


@dataclasses.dataclass(frozen=True)
class Convention:
    """How RMIA estimates Pr(x) and combines queries.

    ``trim``: the proportion of each example's reference scores cut from each end before
    averaging them (``scipy.stats.trim_mean``'s ``proportiontocut``; 0: the plain mean);
    ``vote``: "average" (the mean over queries of the fraction of z that x dominates) or
    "majority" (x dominates z when the test passes on more than half of the queries);
    ``strict``: x dominates z when LR > gamma (True) or LR >= gamma (False).
    """

    trim: float = 0.0
    vote: str = "average"
    strict: bool = False

    def __post_init__(self):
        if not 0 <= self.trim < 0.5:
            raise ValueError(f"RMIA convention trim must be in [0, 0.5), got {self.trim}.")
        if self.vote not in VOTES:
            raise ValueError(f"RMIA convention vote must be one of {VOTES}, got {self.vote!r}.")
        if not isinstance(self.strict, bool):
            raise ValueError(f"RMIA convention strict must be a bool, got {self.strict!r}.")


# The paper as written (jaxpet's default) and what the authors' released code
# (privacytrustlab/ml_privacy_meter research/2024_rmia/main.py) computes.
CONVENTIONS = {"paper": Convention(),
               "code": Convention(trim=0.2, vote="majority", strict=True)}


def convention(name_or_convention) -> Convention:
    """A :class:`Convention` from its name in :data:`CONVENTIONS` (or itself)."""
    return named(CONVENTIONS, name_or_convention, "RMIA")


def check_rmia_knobs(gamma, offline_a, conv="paper") -> None:
    """ValueError unless gamma > 0, a is in [0, 1] and ``conv`` names a convention."""
    if not gamma > 0:
        raise ValueError(f"RMIA gamma must be > 0, got {gamma}.")
    if not 0 <= offline_a <= 1:
        raise ValueError(f"RMIA offline a must be in [0, 1], got {offline_a}.")
    convention(conv)


def trimmed_group_mean(values, mask, proportion: float) -> np.ndarray:
    """Per-example trimmed mean [N, A] over the rows [M] in ``mask`` [M, N]; NaN where empty.

    Of an example's n scores (per query), the int(proportion * n) lowest and as many
    highest are dropped and the rest averaged: ``scipy.stats.trim_mean(axis=0)`` on the
    selected rows. With 0.2, nothing is cut below five scores.
    """
    if not 0 <= proportion < 0.5:
        raise ValueError(f"The trimmed proportion must be in [0, 0.5), got {proportion}.")
    values = np.asarray(values, np.float64)
    mask = np.asarray(mask, bool)
    n = mask.sum(0)  # [N]
    cut = (proportion * n).astype(np.int64)  # int() as scipy: truncation
    ordered = np.sort(np.where(mask[:, :, None], values, np.inf), axis=0)  # unused rows last
    rank = np.arange(values.shape[0])[:, None, None]
    kept = (rank >= cut[None, :, None]) & (rank < (n - cut)[None, :, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(kept, ordered, 0.0).sum(0) / (n - 2 * cut)[:, None]
    return np.where((n >= 1)[:, None], mean, np.nan)


def _offline_marginal(mean_out, offline_a):
    """Pr(x) from OUT references only: (1/2)((1 + a) Pr_OUT(x) + (1 - a)) (RMIA, offline)."""
    return 0.5 * ((1 + offline_a) * mean_out + (1 - offline_a))


MAX_PAIRS = 1 << 22  # (x, z) pairs held at once by the majority vote (4 MiB of counts)


def dominated_fraction(log_ratio_x, log_ratio_z, gamma, conv="paper", *,
                       max_pairs: int = MAX_PAIRS) -> np.ndarray:
    """Per x [N], the fraction of z [Z] that it dominates, from log ratios [N, A] and [Z, A].

    x dominates z on query a when ratio_x / ratio_z >= gamma (> gamma if ``conv`` is
    strict). "average": per query, the fraction of z dominated (one sort of z per query),
    averaged over queries. "majority": the fraction of z that x dominates on more than
    half of the queries (ties, with an even count, are not dominance), counted in chunks
    of x so that at most ``max_pairs`` (x, z) pairs are held, never all [N, Z, A].
    """
    c = convention(conv)
    threshold = np.asarray(log_ratio_x, np.float64) - np.log(gamma)  # dominates z below this
    log_ratio_z = np.asarray(log_ratio_z, np.float64)
    num_queries, num_z = threshold.shape[1], log_ratio_z.shape[0]
    side: Literal["left", "right"] = "left" if c.strict else "right"  # z < or <= threshold
    if c.vote == "average" or num_queries == 1:  # one query: its vote is its test
        fractions = [np.searchsorted(np.sort(log_ratio_z[:, a]), threshold[:, a], side=side)
                     / num_z for a in range(num_queries)]
        return np.mean(fractions, axis=0)
    compare = np.less if c.strict else np.less_equal
    needed = num_queries // 2 + 1  # more than half
    z_by_query = np.ascontiguousarray(log_ratio_z.T)  # [A, Z]
    rows = max(1, min(len(threshold), max_pairs // max(num_z, 1)))
    counts = np.empty((rows, num_z), np.uint8 if num_queries < 256 else np.int32)
    passed = np.empty((rows, num_z), bool)
    out = np.empty(len(threshold))
    for start in range(0, len(threshold), rows):
        stop = min(start + rows, len(threshold))
        cnt, hit = counts[: stop - start], passed[: stop - start]
        cnt.fill(0)
        for a in range(num_queries):
            compare(z_by_query[a][None, :], threshold[start:stop, a, None], out=hit)
            cnt += hit
        out[start:stop] = np.count_nonzero(cnt >= needed, axis=1) / num_z
    return out


def rmia(target_log_p, ref_log_p, ref_keep, target_population_log_p, ref_population_log_p, *,
         use=None, online: bool = True, offline_a: float = 0.3, gamma: float = 2.0,
         conv: Convention | str = "paper") -> np.ndarray:
    """RMIA: the fraction of population examples z that x dominates (see
    :func:`dominated_fraction`).

    x dominates z when (Pr(x|theta) / Pr(x)) / (Pr(z|theta) / Pr(z)) >= gamma, with
    Pr(.|theta) the target's probability of the true class and Pr(.) its mean over
    reference models. Online, Pr(x) = (mean_IN + mean_OUT) / 2 (the references'
    average with IN and OUT weighted equally); offline, only OUT references are used
    and Pr(x) = ((1 + a) mean_OUT + (1 - a)) / 2. The population was never trained on,
    so Pr(z) is always the offline formula (in online mode too). Online, an example
    with no IN reference falls back to the offline formula, one with no OUT reference
    to mean_IN.

    ``conv`` (:data:`CONVENTIONS`): with a ``trim`` the means are trimmed means (online:
    over the IN and OUT scores pooled, as the released code does; equal to the paper's
    when the counts are equal, as :func:`~jaxpet.attacks.reference.leave_one_out`'s
    ``use`` makes them, and nothing is trimmed); ``vote`` and ``strict`` as in
    :func:`dominated_fraction`.

    Args:
      target_log_p: [N, A] log Pr(x|theta); ref_log_p [M, N, A] with ``ref_keep`` [M, N]
        and ``use`` (as in :func:`lira_online`).
      target_population_log_p: [Z, A]; ref_population_log_p: [M, Z, A].
    """
    c = convention(conv)
    check_rmia_knobs(gamma, offline_a)
    target, ref, ins, outs = check_reference(target_log_p, ref_log_p, ref_keep, use)
    pop_target, pop_ref, _, _ = check_reference(
        target_population_log_p, ref_population_log_p,
        np.zeros(np.shape(ref_population_log_p)[:2], bool))
    if pop_ref.shape[0] != ref.shape[0] or pop_target.shape[1] != target.shape[1]:
        raise ValueError(f"population scores {pop_ref.shape} must come from the same "
                         f"{ref.shape[0]} reference models and {target.shape[1]} queries as the "
                         "candidates'.")
    if not online and not outs.any():
        raise ValueError("RMIA offline needs OUT reference scores; every reference trained "
                         "on every example.")
    probs, pop_probs = np.exp(ref), np.exp(pop_ref)
    if c.trim:
        centre = lambda values, mask: trimmed_group_mean(values, mask, c.trim)
    else:
        centre = lambda values, mask: group_moments(values, mask)[1]
    mean_out = centre(probs, outs)
    offline_x = _offline_marginal(np.where(np.isnan(mean_out), pooled_mean(probs, outs), mean_out),
                                  offline_a)
    if online:
        mean_in = centre(probs, ins)
        both = centre(probs, ins | outs) if c.trim else 0.5 * (mean_in + mean_out)
        marginal_x = np.where(np.isnan(mean_in), offline_x,
                              np.where(np.isnan(mean_out), mean_in, both))
    else:
        marginal_x = offline_x
    pop_mean = (trimmed_group_mean(pop_probs, np.ones(pop_probs.shape[:2], bool), c.trim)
                if c.trim else pop_probs.mean(0))
    marginal_z = _offline_marginal(pop_mean, offline_a)
    tiny = np.finfo(np.float64).tiny  # every reference's probability underflowed to 0
    log_ratio_x = target - np.log(np.maximum(marginal_x, tiny))
    log_ratio_z = pop_target - np.log(np.maximum(marginal_z, tiny))
    return dominated_fraction(log_ratio_x, log_ratio_z, gamma, c)


A_GRID = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))


def fit_offline_a(log_p, ref_keep, population_log_p, *, use=None, gamma: float = 2.0,
                  grid=A_GRID, pseudo_targets: int = 2, conv: Convention | str = "paper",
                  fallback: float = 0.3) -> float:
    """RMIA offline's a fitted on the reference models alone, as the paper does: each of the
    first ``pseudo_targets`` references in turn plays the target, the others are its OUT
    references, and the a of ``grid`` with the best mean AUC is kept (ties: the smallest).

    ``log_p`` [M, N, A] and ``ref_keep`` [M, N] are the references' signals and membership,
    ``population_log_p`` [M, Z, A]. No target-model information enters, so the fit cannot
    leak the target's membership. Each a is scored under convention ``conv``. Where no
    pseudo-target has both members and non-members (or usable OUT references), nothing can
    be fitted and ``fallback`` is returned.
    """
    log_p = np.asarray(log_p, np.float64)
    keep = np.asarray(ref_keep, bool)
    use = np.ones_like(keep) if use is None else np.asarray(use, bool)
    m = log_p.shape[0]
    if m < 2:
        return fallback  # one reference cannot play target and reference at once
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
                          offline_a=float(a), gamma=gamma, conv=conv)
            aucs.append(metrics.roc_auc(labels, scores))
        if aucs and np.mean(aucs) > best_auc + 1e-12:
            best, best_auc = float(a), float(np.mean(aucs))
    return fallback if best is None else best


# --------------------------------------------------------------------------- registered attacks


def _rmia(online: bool, fit_a: bool = False):
    """:func:`rmia` in the reference family's signature, with ``config``'s a, gamma and
    ``rmia_convention`` (a fitted on the references with ``fit_a``)."""
    def attack(signals: Signals, target, references, ref_keep, use, config) -> np.ndarray:
        x, population = signals.rmia
        if population is None:
            raise ValueError("RMIA needs population signals; build Signals with population_logits.")
        a = config.rmia_offline_a
        conv = getattr(config, "rmia_convention", "paper")
        if fit_a and getattr(config, "rmia_fitted_a", None) is not None:
            a = config.rmia_fitted_a  # fitted where the references' members are (the audit's
            # offline references train outside the candidates, so no pseudo-target has any)
        elif fit_a:
            a = fit_offline_a(x[references], ref_keep, population[references], use=use,
                              gamma=config.rmia_gamma, conv=conv, fallback=a)
        return rmia(x[target], x[references], ref_keep, population[target],
                    population[references], use=use, online=online, offline_a=a,
                    gamma=config.rmia_gamma, conv=conv)

    return attack


registry.register("rmia_online", family="reference", compares=("in", "out"),
                  description="RMIA online: fraction of population z that x dominates, IN and OUT "
                              "references")(_rmia(online=True))
registry.register("rmia_offline", family="reference", compares=("out",),
                  description="RMIA offline: as rmia_online with OUT references only")(
                      _rmia(online=False))
registry.register("rmia_offline_fitted_a", family="reference", compares=("out",),
                  description="RMIA offline with a fitted on the references (each plays the "
                              "target in turn), as the paper tunes it")(
                      _rmia(online=False, fit_a=True))
