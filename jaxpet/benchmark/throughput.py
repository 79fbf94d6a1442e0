"""Throughput of the ensemble trainer: K models per second for each strategy, in one process.

Strategies, measured on the same synthetic data of the real shape:

* ``vmap``: the product, K models in one jitted, vmapped epoch.
* ``map``: K models in one jitted epoch under ``lax.map`` (one after another on the device).
* ``loop``: the same jitted single-model (K=1) epoch called K times from Python.
* ``torch``: a plain PyTorch model of the same architecture and optimiser, trained
  one model after another (:mod:`jaxpet.benchmark.torch_reference`; needs torch).

Each cell reports images/s, model-epochs/s, compile seconds (separately from
the timed epoch), peak device memory and FLOP/s from XLA's cost analysis of
the compiled epoch, with the fraction of the chip's peak where it is known.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpet import data, layers, models, splits, training
from jaxpet.benchmark import profile, torch_reference
from jaxpet.benchmark.workloads import STRATEGIES, WORKLOADS, Cell, peak_flops, synthetic_pool

_EPOCH_PROGRAMS = {"vmap": training.train_ensemble_epoch,
                   "map": training.train_ensemble_epoch_mapped,
                   "loop": training.train_ensemble_epoch}


def _peak_memory(device) -> int | None:
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - CPU backends may not implement it.
        return None
    return None if not stats else int(stats.get("peak_bytes_in_use", 0)) or None


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float(cost.get("flops", 0.0)) if cost else 0.0


def step_flops(model, config, preprocess, state, images, labels) -> float:
    """FLOPs of one vmapped train step, from XLA's cost analysis.

    (Cost analysis counts a loop body once, so the epoch's FLOPs are this
    times the number of steps, not the analysis of the scanned epoch.)
    """
    k = jax.tree.leaves(state.rng)[0].shape[0]
    x = jnp.broadcast_to(preprocess(images[: config.batch_size]),
                         (k, config.batch_size) + images.shape[1:])
    y = jnp.broadcast_to(labels[: config.batch_size], (k, config.batch_size))
    mask = jnp.ones((k, config.batch_size), bool)

    def step(state, x, y, mask):
        return jax.vmap(training.train_step, in_axes=(None, None, 0, 0, 0, 0, None))(
            model, config, state, x, y, mask, config.learning_rate)

    return _flops(jax.jit(step).lower(state, x, y, mask).compile())


def epoch_args(model, config, preprocess, state, images, labels, member_indices, member_counts):
    """The arguments of one epoch program (training only, no validation, epoch 0).

    Shared by the timed cells here and :mod:`jaxpet.benchmark.memory`, which lowers the
    same program on abstract values (``jax.ShapeDtypeStruct``) to read its memory analysis.
    """
    return (model, config, preprocess, state, images, labels, member_indices, member_counts,
            None, None, jnp.asarray(0, jnp.int32))


def _compile_epoch(program, model, config, preprocess, state, images, labels, members):
    args = epoch_args(model, config, preprocess, state, images, labels,
                      jnp.asarray(members.indices), jnp.asarray(members.counts))
    tick = time.perf_counter()
    compiled = program.lower(*args).compile()
    seconds = time.perf_counter() - tick
    steps = -(-int(members.indices.shape[1]) // config.batch_size)
    flops = step_flops(model, config, preprocess, state, images, labels) * steps
    return compiled, args[3:], seconds, flops


def _check_cell(cell: Cell, examples_per_model: int) -> None:
    if cell.workload not in WORKLOADS:
        raise ValueError(f"Unknown workload {cell.workload!r}; known: {sorted(WORKLOADS)}.")
    if cell.strategy not in STRATEGIES:
        raise ValueError(f"Unknown strategy {cell.strategy!r}; known: {STRATEGIES}.")
    if cell.num_models < 1 or examples_per_model < 1:
        raise ValueError("num_models and examples_per_model must be >= 1.")


@dataclasses.dataclass
class PreparedEpoch:
    """A cell's compiled epoch and its inputs: ``run()`` trains every model one epoch."""

    compiled: Any
    states: list
    sets: list
    images: Any
    labels: Any
    compile_seconds: float
    flops_per_epoch: float
    steps_per_epoch: int  # optimiser steps of all K models together

    def run(self):
        out = []
        for state, s in zip(self.states, self.sets, strict=True):
            state, _ = self.compiled(state, self.images, self.labels, jnp.asarray(s.indices),
                                     jnp.asarray(s.counts), None, None, jnp.asarray(0, jnp.int32))
            out.append(state)
        self.states = jax.block_until_ready(out)
        return self.states


