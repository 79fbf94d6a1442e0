"""The ensemble trainer: K models of one architecture trained at once as one jitted program.

:func:`train_epoch` runs a whole epoch of ONE model inside ``lax.scan`` over
batches drawn from the device-resident dataset by the model's own permutation
of its own member set, then validates. A strategy (:data:`STRATEGIES`) runs it
for all K models: vmapped, under ``lax.map``, or one by one; all give the same
result. :func:`train_ensemble` loops over epochs on the host, optionally with
the model axis sharded over a mesh and with checkpoints to resume from.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import functools
import time

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import numpy as np

from jaxpet import distributed, files, progress
from jaxpet.data import IDENTITY
from jaxpet.errors import UserError
from jaxpet.splits import MemberSets
from jaxpet.training import sharding
from jaxpet.training.checkpoints import Checkpoints, run_fingerprint
from jaxpet.training.inference import batch_positions, check_sets, evaluate_model
from jaxpet.training.recipe import augmented, check_recipe, identity
from jaxpet.training.state import (
    AUGMENT_STREAM,
    SHUFFLE_STREAM,
    ModelState,
    TrainConfig,
    augment_batch,
    full_batches_only,
    init_ensemble,
    model_keys,
    select,
    train_step,
)


def train_epoch(
    model, config: TrainConfig, preprocess, state: ModelState, images, labels,
    member_indices, member_count, val_indices, val_count, epoch,
):
    """One epoch of ONE model inside ``lax.scan``, then validation and early-stopping update.

    Each example's place in the shuffle is drawn from ``fold_in(key, position)``,
    so model k sees the same batches whether it trains alone or padded inside a
    larger ensemble; padded rows are masked out of everything. The history's
    ``learning_rate`` is the flags' schedule's; a recipe's own optimiser keeps its rate in
    its state, so the entry is left out rather than reported wrong.
    """
    batch = config.batch_size
    steps, padded = batch_positions(member_indices.shape[0], batch)
    positions = jnp.arange(member_indices.shape[0])
    shuffle_key = jax.random.fold_in(jax.random.fold_in(state.rng, SHUFFLE_STREAM), epoch)
    draws = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(shuffle_key, i)))(positions)
    order = jnp.argsort(jnp.where(positions < member_count, draws, 2.0))  # real members first
    perm = jnp.pad(member_indices[order], (0, padded - member_indices.shape[0]))
    valid = jnp.arange(padded) < member_count
    by_epoch = config.user_optimizer is None
    learning_rate = config.learning_rate_at(epoch) if by_epoch else None

    def body(state, s):
        idx = jax.lax.dynamic_slice(perm, (s * batch,), (batch,))
        mask = jax.lax.dynamic_slice(valid, (s * batch,), (batch,))
        x = preprocess(images[idx])
        # One key per model and per step (the step count, not the epoch's batch index).
        augment_key = jax.random.fold_in(jax.random.fold_in(state.rng, AUGMENT_STREAM),
                                         state.step)
        if config.user_augment is not None:
            x = augmented(config.user_augment, augment_key, x)
        elif config.augment == "flip_crop":
            x = augment_batch(augment_key, x)
        return train_step(model, config, state, x, labels[idx], mask, learning_rate)

    was_active = state.active
    state, sums = jax.lax.scan(body, state, jnp.arange(steps))
    sums = jax.tree.map(jnp.sum, sums)
    metrics = {
        "loss": sums["loss_sum"] / jnp.maximum(sums["count"], 1),
        "train_acc": sums["correct"] / jnp.maximum(sums["count"], 1),
        **({"learning_rate": learning_rate} if by_epoch else {}),
        "active": was_active,
    }
    if val_indices is not None:
        val = evaluate_model(model, preprocess, state.variables(), images, labels, val_indices,
                             val_count, config.eval_batch_size)
        metrics["val_loss"], metrics["val_acc"] = val["loss"], val["accuracy"]
        if config.early_stopping:
            improved = was_active & (val["accuracy"] > state.best_val_acc)
            since = jnp.where(improved, 0, state.epochs_since_best + was_active.astype(jnp.int32))
            state = dataclasses.replace(  # (flax's state.replace, which mypy cannot see)
                state,
                best_params=select(improved, state.params, state.best_params),
                best_batch_stats=select(improved, state.batch_stats, state.best_batch_stats),
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
    """:func:`train_epoch` vmapped over the model axis and jitted: the whole ensemble's epoch.

    One model runs unbatched: a size-1 model axis is squeezed rather than vmapped,
    because XLA's CPU backend (YNNPACK) reduces a [1, N, C] product over N some 40x
    slower than [N, C] (measured: 230 ms against 5 ms), which made BatchNorm's
    statistics the costliest op of a K=1 step. Same program otherwise.
    """
    if member_indices.shape[0] == 1:
        squeeze = lambda tree: jax.tree.map(lambda x: None if x is None else x[0], tree)
        state, metrics = train_epoch(model, config, preprocess, squeeze(state), images, labels,
                                     member_indices[0], member_counts[0], squeeze(val_indices),
                                     squeeze(val_counts), epoch)
        return jax.tree.map(lambda x: x[None], (state, metrics))
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
# "auto" per backend, from experiments/benchmark.py (docs/performance.md). On a 2-core CPU
# lax.map was the fastest at K=8 on all four seed CNNs (e.g. CIFAR-10 shadow CNN: map 1297
# images/s, vmap 1100, loop 1117); accelerators batch models (vmap) until measured otherwise.
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
    # (A cosine schedule keeps its length in schedule_epochs.)
    cosine = config.schedule in ("cosine", "lira_cosine")
    config = dataclasses.replace(config, epochs=1, schedule_epochs=(
        config.schedule_epochs or config.epochs) if cosine else 0)
    if strategy == "vmap":
        return train_ensemble_epoch(model, config, preprocess, state, images, labels,
                                    member_indices, member_counts, val_indices, val_counts, epoch)
    if strategy == "map":
        return train_ensemble_epoch_mapped(model, config, preprocess, state, images, labels,
                                           member_indices, member_counts, val_indices,
                                           val_counts, epoch)
    states, metrics = [], []
    for k in range(member_indices.shape[0]):
        one = lambda tree: _slice_models(tree, k, k + 1)  # noqa: B023 - used in this iteration only
        new_state, new_metrics = train_ensemble_epoch(
            model, config, preprocess, one(state), images, labels, one(member_indices),
            one(member_counts), one(val_indices), one(val_counts), epoch)
        states.append(new_state)
        metrics.append(new_metrics)
    concat = lambda *xs: jnp.concatenate(xs)
    return jax.tree.map(concat, *states), jax.tree.map(concat, *metrics)


@dataclasses.dataclass
class TrainResult:
    """The trained ensemble and its per-epoch history (each entry: name -> [K] numpy array).

    Across processes the state is every model's, on the host, without its optimiser state
    (``opt_state`` is None; see :mod:`jaxpet.distributed`)."""

    state: ModelState
    history: list[dict[str, np.ndarray]]
    seconds: float

    def variables(self):
        """Each model's final variables: best-validation ones under early stopping."""
        return self.state.variables(use_best=True)


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
    checkpoint_dir=None,
    checkpoint_every: int = 5,
) -> TrainResult:
    """Trains ``members.num_models`` models at once, model k on ``members.member(k)``.

    Args:
      model: a Flax module called as ``model(x, train, mask=...)``.
      images, labels: the whole pool (numpy or device arrays), put on the device once;
        member and validation sets index into it.
      members: one member set per model (sizes may differ).
      config: hyper-parameters (see :class:`TrainConfig`); its ``user_recipe`` (a user's
        optax optimiser and augmentation) is checked against the model before any work.
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
        the same run resumes from the last save (see :mod:`jaxpet.training.checkpoints`:
        another run's directory is refused, a full disk or an unreadable save handled).
    """
    num_models = members.num_models
    if distributed.is_multiprocess() and mesh is None:
        if strategy not in ("auto", "vmap"):
            raise UserError(f"--strategy={strategy} runs every model in one process; across "
                            f"{distributed.process_count()} processes the model axis is sharded "
                            "over their devices, which only vmap does — use --strategy=vmap "
                            "(or auto).")
        mesh = sharding.model_mesh()  # every process's devices: each trains its own models
    # A mesh shards the vmapped model axis, so "auto" means vmap there.
    strategy = "vmap" if (mesh is not None and strategy == "auto") else resolve_strategy(strategy)
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}.")
    if state is None and keys is None:
        keys = model_keys(seed, num_models)
    recipe_inputs = None
    if config.user_recipe is not None:
        recipe_inputs = _recipe_inputs(model, config, preprocess, images)
        check_recipe(config.user_recipe, *recipe_inputs)
    fingerprint = None
    if checkpoint_dir is not None:
        if state is not None or start_epoch:
            raise ValueError("checkpoint_dir resumes a run by itself; do not also pass state= or "
                             "start_epoch=.")
        # Of the unpadded run: the same run resumes on any number of devices. A recipe's
        # functions print with their addresses, so it enters by what it computes instead.
        fingerprint = run_fingerprint(model, dataclasses.replace(config, user_recipe=None),
                                      preprocess, images, labels, members, validation, keys)
        if config.user_recipe is not None and recipe_inputs is not None:
            fingerprint = files.digest(fingerprint, identity(config.user_recipe, *recipe_inputs))
    if mesh is not None and strategy != "vmap":
        raise ValueError(f"A mesh shards the vmapped model axis; strategy {strategy!r} cannot "
                         "use it. Pass strategy='vmap' or no mesh.")
    if mesh is not None:
        if "models" not in mesh.axis_names:
            raise ValueError(f"mesh needs a 'models' axis, got axes {mesh.axis_names}; use "
                             "model_mesh().")
        if state is not None:
            raise ValueError("Resuming a sharded run: pass the saved state without mesh, or "
                             "re-init.")
        padded = sharding.padded_model_count(num_models, mesh)
        if padded != num_models:
            logging.info("%s%d models over %d devices: padded to %d with copies of model 0, "
                         "dropped from the results", log_prefix, num_models, mesh.size, padded)
        members, validation, keys = sharding.pad_models(members, validation, keys, padded)
    result = _train_ensemble(model, images, labels, members, config, keys=keys,
                             validation=validation, preprocess=preprocess, state=state,
                             start_epoch=start_epoch, on_epoch_end=on_epoch_end,
                             log_prefix=log_prefix, mesh=mesh, strategy=strategy,
                             checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                             fingerprint=fingerprint)
    if mesh is not None:
        if distributed.is_multiprocess():
            # Every process gets every model's final weights and bookkeeping in host memory
            # (the models are small; their training stayed split), so whatever follows runs
            # unchanged. The optimiser state, which nothing after training reads, is not
            # gathered: it is None in a multi-process result.
            result = dataclasses.replace(
                result, state=distributed.gather(dataclasses.replace(result.state, opt_state=None)))
        result = TrainResult(state=sharding.unpad_models(result.state, num_models),
                             history=sharding.unpad_models(result.history, num_models),
                             seconds=result.seconds)
    progress.current().record_history(phase_name(log_prefix),
                                       progress.history_rows(result.history))
    return result


