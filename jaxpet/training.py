"""The ensemble trainer: K models of one architecture trained at once as one jitted program.

Design (pure-functional JAX):

* :class:`ModelState` holds ONE model's parameters, BatchNorm statistics,
  optimiser state, random key, step count and early-stopping bookkeeping.
  An ensemble is the same pytree with a leading model axis of size K.
* :func:`train_step` updates one model on one batch; :func:`train_epoch`
  runs a whole epoch of it inside ``lax.scan`` over batches drawn from the
  device-resident dataset by the model's own permutation of its own member
  set, then validates. ``jax.vmap`` maps the epoch over the model axis and
  ``jax.jit`` compiles it once; the host only loops over epochs.
* Member sets of different sizes are padded to one length: padded rows are
  masked out of the loss, the accuracy and the BatchNorm statistics, and a
  batch with no real row leaves the model untouched. Each example's place in
  the shuffle is drawn from ``fold_in(key, position)``, so model k sees the
  same batches whether it trains alone or padded inside a larger ensemble.
* K=1 is simply the plain single-model trainer: there is one code path.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging as stdlib_logging
import math
import os
import time
from typing import Any, Callable, Sequence

from absl import logging
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxpet.data import IDENTITY, Normalize  # noqa: F401  (re-exported)
from jaxpet.splits import MemberSets

# Stream ids folded into a model's key, so shuffling, dropout and init never share randomness.
_INIT_STREAM, _SHUFFLE_STREAM, _DROPOUT_STREAM, _NOISE_STREAM, _AUGMENT_STREAM = 0, 1, 2, 3, 4

# "flip_crop": random horizontal flip and a random 32x32 crop of the 4-pixel reflect-padded
# image, per example (the CIFAR-10 recipe of the LiRA and RMIA papers' models).
AUGMENTATIONS = ("none", "flip_crop")
_CROP_PAD = 4


def augment_batch(key, x, pad: int = _CROP_PAD):
    """Random horizontal flip and random crop of each [H, W, C] image of ``x`` (shape kept)."""
    b, h, w, c = x.shape
    flip_key, row_key, col_key = jax.random.split(key, 3)
    flip = jax.random.bernoulli(flip_key, 0.5, (b,))
    x = jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    rows = jax.random.randint(row_key, (b,), 0, 2 * pad + 1)
    cols = jax.random.randint(col_key, (b,), 0, 2 * pad + 1)
    crop = lambda image, i, j: jax.lax.dynamic_slice(image, (i, j, 0), (h, w, c))
    return jax.vmap(crop)(padded, rows, cols)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one ensemble run; defaults are the seed's Task 1 values."""

    epochs: int = 50
    batch_size: int = 128
    learning_rate: float = 1e-3
    lr_decay: float = 0.96  # learning rate multiplied by this once per epoch
    weight_decay: float = 1e-4  # L2 added to the gradient (PyTorch Adam's weight_decay)
    early_stopping: bool = False  # keep each model's best-validation weights, stop after `patience`
    patience: int = 10  # epochs without validation improvement before a model stops
    eval_batch_size: int = 1024
    augment: str = "none"  # training-time augmentation, one of AUGMENTATIONS
    # DP-SGD (Abadi et al. 2016): clip each example's gradient to dp_clip_norm, add Gaussian
    # noise of std dp_noise_multiplier * dp_clip_norm to the batch sum, divide by batch_size.
    dpsgd: bool = False
    dp_clip_norm: float = 1.0
    dp_noise_multiplier: float = 1.0
    # Per-example gradients are formed this many examples at a time (0: the whole batch);
    # bounds DP-SGD's memory (K x microbatch x parameters) without changing the result.
    dp_microbatch_size: int = 0

    def __post_init__(self):
        for name in ("epochs", "batch_size", "patience", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.learning_rate <= 0:
            raise ValueError(f"TrainConfig.learning_rate must be > 0, got {self.learning_rate}.")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"TrainConfig.lr_decay must be in (0, 1], got {self.lr_decay}.")
        if self.weight_decay < 0:
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay}.")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"TrainConfig.augment must be one of {AUGMENTATIONS}, got {self.augment!r}.")
        if self.dpsgd and self.dp_clip_norm <= 0:
            raise ValueError(f"TrainConfig.dp_clip_norm must be > 0, got {self.dp_clip_norm}.")
        if self.dp_microbatch_size < 0 or (self.dp_microbatch_size
                                           and self.batch_size % self.dp_microbatch_size):
            raise ValueError(f"TrainConfig.dp_microbatch_size must be 0 or divide batch_size "
                             f"{self.batch_size}, got {self.dp_microbatch_size}.")
        if self.dpsgd and self.dp_noise_multiplier <= 0:
            raise ValueError("TrainConfig.dp_noise_multiplier must be > 0 for DP-SGD, got "
                             f"{self.dp_noise_multiplier}.")

    def learning_rate_at(self, epoch):
        return self.learning_rate * self.lr_decay**epoch


