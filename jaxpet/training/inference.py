"""Inference with a trained ensemble: posteriors, per-set accuracy and loss, model slicing.

All K models run in one vmapped, jitted program (or in groups of ``models_per_call``),
never with dropout. By default in
inference mode (BatchNorm running statistics); :func:`predict` and :func:`query_logits`
also offer LiRA's released query convention, ``mode="train_batch_stats"`` (see
:data:`QUERY_MODES`), and :func:`query_variables` picks the weights each mode queries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpet import progress
from jaxpet.data import IDENTITY
from jaxpet.splits import MemberSets
from jaxpet.training.state import ModelState, accepts_mask

# How a trained model is queried:
# * "eval": inference mode. BatchNorm normalises with its running statistics, so an example's
#   output does not depend on the other examples of its batch; the weights are those the
#   trained model predicts with (TrainConfig.ema's moving average, early stopping's best).
#   jaxpet's default, and the mode of every figure in the docs.
# * "train_batch_stats": LiRA's released code (tensorflow/privacy research/mi_lira_2021,
#   inference.py), which calls the raw model -- MemModule.model, not its moving average
#   model_ema -- with training=True: BatchNorm normalises with the mean and (biased) variance
#   of each query batch itself, per model and per view (the flipped batch is its own call).
#   The batch size and which examples share a batch therefore change the outputs; the
#   default batch is the code's, 5,000 consecutive examples (see QUERY_BATCH_SIZES). Dropout
#   stays off and the running statistics are left as they are (the updated ones are dropped).
QUERY_MODES = ("eval", "train_batch_stats")
# The default query batch per mode: eval's only bounds memory; train_batch_stats' is part of
# the convention (LiRA's inference.py queries N = 5000 images per call).
QUERY_BATCH_SIZES = {"eval": 1024, "train_batch_stats": 5000}
# Which weights each mode queries by default (see query_variables).
QUERY_WEIGHTS = {"eval": "trained", "train_batch_stats": "raw"}


def _check_mode(mode: str) -> None:
    if mode not in QUERY_MODES:
        raise ValueError(f"query mode must be one of {QUERY_MODES}, got {mode!r}.")


def query_variables(state: ModelState, mode: str = "eval", *, weights: str | None = None):
    """The ensemble's variables a query mode uses (leading [K] axis), from its ModelState
    (``TrainResult.state``).

    ``weights`` (default: ``QUERY_WEIGHTS[mode]``): "trained", what the trained model
    predicts with (``ModelState.variables(use_best=True)``: the debiased moving average
    under ``TrainConfig.ema``, the best-validation weights under early stopping, else the
    last); or "raw", the optimiser's own weights: the same, except that under
    ``TrainConfig.ema`` it is the last weights and BatchNorm statistics, not their average
    (LiRA's inference.py queries ``MemModule.model``, not ``model_ema``).
    """
    _check_mode(mode)
    weights = QUERY_WEIGHTS[mode] if weights is None else weights
    if weights not in ("trained", "raw"):
        raise ValueError(f"weights must be 'trained' or 'raw', got {weights!r}.")
    if weights == "raw" and state.ema_params is not None:
        return state.variables(use_best=False)
    return state.variables(use_best=True)


def _without_dropout(next_fun, args, kwargs, context):
    """Method interceptor: every nn.Dropout passes its input through, as when deterministic."""
    if isinstance(context.module, nn.Dropout) and context.method_name == "__call__":
        return args[0] if args else kwargs["inputs"]
    return next_fun(*args, **kwargs)


def _apply(model, variables, x, mode: str, mask=None):
    """ONE model's outputs on the batch ``x`` in query ``mode`` (see QUERY_MODES).

    In "train_batch_stats" the model is called with ``train=True`` and BatchNorm's
    collection mutable, and the updated statistics are discarded. Dropout is off: every
    ``nn.Dropout`` is intercepted into the identity, and no "dropout" random stream is
    given, so any other layer that draws random numbers fails loudly instead of querying a
    random model. ``mask`` ([B] bool, models that accept jaxpet's row mask) keeps padded
    rows out of the batch statistics.
    """
    if mode == "eval":
        return model.apply(variables, x, train=False)
    with nn.intercept_methods(_without_dropout):
        out, _ = model.apply(variables, x, train=True, mutable=["batch_stats"],
                             **({} if mask is None else {"mask": mask}))
    return out


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


@functools.partial(jax.jit, static_argnames=("model", "preprocess", "logits", "mode"))
def _predict_batch(model, preprocess, variables, x, mask=None, logits=False, mode="eval"):
    def one(v):
        out = _apply(model, v, preprocess(x), mode, mask).astype(jnp.float32)
        return out if logits else jax.nn.softmax(out)

    return jax.vmap(one)(variables)


def query_batches(num_images: int, batch_size: int, mode: str = "eval") -> list[tuple[int, int]]:
    """The (start, stop) of each query batch over ``num_images`` images in order.

    "eval": whole batches of ``batch_size`` and the remainder. "train_batch_stats", where a
    batch's composition sets its statistics: as few batches as ``batch_size`` allows, of
    sizes differing by at most one (so no batch is a small remainder); a multiple of
    ``batch_size`` (LiRA's 50,000 = 10 x 5,000) gives exactly the code's batches.
    """
    _check_mode(mode)
    if num_images < 1 or batch_size < 1:
        raise ValueError(f"query_batches needs images and batch_size >= 1, got {num_images} "
                         f"and {batch_size}.")
    steps = math.ceil(num_images / batch_size)
    if mode == "eval":
        return [(s, min(s + batch_size, num_images)) for s in range(0, num_images, batch_size)]
    bounds = np.cumsum([0] + [num_images // steps + (i < num_images % steps)
                              for i in range(steps)])
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def predict(
    model: nn.Module,
    variables,
    images,
    *,
    preprocess: Callable = IDENTITY,
    batch_size: int | None = None,
    logits: bool = False,
    phase: str = "predict",
    mode: str = "eval",
    models_per_call: int | None = None,
) -> np.ndarray:
    """Posteriors (or logits) of all K models on ``images``: float32 [K, N, classes].

    ``variables`` is an ensemble's ``{"params", "batch_stats"}`` with a leading [K] axis,
    e.g. ``TrainResult.variables()`` or :func:`query_variables`. Progress is reported as
    ``phase``. ``mode`` is one of :data:`QUERY_MODES`; ``batch_size`` defaults to
    ``QUERY_BATCH_SIZES[mode]``. In "train_batch_stats" the images are cut into batches in
    their order by :func:`query_batches`, every model normalises each batch with its own
    statistics of that batch, and a padded batch masks its padding out of them (a model
    without jaxpet's row mask runs a shorter batch at its own size instead).

    ``models_per_call`` (default: all K) runs the models in groups of that many, each group
    vmapped; the outputs do not change, only the memory a call needs (images x models). The
    reference batch of "train_batch_stats" is large (5,000 WRN-28-2 forwards are ~13 GiB of
    temporaries by XLA's CPU estimate), so LiRA's experiment queries that mode one model per
    call, as LiRA's inference.py does.
    """
    _check_mode(mode)
    batch_size = QUERY_BATCH_SIZES[mode] if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if models_per_call is not None and models_per_call < 1:
        raise ValueError(f"models_per_call must be >= 1, got {models_per_call}.")
    n = images.shape[0]
    if n == 0:
        raise ValueError("predict got no images.")
    batches = query_batches(n, min(batch_size, n), mode)
    width = max(stop - start for start, stop in batches)  # every batch padded to this
    masked = mode != "eval" and accepts_mask(model)
    pad = mode == "eval" or masked
    num_models = jax.tree.leaves(variables)[0].shape[0]
    group = num_models if models_per_call is None else min(models_per_call, num_models)
    groups = [variables] if group == num_models else [
        jax.tree.map(lambda a, g=g: a[g:g + group], variables) for g in range(0, num_models, group)]
    outputs = []
    with progress.phase(phase, num_models * n * progress.FORWARD,
                        images_per_unit=1 / progress.FORWARD) as report:
        for start, stop in batches:
            x = jnp.asarray(images[start:stop])
            real = stop - start
            if pad and real < width:  # Pad so every call reuses one compiled program.
                x = jnp.concatenate([x, jnp.repeat(x[-1:], width - real, axis=0)])
            mask = jnp.arange(x.shape[0]) < real if masked else None
            outputs.append(np.concatenate([np.asarray(
                _predict_batch(model, preprocess, v, x, mask, logits, mode))[:, :real]
                for v in groups]))
            report.advance(num_models * real * progress.FORWARD)
    return np.concatenate(outputs, axis=1)


def query_logits(model: nn.Module, variables, images, *, preprocess: Callable = IDENTITY,
                 batch_size: int | None = None, flips: bool = True,
                 mode: str = "eval", models_per_call: int | None = None) -> np.ndarray:
    """Logits of all K models on ``images`` and, with ``flips``, on their horizontal flips:
    float32 [K, N, queries, classes] (the queries LiRA and RMIA average over).

    ``mode`` (one of :data:`QUERY_MODES`), ``batch_size`` (default
    ``QUERY_BATCH_SIZES[mode]``) and ``models_per_call`` as in :func:`predict`; each view is
    its own pass, so in "train_batch_stats" the flipped batch is normalised with its own
    statistics, as LiRA's inference.py does. Query with the variables the mode expects:
    ``query_variables(result.state, mode)``.
    """
    views = [images, images[:, :, ::-1, :]] if flips else [images]
    return np.stack([predict(model, variables, v, preprocess=preprocess, batch_size=batch_size,
                             logits=True, phase=f"logits, query {i + 1}/{len(views)}", mode=mode,
                             models_per_call=models_per_call)
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
