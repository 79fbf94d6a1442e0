"""The seed's shadow-model attack (ML-Leaks style, Salem et al., NDSS 2019).

An MLP is trained on a shadow model's top-k sorted posteriors of its members
and non-members, then applied to the target's posteriors.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxpet import metrics, models, splits, training
from jaxpet.attacks import registry
from jaxpet.attacks.registry import AttackOutput, LabeledPosteriors


def sort_posteriors(posteriors, top_k: int) -> np.ndarray:
    """The ``top_k`` largest posteriors of each row, in descending order (the attack's features)."""
    posteriors = np.asarray(posteriors, np.float32)
    if not 1 <= top_k <= posteriors.shape[-1]:
        raise ValueError(f"top_k must be in [1, {posteriors.shape[-1]}] (the number of classes), "
                         f"got {top_k}.")
    return -np.sort(-posteriors, axis=-1)[..., :top_k]


THRESHOLD_SCOPES = ("per_class", "global")
CONFIDENCES = ("true_class", "max")
# How a threshold is chosen on the shadow's data (jaxpet.metrics.best_threshold's criterion).
THRESHOLD_CRITERIA = ("balanced_accuracy", "accuracy")


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
    # The threshold attacks (jaxpet.attacks.threshold): Song & Mittal's code (USENIX Security
    # 2021) fits one threshold per class and reads confidence as the true class's probability;
    # "global" and "max" are the single threshold and the top posterior.
    thresholds: str = "per_class"
    confidence: str = "true_class"
    # Each threshold maximises 0.5 * (TPR + TNR) on the shadow's members and non-members, as
    # Song & Mittal's _thre_setting does; "accuracy" maximises the share classified right.
    threshold_criterion: str = "balanced_accuracy"

    def __post_init__(self):
        if self.thresholds not in THRESHOLD_SCOPES:
            raise ValueError(f"thresholds must be one of {THRESHOLD_SCOPES}, got "
                             f"{self.thresholds!r}.")
        if self.confidence not in CONFIDENCES:
            raise ValueError(f"confidence must be one of {CONFIDENCES}, got {self.confidence!r}.")
        if self.threshold_criterion not in THRESHOLD_CRITERIA:
            raise ValueError(f"threshold_criterion must be one of {THRESHOLD_CRITERIA}, got "
                             f"{self.threshold_criterion!r}.")

    def train_config(self) -> training.TrainConfig:
        return training.TrainConfig(epochs=self.epochs, batch_size=self.batch_size,
                                    learning_rate=self.learning_rate,
                                    weight_decay=self.weight_decay, lr_decay=self.lr_decay,
                                    eval_batch_size=4096)


def fit_attack_mlp(features, membership, target_features, target_membership, *,
                   hidden_sizes, train_config: training.TrainConfig, seed: int = 0,
                   log_prefix: str = "attack ") -> tuple[AttackOutput, dict]:
    """An attack MLP trained on a shadow's ``features`` (``membership`` 1: member) and applied
    to the target's: its output ("member" at score >= 0.5) and, in a dict, its own train
    accuracy and training seconds. Shared by every attack that learns from shadow features."""
    features = np.asarray(features, np.float32)
    membership = np.asarray(membership, np.int32)
    model = models.attack_mlp(num_classes=2, hidden_sizes=hidden_sizes)
    everyone = splits.MemberSets.from_lists([np.arange(len(features))])
    result = training.train_ensemble(model, features, membership, everyone, train_config,
                                     seed=seed, log_prefix=log_prefix)
    variables = result.variables()
    train_posteriors = training.predict(model, variables, features, batch_size=4096)[0]
    scores = training.predict(model, variables, np.asarray(target_features, np.float32),
                              batch_size=4096)[0][:, 1]
    predictions = scores >= 0.5
    report = metrics.attack_report(target_membership, scores, predictions)
    train_acc = float(np.mean((train_posteriors[:, 1] >= 0.5) == membership.astype(bool)))
    return AttackOutput(scores=scores, predictions=predictions, report=report), {
        "train_acc": train_acc, "seconds": result.seconds}


def shadow_mlp_attack(shadow_posteriors, shadow_membership, target_posteriors, target_membership,
                      config: ShadowAttackConfig = ShadowAttackConfig(), seed: int = 0,
                      log_prefix: str = "attack ") -> tuple[AttackOutput, dict]:
    """Trains the attack MLP on the shadow's sorted posteriors and attacks the target.

    Returns the target's attack output and the attack model's own train
    accuracy (the seed's "Attack Train" column) in a dict.
    """
    return fit_attack_mlp(sort_posteriors(shadow_posteriors, config.top_k), shadow_membership,
                          sort_posteriors(target_posteriors, config.top_k), target_membership,
                          hidden_sizes=config.hidden_sizes, train_config=config.train_config(),
                          seed=seed, log_prefix=log_prefix)


@registry.register("shadow_mlp", family="shadow",
                   description="Salem et al.: an MLP on the shadow model's sorted top-k posteriors")
def shadow_mlp(shadow: LabeledPosteriors, target: LabeledPosteriors, *,
               config: ShadowAttackConfig = ShadowAttackConfig(), seed: int = 0) -> AttackOutput:
    """:func:`shadow_mlp_attack` in the shadow family's signature; ``info`` holds its train
    accuracy."""
    output, info = shadow_mlp_attack(shadow.posteriors, shadow.membership, target.posteriors,
                                     target.membership, config, seed=seed)
    output.info.update(info)
    return output
