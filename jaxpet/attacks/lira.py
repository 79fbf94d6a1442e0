"""LiRA (Carlini et al., S&P 2022): per-model signals, reference statistics and the two tests.

Every model's logits on a pool of candidates (and their augmented queries, e.g.
a horizontal flip) are turned once into per-model :class:`Signals`; an attack
then scores one target model from the signals of reference models whose
membership is known (``keep``). The reference checks and per-example group
statistics here are shared with RMIA (:mod:`jaxpet.attacks.rmia`).

Array layout: logits ``[K, N, A, C]`` (models, examples, queries, classes);
signals ``[K, N, A]``; keep masks bool ``[K, N]``. Every score is oriented so
that higher means "more likely a member".
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import warnings

import numpy as np
from scipy import special

from jaxpet.attacks import registry
from jaxpet.attacks.signals import (
    logit_scaled_confidence,
    soft_margin_log_prob,
    true_class_log_prob,
)

RMIA_SIGNALS = ("softmax", "taylor_soft_margin")
MIN_STD = 1e-6  # floor on fitted standard deviations (a reference set of identical scores)


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
    # RMIA's Pr(x|theta) when it is not the softmax (see signals.soft_margin_log_prob).
    rmia_log_p: np.ndarray | None = None
    population_rmia_log_p: np.ndarray | None = None
    # bool [K, N, Q]: label-only queries (jaxpet.attacks.label_only), where they were made.
    correct: np.ndarray | None = None

    @property
    def rmia(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(candidates, population) log Pr(.|theta) for RMIA: the soft-margin signal if built,
        else the softmax's."""
        if self.rmia_log_p is not None:
            return self.rmia_log_p, self.population_rmia_log_p
        return self.log_p, self.population_log_p

    @property
    def num_models(self) -> int:
        return self.phi.shape[0]

    @classmethod
    def from_logits(cls, logits, labels, population_logits=None, population_labels=None, *,
                    rmia_signal: str = "softmax") -> Signals:
        """``logits`` [K, N, A, C] with ``labels`` [N]; the population alike ([K, Z, A, C], [Z]).

        ``rmia_signal``: RMIA's Pr(x|theta), one of :data:`RMIA_SIGNALS`: "softmax" (the
        true class's probability) or "taylor_soft_margin" (RMIA's released CIFAR-10 setting).
        """
        if rmia_signal not in RMIA_SIGNALS:
            raise ValueError(f"rmia_signal must be one of {RMIA_SIGNALS}, got {rmia_signal!r}.")
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
                raise ValueError(f"population logits {population_logits.shape} must be "
                                 f"[K, Z, A, C] with K, A, C as the candidates' {logits.shape}.")
            if population_labels.shape != (population_logits.shape[1],):
                raise ValueError(f"population labels must be [{population_logits.shape[1]}], "
                                 f"got shape {population_labels.shape}.")
            population = true_class_log_prob(population_logits, population_labels[:, None])
        rmia = rmia_population = None
        if rmia_signal == "taylor_soft_margin":
            rmia = soft_margin_log_prob(logits, labels[:, None])
            if population_logits is not None:
                rmia_population = soft_margin_log_prob(population_logits,
                                                       population_labels[:, None])
        return cls(phi=logit_scaled_confidence(logits, labels[:, None]),
                   log_p=true_class_log_prob(logits, labels[:, None]), population_log_p=population,
                   rmia_log_p=rmia, population_rmia_log_p=rmia_population)

    def queries(self, num: int) -> Signals:
        """The first ``num`` queries only (e.g. 1: the original image without its flip)."""
        if not 1 <= num <= self.phi.shape[2]:
            raise ValueError(f"num queries must be in [1, {self.phi.shape[2]}], got {num}.")
        cut = lambda a: None if a is None else a[:, :, :num]
        return Signals(self.phi[:, :, :num], self.log_p[:, :, :num], cut(self.population_log_p),
                       cut(self.rmia_log_p), cut(self.population_rmia_log_p), self.correct)


# --------------------------------------------------------------------------- reference statistics


def check_reference(target, ref, ref_keep, use=None):
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
        raise ValueError(f"use mask must be {keep.shape} like the keep mask, got shape "
                         f"{use.shape}.")
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


def group_moments(values, mask, ddof: int = 1):
    """Per-example mean and variance [N, A] over the rows in ``mask`` (divided by n - ``ddof``;
    1: unbiased, 0: the population variance, numpy's default); NaN where undefined. A
    variance needs two rows whatever ``ddof``: one score says nothing of the spread."""
    w = mask.astype(np.float64)[:, :, None]
    n = w.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (w * values).sum(0) / n
        var = (w * (values - np.nan_to_num(mean)) ** 2).sum(0) / (n - ddof)
    return n, np.where(n >= 1, mean, np.nan), np.where(n >= 2, var, np.nan)