def _recipe_inputs(model, config: TrainConfig, preprocess, images):
    """Shapes of one model's parameters and of a preprocessed training batch: what a recipe
    is checked and identified on (nothing is computed)."""
    stored = jax.ShapeDtypeStruct((config.batch_size, *np.shape(images)[1:]),
                                  jnp.result_type(images))
    batch = jax.eval_shape(preprocess, stored)
    sample = jax.ShapeDtypeStruct((1, *batch.shape[1:]), batch.dtype)
    variables = jax.eval_shape(
        lambda x: model.init({"params": jax.random.PRNGKey(0)}, x, train=False), sample)
    return variables["params"], batch


def _train_ensemble(model, images, labels, members, config, *, keys, validation, preprocess,
                    state, start_epoch, on_epoch_end, log_prefix, mesh, strategy, checkpoint_dir,
                    checkpoint_every, fingerprint) -> TrainResult:
    num_models = members.num_models
    images = jnp.asarray(images)
    labels = jnp.asarray(labels, jnp.int32)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"images ({images.shape[0]}) and labels ({labels.shape[0]}) differ in "
                         "length.")
    check_sets(members, images.shape[0], "members")
    if config.early_stopping and validation is None:
        raise ValueError("early_stopping needs a validation set per model; pass validation=.")
    val_indices = val_counts = None
    if validation is not None:
        check_sets(validation, images.shape[0], "validation", num_models)
        val_indices = jnp.asarray(validation.indices)
        val_counts = jnp.asarray(validation.counts)
    if state is None:
        if keys.shape[0] != num_models:
            raise ValueError(f"Got {keys.shape[0]} keys for {num_models} models.")
        sample = preprocess(images[:1])
        if mesh is not None and distributed.is_multiprocess():
            # Each process initialises only its own models, on its own devices.
            state = jax.jit(functools.partial(init_ensemble, model, config),
                            out_shardings=jax.sharding.NamedSharding(
                                mesh, jax.sharding.PartitionSpec("models")))(
                sharding.shard_models(keys, mesh), sharding.replicate(np.asarray(sample), mesh))
        else:
            if mesh is not None:  # initialise each model on its own device
                keys = sharding.shard_models(keys, mesh)
            state = init_ensemble(model, config, keys, sample)
    if (full_batches_only(model, state.batch_stats)
            and int(members.counts.min()) < config.batch_size):
        raise UserError(
            f"a model's member set holds {int(members.counts.min())} examples, fewer than one "
            f"batch of {config.batch_size}: a module with BatchNorm that takes no mask= trains on "
            "full batches only, so it would never be updated — lower the batch size (or give its "
            "__call__ a mask keyword for padded rows).")
    member_indices = jnp.asarray(members.indices)
    member_counts = jnp.asarray(members.counts)
    if mesh is not None:  # models across devices; the data replicated, once per device
        state, member_indices, member_counts = sharding.shard_models(
            (state, member_indices, member_counts), mesh)
        if val_indices is not None:
            val_indices, val_counts = sharding.shard_models((val_indices, val_counts), mesh)
        images, labels = sharding.replicate((images, labels), mesh)

    history = []
    checkpoints = None
    if checkpoint_dir is not None:
        checkpoints = Checkpoints(checkpoint_dir, fingerprint)
    try:
        if checkpoints is not None:
            restored = checkpoints.restore(state)
            if restored is not None:
                state, history = restored
                start_epoch = len(history)
                logging.info("%sresumed from %s after epoch %d", log_prefix,
                             checkpoints.directory, start_epoch)
            checkpoints.check_space(state, history)  # refuse a full disk before any training
        return _epochs(model, images, labels, config, state, history, start_epoch, member_indices,
                       member_counts, val_indices, val_counts, preprocess=preprocess,
                       strategy=strategy, on_epoch_end=on_epoch_end, log_prefix=log_prefix,
                       checkpoints=checkpoints, checkpoint_every=checkpoint_every)
    finally:
        if checkpoints is not None:
            checkpoints.close()


