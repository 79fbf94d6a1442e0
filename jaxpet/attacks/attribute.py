"""Attribute inference by overlearning (Song & Shmatikov, ICLR 2020).

The attacker reads a target model's internal representation of inputs
(:func:`extract_representations`), standardises it on its own data
(:func:`standardize`; both at once: :func:`layer_features`) and trains a
classifier for an attribute the target was never taught
(:func:`attack_features`: one classifier per target, all in one ensemble call;
:func:`train_attacks` for any inputs, e.g. the raw pixels as a control);
:func:`attack_report` and :func:`aggregate` score the predictions. The
experiment around it is :mod:`jaxpet.experiments.attribute`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxpet import data, metrics, models, splits, training


@functools.partial(jax.jit, static_argnames=("model", "preprocess", "layer"))
def _represent_batch(model, preprocess, layer, variables, x):
    return jax.vmap(lambda v: models.representation(model, v, preprocess(x), layer))(variables)


def extract_representations(model, variables, images, layer: str, *, preprocess=data.IDENTITY,
                            batch_size: int = 512) -> np.ndarray:
    """Layer ``layer`` of each of K models on ``images``: float32 [K, N, D], in padded batches."""
    n = images.shape[0]
    batch_size = min(batch_size, n)
    out = []
    for start in range(0, n, batch_size):
        x = jnp.asarray(images[start:start + batch_size])
        real = x.shape[0]
        if real < batch_size:  # pad so every batch reuses one compiled program
            x = jnp.concatenate([x, jnp.repeat(x[-1:], batch_size - real, axis=0)])
        reps = _represent_batch(model, preprocess, layer, variables, x)
        out.append(np.asarray(reps, np.float32)[:, :real])
    return np.concatenate(out, axis=1)


def standardize(features: np.ndarray, num_fit: int) -> np.ndarray:
    """Per-feature z-scores with the statistics of the first ``num_fit`` rows (the attacker's data).

    Puts representations of trained and untrained targets on one scale, so
    the attack MLP's fixed learning rate suits both.
    """
    fit = features[..., :num_fit, :]
    mean, std = fit.mean(-2, keepdims=True), fit.std(-2, keepdims=True)
    return ((features - mean) / np.maximum(std, 1e-6)).astype(np.float32)


def layer_features(model, variables, images, layer: str, *, num_fit: int,
                   preprocess: Callable = data.IDENTITY) -> np.ndarray:
    """What the attacker sees of layer ``layer``: each of K models' representation of
    ``images``, [K, N, D] float32, z-scored per model with the statistics of its first
    ``num_fit`` rows (the attacker's own images; :func:`standardize`)."""
    return standardize(extract_representations(model, variables, images, layer,
                                               preprocess=preprocess), num_fit)


@dataclasses.dataclass(frozen=True)
class AttackOutcome:
    """M attack classifiers, trained in one ensemble call and scored."""

    reports: list[dict]  # one :func:`attack_report` per classifier
    train_acc: np.ndarray  # [M] each classifier's accuracy on its training rows, last epoch
    seconds: float  # the ensemble's training time


def train_attacks(attack_model, inputs, labels, train_sets: Sequence[np.ndarray],
                  test_sets: Sequence[np.ndarray], train_config: training.TrainConfig, *,
                  class_names: Sequence[str], seed: int, preprocess: Callable = data.IDENTITY,
                  log_prefix: str = "") -> AttackOutcome:
    """Trains attack classifier j on rows ``train_sets[j]`` of ``inputs`` / ``labels`` (all
    of them in one ensemble call) and scores it on rows ``test_sets[j]``: its
    :func:`attack_report`, whose majority baseline comes from its own training labels."""
    if len(train_sets) != len(test_sets):
        raise ValueError(f"train_sets and test_sets differ in length: {len(train_sets)} != "
                         f"{len(test_sets)}.")
    labels = np.asarray(labels)
    result = training.train_ensemble(attack_model, inputs, labels,
                                     splits.MemberSets.from_lists(train_sets), train_config,
                                     seed=seed, preprocess=preprocess, log_prefix=log_prefix)
    variables = result.variables()
    reports = []
    for j, (train, test) in enumerate(zip(train_sets, test_sets, strict=True)):
        model_j = jax.tree.map(lambda v, j=j: v[j:j + 1], variables)
        posteriors = training.predict(attack_model, model_j, inputs[test],
                                      preprocess=preprocess)[0]
        reports.append(attack_report(labels[test], posteriors.argmax(-1), labels[train],
                                     class_names))
    return AttackOutcome(reports, np.asarray(result.history[-1]["train_acc"]), result.seconds)


def attack_features(attack_model, features: np.ndarray, labels, num_train: int,
                    train_config: training.TrainConfig, **kwargs) -> AttackOutcome:
    """The overlearning attack on M targets' representations ``features`` [M, N, D] (e.g.
    :func:`layer_features`) of N examples whose attribute is ``labels`` [N]: classifier j
    trains on ``features[j, :num_train]`` (the attacker's examples) and is scored on
    ``features[j, num_train:]``; ``kwargs`` as :func:`train_attacks`."""
    m, n, d = features.shape
    if not 0 < num_train < n:
        raise ValueError(f"num_train must leave rows on both sides: 0 < {num_train} < {n}.")
    return train_attacks(attack_model, features.reshape(m * n, d), np.tile(labels, m),
                         [j * n + np.arange(num_train) for j in range(m)],
                         [j * n + np.arange(num_train, n) for j in range(m)], train_config,
                         **kwargs)


def attack_report(labels, predictions, train_labels, class_names: Sequence[str]) -> dict:
    """Accuracy, the majority-class baseline, per-class precision/recall/F1 and the confusion
    matrix.

    The baseline predicts the most frequent class of the attacker's training labels for everyone.
    """
    num_classes = len(class_names)
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    majority = int(np.argmax(np.bincount(train_labels, minlength=num_classes)))
    report = metrics.per_class_report(labels, predictions, num_classes)
    return {
        "accuracy": float(np.mean(labels == predictions)),
        "baseline_accuracy": float(np.mean(labels == majority)),
        "majority_class": class_names[majority],
        "macro_f1": float(report["f1"].mean()),
        "per_class": {name: {"precision": float(report["precision"][c]),
                             "recall": float(report["recall"][c]),
                             "f1": float(report["f1"][c]),
                             "support": int(report["support"][c])}
                      for c, name in enumerate(class_names)},
        "confusion": metrics.confusion_matrix(labels, predictions, num_classes).tolist(),
    }


def aggregate(reports: Sequence[dict]) -> dict:
    """Mean of every number over K reports, plus ``std`` (same shape) and the ``per_target``
    reports.

    Strings must agree or become a list; confusion matrices are summed (counts), not averaged.
    """
    def mean(values, key=None):
        first = values[0]
        if isinstance(first, dict):
            return {k: mean([v[k] for v in values], k) for k in first}
        if isinstance(first, str):
            return first if len(set(values)) == 1 else list(values)
        arr = np.asarray(values, np.float64)
        return (arr.sum(0) if key == "confusion" else arr.mean(0)).tolist()

    def std(values):
        first = values[0]
        if isinstance(first, dict):
            return {k: std([v[k] for v in values]) for k in first if not isinstance(first[k], str)}
        return np.asarray(values, np.float64).std(0).tolist()

    return {**mean(list(reports)), "std": std(list(reports)), "per_target": list(reports)}