@flax.struct.dataclass
class ModelState:
    """One model's training state; with a leading [K] axis on every leaf, an ensemble's."""

    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    step: jax.Array  # number of updates applied
    active: jax.Array  # False once early stopping has fired
    best_params: Any  # None unless early stopping is on
    best_batch_stats: Any
    best_val_acc: jax.Array
    best_epoch: jax.Array
    epochs_since_best: jax.Array

    @property
    def num_models(self) -> int:
        return int(jax.tree.leaves(self.rng)[0].shape[0])

    def variables(self, use_best: bool = False):
        """Flax variables for ``model.apply``; the best-validation ones when asked and kept."""
        if use_best and self.best_params is not None:
            return {"params": self.best_params, "batch_stats": self.best_batch_stats}
        return {"params": self.params, "batch_stats": self.batch_stats}


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Adam with coupled L2 (as PyTorch's ``Adam(weight_decay=...)``) and an injectable rate."""

    def adam_l2(learning_rate, weight_decay):
        return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate))

    return optax.inject_hyperparams(adam_l2)(
        learning_rate=config.learning_rate, weight_decay=config.weight_decay
    )


def model_keys(seed: int, num_models: int) -> jax.Array:
    """K independent model keys from one seed (model k's key depends only on seed and k)."""
    if num_models < 1:
        raise ValueError(f"num_models must be >= 1, got {num_models}.")
    base = jax.random.PRNGKey(seed)
    return jax.vmap(lambda k: jax.random.fold_in(base, k))(jnp.arange(num_models))


def init_model_state(model: nn.Module, config: TrainConfig, key, sample_input) -> ModelState:
    """Initialises ONE model (vmap it for an ensemble)."""
    variables = model.init(
        {"params": jax.random.fold_in(key, _INIT_STREAM)}, sample_input, train=False
    )
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    keep_best = config.early_stopping
    return ModelState(
        params=params,
        batch_stats=batch_stats,
        opt_state=make_optimizer(config).init(params),
        rng=key,
        step=jnp.zeros((), jnp.int32),
        active=jnp.ones((), bool),
        best_params=params if keep_best else None,
        best_batch_stats=batch_stats if keep_best else None,
        best_val_acc=jnp.full((), -1.0, jnp.float32),
        best_epoch=jnp.full((), -1, jnp.int32),
        epochs_since_best=jnp.zeros((), jnp.int32),
    )


@functools.partial(jax.jit, static_argnames=("model", "config"))
def init_ensemble(model: nn.Module, config: TrainConfig, keys, sample_input) -> ModelState:
    """Initialises K models, one per key, as one [K]-leading pytree."""
    return jax.vmap(init_model_state, in_axes=(None, None, 0, None))(
        model, config, keys, sample_input
    )


def _select(pred, new, old):
    return jax.tree.map(lambda n, o: jnp.where(pred, n, o), new, old)


