"""A plain PyTorch reference of the seed CNN, trained one model after another.

This is strategy "(d) PyTorch one-after-another" of the throughput benchmark:
the same architecture as :func:`jaxpet.models.seed_cnn`, the same optimiser
(Adam with coupled L2, lr 1e-3, weight decay 1e-4), batch 128, on the same
synthetic data, with each of K models trained in turn by an ordinary eager loop.

torch is optional: it is imported inside functions only, so this module imports
without it; :func:`torch_available` says whether it is installed.
"""

from __future__ import annotations

import importlib.util
import math
import time
from typing import Any

import numpy as np

from jaxpet import data, layers, models
from jaxpet.benchmark.workloads import WORKLOADS, synthetic_pool

TORCH_PIN = "torch==2.13.0"
# Flax's BatchNorm momentum 0.9 (weight of the running average) is PyTorch's 0.1.
TORCH_BATCHNORM_MOMENTUM = 1.0 - layers.BATCHNORM_MOMENTUM


def torch_available() -> bool:
    """True when torch can be imported."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # e.g. sys.modules["torch"] is None
        return False


def _torch():
    try:
        import torch
    except ImportError as e:
        raise RuntimeError(f"The PyTorch reference needs torch: `pip install {TORCH_PIN}`.") from e
    return torch


def _lecun_normal_(tensor, fan_in: int):
    """Flax's default kernel init: truncated normal (+-2 std) of variance 1/fan_in."""
    torch = _torch()
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978  # std of a unit normal truncated at +-2
    with torch.no_grad():
        torch.nn.init.trunc_normal_(tensor, 0.0, std, -2 * std, 2 * std)


def _seed_cnn_class():
    torch = _torch()
    nn = torch.nn

    class SeedCNNTorch(nn.Module):
        """conv3x3-BN-ReLU-maxpool(2), twice, then FC-ReLU and the class layer; NCHW input."""

        def __init__(self, in_channels: int, image_size: tuple[int, int], conv1: int = 128,
                     conv2: int = 256, fc: int = 256, num_classes: int = 10,
                     dropout_rate: float = 0.0):
            super().__init__()
            layers = []
            cin = in_channels
            h, w = image_size
            for width in (conv1, conv2):
                conv = nn.Conv2d(cin, width, 3, padding=1, bias=False)  # "SAME"; BN removes a bias
                _lecun_normal_(conv.weight, cin * 9)
                layers += [conv, nn.BatchNorm2d(width, eps=1e-5, momentum=TORCH_BATCHNORM_MOMENTUM),
                           nn.ReLU(), nn.MaxPool2d(2, 2)]
                cin, h, w = width, h // 2, w // 2
            self.features = nn.Sequential(*layers)
            self.fc1 = nn.Linear(cin * h * w, fc)
            self.fc2 = nn.Linear(fc, num_classes)
            for dense in (self.fc1, self.fc2):
                _lecun_normal_(dense.weight, dense.in_features)
                nn.init.zeros_(dense.bias)
            self.dropout = nn.Dropout(dropout_rate)

        def forward(self, x):
            x = self.features(x)
            # Flatten in flax's (H, W, C) order, so dense weights map one-to-one.
            x = x.permute(0, 2, 3, 1).flatten(1)
            x = self.dropout(x)
            x = self.dropout(torch.relu(self.fc1(x)))
            return self.fc2(x)

    # Picklable as jaxpet.benchmark.torch_reference.SeedCNNTorch.
    SeedCNNTorch.__qualname__ = "SeedCNNTorch"
    SeedCNNTorch.__module__ = __name__
    return SeedCNNTorch


def __getattr__(name: str):
    # `SeedCNNTorch` is built on first access, so importing this module needs no torch.
    if name == "SeedCNNTorch":
        cls = _seed_cnn_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_INPUT_SHAPES = {dataset: shape for dataset, _, shape in WORKLOADS.values()}


def torch_model(dataset: str, role: str = "target", dropout_rate: float = 0.0):
    """The PyTorch twin of ``models.seed_cnn(dataset, role)`` (same widths, same parameter
    count)."""
    key = (dataset, role)
    if key not in models.SEED_CNN_WIDTHS:
        raise ValueError(f"No seed CNN for dataset={dataset!r}, role={role!r}; "
                         f"known: {sorted(models.SEED_CNN_WIDTHS)}.")
    conv1, conv2, fc = models.SEED_CNN_WIDTHS[key]
    h, w, c = _INPUT_SHAPES[dataset]
    cls = __getattr__("SeedCNNTorch")
    return cls(c, (h, w), conv1=conv1, conv2=conv2, fc=fc, num_classes=10,
               dropout_rate=dropout_rate)