def prepare(cell: Cell, examples_per_model: int, batch_size: int = 128) -> PreparedEpoch:
    """Compiles ``cell``'s epoch (a JAX strategy) on synthetic data of the workload's shape."""
    _check_cell(cell, examples_per_model)
    if cell.strategy == "torch":
        raise ValueError("The PyTorch reference has no compiled epoch; use measure().")
    dataset, role, shape = WORKLOADS[cell.workload]
    model = models.seed_cnn(dataset, role, precision=cell.precision, conv_impl=cell.conv_impl,
                            pool_impl=cell.pool_impl, batchnorm_impl=cell.batchnorm_impl)
    preprocess = data.normalizer(dataset)
    config = training.TrainConfig(epochs=1, batch_size=batch_size)
    images, labels = synthetic_pool(shape, 2 * examples_per_model)
    images, labels = jnp.asarray(images), jnp.asarray(labels)
    group = 1 if cell.strategy == "loop" else cell.num_models
    members = splits.random_member_sets(np.arange(2 * examples_per_model), cell.num_models,
                                        examples_per_model, seed=1)
    keys = training.model_keys(0, cell.num_models)
    groups = [slice(i, i + group) for i in range(0, cell.num_models, group)]
    states = [training.init_ensemble(model, config, keys[g], preprocess(images[:1]))
              for g in groups]
    sets = [splits.MemberSets(members.indices[g], members.counts[g]) for g in groups]
    compiled, _, compile_s, flops_per_call = _compile_epoch(
        _EPOCH_PROGRAMS[cell.strategy], model, config, preprocess, states[0], images, labels,
        sets[0])
    steps = cell.num_models * -(-examples_per_model // batch_size)
    return PreparedEpoch(compiled, states, sets, images, labels, compile_s,
                         flops_per_call * len(groups), steps)


def measure(cell: Cell, examples_per_model: int, batch_size: int = 128, repeats: int = 2,
            peak: float | None = None) -> dict[str, Any]:
    """Times one epoch of ``cell`` (after compiling); returns the cell's figures.

    ``peak``: the chip's peak FLOP/s, overriding :data:`PEAK_FLOPS` (None: look it up).
    """
    _check_cell(cell, examples_per_model)
    if cell.strategy == "torch":
        return torch_reference.measure_torch(cell.workload, cell.num_models, examples_per_model,
                                             batch_size, repeats)
    epoch = prepare(cell, examples_per_model, batch_size)
    epoch.run()  # warm-up (first-call allocation)
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        epoch.run()
        times.append(time.perf_counter() - tick)
    seconds = min(times)
    device = jax.devices()[0]
    flops = epoch.flops_per_epoch
    peak = peak or peak_flops(device, cell.precision)
    model_epochs_per_s = cell.num_models / seconds
    return {
        **dataclasses.asdict(cell),
        "conv_impl_resolved": layers.resolve_conv_impl(cell.conv_impl),
        "pool_impl_resolved": layers.resolve_pool_impl(cell.pool_impl),
        "batchnorm_impl_resolved": layers.resolve_batchnorm_impl(cell.batchnorm_impl),
        "examples_per_model": examples_per_model,
        "epoch_seconds": seconds,
        "images_per_s": cell.num_models * examples_per_model / seconds,
        "model_epochs_per_s": model_epochs_per_s,
        "seconds_per_model_epoch": 1 / model_epochs_per_s,
        "compile_seconds": epoch.compile_seconds,
        "flops_per_epoch": flops,
        "flop_per_s": flops / seconds if flops else None,
        "fraction_of_peak": (flops / seconds / peak) if (flops and peak) else None,
        "peak_flops": peak,
        "peak_memory_bytes": _peak_memory(device),
        "device": device.device_kind,
        "backend": jax.default_backend(),
    }


def profile_cell(cell: Cell, examples_per_model: int, batch_size: int = 128) -> dict[str, Any]:
    """Where ``cell``'s training step spends its time (:mod:`jaxpet.benchmark.profile`):
    milliseconds per optimiser step by category and the costliest ops."""
    epoch = prepare(cell, examples_per_model, batch_size)
    times = profile.op_times(epoch.run, epoch.steps_per_epoch)
    return {**dataclasses.asdict(cell), "examples_per_model": examples_per_model,
            # The forms "auto" resolved to, which the breakdown is of.
            "conv_impl": layers.resolve_conv_impl(cell.conv_impl),
            "pool_impl": layers.resolve_pool_impl(cell.pool_impl),
            "batchnorm_impl": layers.resolve_batchnorm_impl(cell.batchnorm_impl),
            **profile.breakdown(epoch.compiled.as_text(), times)}


# [m, k] x [k, n] float32 products whose best rate stands for this device's matmul limit: a
# square one and the CIFAR-10 CNNs' largest layer GEMMs at batch 128 (shadow, target).
GEMM_SHAPES = ((2048, 2048, 2048), (32768, 576, 128), (32768, 1152, 256))


def gemm_flops(shapes=GEMM_SHAPES, repeats: int = 5) -> float:
    """This device's measured float32 matmul rate, FLOP/s: the best over ``shapes`` of the
    best of ``repeats`` jitted products. The physical limit a CPU cell is held against,
    where no datasheet peak is known."""
    dot = jax.jit(jnp.dot)
    best_rate = 0.0
    for m, k, n in shapes:
        a = jax.random.normal(jax.random.PRNGKey(0), (m, k), jnp.float32)
        b = jax.random.normal(jax.random.PRNGKey(1), (k, n), jnp.float32)
        jax.block_until_ready(dot(a, b))
        for _ in range(repeats):
            tick = time.perf_counter()
            jax.block_until_ready(dot(a, b))
            best_rate = max(best_rate, 2 * m * k * n / (time.perf_counter() - tick))
    return best_rate
