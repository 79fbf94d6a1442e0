"""Flax models of the seed write-up: target/shadow CNN, attack MLP, face MLP, UTKFace LeNet;
and the field's CIFAR-10 model, WideResNet-28-2, with LiRA's training recipe. They are built
from the layer forms of :mod:`jaxpet.layers`.

Every model takes ``(x, train=False, *, mask=None)``: ``train`` switches
BatchNorm to batch statistics and enables dropout; ``mask`` ([B] bool) marks
the real rows of a padded batch so that BatchNorm statistics ignore padding.
Parameters are always float32; ``dtype`` sets the compute precision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import numbers
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxpet.layers import (
    WideConv,
    _batch_norm,
    _conv,
    _row_mask,
    max_pool_2x2,
    resolve_batchnorm_impl,
    resolve_conv_impl,
    resolve_pool_impl,
)

if TYPE_CHECKING:
    from jaxpet.training import TrainConfig

_ACTIVATIONS: dict[str, Callable[[Any], Any]] = {
    "relu": nn.relu,
    "sigmoid": nn.sigmoid,
    "tanh": nn.tanh,
}


NORMS = ("batch", "group", "none")


def _group_count(width: int) -> int:
    """GroupNorm groups for a layer: the largest of 8, 4, 2, 1 that divides its width."""
    return next(g for g in (8, 4, 2, 1) if width % g == 0)


class SeedCNN(nn.Module):
    """conv3x3-BN-ReLU-maxpool(2), twice, then FC-ReLU and the class layer (seed Task 1).

    ``norm="group"`` swaps BatchNorm for GroupNorm: a per-example normalisation,
    which DP-SGD needs (BatchNorm mixes examples, so per-example gradients and
    their privacy accounting would be wrong).
    """

    conv1: int = 128
    conv2: int = 256
    fc: int = 256
    num_classes: int = 10
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    conv_impl: str = "auto"  # see resolve_conv_impl
    pool_impl: str = "auto"  # see resolve_pool_impl
    norm: str = "batch"  # one of NORMS
    batchnorm_impl: str = "auto"  # see resolve_batchnorm_impl

    @nn.compact
    def __call__(self, x, train: bool = False, *, mask=None):
        if self.norm not in NORMS:
            raise ValueError(f"SeedCNN norm must be one of {NORMS}, got {self.norm!r}.")
        x = jnp.asarray(x, self.dtype)
        for i, width in enumerate((self.conv1, self.conv2)):
            # No conv bias: BatchNorm removes it, and its ~0 gradient only adds noise under Adam.
            x = _conv(self.conv_impl, width, self.dtype, self.norm == "none", f"Conv_{i}")(x)
            if self.norm == "batch":
                x = _batch_norm(self.batchnorm_impl, self.dtype, f"BatchNorm_{i}")(
                    x, use_running_average=not train, mask=_row_mask(mask, x))
            elif self.norm == "group":
                x = nn.GroupNorm(num_groups=_group_count(width), dtype=self.dtype)(x)
            # relu(max) == max(relu); pooling first makes the relu 4x smaller.
            x = nn.relu(max_pool_2x2(x, self.pool_impl))
        x = x.reshape((x.shape[0], -1))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.relu(nn.Dense(self.fc, dtype=self.dtype)(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=self.dtype)(x)


class MLP(nn.Module):
    """Fully connected net; the attack MLP (128 ReLU) and the face MLP (3000 sigmoid)."""

    hidden_sizes: Sequence[int] = (128,)
    num_classes: int = 2
    activation: str = "relu"
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, *, mask=None):
        del mask  # No batch statistics.
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"MLP activation must be one of {sorted(_ACTIVATIONS)}, "
                       f"got {self.activation!r}.")
        act = _ACTIVATIONS[self.activation]
        x = jnp.asarray(x, self.dtype).reshape((x.shape[0], -1))
        for size in self.hidden_sizes:
            x = act(nn.Dense(size, dtype=self.dtype)(x))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=self.dtype)(x)


class LeNet(nn.Module):
    """LeNet-like UTKFace CNN (seed Task 3): conv3x3+pool with 16/32/64, FC 128/64.

    Hidden representations are sown into the ``representations`` collection
    under ``conv1..conv3`` and ``fc1``, ``fc2``; read them with
    :func:`representation`.
    """

    features: Sequence[int] = (16, 32, 64)
    hidden_sizes: Sequence[int] = (128, 64)
    num_classes: int = 2
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    conv_impl: str = "auto"
    pool_impl: str = "auto"  # see resolve_pool_impl

    @nn.compact
    def __call__(self, x, train: bool = False, *, mask=None):
        del mask
        x = jnp.asarray(x, self.dtype)
        for i, width in enumerate(self.features, start=1):
            x = _conv(self.conv_impl, width, self.dtype, True, f"Conv_{i - 1}")(x)
            x = nn.relu(max_pool_2x2(x, self.pool_impl))  # relu(max) == max(relu)
            self.sow("representations", f"conv{i}", x.reshape((x.shape[0], -1)))
        x = x.reshape((x.shape[0], -1))
        for i, size in enumerate(self.hidden_sizes, start=1):
            x = nn.relu(nn.Dense(size, dtype=self.dtype)(x))
            self.sow("representations", f"fc{i}", x)
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=self.dtype)(x)


def representation(model: nn.Module, variables, x, layer: str):
    """Returns the flattened activation ``layer`` of ``model`` on ``x`` (inference mode)."""
    _, state = model.apply(variables, x, train=False, mutable=["representations"])
    reps = state.get("representations", {})
    if layer not in reps:
        raise ValueError(f"Unknown representation layer {layer!r}; "
                     f"{type(model).__name__} exposes {sorted(reps)}.")
    return reps[layer][0]


# Widths of the seed's Task 1 CNNs (conv1, conv2, fc).
SEED_CNN_WIDTHS = {
        ("cifar10", "target"): (128, 256, 256),
        ("cifar10", "shadow"): (64, 128, 128),
        ("mnist", "target"): (32, 64, 64),
        ("mnist", "shadow"): (16, 32, 32),
}

PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(precision: str):
    """Maps a precision name to the compute dtype (parameters stay float32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}.")
    return PRECISIONS[precision]


