"""Device memory per model, from XLA's compiled memory analysis, and the largest K that fits.

The vmapped epoch program (:func:`jaxpet.training.train_ensemble_epoch`, as the
throughput benchmark compiles it) is lowered on abstract inputs at two ensemble
sizes and compiled; XLA's ``compiled.memory_analysis()`` gives each program's
bytes: arguments + outputs - aliased (the donated state, updated in place) +
temporaries + generated code. Memory is linear in K (each model has its own
state, member indices and activations; the image pool and the code are shared),
so two figures fit

    bytes(K) = fixed + per_model * K

and predict the others: on a 2-core CPU, for the CIFAR-10 shadow CNN at batch 128, the
line through K=2 and K=4 gives the compiled K=3 and K=8 figures within 400 bytes of 1.7 and
4.6 GB. K=1 compiles to a
simpler program that needs less than the line says, so the fit avoids it by default. The
largest K a device holds is ``floor((device - fixed) / per_model)``.

``per_model`` is broken down into parameters, optimiser state and BatchNorm
statistics (from the sizes of one model's state pytree) and the rest:
activations kept for the backward pass, gradients and other temporaries at the
batch size, and the model's member indices and their shuffle.

The estimate is for the vmap strategy (the accelerators' default): ``map`` and
``loop`` hold the activations of one model at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpet import data, layers, models, training
from jaxpet.benchmark import throughput
from jaxpet.benchmark.workloads import WORKLOADS

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class ProgramMemory:
    """One compiled program's memory analysis, in bytes."""

    num_models: int
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    generated_code_bytes: int

    @property
    def total_bytes(self) -> int:
        """What the program holds on the device while it runs."""
        return (self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes
                + self.generated_code_bytes)


def program_memory(compiled, num_models: int) -> ProgramMemory:
    """``compiled.memory_analysis()`` of a compiled K-model program as a :class:`ProgramMemory`."""
    _check_count("num_models", num_models)
    stats = compiled.memory_analysis()
    if stats is None:
        raise ValueError(f"The {jax.default_backend()} backend reports no memory analysis for "
                         "compiled programs, so no memory estimate can be made on it.")
    return ProgramMemory(num_models, int(stats.argument_size_in_bytes),
                         int(stats.output_size_in_bytes), int(stats.alias_size_in_bytes),
                         int(stats.temp_size_in_bytes), int(stats.generated_code_size_in_bytes))


def fit(a: ProgramMemory, b: ProgramMemory) -> tuple[float, float]:
    """(fixed, per_model) bytes of the line through two programs' totals."""
    if a.num_models == b.num_models:
        raise ValueError(f"The memory fit needs two different ensemble sizes, got K="
                         f"{a.num_models} twice.")
    per_model = (b.total_bytes - a.total_bytes) / (b.num_models - a.num_models)
    if per_model <= 0:
        raise ValueError(f"Compiled memory does not grow with K (K={a.num_models}: "
                         f"{a.total_bytes} bytes, K={b.num_models}: {b.total_bytes} bytes); "
                         "the programs are not one model's ensemble at two sizes.")
    return a.total_bytes - per_model * a.num_models, per_model


def max_models(fixed_bytes: float, per_model_bytes: float, device_bytes: float) -> int:
    """The largest K with ``fixed + per_model * K <= device`` (0 when not even one fits)."""
    for name, value in (("per_model_bytes", per_model_bytes), ("device_bytes", device_bytes)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}.")
    if not (isinstance(fixed_bytes, (int, float)) and math.isfinite(fixed_bytes)):
        raise ValueError(f"fixed_bytes must be a finite number, got {fixed_bytes!r}.")
    return max(0, math.floor((device_bytes - fixed_bytes) / per_model_bytes))