def train_step(model, config: TrainConfig, state: ModelState, x, y, row_mask, learning_rate):
    """One optimiser step of ONE model on a padded batch; returns (state, metric sums)."""
    num_real = jnp.sum(row_mask)
    weights = row_mask.astype(jnp.float32)
    dropout_key = jax.random.fold_in(jax.random.fold_in(state.rng, _DROPOUT_STREAM), state.step)

    def loss_fn(params):
        logits, mutated = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            x,
            train=True,
            mask=row_mask,
            rngs={"dropout": dropout_key},
            mutable=["batch_stats"],
        )
        logits = logits.astype(jnp.float32)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        loss = jnp.sum(losses * weights) / jnp.maximum(num_real, 1)
        return loss, (logits, losses, mutated.get("batch_stats", {}))

    if config.dpsgd:
        logits, losses, batch_stats, grads = _private_gradient(
            model, config, state, x, y, row_mask, dropout_key)
    else:
        (_, (logits, losses, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
    opt_state = state.opt_state._replace(
        hyperparams={**state.opt_state.hyperparams,
                     "learning_rate": jnp.asarray(learning_rate, jnp.float32)}
    )
    updates, opt_state = make_optimizer(config).update(grads, opt_state, state.params)
    updated = state.replace(
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
        step=state.step + 1,
    )
    state = _select(state.active & (num_real > 0), updated, state)
    correct = (jnp.argmax(logits, -1) == y) & row_mask
    return state, {
        "loss_sum": jnp.sum(losses * weights),
        "correct": jnp.sum(correct),
        "count": num_real,
    }


def _private_gradient(model, config: TrainConfig, state: ModelState, x, y, row_mask, dropout_key):
    """DP-SGD's gradient: per-example gradients, each clipped, summed, noised, averaged.

    The noise is divided by the fixed batch size (not the number of real rows),
    as the privacy accounting assumes.
    """
    if jax.tree.leaves(state.batch_stats):
        raise ValueError("DP-SGD needs a model without BatchNorm (it mixes examples, so "
                         "per-example gradients are not defined): build it with norm='group'.")

    def example_loss(params, x1, y1, key):
        logits = model.apply({"params": params}, x1[None], train=True, rngs={"dropout": key})
        logits = logits.astype(jnp.float32)[0]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y1), logits

    def clip_and_sum(xs, ys, mask, keys):
        (losses, logits), grads = jax.vmap(
            jax.value_and_grad(example_loss, has_aux=True), in_axes=(None, 0, 0, 0))(
                state.params, xs, ys, keys)
        weights = mask.astype(jnp.float32)  # padded rows contribute nothing
        grads = jax.tree.map(lambda g: g * weights.reshape((-1,) + (1,) * (g.ndim - 1)), grads)
        summed, _ = optax.per_example_global_norm_clip(jax.tree.leaves(grads), config.dp_clip_norm)
        return summed, losses, logits

    keys = jax.random.split(dropout_key, x.shape[0])
    micro = config.dp_microbatch_size or x.shape[0]
    if micro == x.shape[0]:
        clipped_sum, losses, logits = clip_and_sum(x, y, row_mask, keys)
    else:  # the batch in chunks, summing the clipped gradients: same result, less memory
        chunks = x.shape[0] // micro
        split = lambda a: a.reshape((chunks, micro) + a.shape[1:])

        def body(total, chunk):
            summed, losses, logits = clip_and_sum(*chunk)
            return [t + g for t, g in zip(total, summed)], (losses, logits)

        zeros = [jnp.zeros_like(p) for p in jax.tree.leaves(state.params)]
        clipped_sum, (losses, logits) = jax.lax.scan(
            body, zeros, (split(x), split(y), split(row_mask), split(keys)))
        losses, logits = losses.reshape(x.shape[0]), logits.reshape((x.shape[0], -1))
    treedef = jax.tree.structure(state.params)
    noise_key = jax.random.fold_in(jax.random.fold_in(state.rng, _NOISE_STREAM), state.step)
    noise_keys = jax.random.split(noise_key, len(clipped_sum))
    std = config.dp_noise_multiplier * config.dp_clip_norm
    noisy = [(g + std * jax.random.normal(k, g.shape, g.dtype)) / config.batch_size
             for g, k in zip(clipped_sum, noise_keys)]
    return logits, losses, state.batch_stats, jax.tree.unflatten(treedef, noisy)


def _batch_positions(num_positions: int, batch_size: int):
    steps = max(1, math.ceil(num_positions / batch_size))
    return steps, steps * batch_size


def evaluate_model(model, preprocess, variables, images, labels, indices, count, batch_size):
    """Inference-mode loss and accuracy of ONE model on ``indices[:count]`` of the dataset."""
    steps, padded = _batch_positions(indices.shape[0], batch_size)
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


def train_epoch(
    model, config: TrainConfig, preprocess, state: ModelState, images, labels,
    member_indices, member_count, val_indices, val_count, epoch,
):
    """One epoch of ONE model inside ``lax.scan``, then validation and early-stopping update."""
    batch = config.batch_size
    steps, padded = _batch_positions(member_indices.shape[0], batch)
    positions = jnp.arange(member_indices.shape[0])
    shuffle_key = jax.random.fold_in(jax.random.fold_in(state.rng, _SHUFFLE_STREAM), epoch)
    draws = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(shuffle_key, i)))(positions)
    order = jnp.argsort(jnp.where(positions < member_count, draws, 2.0))  # real members first
    perm = jnp.pad(member_indices[order], (0, padded - member_indices.shape[0]))
    valid = jnp.arange(padded) < member_count
    learning_rate = config.learning_rate * config.lr_decay ** epoch.astype(jnp.float32)

    def body(state, s):
        idx = jax.lax.dynamic_slice(perm, (s * batch,), (batch,))
        mask = jax.lax.dynamic_slice(valid, (s * batch,), (batch,))
        x = preprocess(images[idx])
        if config.augment == "flip_crop":
            x = augment_batch(jax.random.fold_in(
                jax.random.fold_in(state.rng, _AUGMENT_STREAM), state.step), x)
        return train_step(model, config, state, x, labels[idx], mask, learning_rate)

    was_active = state.active
    state, sums = jax.lax.scan(body, state, jnp.arange(steps))
    sums = jax.tree.map(jnp.sum, sums)
    metrics = {
        "loss": sums["loss_sum"] / jnp.maximum(sums["count"], 1),
        "train_acc": sums["correct"] / jnp.maximum(sums["count"], 1),
        "learning_rate": learning_rate,
        "active": was_active,
    }
    if val_indices is not None:
        val = evaluate_model(model, preprocess, state.variables(), images, labels, val_indices,
                             val_count, config.eval_batch_size)
        metrics["val_loss"], metrics["val_acc"] = val["loss"], val["accuracy"]
        if config.early_stopping:
            improved = was_active & (val["accuracy"] > state.best_val_acc)
            since = jnp.where(improved, 0, state.epochs_since_best + was_active.astype(jnp.int32))
            state = state.replace(
                best_params=_select(improved, state.params, state.best_params),
                best_batch_stats=_select(improved, state.batch_stats, state.best_batch_stats),
                best_val_acc=jnp.where(improved, val["accuracy"], state.best_val_acc),
                best_epoch=jnp.where(improved, epoch, state.best_epoch),
                epochs_since_best=since,
                active=state.active & (since < config.patience),
            )
    return state, metrics


