"""The benchmark's workloads and cells: which model, which strategy, how many models, on what.

Shared by the JAX measurements (:mod:`jaxpet.benchmark.throughput`) and the PyTorch
reference (:mod:`jaxpet.benchmark.torch_reference`), so neither imports the other.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Dense peak FLOP/s by device kind, (float32, bfloat16). Sources: NVIDIA H100/H200
# datasheets (SXM, dense: TF32 494.7e12, BF16 989.4e12); A100 (TF32 156e12, BF16 312e12).
PEAK_FLOPS = {
    "NVIDIA H200": (494.7e12, 989.4e12),
    "NVIDIA H100 80GB HBM3": (494.7e12, 989.4e12),
    "NVIDIA A100-SXM4-80GB": (156e12, 312e12),
    "NVIDIA A100-SXM4-40GB": (156e12, 312e12),
}

# name -> (dataset, seed-CNN role, image shape)
WORKLOADS = {
    "cifar10_target": ("cifar10", "target", (32, 32, 3)),
    "cifar10_shadow": ("cifar10", "shadow", (32, 32, 3)),
    "mnist_target": ("mnist", "target", (28, 28, 1)),
    "mnist_shadow": ("mnist", "shadow", (28, 28, 1)),
}
# vmap (the product), map (lax.map over models in one program), loop (the K=1 program called
# K times), torch (PyTorch, one model after another).
STRATEGIES = ("vmap", "map", "loop", "torch")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One measurement: a workload, a strategy, K models, the layers' forms and a precision."""

    workload: str
    strategy: str
    num_models: int
    conv_impl: str
    precision: str
    pool_impl: str = "auto"  # layers.POOL_IMPLS
    batchnorm_impl: str = "auto"  # layers.BATCHNORM_IMPLS


def peak_flops(device, precision: str) -> float | None:
    """The chip's dense peak for ``precision``, or None when the chip is not in the table."""
    kind = getattr(device, "device_kind", "")
    for name, peaks in PEAK_FLOPS.items():
        if kind.startswith(name):
            return peaks[precision == "bfloat16"]
    return None


def synthetic_pool(shape, pool_size: int, seed: int = 0):
    """Random uint8 images of ``shape`` and labels 0..9: timing needs the shape, not the data."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (pool_size,) + shape, dtype=np.uint8)
    labels = rng.integers(0, 10, pool_size).astype(np.int32)
    return images, labels
