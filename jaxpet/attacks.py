"""Membership inference attacks on a model's posteriors.

* The seed's shadow-model attack (ML-Leaks style, Salem et al. NDSS 2019): an
  MLP trained on a shadow model's top-k sorted posteriors of its members and
  non-members, applied to the target's.
* Threshold attacks that need no attack model (Yeom et al. 2018; Song &
  Mittal, USENIX Security 2021): loss, max confidence, entropy and modified
  entropy, each thresholded at the value that is most accurate on the shadow
  model's data.

Every score is oriented so that higher means "more likely a member".
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from jaxpet import metrics, models, splits, training

_EPS = 1e-30


def sort_posteriors(posteriors, top_k: int) -> np.ndarray:
    """The ``top_k`` largest posteriors of each row, in descending order (the attack's features)."""
    posteriors = np.asarray(posteriors, np.float32)
    if not 1 <= top_k <= posteriors.shape[-1]:
        raise ValueError(f"top_k must be in [1, {posteriors.shape[-1]}] (the number of classes), "
                         f"got {top_k}.")
    return -np.sort(-posteriors, axis=-1)[..., :top_k]


def _true_class_prob(posteriors, labels):
    return np.take_along_axis(posteriors, np.asarray(labels)[:, None], axis=-1)[:, 0]


def loss_score(posteriors, labels):
    """Negative cross-entropy of the true label (Yeom et al.): members have low loss."""
    return np.log(np.maximum(_true_class_prob(posteriors, labels), _EPS))


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
    p_true = _true_class_prob(p, labels)
    others = p * np.log(np.maximum(1 - p, _EPS))
    others_sum = others.sum(-1) - _true_class_prob(others, labels)
    mentr = -(1 - p_true) * np.log(np.maximum(p_true, _EPS)) - others_sum
    return -mentr


THRESHOLD_ATTACKS: dict[str, Callable] = {
    "loss": loss_score,
    "confidence": confidence_score,
    "entropy": entropy_score,
    "modified_entropy": modified_entropy_score,
}


@dataclasses.dataclass
class AttackOutput:
    """One attack's result on the target: scores, hard decisions and the report."""

    scores: np.ndarray
    predictions: np.ndarray
    report: dict


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


@dataclasses.dataclass(frozen=True)
class ShadowAttackConfig:
    """The seed's attack MLP hyper-parameters (Task 1): 128 ReLU units, batch 10, 50 epochs."""

    top_k: int = 10
    hidden_sizes: tuple[int, ...] = (128,)
    epochs: int = 50
    batch_size: int = 10
    learning_rate: float = 1e-3
    weight_decay: float = 1e-7
    lr_decay: float = 0.96

    def train_config(self) -> training.TrainConfig:
        return training.TrainConfig(epochs=self.epochs, batch_size=self.batch_size,
                                    learning_rate=self.learning_rate,
                                    weight_decay=self.weight_decay, lr_decay=self.lr_decay,
                                    eval_batch_size=4096)


def shadow_mlp_attack(shadow_posteriors, shadow_membership, target_posteriors, target_membership,
                      config: ShadowAttackConfig = ShadowAttackConfig(), seed: int = 0,
                      log_prefix: str = "attack ") -> tuple[AttackOutput, dict]:
    """Trains the attack MLP on the shadow's sorted posteriors and attacks the target.

    Returns the target's attack output and the attack model's own train
    accuracy (the seed's "Attack Train" column) in a dict.
    """
    features = sort_posteriors(shadow_posteriors, config.top_k)
    membership = np.asarray(shadow_membership, np.int32)
    model = models.attack_mlp(num_classes=2, hidden_sizes=config.hidden_sizes)
    everyone = splits.MemberSets.from_lists([np.arange(len(features))])
    result = training.train_ensemble(model, features, membership, everyone,
                                     config.train_config(), seed=seed, log_prefix=log_prefix)
    variables = result.variables()
    train_posteriors = training.predict(model, variables, features, batch_size=4096)[0]
    target_features = sort_posteriors(target_posteriors, config.top_k)
    scores = training.predict(model, variables, target_features, batch_size=4096)[0][:, 1]
    predictions = scores >= 0.5
    report = metrics.attack_report(target_membership, scores, predictions)
    train_acc = float(np.mean((train_posteriors[:, 1] >= 0.5) == membership.astype(bool)))
    return AttackOutput(scores=scores, predictions=predictions, report=report), {
        "train_acc": train_acc, "seconds": result.seconds}
