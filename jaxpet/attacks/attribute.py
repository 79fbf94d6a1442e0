"""Attribute inference by overlearning (Song & Shmatikov, ICLR 2020): the pure parts of the attack.

The attacker reads a target model's internal representation of inputs
(:func:`extract_representations`), standardises it on its own data
(:func:`standardize`) and trains a classifier for an attribute the target was
never taught; :func:`attack_report` and :func:`aggregate` score the
predictions. The experiment around it is :mod:`jaxpet.attribute`.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxpet import data, metrics, models


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


def attack_report(labels, predictions, train_labels, class_names: Sequence[str]) -> dict:
    """Accuracy, the majority-class baseline, per-class precision/recall/F1 and the confusion matrix.

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
    """Mean of every number over K reports, plus ``std`` (same shape) and the ``per_target`` reports.

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