def seed_cnn(dataset: str, role: str = "target", *, dropout_rate: float = 0.0,
             precision: str = "float32", width_scale: float = 1.0,
             conv_impl: str = "auto", norm: str = "batch",
             pool_impl: str = "auto", batchnorm_impl: str = "auto") -> SeedCNN:
    """The seed's target or shadow CNN for ``dataset``; ``width_scale`` shrinks it for tests.

    ``norm``: "batch" (the seed's), or "group" for DP-SGD (see :class:`SeedCNN`).
    """
    key = (dataset, role)
    if key not in SEED_CNN_WIDTHS:
        raise ValueError(f"No seed CNN for dataset={dataset!r}, role={role!r}; "
                     f"known: {sorted(SEED_CNN_WIDTHS)}.")
    if width_scale <= 0:
        raise ValueError(f"width_scale must be positive, got {width_scale}.")
    conv1, conv2, fc = (max(1, round(w * width_scale)) for w in SEED_CNN_WIDTHS[key])
    resolve_conv_impl(conv_impl)  # validate early
    resolve_pool_impl(pool_impl)
    resolve_batchnorm_impl(batchnorm_impl)
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}.")
    return SeedCNN(conv1=conv1, conv2=conv2, fc=fc, num_classes=10, dropout_rate=dropout_rate,
                   dtype=compute_dtype(precision), conv_impl=conv_impl, norm=norm,
                   pool_impl=pool_impl, batchnorm_impl=batchnorm_impl)


def attack_mlp(num_classes: int = 2, hidden_sizes: Sequence[int] = (128,),
               precision: str = "float32") -> MLP:
    """The membership attack MLP: one hidden layer of 128 ReLU units (seed Task 1)."""
    return MLP(hidden_sizes=tuple(hidden_sizes), num_classes=num_classes,
             activation="relu", dtype=compute_dtype(precision))


def face_mlp(num_classes: int = 40, hidden: int = 3000,
             precision: str = "float32") -> MLP:
    """Fredrikson et al.'s face MLP: one hidden layer of 3000 sigmoid units."""
    return MLP(hidden_sizes=(hidden,), num_classes=num_classes,
             activation="sigmoid", dtype=compute_dtype(precision))


# --- WideResNet (the LiRA/RMIA CIFAR-10 architecture) ---------------------------------------

class WideResNet(nn.Module):
    """WideResNet-depth-width (Zagoruyko & Komodakis 2016), as LiRA's code trains it.

    The variant of objax.zoo.wide_resnet, which LiRA's reference code (Carlini et al.
    2022) trains on CIFAR-10 as WRN-28-2 (RMIA's CIFAR-10 figures use WRN-28-2 too): a 3x3 stem
    to 16 channels; three groups of n = (depth - 4) / 6 pre-activation basic blocks
    (BN-ReLU-conv3x3, BN-ReLU-conv3x3, plus the shortcut) of 16, 32 and 64 times
    ``width`` channels, strides 1, 2, 2; a bias-free 1x1 projection of the first
    BN-ReLU's output as the shortcut where the shape changes; then BN-ReLU, global
    average pooling and the class layer. ``mask`` ([B] bool) keeps padded rows out of
    every BatchNorm's statistics, as in :class:`SeedCNN`.
    """

    depth: int = 28
    width: int = 2
    num_classes: int = 10
    dtype: Any = jnp.float32
    conv_impl: str = "auto"  # see resolve_conv_impl
    batchnorm_impl: str = "auto"  # see resolve_batchnorm_impl

    @nn.compact
    def __call__(self, x, train: bool = False, *, mask=None):
        blocks = wide_resnet_blocks(self.depth)
        _check_width(self.width)

        def bn_relu(y, name):
            y = _batch_norm(self.batchnorm_impl, self.dtype, name)(
                y, use_running_average=not train, mask=_row_mask(mask, y))
            return nn.relu(y)

        def conv(y, features, kernel, stride, name):
            return WideConv(features, kernel, stride, self.dtype, self.conv_impl, name=name)(y)

        x = conv(jnp.asarray(x, self.dtype), 16, 3, 1, "stem")
        for g, features in enumerate(16 * self.width * 2 ** i for i in range(3)):
            for b in range(blocks):
                name = f"group{g}_block{b}"
                stride = 2 if (g > 0 and b == 0) else 1
                o1 = bn_relu(x, f"{name}_bn1")
                y = conv(o1, features, 3, stride, f"{name}_conv1")
                y = conv(bn_relu(y, f"{name}_bn2"), features, 3, 1, f"{name}_conv2")
                project = x.shape[-1] != features or stride > 1
                x = y + (conv(o1, features, 1, stride, f"{name}_shortcut") if project else x)
        x = bn_relu(x, "final_bn").mean(axis=(1, 2))
        # Xavier (Glorot) normal: the class layer's initialiser in objax.zoo.wide_resnet.
        return nn.Dense(self.num_classes, dtype=self.dtype,
                        kernel_init=nn.initializers.glorot_normal(), name="classifier")(x)