def group_medians(values, mask):
    """Per-example median [N, A] over the rows in ``mask``; NaN where the group is empty."""
    masked = np.where(mask[:, :, None], values, np.nan)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: an empty group
        return np.nanmedian(masked, axis=0)


def global_std(values, mask, ddof: int = 0) -> np.ndarray:
    """The std of every selected score, across examples and queries ([A], one value repeated):
    the fixed variance of LiRA's reference code, which does not centre each example."""
    chosen = values[mask]
    std = chosen.std(ddof=ddof) if chosen.size > ddof else 1.0
    return np.full(values.shape[2], max(float(std), MIN_STD))


def pooled_std(values, masks) -> np.ndarray:
    """Global std per query [A]: within-example deviations pooled over examples and groups.

    Falls back to the std of all selected scores when no example has two in a group.
    """
    sq = dof = 0.0
    for mask in masks:
        n, mean, _ = group_moments(values, mask)
        w = mask.astype(np.float64)[:, :, None]
        sq = sq + (w * (values - np.nan_to_num(mean)) ** 2).sum((0, 1))
        dof = dof + np.maximum(n - 1, 0).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        std = np.sqrt(sq / dof)
    if np.any(dof == 0):
        chosen = np.concatenate([values[m] for m in masks])
        std = np.where(dof > 0, std, chosen.std(0) if len(chosen) else 1.0)
    return np.maximum(std, MIN_STD)


def pooled_mean(values, mask) -> np.ndarray:
    """Mean per query [A] of all scores in ``mask`` (NaN if none)."""
    chosen = values[mask]
    return chosen.mean(0) if len(chosen) else np.full(values.shape[2], np.nan)


def log_normal_pdf(x, mean, std):
    """log N(x; mean, std), elementwise."""
    return -np.log(std) - 0.5 * ((x - mean) / std) ** 2 - 0.5 * np.log(2 * np.pi)


# --------------------------------------------------------------------------- conventions