@functools.partial(jax.jit, static_argnames=("model", "config", "preprocess"), donate_argnums=(3,))
def train_ensemble_epoch(
    model, config, preprocess, state, images, labels,
    member_indices, member_counts, val_indices, val_counts, epoch,
):
    """:func:`train_epoch` vmapped over the model axis and jitted: the whole ensemble's epoch."""
    val_axis = None if val_indices is None else 0
    return jax.vmap(
        train_epoch,
        in_axes=(None, None, None, 0, None, None, 0, 0, val_axis, val_axis, None),
    )(model, config, preprocess, state, images, labels, member_indices, member_counts,
      val_indices, val_counts, epoch)


@functools.partial(jax.jit, static_argnames=("model", "config", "preprocess"), donate_argnums=(3,))
def train_ensemble_epoch_mapped(
    model, config, preprocess, state, images, labels,
    member_indices, member_counts, val_indices, val_counts, epoch,
):
    """:func:`train_epoch` under ``lax.map`` over the model axis: models one after another
    inside one jitted program (no batching across models, no host round trip per model)."""

    def one(args):
        one_state, indices, count, v_indices, v_count = args
        return train_epoch(model, config, preprocess, one_state, images, labels, indices, count,
                           v_indices, v_count, epoch)

    return jax.lax.map(one, (state, member_indices, member_counts, val_indices, val_counts))


