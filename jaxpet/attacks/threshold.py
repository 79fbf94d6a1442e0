"""Threshold attacks that need no attack model (Yeom et al. 2018; Song & Mittal, USENIX Security
2021).

Each scores the target's posteriors with one signal (loss, confidence, entropy,
modified entropy) and predicts "member" at or above a threshold fitted on the shadow
model's data.

Three conventions (:class:`~jaxpet.attacks.shadow.ShadowAttackConfig`):
``thresholds="per_class"`` (Song & Mittal's code, the default) fits one threshold per
true class, on the shadow examples of that class; a class whose shadow examples are
all members or all non-members falls back to the global threshold. The reported
score is then the signal minus its class's threshold, so "member" is score >= 0 and
the ROC ranks examples by their margin over their own class's threshold.
``thresholds="global"`` fits one threshold for all. ``confidence="true_class"`` (Song
& Mittal) reads confidence as the true class's probability; ``"max"`` as the top
posterior.

``threshold_criterion`` says which threshold is "best" on the shadow's data
(:func:`jaxpet.metrics.best_threshold`). ``"balanced_accuracy"``, the default, maximises
0.5 * (TPR + TNR), as Song & Mittal's released code does: ``_thre_setting`` in
``membership_inference_attacks.py`` of inspire-group/membership-inference-evaluation
(called by each folder's ``MIA_evaluate.py``) tries every member and non-member value
of the class as a cut, counts members ``>= cut`` and non-members ``< cut``, and keeps
the cut with the highest mean of the two rates. It is the default because the per-class
thresholds already are their convention, and within a class the members and
non-members are not balanced even when the whole set is: plain accuracy then favours
the class's majority side (with 2 members and 6 non-members, "nobody is a member" is 75%
accurate). ``"accuracy"`` maximises the share of examples classified right (jaxpet's
earlier choice). Differences from their code, where it has no defined answer: ties
between equally good cuts go to the highest cut here (theirs keeps the first in its
members-then-non-members order, which depends on the data's order); a class without
members or non-members uses the global threshold here (theirs divides by zero and keeps
its starting cut, 0); and their code has no global variant, so the global threshold
here uses the same criterion over all classes. The experiments' shadow sets hold as many
members as non-members, where the two criteria rank global cuts alike. The label-only
threshold attack (:mod:`jaxpet.attacks.label_only`, Choquette-Choo et al.) keeps plain
accuracy, ``best_threshold``'s default.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from jaxpet import metrics
from jaxpet.attacks import registry, signals
from jaxpet.attacks.registry import AttackOutput, LabeledPosteriors
from jaxpet.attacks.shadow import CONFIDENCES, THRESHOLD_CRITERIA, THRESHOLD_SCOPES

THRESHOLD_ATTACKS: dict[str, Callable] = {
    "loss": signals.loss_score,
    "confidence": signals.true_class_prob,
    "entropy": signals.entropy_score,
    "modified_entropy": signals.modified_entropy_score,
}
_CONFIDENCE = {"true_class": signals.true_class_prob, "max": signals.confidence_score}
_DESCRIPTIONS = {
    "loss": "Yeom et al.: minus the true class's cross-entropy, thresholded on shadow data",
    "confidence": "the true class's probability (or the top posterior), thresholded on shadow "
                  "data",
    "entropy": "minus the prediction entropy, thresholded on shadow data",
    "modified_entropy": "Song & Mittal: minus the label-aware modified entropy, thresholded on "
                        "shadow data",
}


def class_thresholds(labels, membership, scores, num_classes: int, *,
                     criterion: str = "balanced_accuracy") -> tuple[np.ndarray, float]:
    """(per-class thresholds [num_classes], the global one): each the ``score >= t`` best by
    ``criterion`` on that class's examples; the global one where a class has no member or
    no non-member."""
    labels = np.asarray(labels)
    membership = np.asarray(membership).astype(bool)
    scores = np.asarray(scores, np.float64)
    overall = metrics.best_threshold(membership, scores, criterion=criterion)
    out = np.full(num_classes, overall)
    for c in range(num_classes):
        mine = labels == c
        if membership[mine].any() and not membership[mine].all():
            out[c] = metrics.best_threshold(membership[mine], scores[mine], criterion=criterion)
    return out, overall


def threshold_attack(name: str, shadow_posteriors, shadow_labels, shadow_membership,
                     target_posteriors, target_labels, target_membership, *,
                     thresholds: str = "per_class", confidence: str = "true_class",
                     criterion: str = "balanced_accuracy") -> AttackOutput:
    """Fits attack ``name``'s threshold(s) on the shadow model's data and applies them to the
    target (see the module docstring for the conventions)."""
    if name not in THRESHOLD_ATTACKS:
        raise ValueError(f"Unknown threshold attack {name!r}; known: {sorted(THRESHOLD_ATTACKS)}.")
    if thresholds not in THRESHOLD_SCOPES:
        raise ValueError(f"thresholds must be one of {THRESHOLD_SCOPES}, got {thresholds!r}.")
    if confidence not in CONFIDENCES:
        raise ValueError(f"confidence must be one of {CONFIDENCES}, got {confidence!r}.")
    if criterion not in THRESHOLD_CRITERIA:
        raise ValueError(f"criterion must be one of {THRESHOLD_CRITERIA}, got {criterion!r}.")
    score = _CONFIDENCE[confidence] if name == "confidence" else THRESHOLD_ATTACKS[name]
    shadow_scores = np.asarray(score(shadow_posteriors, shadow_labels), np.float64)
    target_scores = np.asarray(score(target_posteriors, target_labels), np.float64)
    if thresholds == "global":
        threshold = metrics.best_threshold(shadow_membership, shadow_scores, criterion=criterion)
        scores, predictions = target_scores, target_scores >= threshold
        extra = {"threshold": threshold}
    else:
        num_classes = np.shape(target_posteriors)[-1]
        per_class, overall = class_thresholds(shadow_labels, shadow_membership, shadow_scores,
                                              num_classes, criterion=criterion)
        scores = target_scores - per_class[np.asarray(target_labels)]
        predictions = scores >= 0
        extra = {"threshold": overall, "class_thresholds": per_class.tolist()}
    report = metrics.attack_report(target_membership, scores, predictions)
    report.update(extra)
    return AttackOutput(scores=scores, predictions=predictions, report=report)


def _shadow_family(name: str) -> Callable:
    """Attack ``name`` in the shadow family's signature (it uses neither config nor seed)."""
    def attack(shadow: LabeledPosteriors, target: LabeledPosteriors, *, config=None,
               seed: int = 0) -> AttackOutput:
        del seed
        return threshold_attack(name, shadow.posteriors, shadow.labels, shadow.membership,
                                target.posteriors, target.labels, target.membership,
                                thresholds=getattr(config, "thresholds", "per_class"),
                                confidence=getattr(config, "confidence", "true_class"),
                                criterion=getattr(config, "threshold_criterion",
                                                  "balanced_accuracy"))

    attack.__name__ = attack.__qualname__ = f"{name}_attack"
    return attack


for _name in THRESHOLD_ATTACKS:
    registry.register(_name, family="shadow",
                      description=_DESCRIPTIONS[_name])(_shadow_family(_name))
del _name
