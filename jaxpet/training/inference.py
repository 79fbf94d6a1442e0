"""Inference with a trained ensemble: posteriors, per-set accuracy and loss, model slicing.

Always inference mode (BatchNorm running statistics, no dropout), and all K
models in one vmapped, jitted program.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpet import progress
from jaxpet.data import IDENTITY
from jaxpet.splits import MemberSets


def batch_positions(num_positions: int, batch_size: int) -> tuple[int, int]:
    """(batches, padded length) to cover ``num_positions`` in whole batches (at least one)."""
    steps = max(1, math.ceil(num_positions / batch_size))
    return steps, steps * batch_size


def check_sets(sets: MemberSets, pool_size: int, what: str, num_models: int | None = None):
    """Refuses sets that index past the data or do not give one set per model."""
    if num_models is not None and sets.num_models != num_models:
        raise ValueError(f"{what} has {sets.num_models} sets but the ensemble has {num_models} "
                         "models; give one set per model.")
    if sets.indices.max(initial=0) >= pool_size:
        raise ValueError(f"{what} indexes example {int(sets.indices.max())} but the data has "
                         f"only {pool_size}; build the sets from this dataset's size.")


def evaluate_model(model, preprocess, variables, images, labels, indices, count, batch_size):
    """Inference-mode loss and accuracy of ONE model on ``indices[:count]`` of the dataset."""
    steps, padded = batch_positions(indices.shape[0], batch_size)
    indices = jnp.pad(indices, (0, padded - indices.shape[0]))
    valid = jnp.arange(padded) < count

    def body(carry, s):
        idx = jax.lax.dynamic_slice(indices, (s * batch_size,), (batch_size,))
        mask = jax.lax.dynamic_slice(valid, (s * batch_size,), (batch_size,))
        logits = model.apply(variables, preprocess(images[idx]), train=False)
        logits = logits.astype(jnp.float32)
        y = labels[idx]
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        loss_sum, correct = carry
        return (
            loss_sum + jnp.sum(jnp.where(mask, loss, 0.0)),
            correct + jnp.sum((jnp.argmax(logits, -1) == y) & mask),
        ), None

    (loss_sum, correct), _ = jax.lax.scan(
        body, (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)), jnp.arange(steps)
    )
    denom = jnp.maximum(count, 1)
    return {"loss": loss_sum / denom, "accuracy": correct / denom}


@functools.partial(jax.jit, static_argnames=("model", "preprocess", "logits"))
def _predict_batch(model, preprocess, variables, x, logits=False):
    def one(v):
        out = model.apply(v, preprocess(x), train=False).astype(jnp.float32)
        return out if logits else jax.nn.softmax(out)

    return jax.vmap(one)(variables)


def predict(
    model: nn.Module,
    variables,
    images,
    *,
    preprocess: Callable = IDENTITY,
    batch_size: int = 1024,
    logits: bool = False,
    phase: str = "predict",
) -> np.ndarray:
    """Posteriors (or logits) of all K models on ``images``: float32 [K, N, classes].

    ``variables`` is an ensemble's ``{"params", "batch_stats"}`` with a leading [K] axis,
    e.g. ``TrainResult.variables()``. Progress is reported as ``phase``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    n = images.shape[0]
    if n == 0:
        raise ValueError("predict got no images.")
    batch_size = min(batch_size, n)
    num_models = jax.tree.leaves(variables)[0].shape[0]
    outputs = []
    with progress.phase(phase, num_models * n * progress.FORWARD,
                        images_per_unit=1 / progress.FORWARD) as report:
        for start in range(0, n, batch_size):
            x = jnp.asarray(images[start : start + batch_size])
            real = x.shape[0]
            if real < batch_size:  # Pad so every call reuses one compiled program.
                x = jnp.concatenate([x, jnp.repeat(x[-1:], batch_size - real, axis=0)])
            outputs.append(np.asarray(
                _predict_batch(model, preprocess, variables, x, logits))[:, :real])
            report.advance(num_models * real * progress.FORWARD)
    return np.concatenate(outputs, axis=1)


def query_logits(model: nn.Module, variables, images, *, preprocess: Callable = IDENTITY,
                 batch_size: int = 1024, flips: bool = True) -> np.ndarray:
    """Logits of all K models on ``images`` and, with ``flips``, on their horizontal flips:
    float32 [K, N, queries, classes] (the queries LiRA and RMIA average over)."""
    views = [images, images[:, :, ::-1, :]] if flips else [images]
    return np.stack([predict(model, variables, v, preprocess=preprocess, batch_size=batch_size,
                             logits=True, phase=f"logits, query {i + 1}/{len(views)}")
                     for i, v in enumerate(views)], axis=2).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("model", "preprocess", "batch_size"))
def _evaluate_ensemble(model, preprocess, variables, images, labels, indices, counts, batch_size):
    return jax.vmap(evaluate_model, in_axes=(None, None, 0, None, None, 0, 0, None))(
        model, preprocess, variables, images, labels, indices, counts, batch_size
    )


def evaluate(
    model: nn.Module,
    variables,
    images,
    labels,
    sets: MemberSets,
    *,
    preprocess: Callable = IDENTITY,
    batch_size: int = 1024,
) -> dict[str, np.ndarray]:
    """Inference-mode accuracy and loss of model k on its own set ``sets.member(k)``: [K] each."""
    images = jnp.asarray(images)
    check_sets(sets, images.shape[0], "sets")
    out = _evaluate_ensemble(model, preprocess, variables, images, jnp.asarray(labels, jnp.int32),
                             jnp.asarray(sets.indices), jnp.asarray(sets.counts), batch_size)
    return {k: np.asarray(v) for k, v in out.items()}


def take_model(tree, k: int):
    """Model k's slice of an ensemble pytree (e.g. to compare with a K=1 run)."""
    return jax.tree.map(lambda x: x[k], tree)


def stack_models(trees: Sequence[Any]):
    """Stacks K single-model pytrees into one ensemble pytree."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
