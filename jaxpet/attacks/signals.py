"""Per-example membership signals, each computed in one place.

From posteriors [N, C] with labels [N] (the shadow-model experiments): the
true class's probability and log-probability, and the loss, confidence,
entropy and modified-entropy scores (Yeom et al. 2018; Song & Mittal, USENIX
Security 2021). From logits [..., C] (the reference-model experiments): the
true class's log-probability and LiRA's logit-scaled confidence.

Every score is oriented so that higher means "more likely a member".
"""

from __future__ import annotations

import numpy as np
from scipy import special

_EPS = 1e-30  # floor on probabilities inside logs: a posterior of 0 stays finite


# --------------------------------------------------------------------------- from posteriors


def true_class_prob(posteriors, labels) -> np.ndarray:
    """posteriors[i, labels[i]] for each row i."""
    return np.take_along_axis(posteriors, np.asarray(labels)[:, None], axis=-1)[:, 0]


def posterior_log_prob(posteriors, labels) -> np.ndarray:
    """log p_y from posteriors, with p_y floored at 1e-30; keeps the posteriors' dtype."""
    return np.log(np.maximum(true_class_prob(posteriors, labels), _EPS))


def negative_loss(log_p) -> np.ndarray:
    """The loss attack (Yeom et al.): minus the true class's cross-entropy, log p_y, averaged over
    queries. ``log_p`` is [examples, queries]; members have low loss, so a high score.

    The one definition behind both the threshold attack ``loss`` and LiRA's
    ``global_loss`` baseline.
    """
    log_p = np.asarray(log_p)
    if log_p.ndim != 2:
        raise ValueError(f"target log-probabilities must be [examples, queries], got shape "
                         f"{log_p.shape}.")
    return log_p.mean(-1)


def loss_score(posteriors, labels):
    """Negative cross-entropy of the true label (Yeom et al.): members have low loss."""
    return negative_loss(posterior_log_prob(posteriors, labels)[:, None])


def confidence_score(posteriors, labels=None):
    """The largest posterior."""
    del labels
    return np.max(posteriors, axis=-1)


def entropy_score(posteriors, labels=None):
    """Negative prediction entropy: members get confident, low-entropy outputs."""
    del labels
    p = np.asarray(posteriors, np.float64)
    return np.sum(p * np.log(np.maximum(p, _EPS)), axis=-1)


def modified_entropy_score(posteriors, labels):
    """Negative modified entropy of Song & Mittal (2021), eq. 5, which uses the true label:

    Mentr(p, y) = -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i).
    """
    p = np.asarray(posteriors, np.float64)
    labels = np.asarray(labels)
    p_true = true_class_prob(p, labels)
    others = p * np.log(np.maximum(1 - p, _EPS))
    others_sum = others.sum(-1) - true_class_prob(others, labels)
    mentr = -(1 - p_true) * np.log(np.maximum(p_true, _EPS)) - others_sum
    return -mentr


# --------------------------------------------------------------------------- from logits


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


def _taylor_exp(x, order: int):
    """exp(x) by its Taylor series to ``order`` terms: sum_{k < order} x^k / k!."""
    term = np.ones_like(x)
    total = np.ones_like(x)
    for k in range(1, order):
        term = term * x / k
        total = total + term
    return total


def soft_margin_log_prob(logits, labels, *, temperature: float = 2.0, margin: float = 0.6,
                         taylor_order: int | None = 4) -> np.ndarray:
    """log Pr(y|x) under the soft-margin (Taylor-)softmax of RMIA's released CIFAR-10 setting.

    With z = logits / temperature: Pr = e(z_y - margin) / (e(z_y - margin) + sum_{j != y}
    e(z_j)), where e is exp (``taylor_order=None``: the soft-margin softmax) or its Taylor
    series to ``taylor_order`` terms (the soft-margin Taylor softmax). The released RMIA
    configurations for CIFAR-10 use temperature 2, margin 0.6 and 4 terms (Zarifzadeh et al.,
    ICML 2024, attack_configs/cifar10 in privacytrustlab/ml_privacy_meter). An odd-degree
    series can go negative far below 0; such terms are floored at the smallest positive
    float, so the log stays finite.
    """
    z = np.asarray(logits, np.float64) / temperature
    y = _labels_for(z, labels)
    tiny = np.finfo(np.float64).tiny
    if taylor_order is None:
        true = np.take_along_axis(z, y, -1)[..., 0] - margin
        others = z.copy()
        np.put_along_axis(others, y, -np.inf, axis=-1)
        return true - np.logaddexp(true, special.logsumexp(others, axis=-1))
    if taylor_order < 1:
        raise ValueError(f"taylor_order must be >= 1, got {taylor_order}.")
    e = np.maximum(_taylor_exp(z, taylor_order), tiny)
    true = np.maximum(_taylor_exp(np.take_along_axis(z, y, -1)[..., 0] - margin, taylor_order),
                      tiny)
    others = e.sum(-1) - np.take_along_axis(e, y, -1)[..., 0]
    return np.log(true) - np.log(true + np.maximum(others, 0.0))