@dataclasses.dataclass(frozen=True)
class Convention:
    """How LiRA's Gaussians are fitted and the offline test is read.

    ``center``: "mean" (the paper's mu) or "median" (LiRA's reference code);
    ``ddof``: 1 (unbiased variance) or 0 (numpy's default, the code's);
    ``fixed_std``: with fixed variance, "pooled" (within-example deviations pooled over
    examples) or "global" (the code's ``np.std`` of all IN scores, uncentred per example, used
    for both Gaussians online; of all OUT scores offline);
    ``offline``: "one_sided" (the paper's Pr[Z > phi] under the OUT Gaussian) or
    "two_sided" (the code's minus log-density: far from the OUT centre on either side).
    """

    center: str = "mean"
    ddof: int = 1
    fixed_std: str = "pooled"
    offline: str = "one_sided"

    def __post_init__(self):
        for name, allowed in (("center", ("mean", "median")), ("ddof", (0, 1)),
                              ("fixed_std", ("pooled", "global")),
                              ("offline", ("one_sided", "two_sided"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"LiRA convention {name} must be one of {allowed}, got "
                                 f"{getattr(self, name)!r}.")


# The paper as written (Carlini et al. 2022, Algorithm 1 and Sec. IV-C), jaxpet's default, and
# what the authors' released plotting code (tensorflow/privacy research/mi_lira_2021/plot.py)
# computes; their figures come from the latter.
CONVENTIONS = {"paper": Convention(),
               "code": Convention(center="median", ddof=0, fixed_std="global",
                                  offline="two_sided")}


def named(conventions: dict, name_or_convention, what: str):
    """``name_or_convention`` itself if it is a convention object, else ``conventions[name]``;
    ValueError naming ``what`` and the known names otherwise (LiRA's and RMIA's tables)."""
    kind = type(next(iter(conventions.values())))
    if isinstance(name_or_convention, kind):
        return name_or_convention
    if name_or_convention not in conventions:
        raise ValueError(f"{what} convention must be one of {tuple(conventions)}, got "
                         f"{name_or_convention!r}.")
    return conventions[name_or_convention]


def convention(name_or_convention) -> Convention:
    """A :class:`Convention` from its name in :data:`CONVENTIONS` (or itself)."""
    return named(CONVENTIONS, name_or_convention, "LiRA")


def _centres(ref, mask, c: Convention):
    """(count, centre, variance) per example for the group ``mask`` under convention ``c``."""
    n, mean, var = group_moments(ref, mask, c.ddof)
    return n, (group_medians(ref, mask) if c.center == "median" else mean), var


# --------------------------------------------------------------------------- attacks


def lira_online(target_phi, ref_phi, ref_keep, *, use=None, fixed_variance: bool = False,
                conv: Convention | str = "paper") -> np.ndarray:
    """LiRA online: log N(phi; mu_in, s_in) - log N(phi; mu_out, s_out), averaged over queries.

    Args:
      target_phi: [N, A] the target model's phi on each example and query.
      ref_phi: [M, N, A] the reference models' phi; ``ref_keep`` [M, N] their membership.
      use: bool [M, N], which reference scores to use (default all; see :func:`equalized_use`).
      fixed_variance: one global std (per query) for IN and OUT instead of per example
        (better with few references; the ranking does not depend on its value).
      conv: the :class:`Convention` (or its name): centres, ddof, the fixed std.

    Per-example stds need two references in the group; with fewer the global std is used.
    An example with no IN (OUT) reference gets mu_in = mu_out + delta (mu_out = mu_in -
    delta), delta being the mean gap between all IN and all OUT reference scores; one
    with no reference at all gets the means of all IN and all OUT scores.
    """
    c = convention(conv)
    target, ref, ins, outs = check_reference(target_phi, ref_phi, ref_keep, use)
    if not ins.any() or not outs.any():
        raise ValueError("LiRA online needs both IN and OUT reference scores; the references "
                         f"hold {int(ins.sum())} IN and {int(outs.sum())} OUT.")
    glob = pooled_std(ref, (ins, outs))
    pooled_in, pooled_out = pooled_mean(ref, ins), pooled_mean(ref, outs)
    _, mu_in, var_in = _centres(ref, ins, c)
    _, mu_out, var_out = _centres(ref, outs, c)
    neither = np.isnan(mu_in) & np.isnan(mu_out)
    mu_in, mu_out = np.where(neither, pooled_in, mu_in), np.where(neither, pooled_out, mu_out)
    delta = pooled_in - pooled_out
    mu_in = np.where(np.isnan(mu_in), mu_out + delta, mu_in)
    mu_out = np.where(np.isnan(mu_out), mu_in - delta, mu_out)
    if fixed_variance:
        fixed = glob if c.fixed_std == "pooled" else global_std(ref, ins, c.ddof)
        std_in = std_out = np.broadcast_to(fixed, target.shape)
    else:
        std_in = np.maximum(np.where(np.isnan(var_in), glob ** 2, var_in) ** 0.5, MIN_STD)
        std_out = np.maximum(np.where(np.isnan(var_out), glob ** 2, var_out) ** 0.5, MIN_STD)
    llr = log_normal_pdf(target, mu_in, std_in) - log_normal_pdf(target, mu_out, std_out)
    return llr.mean(-1)


def lira_offline(target_phi, ref_phi, ref_keep, *, use=None, fixed_variance: bool = False,
                 conv: Convention | str = "paper") -> np.ndarray:
    """LiRA offline: a test of phi against the OUT Gaussian only, averaged over queries.

    One-sided (the paper): log Phi((phi - mu_out) / s_out), the log of the one-sided
    p-value, which stays finite far in the tail where Phi itself rounds to 1 and ties.
    Two-sided (the reference code): minus log N(phi; mu_out, s_out), high far from the
    OUT centre on either side. An example with no OUT reference is compared with the mean
    of all OUT scores.
    """
    c = convention(conv)
    target, ref, _, outs = check_reference(target_phi, ref_phi, ref_keep, use)
    if not outs.any():
        raise ValueError("LiRA offline needs OUT reference scores; every reference trained on "
                         "every example.")
    glob = pooled_std(ref, (outs,))
    _, mu_out, var_out = _centres(ref, outs, c)
    mu_out = np.where(np.isnan(mu_out), pooled_mean(ref, outs), mu_out)
    if fixed_variance:
        fixed = glob if c.fixed_std == "pooled" else global_std(ref, outs, c.ddof)
        std = np.broadcast_to(fixed, target.shape)
    else:
        std = np.maximum(np.where(np.isnan(var_out), glob ** 2, var_out) ** 0.5, MIN_STD)
    if c.offline == "two_sided":
        return -log_normal_pdf(target, mu_out, std).mean(-1)
    return special.log_ndtr((target - mu_out) / std).mean(-1)


# --------------------------------------------------------------------------- registered attacks


def _lira(fn, fixed_variance: bool):
    """``fn`` (:func:`lira_online` or :func:`lira_offline`) in the reference family's signature."""
    def attack(signals: Signals, target, references, ref_keep, use, config) -> np.ndarray:
        return fn(signals.phi[target], signals.phi[references], ref_keep, use=use,
                  fixed_variance=fixed_variance,
                  conv=getattr(config, "lira_convention", "paper"))

    return attack


for _name, _fn, _fixed, _what in (
        ("lira_online", lira_online, False, "LiRA online: Gaussian likelihood ratio of phi under "
         "IN and OUT references, per-example variances"),
        ("lira_online_fixed_variance", lira_online, True, "LiRA online with one global variance "
         "(better with few references)"),
        ("lira_offline", lira_offline, False, "LiRA offline: one-sided test of phi against the OUT "
         "references, per-example variance"),
        ("lira_offline_fixed_variance", lira_offline, True, "LiRA offline with one global "
         "variance")):
    registry.register(_name, family="reference", description=_what,
                      compares=("in", "out") if _fn is lira_online else ("out",))(
        _lira(_fn, _fixed))
del _name, _fn, _fixed, _what
