"""Flax models of the seed write-up: target/shadow CNN, attack MLP, face MLP, UTKFace LeNet.

Every model takes ``(x, train=False, *, mask=None)``: ``train`` switches
BatchNorm to batch statistics and enables dropout; ``mask`` ([B] bool) marks
the real rows of a padded batch so that BatchNorm statistics ignore padding.
Parameters are always float32; ``dtype`` sets the compute precision.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch's BatchNorm momentum 0.1 (the seed's framework) is Flax's 0.9.
BATCHNORM_MOMENTUM = 0.9

_ACTIVATIONS: dict[str, Callable[[Any], Any]] = {
    "relu": nn.relu,
    "sigmoid": nn.sigmoid,
    "tanh": nn.tanh,
}


class PatchConv(nn.Module):
    """A stride-1 convolution as patch extraction plus one matmul, with nn.Conv's parameters.

    Under ``jax.vmap`` over models, ``nn.Conv`` becomes a grouped convolution,
    which XLA's CPU backend runs slowly; this form becomes a batched GEMM
    instead. Same ``kernel`` shape and initialiser as ``nn.Conv``, so the two
    are interchangeable on one parameter tree.
    """

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    padding: str = "SAME"
    use_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel_size
        cin = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (kh, kw, cin, self.features))
        patches = jax.lax.conv_general_dilated_patches(
            x, (kh, kw), (1, 1), self.padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        # Patch features are ordered (channel, row, column).
        matrix = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(cin * kh * kw, self.features)
        y = jnp.dot(patches, matrix.astype(self.dtype))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,)).astype(self.dtype)
        return y


CONV_IMPLS = ("auto", "conv", "patches")


def resolve_conv_impl(impl: str) -> str:
    """"auto" picks the faster form for the default backend: patches on CPU, conv elsewhere.

    Measured on a 2-core CPU (jax 0.10, one epoch, batch 128): the CIFAR-10
    shadow CNN trains at 11 images/s with ``nn.Conv`` and 201 with patches.
    """
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {impl!r}.")
    if impl == "auto":
        return "patches" if jax.default_backend() == "cpu" else "conv"
    return impl


def _conv(impl: str, features: int, dtype, use_bias: bool, name: str):
    impl = resolve_conv_impl(impl)
    if impl == "conv":
        return nn.Conv(features, (3, 3), padding="SAME", use_bias=use_bias, dtype=dtype, name=name)
    return PatchConv(features, (3, 3), padding="SAME", use_bias=use_bias, dtype=dtype, name=name)


def _row_mask(mask, x):
    """Broadcasts a [B] row mask to ``x``'s rank for BatchNorm."""
    if mask is None:
        return None
    return jnp.reshape(mask, mask.shape + (1,) * (x.ndim - 1))


NORMS = ("batch", "group", "none")
# 2x2 max-pooling forms: "window" is nn.max_pool (its gradient is XLA's select-and-scatter);
# "reshape" takes the max over a [H/2, 2, W/2, 2] view, whose gradient is an elementwise
# mask. Same forward; the same gradient wherever a window's maximum is unique.
POOL_IMPLS = ("window", "reshape")


def max_pool_2x2(x, impl: str = "window"):
    """Non-overlapping 2x2 max-pooling of NHWC ``x`` (odd edges dropped, as nn.max_pool)."""
    if impl not in POOL_IMPLS:
        raise ValueError(f"pool_impl must be one of {POOL_IMPLS}, got {impl!r}.")
    if impl == "window":
        return nn.max_pool(x, (2, 2), strides=(2, 2))
    b, h, w, c = x.shape
    x = x[:, :h - h % 2, :w - w % 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


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
    pool_impl: str = "window"  # see POOL_IMPLS
    norm: str = "batch"  # one of NORMS

    @nn.compact
    def __call__(self, x, train: bool = False, *, mask=None):
        if self.norm not in NORMS:
            raise ValueError(f"SeedCNN norm must be one of {NORMS}, got {self.norm!r}.")
        x = jnp.asarray(x, self.dtype)
        for i, width in enumerate((self.conv1, self.conv2)):
            # No conv bias: BatchNorm removes it, and its ~0 gradient only adds noise under Adam.
            x = _conv(self.conv_impl, width, self.dtype, self.norm == "none", f"Conv_{i}")(x)
            if self.norm == "batch":
                x = nn.BatchNorm(momentum=BATCHNORM_MOMENTUM, dtype=self.dtype)(
                    x, use_running_average=not train, mask=_row_mask(mask, x))
            elif self.norm == "group":
                x = nn.GroupNorm(num_groups=_group_count(width), dtype=self.dtype)(x)
            x = nn.relu(x)
            x = max_pool_2x2(x, self.pool_impl)
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
    pool_impl: str = "window"  # see POOL_IMPLS

    @nn.compact
    def __call__(self, x, train: bool = False, *, mask=None):
        del mask
        x = jnp.asarray(x, self.dtype)
        for i, width in enumerate(self.features, start=1):
            x = nn.relu(_conv(self.conv_impl, width, self.dtype, True, f"Conv_{i - 1}")(x))
            x = max_pool_2x2(x, self.pool_impl)
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
             pool_impl: str = "window") -> SeedCNN:
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
    if pool_impl not in POOL_IMPLS:
        raise ValueError(f"pool_impl must be one of {POOL_IMPLS}, got {pool_impl!r}.")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}.")
    return SeedCNN(conv1=conv1, conv2=conv2, fc=fc, num_classes=10, dropout_rate=dropout_rate,
                   dtype=compute_dtype(precision), conv_impl=conv_impl, norm=norm,
                   pool_impl=pool_impl)


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