def physical_memory_bytes() -> int:
    """This machine's physical memory (a CPU backend's device memory)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError) as e:
        raise ValueError("This system does not report its physical memory: give the device "
                         "memory explicitly (--device_memory_gib).") from e


def device_memory_bytes(device=None) -> tuple[int, str]:
    """(bytes, source): an accelerator's ``memory_stats()['bytes_limit']`` (what JAX's allocator
    may use), else the machine's physical memory (CPU)."""
    device = device or jax.devices()[0]
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - CPU backends may not implement it.
        stats = {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"{device.device_kind} memory_stats bytes_limit"
    return physical_memory_bytes(), "physical memory (os.sysconf)"


def _tree_bytes(tree) -> int:
    return sum(math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
               for leaf in jax.tree.leaves(tree))


def _tree_count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def state_bytes(model, config: training.TrainConfig, sample_input) -> dict[str, int]:
    """One model's parameter count and the bytes of its parameters, optimiser state and
    BatchNorm statistics (shapes only; nothing is allocated)."""
    state = jax.eval_shape(lambda: training.init_model_state(
        model, config, jax.random.PRNGKey(0), sample_input))
    return {"parameter_count": _tree_count(state.params),
            "parameter_bytes": _tree_bytes(state.params),
            "optimizer_state_bytes": _tree_bytes(state.opt_state),
            "batch_stats_bytes": _tree_bytes(state.batch_stats)}


def compile_epoch(model, config: training.TrainConfig, preprocess, image_shape, *,
                  num_models: int, examples_per_model: int, pool_size: int):
    """The vmapped epoch program for K models, compiled on abstract inputs (no state, images
    or member sets are allocated, so any K compiles)."""
    image_shape = tuple(image_shape)
    sample = preprocess(jnp.zeros((1,) + image_shape, jnp.uint8))
    keys = training.model_keys(0, num_models)
    state = jax.eval_shape(lambda: training.init_ensemble(model, config, keys, sample))
    images = jax.ShapeDtypeStruct((pool_size,) + image_shape, jnp.uint8)
    labels = jax.ShapeDtypeStruct((pool_size,), jnp.int32)
    indices = jax.ShapeDtypeStruct((num_models, examples_per_model), jnp.int32)
    counts = jax.ShapeDtypeStruct((num_models,), jnp.int32)
    args = throughput.epoch_args(model, config, preprocess, state, images, labels, indices, counts)
    return training.train_ensemble_epoch.lower(*args).compile()


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Device bytes of the vmapped epoch as fixed + per_model * K, broken down per model."""

    batch_size: int
    examples_per_model: int
    pool_size: int
    programs: tuple[ProgramMemory, ProgramMemory]  # the two compiled sizes of the fit
    fixed_bytes: float
    per_model_bytes: float
    parameter_count: int
    parameter_bytes: int
    optimizer_state_bytes: int
    batch_stats_bytes: int
    device_bytes: int
    device_memory_source: str
    compile_seconds: float

    @property
    def activation_bytes(self) -> float:
        """Per model, the rest: activations, gradients and temporaries at the batch size (and
        the member indices and their shuffle)."""
        return (self.per_model_bytes - self.parameter_bytes - self.optimizer_state_bytes
                - self.batch_stats_bytes)

    @property
    def max_models(self) -> int:
        return max_models(self.fixed_bytes, self.per_model_bytes, self.device_bytes)

    def predict(self, num_models: int) -> float:
        """Predicted bytes of the K-model program."""
        _check_count("num_models", num_models)
        return self.fixed_bytes + self.per_model_bytes * num_models

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "examples_per_model": self.examples_per_model,
            "pool_size": self.pool_size,
            "fit_models": [p.num_models for p in self.programs],
            "compiled_bytes": [p.total_bytes for p in self.programs],
            "programs": [dataclasses.asdict(p) for p in self.programs],
            "fixed_bytes": self.fixed_bytes,
            "per_model_bytes": self.per_model_bytes,
            "parameter_count": self.parameter_count,
            "parameter_bytes": self.parameter_bytes,
            "optimizer_state_bytes": self.optimizer_state_bytes,
            "batch_stats_bytes": self.batch_stats_bytes,
            "activation_bytes": self.activation_bytes,
            "device_bytes": self.device_bytes,
            "device_memory_source": self.device_memory_source,
            "max_models": self.max_models,
            "compile_seconds": self.compile_seconds,
            "device": jax.devices()[0].device_kind,
            "backend": jax.default_backend(),
        }


def _check_count(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")


def estimate(model, config: training.TrainConfig, preprocess, image_shape, *,
             examples_per_model: int, pool_size: int | None = None,
             fit_models: Sequence[int] = (2, 4), device_bytes: int | None = None
             ) -> MemoryEstimate:
    """Compiles the vmapped epoch at the two sizes ``fit_models`` and fits the line.

    ``pool_size``: images resident on the device (default 2 x examples_per_model, the
    benchmark's pool). ``device_bytes``: the memory to fit K into (default: the device's,
    see :func:`device_memory_bytes`).
    """
    fit_models = tuple(fit_models)
    if len(fit_models) != 2 or fit_models[0] == fit_models[1]:
        raise ValueError(f"fit_models must be two different ensemble sizes, got {fit_models!r}.")
    for k in fit_models:
        _check_count("fit_models", k)
    _check_count("examples_per_model", examples_per_model)
    pool_size = 2 * examples_per_model if pool_size is None else pool_size
    _check_count("pool_size", pool_size)
    if examples_per_model < config.batch_size:
        raise ValueError(f"examples_per_model={examples_per_model} is smaller than one batch "
                         f"(batch_size={config.batch_size}).")
    if device_bytes is None:
        device_bytes, source = device_memory_bytes()
    else:
        if isinstance(device_bytes, bool) or not (isinstance(device_bytes, (int, float))
                                                  and math.isfinite(device_bytes)
                                                  and device_bytes > 0):
            raise ValueError(f"device_bytes must be a positive number, got {device_bytes!r}.")
        device_bytes, source = int(device_bytes), "given"
    tick = time.perf_counter()
    small, large = (
        program_memory(compile_epoch(model, config, preprocess, image_shape, num_models=k,
                                     examples_per_model=examples_per_model,
                                     pool_size=pool_size), k)
        for k in sorted(fit_models))
    programs = (small, large)
    seconds = time.perf_counter() - tick
    fixed, per_model = fit(*programs)
    sample = preprocess(jnp.zeros((1,) + tuple(image_shape), jnp.uint8))
    sizes = state_bytes(model, config, sample)
    return MemoryEstimate(config.batch_size, examples_per_model, pool_size, programs, fixed,
                          per_model, device_bytes=device_bytes, device_memory_source=source,
                          compile_seconds=seconds, **sizes)


def estimate_workload(workload: str, *, precision: str = "float32", conv_impl: str = "auto",
                      pool_impl: str = "auto", batchnorm_impl: str = "auto",
                      examples_per_model: int = 512,
                      batch_size: int = 128, fit_models: Sequence[int] = (2, 4),
                      device_bytes: int | None = None) -> dict[str, Any]:
    """The memory estimate of a benchmark workload's seed CNN, as the benchmark trains it (same
    model, batch size, member-set size and synthetic pool), as a JSON-ready row."""
    if workload not in WORKLOADS:
        raise ValueError(f"Unknown workload {workload!r}; known: {sorted(WORKLOADS)}.")
    dataset, role, shape = WORKLOADS[workload]
    model = models.seed_cnn(dataset, role, precision=precision, conv_impl=conv_impl,
                            pool_impl=pool_impl, batchnorm_impl=batchnorm_impl)
    config = training.TrainConfig(epochs=1, batch_size=batch_size)
    result = estimate(model, config, data.normalizer(dataset), shape,
                      examples_per_model=examples_per_model, fit_models=fit_models,
                      device_bytes=device_bytes)
    return {"workload": workload, "precision": precision, "conv_impl": conv_impl,
            "conv_impl_resolved": layers.resolve_conv_impl(conv_impl), "pool_impl": pool_impl,
            "batchnorm_impl": batchnorm_impl, **result.as_dict()}


def human_bytes(num_bytes: float) -> str:
    """1536 -> '1.5 KiB'; 3 * 2**30 -> '3.00 GiB'."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(num_bytes) >= scale:
            return f"{num_bytes / scale:.{2 if unit == 'GiB' else 1}f} {unit}"
    return f"{num_bytes:.0f} B"


def describe(row: dict[str, Any]) -> str:
    """One line for the log: per-model bytes, their breakdown and the largest K."""
    b = human_bytes
    k1, k2 = row["fit_models"]
    return (f"memory, {row['workload']} {row['precision']} ({row['conv_impl_resolved']}, "
            f"{row['pool_impl']} pool), batch {row['batch_size']}: {b(row['per_model_bytes'])} "
            f"per model = parameters {b(row['parameter_bytes'])} + optimiser state "
            f"{b(row['optimizer_state_bytes'])} + BatchNorm statistics "
            f"{b(row['batch_stats_bytes'])} + activations and temporaries "
            f"{b(row['activation_bytes'])}; {b(row['fixed_bytes'])} fixed (fit through K={k1} "
            f"and K={k2}); at most {row['max_models']} models in {b(row['device_bytes'])} "
            f"({row['device_memory_source']}).")