def wide_resnet_blocks(depth: int) -> int:
    """Blocks per group, n, of a WideResNet of ``depth`` = 6n + 4 (28 -> 4; 10 -> 1)."""
    if not _is_int(depth) or depth < 10 or (depth - 4) % 6:
        raise ValueError(f"WideResNet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, ...), "
                         f"got {depth!r}; the field's CIFAR-10 model is depth 28.")
    return (depth - 4) // 6


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _check_width(width) -> None:
    if not _is_int(width) or width < 1:
        raise ValueError(f"WideResNet width must be a positive integer (the widen factor k: "
                         f"16k/32k/64k channels), got {width!r}.")


def wide_resnet(depth: int = 28, width: int = 2, num_classes: int = 10,
                precision: str = "float32", *, tiny: bool = False, conv_impl: str = "auto",
                batchnorm_impl: str = "auto") -> WideResNet:
    """WRN-``depth``-``width``; the default WRN-28-2 (~1.47M parameters) is the model of every
    published LiRA/RMIA CIFAR-10 figure. ``tiny=True`` gives WRN-10-1 (one block per group,
    ~78k parameters at 10 classes) for tests, overriding depth and width."""
    if tiny:
        depth, width = 10, 1
    wide_resnet_blocks(depth)  # validate early
    _check_width(width)
    resolve_conv_impl(conv_impl)
    resolve_batchnorm_impl(batchnorm_impl)
    return WideResNet(depth=depth, width=width, num_classes=num_classes,
                      dtype=compute_dtype(precision), conv_impl=conv_impl,
                      batchnorm_impl=batchnorm_impl)


# LiRA's CIFAR-10 training recipe (Carlini et al., "Membership Inference Attacks From First
# Principles", S&P 2022; reference code tensorflow/privacy research/mi_lira_2021/train.py, whose
# flag defaults are lr 0.1, weight_decay 5e-4, batch 256, augment "weak" = random flip and a
# 4-pixel reflect-padded shift, SGD with momentum 0.9 via objax.optimizer.Momentum).
# Epochs: train.py's flag default is 501, but scripts/train_demo.sh, the script of the README's
# 16-model WRN28-2 figures, passes --epochs=100. RMIA (Zarifzadeh et al., ICML 2024) also reports
# CIFAR-10 on WRN-28-2; its own training code is not compared here. Matched: the rate lr *
# cos(7*pi/16 * progress) after a 1% linear warm-up (schedule "lira_cosine"; per epoch here,
# per step there), L2 on conv and dense kernels only (decayed="kernels"), and predictions from
# a debiased moving average (0.999) of the weights (ema=0.999).
LIRA_EPOCHS = 100


def lira_recipe(epochs: int = LIRA_EPOCHS, **overrides) -> TrainConfig:
    """The LiRA/RMIA CIFAR-10 recipe as a TrainConfig: SGD momentum 0.9, L2 5e-4 on kernels,
    learning rate 0.1 on LiRA's cos(7 pi t / 16) schedule with a 1% warm-up, batch 256, flip +
    4-pixel-shift augmentation, 100 epochs, predictions from a 0.999 moving average of the
    weights.

    ``overrides`` replace any other TrainConfig field (e.g. ``eval_batch_size``), so a test
    can run the recipe at a few epochs and a small batch.
    """
    # Imported here: the model zoo stays importable without the trainer (and no cycle can form).
    from jaxpet.training import TrainConfig

    fields = dict(epochs=epochs, batch_size=256, learning_rate=0.1, optimizer="sgd",
                  momentum=0.9, weight_decay=5e-4, schedule="lira_cosine", decayed="kernels",
                  augment="flip_crop", ema=0.999)
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise ValueError(f"lira_recipe got unknown TrainConfig fields {unknown}; valid ones: "
                         f"{sorted(f.name for f in dataclasses.fields(TrainConfig))}.")
    return TrainConfig(**{**fields, **overrides})
