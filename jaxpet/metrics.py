"""Attack metrics in numpy: ROC, AUC, TPR at low FPR, classification reports, image similarity.

Membership is the positive class (label 1) and a higher score means "more
likely a member". The attack metrics are checked against scikit-learn on
random inputs in ``tests/test_metrics.py``; SSIM against a window-by-window
computation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# FPR levels at which TPR is reported (Carlini et al. 2022, "MIA from first principles"). The
# reference-model (LiRA) experiment reports all; 0.01% is resolvable only with >= 10,000
# non-members.
FPR_LEVELS = (0.01, 0.001, 0.0001, 0.0)
# The levels reported by default (the shadow-model experiments): all but 0.01%.
DEFAULT_FPR_LEVELS = tuple(level for level in FPR_LEVELS if level != 0.0001)

# numpy < 2 has only trapz (numpy 2's type stubs lack it, numpy 1's lack trapezoid).
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # type: ignore[attr-defined,unused-ignore]


def _check_binary(labels, scores):
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels ({labels.size}) and scores ({scores.size}) differ in length.")
    if labels.all() or not labels.any():
        raise ValueError("ROC needs both members (1) and non-members (0) among the labels.")
    if not np.isfinite(scores).all():
        raise ValueError("Attack scores contain NaN or inf; check the model's outputs.")
    return labels, scores


def roc_curve(labels, scores):
    """(fpr, tpr, thresholds) with one point per distinct score, starting at (0, 0).

    Predicting "member" for ``score >= thresholds[i]`` gives ``(fpr[i], tpr[i])``.
    """
    labels, scores = _check_binary(labels, scores)
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tps = np.cumsum(labels)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    tpr = np.r_[0.0, tps / labels.sum()]
    fpr = np.r_[0.0, fps / (~labels).sum()]
    thresholds = np.r_[np.inf, scores[last_of_tie]]
    return fpr, tpr, thresholds


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve (trapezoidal, ties counted half)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(_trapezoid(tpr, fpr))


FPR_RULES = ("le", "lt")


def tpr_at_fpr(labels, scores, fpr_levels: Sequence[float] = DEFAULT_FPR_LEVELS,
               rule: str = "le") -> dict[str, float]:
    """Highest TPR of any threshold whose FPR is at most each level; keys are the levels as str.

    ``rule="lt"`` counts only FPRs strictly below the level, as LiRA's plotting code does
    (``tpr[np.where(fpr < level)[0][-1]]``); the two differ only where the ROC curve has a
    point exactly at the level. With "lt" the level 0 admits no threshold and gives 0.
    """
    if rule not in FPR_RULES:
        raise ValueError(f"FPR rule must be one of {FPR_RULES} (<= or <), got {rule!r}.")
    fpr, tpr, _ = roc_curve(labels, scores)
    out = {}
    for level in fpr_levels:
        if not 0 <= level <= 1:
            raise ValueError(f"FPR level must be in [0, 1], got {level}.")
        allowed = fpr <= level if rule == "le" else fpr < level
        out[str(level)] = float(tpr[allowed].max()) if allowed.any() else 0.0
    return out


def tpr_at_fpr_randomized(labels, scores,
                          fpr_levels: Sequence[float] = DEFAULT_FPR_LEVELS) -> dict[str, float]:
    """TPR at exactly each FPR level when ties are broken at random; keys are the levels as str.

    :func:`tpr_at_fpr` only admits thresholds on the score, so a block of tied scores is
    taken whole or not at all; where a coarse score (the label-only attacks' fraction
    correct) ties across more non-members than the level allows, it falls to the last
    vertex below the level, often 0. Accepting each example of the block that straddles
    the level with one probability, chosen so that the FPR equals the level exactly, is
    the randomised test of Neyman and Pearson; its expected TPR is the ROC curve
    interpolated linearly between the block's two vertices, which is what this returns.
    Without ties it equals :func:`tpr_at_fpr` with the "le" rule.
    """
    fpr, tpr, _ = roc_curve(labels, scores)
    out = {}
    for level in fpr_levels:
        if not 0 <= level <= 1:
            raise ValueError(f"FPR level must be in [0, 1], got {level}.")
        below = int(np.flatnonzero(fpr <= level)[-1])  # the top of a vertical run
        value = tpr[below]
        if fpr[below] < level and below + 1 < len(fpr):
            step = (level - fpr[below]) / (fpr[below + 1] - fpr[below])
            value = tpr[below] + step * (tpr[below + 1] - tpr[below])
        out[str(level)] = float(value)
    return out


def best_threshold(labels, scores, *, criterion: str = "accuracy") -> float:
    """The threshold of ``score >= threshold`` maximising ``criterion`` (fit it on shadow data).

    ``"accuracy"`` (the default; the label-only attacks' choice): the share of examples
    classified right; the candidates are the distinct scores and one above the top score
    ("nobody is a member"). ``"balanced_accuracy"``: 0.5 * (TPR + TNR), as Song & Mittal's
    code chooses (``_thre_setting``, USENIX Security 2021); the candidates are the distinct
    scores, as in theirs (a cut above the top score ties the lowest score at 0.5). Ties go to
    the highest threshold (the fewest "member" predictions), compared in exact counts.
    """
    if criterion not in ("accuracy", "balanced_accuracy"):
        raise ValueError(f"criterion must be 'accuracy' or 'balanced_accuracy', got "
                         f"{criterion!r}.")
    labels, scores = _check_binary(labels, scores)
    fpr, tpr, thresholds = roc_curve(labels, scores)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    tp = np.rint(tpr * positives).astype(np.int64)  # counts: no rounding noise splits a tie
    tn = np.rint((1 - fpr) * negatives).astype(np.int64)
    if criterion == "accuracy":
        best = int(np.argmax(tp + tn))  # the ROC runs from the highest threshold down
    else:  # 0.5 * (tp / P + tn / N), times 2 P N; the "nobody" point [0] is no candidate
        best = 1 + int(np.argmax((tp * negatives + tn * positives)[1:]))
    if np.isinf(thresholds[best]):  # "nobody is a member": put it just above the top score
        return float(np.nextafter(scores.max(), np.inf))
    return float(thresholds[best])


def confusion_matrix(labels, predictions, num_classes: int | None = None) -> np.ndarray:
    """[true, predicted] counts."""
    labels = np.asarray(labels, np.int64).ravel()
    predictions = np.asarray(predictions, np.int64).ravel()
    if labels.shape != predictions.shape:
        raise ValueError("labels and predictions differ in length.")
    if num_classes is None:
        num_classes = int(max(labels.max(initial=0), predictions.max(initial=0))) + 1
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def per_class_report(labels, predictions, num_classes: int | None = None) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 and support (0 where undefined, as scikit-learn's
    default)."""
    matrix = confusion_matrix(labels, predictions, num_classes)
    tp = np.diag(matrix).astype(np.float64)
    predicted, support = matrix.sum(0), matrix.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def binary_report(labels, predictions) -> dict[str, float]:
    """Accuracy, precision, recall and F1 with member (1) as the positive class."""
    labels = np.asarray(labels).astype(bool).ravel()
    predictions = np.asarray(predictions).astype(bool).ravel()
    report = per_class_report(labels, predictions, num_classes=2)
    return {
        "accuracy": float(np.mean(labels == predictions)),
        "precision": float(report["precision"][1]),
        "recall": float(report["recall"][1]),
        "f1": float(report["f1"][1]),
    }


def attack_report(labels, scores, predictions=None, threshold: float | None = None,
                  fpr_levels: Sequence[float] = DEFAULT_FPR_LEVELS) -> dict:
    """Every number reported for a membership attack.

    ``predictions`` are the attack's hard decisions; if absent they are
    ``scores >= threshold``. AUC and TPR@FPR use the scores alone.
    """
    labels, scores = _check_binary(labels, scores)
    if predictions is None:
        if threshold is None:
            raise ValueError("attack_report needs predictions or a threshold.")
        predictions = scores >= threshold
    report: dict[str, Any] = binary_report(labels, predictions)
    report["auc"] = roc_auc(labels, scores)
    report["tpr_at_fpr"] = tpr_at_fpr(labels, scores, fpr_levels)
    report["tpr_at_fpr_randomized"] = tpr_at_fpr_randomized(labels, scores, fpr_levels)
    return report


# --------------------------------------------------------------------------- image similarity


def _gaussian_taps(size: int, sigma: float) -> np.ndarray:
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    taps = np.exp(-0.5 * (r / sigma) ** 2)
    return taps / taps.sum()


def _filter_valid(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of the last two axes of ``x`` with ``taps``."""
    view = np.lib.stride_tricks.sliding_window_view
    x = view(x, taps.size, axis=-1) @ taps
    return view(x, taps.size, axis=-2) @ taps


def ssim(a, b, *, data_range: float = 1.0, win_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> np.ndarray:
    """Mean structural similarity (Wang et al., 2004) with an 11x11 gaussian window (sigma 1.5).

    ``a`` and ``b`` are channel-last images [..., H, W, C] (or a single [H, W]
    image); returns the SSIM map's mean over the window positions that fit
    inside the image and over channels, one value per leading index. Local
    statistics use the window's weights directly (no N-1 correction), as in
    the paper, so identical images score exactly 1.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"ssim needs images of one shape, got {a.shape} and {b.shape}.")
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    if a.ndim < 3 or min(a.shape[-3:-1]) < win_size:
        raise ValueError(f"ssim needs [..., H, W, C] images with H, W >= {win_size}, got "
                         f"{a.shape}.")
    a, b = np.moveaxis(a, -1, -3), np.moveaxis(b, -1, -3)  # [..., C, H, W]
    taps = _gaussian_taps(win_size, sigma)
    mu_a, mu_b = _filter_valid(a, taps), _filter_valid(b, taps)
    var_a = _filter_valid(a * a, taps) - mu_a ** 2
    var_b = _filter_valid(b * b, taps) - mu_b ** 2
    cov = _filter_valid(a * b, taps) - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return ssim_map.mean(axis=(-3, -2, -1))


def mse(a, b) -> np.ndarray:
    """Mean squared pixel error over the last three axes ([..., H, W, C])."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return np.mean(d * d, axis=(-3, -2, -1))


def correlation(a, b) -> np.ndarray:
    """Pearson correlation of the pixels of ``a`` [N, ...] with those of ``b`` [M, ...]: [N, M].

    Blind to brightness and contrast, so a faint reconstruction is still
    matched to the face whose pattern it carries.
    """
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b /= np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T