# How the K models of one epoch are run; all give the same result (tested):
#   vmap: one program, models batched (convolutions become grouped/batched ones);
#   map:  one program, lax.map over models (sequential on the device);
#   loop: the K=1 program called once per model from the host.
STRATEGIES = ("auto", "vmap", "map", "loop")
# "auto" per backend, from experiments/benchmark.py (README, Performance). On a 2-core CPU
# lax.map was the fastest for K >= 2 (e.g. CIFAR-10 shadow CNN, K=4: map 198 images/s, vmap
# 178, loop 167); accelerators batch models (vmap) until measured otherwise.
AUTO_STRATEGY = {"cpu": "map", "gpu": "vmap", "tpu": "vmap"}


def resolve_strategy(strategy: str, backend: str | None = None) -> str:
    """Maps "auto" to the measured fastest strategy of ``backend`` (default: JAX's)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}.")
    if strategy == "auto":
        return AUTO_STRATEGY.get(backend or jax.default_backend(), "vmap")
    return strategy


def check_run_flags(strategy: str, checkpoint_every: int) -> None:
    """Raises ValueError naming a bad --strategy or --checkpoint_every (shared by experiments)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"--strategy must be one of {STRATEGIES}, got {strategy!r}.")
    if checkpoint_every < 1:
        raise ValueError(f"--checkpoint_every must be >= 1, got {checkpoint_every}.")


def _slice_models(tree, start, stop):
    return jax.tree.map(lambda x: None if x is None else x[start:stop], tree)


def _run_epoch(strategy, model, config, preprocess, state, images, labels, member_indices,
               member_counts, val_indices, val_counts, epoch):
    """One epoch of the whole ensemble by ``strategy``; returns (state, [K] metrics)."""
    # The epoch program does not depend on the number of epochs: one compile serves all runs.
    config = dataclasses.replace(config, epochs=1)
    if strategy == "vmap":
        return train_ensemble_epoch(model, config, preprocess, state, images, labels,
                                    member_indices, member_counts, val_indices, val_counts, epoch)
    if strategy == "map":
        return train_ensemble_epoch_mapped(model, config, preprocess, state, images, labels,
                                           member_indices, member_counts, val_indices,
                                           val_counts, epoch)
    states, metrics = [], []
    for k in range(member_indices.shape[0]):
        one = lambda tree: _slice_models(tree, k, k + 1)
        new_state, new_metrics = train_ensemble_epoch(
            model, config, preprocess, one(state), images, labels, one(member_indices),
            one(member_counts), one(val_indices), one(val_counts), epoch)
        states.append(new_state)
        metrics.append(new_metrics)
    concat = lambda *xs: jnp.concatenate(xs)
    return jax.tree.map(concat, *states), jax.tree.map(concat, *metrics)


@dataclasses.dataclass
class TrainResult:
    """The trained ensemble and its per-epoch history (each entry: name -> [K] numpy array)."""

    state: ModelState
    history: list[dict[str, np.ndarray]]
    seconds: float

    def variables(self):
        """Each model's final variables: best-validation ones under early stopping."""
        return self.state.variables(use_best=True)


def _check_sets(sets: MemberSets, pool_size: int, what: str, num_models: int | None = None):
    if num_models is not None and sets.num_models != num_models:
        raise ValueError(f"{what} has {sets.num_models} sets but the ensemble has {num_models} "
                         "models; give one set per model.")
    if sets.indices.max(initial=0) >= pool_size:
        raise ValueError(f"{what} indexes example {int(sets.indices.max())} but the data has "
                         f"only {pool_size}; build the sets from this dataset's size.")