def phase_name(log_prefix: str) -> str:
    """The progress and history name of a training call: its log prefix without the colon."""
    return log_prefix.strip().rstrip(":").strip() or "training"


def _epochs(model, images, labels, config, state, history, start_epoch, member_indices,
            member_counts, val_indices, val_counts, *, preprocess, strategy, on_epoch_end,
            log_prefix, checkpoints, checkpoint_every) -> TrainResult:
    """The host's loop over epochs, saving checkpoints as it goes and reporting progress."""
    start = time.perf_counter()
    stopped = bool(history) and config.early_stopping and not history[-1]["active"].any()
    last_epoch = config.epochs if not stopped else start_epoch
    num_models = member_indices.shape[0]
    # Work per epoch in training-image units: every member trained, every validation example
    # run forward once.
    member_counts_, val_counts_ = distributed.gather((member_counts, val_counts))
    images_per_epoch = float(np.sum(member_counts_))
    units_per_epoch = images_per_epoch + (0.0 if val_counts_ is None else
                                          progress.FORWARD * float(np.sum(val_counts_)))
    tracker = progress.current()
    with tracker.phase(phase_name(log_prefix), (last_epoch - start_epoch) * units_per_epoch,
                       images_per_unit=images_per_epoch / max(units_per_epoch, 1e-12),
                       logs_itself=True) as phase:
        for epoch in range(start_epoch, last_epoch):
            tick = time.perf_counter()
            state, metrics = _run_epoch(
                strategy, model, config, preprocess, state, images, labels, member_indices,
                member_counts, val_indices, val_counts, jnp.asarray(epoch, jnp.int32),
            )
            metrics = distributed.gather(metrics)  # whole on every process
            seconds = time.perf_counter() - tick
            metrics["seconds"] = np.full(num_models, seconds, np.float32)
            history.append(metrics)
            phase.advance(units_per_epoch)
            tracker.info("%s%s", log_prefix, _format_epoch(epoch, config.epochs, metrics, seconds,
                                                          tracker.epoch_line(phase)))
            stopped = config.early_stopping and not metrics["active"].any()
            if checkpoints is not None and ((epoch + 1) % checkpoint_every == 0
                                            or epoch + 1 == config.epochs or stopped):
                checkpoints.save(epoch + 1, state, history)
            if on_epoch_end is not None:
                on_epoch_end(epoch, state, metrics)
            if stopped:
                tracker.info("%sall %d models stopped early after epoch %d", log_prefix,
                             num_models, epoch + 1)
                break
    return TrainResult(state=state, history=history, seconds=time.perf_counter() - start)


def _format_epoch(epoch, epochs, metrics, seconds, rate=""):
    def stat(name):
        v = metrics[name]
        return f"{name} {v.mean():.4f}" + (f"±{v.std():.4f}" if v.size > 1 else "")

    parts = [f"epoch {epoch + 1}/{epochs}", stat("loss"), stat("train_acc")]
    if "val_acc" in metrics:
        parts.append(stat("val_acc"))
    parts.append(f"active {int(metrics['active'].sum())}/{metrics['active'].size}")
    parts.append(f"{seconds:.1f}s")
    if rate:
        parts.append(f"| {rate}")
    return "  ".join(parts)
