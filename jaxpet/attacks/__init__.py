"""The attack library: pure functions from model outputs to attack scores, one module per family.

* :mod:`~jaxpet.attacks.signals`: per-example signals (true-class probability,
  loss, confidence, entropies, LiRA's logit-scaled confidence).
* :mod:`~jaxpet.attacks.threshold`: threshold attacks fitted on shadow data.
* :mod:`~jaxpet.attacks.shadow`: the shadow-model attack MLP.
* :mod:`~jaxpet.attacks.lira`, :mod:`~jaxpet.attacks.rmia`: reference-model attacks;
  :mod:`~jaxpet.attacks.reference` scores them (leave-one-out, reference sweeps).
* :mod:`~jaxpet.attacks.mi_face`: model inversion, :mod:`~jaxpet.attacks.reconstruction`
  its reconstructions scored; :mod:`~jaxpet.attacks.attribute`: attribute inference from a
  layer's representations.
* :mod:`~jaxpet.attacks.registry`: the membership attacks by name and family.

The import order below is the registry's order (the order of attacks in results):
shadow family shadow_mlp, then the threshold attacks; reference family LiRA, RMIA,
then global_loss.
"""

# Unsorted on purpose: the order registers the attacks (sorted, the results' order would change).
# isort: off
from jaxpet.attacks import registry, signals
from jaxpet.attacks import shadow  # registers shadow_mlp first
from jaxpet.attacks import threshold  # registers loss, confidence, entropy, modified_entropy
from jaxpet.attacks import lira, rmia, reference  # register LiRA, RMIA, then global_loss
from jaxpet.attacks import label_only  # label_only, label_only_threshold; label_only_ref
from jaxpet.attacks import attribute, mi_face
# isort: on
from jaxpet.attacks.registry import (
    FAMILIES,
    AttackOutput,
    LabeledPosteriors,
    MembershipAttack,
    attack_names,
    get_attack,
    list_attacks,
    register,
    unregister,
)
from jaxpet.attacks.shadow import (
    CONFIDENCES,
    THRESHOLD_SCOPES,
    ShadowAttackConfig,
    shadow_mlp_attack,
    sort_posteriors,
)
from jaxpet.attacks.signals import (
    confidence_score,
    entropy_score,
    loss_score,
    modified_entropy_score,
)
from jaxpet.attacks.threshold import THRESHOLD_ATTACKS, threshold_attack

__all__ = [
    "CONFIDENCES", "FAMILIES", "THRESHOLD_ATTACKS", "THRESHOLD_SCOPES", "AttackOutput",
    "LabeledPosteriors", "MembershipAttack", "ShadowAttackConfig", "attack_names", "attribute",
    "confidence_score", "entropy_score", "get_attack", "label_only", "lira", "list_attacks",
    "loss_score", "mi_face", "modified_entropy_score", "reference", "register", "registry",
    "rmia", "shadow", "shadow_mlp_attack", "signals", "sort_posteriors", "threshold",
    "threshold_attack", "unregister",
]
