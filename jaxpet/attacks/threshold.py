"""Threshold attacks that need no attack model (Yeom et al. 2018; Song & Mittal, USENIX Security 2021).

Each scores the target's posteriors with one signal (loss, max confidence,
entropy, modified entropy) and predicts "member" above the threshold that is
most accurate on the shadow model's data.
"""

from __future__ import annotations

from typing import Callable

from jaxpet import metrics
from jaxpet.attacks import registry, signals
from jaxpet.attacks.registry import AttackOutput, LabeledPosteriors

THRESHOLD_ATTACKS: dict[str, Callable] = {
    "loss": signals.loss_score,
    "confidence": signals.confidence_score,
    "entropy": signals.entropy_score,
    "modified_entropy": signals.modified_entropy_score,
}
_DESCRIPTIONS = {
    "loss": "Yeom et al.: minus the true class's cross-entropy, thresholded on shadow data",
    "confidence": "the largest posterior, thresholded on shadow data",
    "entropy": "minus the prediction entropy, thresholded on shadow data",
    "modified_entropy": "Song & Mittal: minus the label-aware modified entropy, thresholded on "
                        "shadow data",
}


def threshold_attack(name: str, shadow_posteriors, shadow_labels, shadow_membership,
                     target_posteriors, target_labels, target_membership) -> AttackOutput:
    """Fits the threshold of attack ``name`` on the shadow model's data and applies it to the target."""
    if name not in THRESHOLD_ATTACKS:
        raise ValueError(f"Unknown threshold attack {name!r}; known: {sorted(THRESHOLD_ATTACKS)}.")
    score = THRESHOLD_ATTACKS[name]
    threshold = metrics.best_threshold(shadow_membership, score(shadow_posteriors, shadow_labels))
    scores = score(target_posteriors, target_labels)
    predictions = scores >= threshold
    report = metrics.attack_report(target_membership, scores, predictions)
    report["threshold"] = threshold
    return AttackOutput(scores=scores, predictions=predictions, report=report)


def _shadow_family(name: str) -> Callable:
    """Attack ``name`` in the shadow family's signature (it uses neither config nor seed)."""
    def attack(shadow: LabeledPosteriors, target: LabeledPosteriors, *, config=None,
               seed: int = 0) -> AttackOutput:
        del config, seed
        return threshold_attack(name, shadow.posteriors, shadow.labels, shadow.membership,
                                target.posteriors, target.labels, target.membership)

    attack.__name__ = attack.__qualname__ = f"{name}_attack"
    return attack


for _name in THRESHOLD_ATTACKS:
    registry.register(_name, family="shadow", description=_DESCRIPTIONS[_name])(_shadow_family(_name))
del _name