def train_ensemble(
    model: nn.Module,
    images,
    labels,
    members: MemberSets,
    config: TrainConfig = TrainConfig(),
    *,
    keys=None,
    seed: int = 0,
    validation: MemberSets | None = None,
    preprocess: Callable = IDENTITY,
    state: ModelState | None = None,
    start_epoch: int = 0,
    on_epoch_end: Callable[[int, ModelState, dict], None] | None = None,
    log_prefix: str = "",
    mesh: Mesh | None = None,
    strategy: str = "auto",
    checkpoint_dir: str | None = None,
    checkpoint_every: int = 5,
) -> TrainResult:
    """Trains ``members.num_models`` models at once, model k on ``members.member(k)``.

    Args:
      model: a Flax module called as ``model(x, train, mask=...)``.
      images, labels: the whole pool (numpy or device arrays), put on the device once;
        member and validation sets index into it.
      members: one member set per model (sizes may differ).
      config: hyper-parameters (see :class:`TrainConfig`).
      keys: [K] model keys; default ``model_keys(seed, K)``.
      validation: one validation set per model; needed for early stopping.
      preprocess: jittable, hashable map from stored images to model inputs.
      state, start_epoch: resume from a saved ensemble state.
      on_epoch_end: called with (epoch, state, metrics) after every epoch, e.g. to checkpoint.
      mesh: a mesh with a ``models`` axis (see :func:`model_mesh`): the model axis is
        sharded over its devices, each holding K/devices models; K is padded up to a
        multiple of the device count with copies of model 0, dropped from the result.
      strategy: how the models of an epoch run (see :data:`STRATEGIES`); "auto" picks the
        fastest measured on this backend. The results do not depend on it.
      checkpoint_dir: if given, the ensemble state and history are saved there (orbax) every
        ``checkpoint_every`` epochs and at the end; a later call with the same directory and
        the same run resumes from the last save (and refuses a different run's directory).
    """
    num_models = members.num_models
    # A mesh shards the vmapped model axis, so "auto" means vmap there.
    strategy = "vmap" if (mesh is not None and strategy == "auto") else resolve_strategy(strategy)
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}.")
    if state is None and keys is None:
        keys = model_keys(seed, num_models)
    fingerprint = None
    if checkpoint_dir is not None:
        if state is not None or start_epoch:
            raise ValueError("checkpoint_dir resumes a run by itself; do not also pass state= or "
                             "start_epoch=.")
        # Of the unpadded run: the same run resumes on any number of devices.
        fingerprint = _run_fingerprint(model, config, preprocess, images, labels, members,
                                       validation, keys)
    if mesh is not None and strategy != "vmap":
        raise ValueError(f"A mesh shards the vmapped model axis; strategy {strategy!r} cannot "
                         "use it. Pass strategy='vmap' or no mesh.")
    if mesh is not None:
        if "models" not in mesh.axis_names:
            raise ValueError(f"mesh needs a 'models' axis, got axes {mesh.axis_names}; use model_mesh().")
        if state is not None:
            raise ValueError("Resuming a sharded run: pass the saved state without mesh, or re-init.")
        padded = -(-num_models // mesh.shape["models"]) * mesh.shape["models"]
        members, validation, keys = _pad_models(members, validation, keys, padded)
        result = _train_ensemble(
            model, images, labels, members, config, keys=keys, validation=validation,
            preprocess=preprocess, state=None, start_epoch=start_epoch, on_epoch_end=on_epoch_end,
            log_prefix=log_prefix, mesh=mesh, strategy=strategy, checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every, fingerprint=fingerprint)
        return _unpad_result(result, num_models)
    return _train_ensemble(model, images, labels, members, config, keys=keys,
                           validation=validation, preprocess=preprocess, state=state,
                           start_epoch=start_epoch, on_epoch_end=on_epoch_end,
                           log_prefix=log_prefix, mesh=None, strategy=strategy,
                           checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                           fingerprint=fingerprint)


def model_mesh(devices=None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all) whose axis ``models`` carries the ensemble."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("models",))


def default_mesh(strategy: str = "auto") -> Mesh | None:
    """The mesh an experiment should pass: all devices when there are several and the
    strategy can shard (auto or vmap; with a mesh "auto" means vmap), else None."""
    if jax.device_count() > 1 and strategy in ("auto", "vmap"):
        return model_mesh()
    return None


def _shard(tree, mesh: Mesh):
    """Puts every leaf's leading (model) axis across the mesh's ``models`` axis."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec("models")))


def _pad_models(members: MemberSets, validation, keys, padded: int):
    extra = padded - members.num_models
    if extra == 0:
        return members, validation, keys

    def pad(sets):
        if sets is None:
            return None
        return MemberSets(np.concatenate([sets.indices, np.repeat(sets.indices[:1], extra, 0)]),
                          np.concatenate([sets.counts, np.repeat(sets.counts[:1], extra)]))

    return pad(members), pad(validation), jnp.concatenate([keys, jnp.repeat(keys[:1], extra, 0)])


def _unpad_result(result: "TrainResult", num_models: int) -> "TrainResult":
    take = lambda tree: jax.tree.map(lambda x: x[:num_models], tree)
    return TrainResult(state=take(result.state),
                       history=[{k: v[:num_models] for k, v in h.items()} for h in result.history],
                       seconds=result.seconds)


def _train_ensemble(model, images, labels, members, config, *, keys, validation, preprocess,
                    state, start_epoch, on_epoch_end, log_prefix, mesh, strategy, checkpoint_dir,
                    checkpoint_every, fingerprint) -> TrainResult:
    num_models = members.num_models
    images = jnp.asarray(images)
    labels = jnp.asarray(labels, jnp.int32)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"images ({images.shape[0]}) and labels ({labels.shape[0]}) differ in "
                         "length.")
    _check_sets(members, images.shape[0], "members")
    if config.early_stopping and validation is None:
        raise ValueError("early_stopping needs a validation set per model; pass validation=.")
    val_indices = val_counts = None
    if validation is not None:
        _check_sets(validation, images.shape[0], "validation", num_models)
        val_indices = jnp.asarray(validation.indices)
        val_counts = jnp.asarray(validation.counts)
    if state is None:
        if keys.shape[0] != num_models:
            raise ValueError(f"Got {keys.shape[0]} keys for {num_models} models.")
        if mesh is not None:  # initialise each model on its own device
            keys = _shard(keys, mesh)
        state = init_ensemble(model, config, keys, preprocess(images[:1]))
    member_indices = jnp.asarray(members.indices)
    member_counts = jnp.asarray(members.counts)
    if mesh is not None:  # models across devices; the data replicated, once per device
        state, member_indices, member_counts = _shard((state, member_indices, member_counts), mesh)
        if val_indices is not None:
            val_indices, val_counts = _shard((val_indices, val_counts), mesh)
        images, labels = jax.device_put((images, labels), NamedSharding(mesh, PartitionSpec()))

    history = []
    checkpoints = None
    if checkpoint_dir is not None:
        checkpoints = _Checkpoints(checkpoint_dir, fingerprint)
        restored = checkpoints.restore(state)
        if restored is not None:
            state, history = restored
            start_epoch = len(history)
            logging.info("%sresumed from %s after epoch %d", log_prefix, checkpoint_dir,
                         start_epoch)
    start = time.perf_counter()
    stopped = bool(history) and config.early_stopping and not history[-1]["active"].any()
    for epoch in range(start_epoch, config.epochs if not stopped else start_epoch):
        tick = time.perf_counter()
        state, metrics = _run_epoch(
            strategy, model, config, preprocess, state, images, labels, member_indices,
            member_counts, val_indices, val_counts, jnp.asarray(epoch, jnp.int32),
        )
        metrics = {k: np.asarray(v) for k, v in metrics.items()}
        history.append(metrics)
        logging.info("%s%s", log_prefix, _format_epoch(epoch, config.epochs, metrics,
                                                      time.perf_counter() - tick))
        stopped = config.early_stopping and not metrics["active"].any()
        if checkpoints is not None and ((epoch + 1) % checkpoint_every == 0
                                        or epoch + 1 == config.epochs or stopped):
            checkpoints.save(epoch + 1, state, history)
        if on_epoch_end is not None:
            on_epoch_end(epoch, state, metrics)
        if stopped:
            logging.info("%sall %d models stopped early after epoch %d", log_prefix, num_models,
                         epoch + 1)
            break
    if checkpoints is not None:
        checkpoints.close()
    return TrainResult(state=state, history=history, seconds=time.perf_counter() - start)


def _run_fingerprint(model, config, preprocess, images, labels, members, validation, keys) -> str:
    """A digest of everything that decides a run's result (not the strategy or the mesh)."""
    digest = hashlib.sha256()
    digest.update(repr(model).encode())
    digest.update(repr(config).encode())
    digest.update(repr(preprocess).encode())
    digest.update(repr(tuple(images.shape)).encode())
    digest.update(np.asarray(labels).tobytes())
    step = max(1, images.shape[0] // 64)  # a strided sample of the images, not all of them
    digest.update(np.asarray(images[::step]).tobytes())
    for sets in (members, validation):
        if sets is not None:
            digest.update(np.asarray(sets.indices).tobytes())
            digest.update(np.asarray(sets.counts).tobytes())
    keys = jnp.asarray(keys)
    digest.update(np.asarray(jax.random.key_data(keys) if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key)
                             else keys).tobytes())
    return digest.hexdigest()[:16]


class _QuietOrbax(stdlib_logging.Filter):
    """Drops orbax's INFO chatter (several lines per save) from the absl log."""

    def filter(self, record):
        return record.levelno > stdlib_logging.INFO or "orbax" not in record.pathname


class _Checkpoints:
    """The ensemble's state and history in an orbax CheckpointManager (latest save kept)."""

    def __init__(self, directory: str, fingerprint: str):
        import orbax.checkpoint as ocp  # imported here: only runs that checkpoint need it

        absl_logger = stdlib_logging.getLogger("absl")
        if not any(isinstance(f, _QuietOrbax) for f in absl_logger.filters):
            absl_logger.addFilter(_QuietOrbax())

        self._ocp = ocp
        self.directory = os.path.abspath(directory)
        self.fingerprint = fingerprint
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False),
        )

    def restore(self, template: ModelState):
        step = self.manager.latest_step()
        if step is None:
            return None
        ocp = self._ocp
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        meta = meta["meta"]
        if meta.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"{self.directory} holds checkpoints of a different run (fingerprint "
                f"{meta.get('fingerprint')}, this run {self.fingerprint}): refusing to resume it. "
                "Use another directory, or delete that one to start over.")
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(template)))
        history = [{k: np.asarray(v) for k, v in h.items()} for h in meta["history"]]
        return restored["state"], history

    def save(self, epochs_done: int, state: ModelState, history):
        ocp = self._ocp
        meta = {"fingerprint": self.fingerprint, "epochs_done": epochs_done,
                "history": [{k: np.asarray(v).tolist() for k, v in h.items()} for h in history]}
        self.manager.save(epochs_done, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
        self.manager.wait_until_finished()

    def close(self):
        self.manager.close()


def _format_epoch(epoch, epochs, metrics, seconds):
    def stat(name):
        v = metrics[name]
        return f"{name} {v.mean():.4f}" + (f"±{v.std():.4f}" if v.size > 1 else "")

    parts = [f"epoch {epoch + 1}/{epochs}", stat("loss"), stat("train_acc")]
    if "val_acc" in metrics:
        parts.append(stat("val_acc"))
    parts.append(f"active {int(metrics['active'].sum())}/{metrics['active'].size}")
    parts.append(f"{seconds:.1f}s")
    return "  ".join(parts)


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
) -> np.ndarray:
    """Posteriors (or logits) of all K models on ``images``: float32 [K, N, classes].

    Always inference mode (BatchNorm running statistics, no dropout).
    ``variables`` is an ensemble's ``{"params", "batch_stats"}`` with a leading [K] axis,
    e.g. ``TrainResult.variables()``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    n = images.shape[0]
    if n == 0:
        raise ValueError("predict got no images.")
    batch_size = min(batch_size, n)
    outputs = []
    for start in range(0, n, batch_size):
        x = jnp.asarray(images[start : start + batch_size])
        real = x.shape[0]
        if real < batch_size:  # Pad so every call reuses one compiled program.
            x = jnp.concatenate([x, jnp.repeat(x[-1:], batch_size - real, axis=0)])
        outputs.append(np.asarray(_predict_batch(model, preprocess, variables, x, logits))[:, :real])
    return np.concatenate(outputs, axis=1)


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
    _check_sets(sets, images.shape[0], "sets")
    out = _evaluate_ensemble(model, preprocess, variables, images, jnp.asarray(labels, jnp.int32),
                             jnp.asarray(sets.indices), jnp.asarray(sets.counts), batch_size)
    return {k: np.asarray(v) for k, v in out.items()}


def take_model(tree, k: int):
    """Model k's slice of an ensemble pytree (e.g. to compare with a K=1 run)."""
    return jax.tree.map(lambda x: x[k], tree)


def stack_models(trees: Sequence[Any]):
    """Stacks K single-model pytrees into one ensemble pytree."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