def _normalized_nchw(images: np.ndarray, dataset: str) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW, normalised as ``data.normalizer(dataset)``."""
    norm = data.normalizer(dataset)
    x: np.ndarray = images.astype(np.float32) / norm.scale
    x = (x - np.asarray(norm.mean, np.float32)) / np.asarray(norm.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def make_optimizer(model, learning_rate: float = 1e-3, weight_decay: float = 1e-4):
    """Adam with coupled L2, as ``training.make_optimizer``."""
    return _torch().optim.Adam(model.parameters(), lr=learning_rate, weight_decay=weight_decay)


def train_epoch(model, optimizer, x, y, batch_size: int = 128, generator=None) -> float:
    """One shuffled epoch of cross-entropy training on tensors ``x``, ``y``; returns the mean
    loss."""
    torch = _torch()
    model.train()
    order = torch.randperm(x.shape[0], generator=generator).to(x.device)
    total = torch.zeros((), device=x.device)
    for start in range(0, x.shape[0], batch_size):
        idx = order[start:start + batch_size]
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * idx.shape[0]
    return float(total) / x.shape[0]


def _sync(torch, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_torch(workload: str, num_models: int, examples_per_model: int, batch_size: int = 128,
                  repeats: int = 2, threads: int | None = None) -> dict[str, Any]:
    """Times one epoch of K PyTorch models trained one after another; a row like
    ``throughput.measure``'s.

    Each model gets its own random member set of ``examples_per_model`` synthetic
    examples and one untimed warm-up epoch (reported as ``compile_seconds``);
    ``epoch_seconds`` is the K models' total, the minimum over ``repeats``.
    """
    torch = _torch()
    if workload not in WORKLOADS:
        raise ValueError(f"Unknown workload {workload!r}; known: {sorted(WORKLOADS)}.")
    if num_models < 1 or examples_per_model < 1 or batch_size < 1 or repeats < 1:
        raise ValueError("num_models, examples_per_model, batch_size and repeats must be >= 1.")
    if threads is not None:
        torch.set_num_threads(threads)
    dataset, role, shape = WORKLOADS[workload]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    pool_size = 2 * examples_per_model
    images, labels = synthetic_pool(shape, pool_size)
    x_pool = torch.from_numpy(_normalized_nchw(images, dataset)).to(device)
    y_pool = torch.from_numpy(labels.astype(np.int64)).to(device)
    rng = np.random.default_rng(1)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)

    runs = []
    for _ in range(num_models):
        members = torch.from_numpy(np.sort(rng.choice(pool_size, examples_per_model,
                                                      replace=False)))
        members = members.to(device)
        model = torch_model(dataset, role).to(device)
        runs.append((model, make_optimizer(model), x_pool[members], y_pool[members]))

    def run_epoch():
        for model, opt, x, y in runs:
            train_epoch(model, opt, x, y, batch_size, generator)
        _sync(torch, device)

    tick = time.perf_counter()
    run_epoch()  # warm-up (first-call allocation, cuDNN autotuning)
    compile_s = time.perf_counter() - tick
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        run_epoch()
        times.append(time.perf_counter() - tick)
    seconds = min(times)
    model_epochs_per_s = num_models / seconds
    return {
        "workload": workload,
        "strategy": "torch",
        "num_models": num_models,
        "conv_impl": "torch",
        "pool_impl": "torch",
        "precision": "float32",
        "conv_impl_resolved": "torch",
        "examples_per_model": examples_per_model,
        "epoch_seconds": seconds,
        "images_per_s": num_models * examples_per_model / seconds,
        "model_epochs_per_s": model_epochs_per_s,
        "seconds_per_model_epoch": 1 / model_epochs_per_s,
        "compile_seconds": compile_s,
        "flops_per_epoch": None,
        "flop_per_s": None,
        "fraction_of_peak": None,
        "peak_flops": None,
        "peak_memory_bytes": (int(torch.cuda.max_memory_allocated(device))
                              if device.type == "cuda" else None),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "backend": f"torch-{device.type}",
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
    }
