"""Flax models of the seed write-up: target/shadow CNN, attack MLP, face MLP, UTKFace LeNet;
and the field's CIFAR-10 model, WideResNet-28-2, with LiRA's training recipe.

Every model takes ``(x, train=False, *, mask=None)``: ``train`` switches
BatchNorm to batch statistics and enables dropout; ``mask`` ([B] bool) marks
the real rows of a padded batch so that BatchNorm statistics ignore padding.
Parameters are always float32; ``dtype`` sets the compute precision.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import TYPE_CHECKING, Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
    from jaxpet.training import TrainConfig

# PyTorch's BatchNorm momentum 0.1 (the seed's framework) is Flax's 0.9.
BATCHNORM_MOMENTUM = 0.9

_ACTIVATIONS: dict[str, Callable[[Any], Any]] = {
    "relu": nn.relu,
    "sigmoid": nn.sigmoid,
    "tanh": nn.tanh,
}


class PatchConv(nn.Module):
    """A convolution as patch extraction plus one matmul, with nn.Conv's parameters.

    Under ``jax.vmap`` over models, ``nn.Conv`` becomes a grouped convolution,
    which XLA's CPU backend runs slowly; a matmul becomes a batched GEMM
    instead. Same ``kernel`` shape and initialiser as ``nn.Conv``, so the forms
    are interchangeable on one parameter tree. ``patches`` says how the patch
    matrix is built:

    * "patches": ``lax.conv_general_dilated_patches`` (a one-hot depthwise
      convolution; its gradient is another);
    * "slices": the kernel's shifted slices of the padded input, concatenated
      on the channel axis (plain copies; their gradient is a sum of pads).
    """

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    padding: str = "SAME"  # "SAME" or "VALID"
    use_bias: bool = True
    dtype: Any = jnp.float32
    patches: str = "patches"  # "patches" or "slices"

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel_size
        cin = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (kh, kw, cin, self.features))
        if self.padding not in ("SAME", "VALID"):
            raise ValueError(f"PatchConv padding must be SAME or VALID, got {self.padding!r}.")
        if self.patches == "slices":
            cols = _shifted_slices(x, kh, kw, self.padding)  # features ordered (row, column, channel)
            matrix = kernel.reshape(kh * kw * cin, self.features)
        elif self.patches == "patches":
            cols = jax.lax.conv_general_dilated_patches(
                x, (kh, kw), (1, 1), self.padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
            # Patch features are ordered (channel, row, column).
            matrix = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(cin * kh * kw, self.features)
        else:
            raise ValueError(f"PatchConv patches must be 'patches' or 'slices', got {self.patches!r}.")
        y = _patch_matmul(cols, matrix.astype(self.dtype))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,)).astype(self.dtype)
        return y


def _shifted_slices(x, kh: int, kw: int, padding: str):
    """[B, H', W', kh*kw*C]: every kernel offset's window of NHWC ``x``, offsets major."""
    b, h, w, _ = x.shape
    if padding == "SAME":
        top, left = (kh - 1) // 2, (kw - 1) // 2
        x = jnp.pad(x, ((0, 0), (top, kh - 1 - top), (left, kw - 1 - left), (0, 0)))
        out_h, out_w = h, w
    else:
        out_h, out_w = h - kh + 1, w - kw + 1
    return jnp.concatenate([x[:, i:i + out_h, j:j + out_w, :]
                            for i in range(kh) for j in range(kw)], axis=-1)


@jax.custom_vjp
def _patch_matmul(cols, matrix):
    """[..., K] @ [K, F]; its kernel gradient is formed as (dy^T cols)^T.

    Autodiff forms cols^T dy, for which XLA's CPU layout assignment copies the
    activation gradient dy into a transposed layout first (measured: the costliest
    op of a CIFAR-10 step, ~50 ms for the first layer's [131072, 64]); in this
    order the copy, if any, is of the patch matrix, and for the first layer it is
    a third of the size.
    """
    return jnp.dot(cols, matrix)


def _patch_matmul_fwd(cols, matrix):
    return jnp.dot(cols, matrix), (cols, matrix)


def _patch_matmul_bwd(residuals, dy):
    cols, matrix = residuals
    k, f = matrix.shape
    dcols = jnp.dot(dy, matrix.T.astype(dy.dtype))
    dmatrix = jax.lax.dot_general(dy.reshape(-1, f), cols.reshape(-1, k), (((0,), (0,)), ((), ())),
                                  preferred_element_type=jnp.float32).T
    return dcols.astype(cols.dtype), dmatrix.astype(matrix.dtype)


_patch_matmul.defvjp(_patch_matmul_fwd, _patch_matmul_bwd)


CONV_IMPLS = ("auto", "conv", "patches", "slices")
# "auto" per backend, measured with experiments/benchmark.py --conv_impls (README, Performance).
AUTO_CONV_IMPL = {"cpu": "slices"}


def resolve_conv_impl(impl: str) -> str:
    """"auto" picks the faster form for the default backend: slices on CPU, conv elsewhere.

    Measured on a 2-core CPU (jax 0.10, batch 128, README "Performance"): one
    fwd+bwd of the CIFAR-10 shadow CNN's second layer takes 11 s as ``nn.Conv``,
    165 ms as patches and 110 ms as slices; with the CPU's pooling and BatchNorm
    forms the CNN trains at 653 images/s with patches and 1152 with slices.
    """
    return _resolve("conv_impl", impl, CONV_IMPLS, AUTO_CONV_IMPL, "conv")


def _resolve(setting: str, impl: str, choices, auto_by_backend: dict, elsewhere: str) -> str:
    """Checks ``impl`` against ``choices``; maps "auto" to the default backend's form."""
    if impl not in choices:
        raise ValueError(f"{setting} must be one of {choices}, got {impl!r}.")
    if impl == "auto":
        return auto_by_backend.get(jax.default_backend(), elsewhere)
    return impl


def _conv(impl: str, features: int, dtype, use_bias: bool, name: str):
    impl = resolve_conv_impl(impl)
    if impl == "conv":
        return nn.Conv(features, (3, 3), padding="SAME", use_bias=use_bias, dtype=dtype, name=name)
    return PatchConv(features, (3, 3), padding="SAME", use_bias=use_bias, dtype=dtype, name=name,
                     patches=impl)


def _row_mask(mask, x):
    """Broadcasts a [B] row mask to ``x``'s rank for BatchNorm."""
    if mask is None:
        return None
    return jnp.reshape(mask, mask.shape + (1,) * (x.ndim - 1))


NORMS = ("batch", "group", "none")
# 2x2 max-pooling forms: "window" is nn.max_pool (its gradient is XLA's select-and-scatter);
# "reshape" takes the max over a [H/2, 2, W/2, 2] view, whose gradient is an elementwise
# mask. Same forward; the same gradient wherever a window's maximum is unique.
POOL_IMPLS = ("auto", "window", "reshape")
AUTO_POOL_IMPL = {"cpu": "reshape"}


def resolve_pool_impl(impl: str) -> str:
    """"auto": reshape on CPU (select-and-scatter is XLA CPU's slowest op here), window elsewhere."""
    return _resolve("pool_impl", impl, POOL_IMPLS, AUTO_POOL_IMPL, "window")


def max_pool_2x2(x, impl: str = "auto"):
    """Non-overlapping 2x2 max-pooling of NHWC ``x`` (odd edges dropped, as nn.max_pool)."""
    if resolve_pool_impl(impl) == "window":
        return nn.max_pool(x, (2, 2), strides=(2, 2))
    return _max_pool_reshape(x)


def _pool_windows(x):
    """NHWC ``x`` as [B, H/2, 2, W/2, 2, C] 2x2 windows (odd edges dropped)."""
    b, h, w, c = x.shape
    return x[:, :h - h % 2, :w - w % 2].reshape(b, h // 2, 2, w // 2, 2, c)


@jax.custom_vjp
def _max_pool_reshape(x):
    return _pool_windows(x).max(axis=(2, 4))


def _max_pool_reshape_fwd(x):
    y = _max_pool_reshape(x)
    return y, (x, y)


def _max_pool_reshape_bwd(residuals, dy):
    # The gradient goes to the window's maximum: one elementwise pass over an argmax mask.
    # (Autodiff of the reshape+max would also count ties in every window, two more passes;
    # a tie -- measure zero for real activations -- here gives each tied input the gradient.)
    x, y = residuals
    b, h, w, c = x.shape
    hit = _pool_windows(x) == y[:, :, None, :, None, :]
    dx = jnp.where(hit, dy[:, :, None, :, None, :], jnp.zeros((), dy.dtype))
    dx = dx.reshape(b, h - h % 2, w - w % 2, c)
    return (jnp.pad(dx, ((0, 0), (0, h % 2), (0, w % 2), (0, 0))),)


_max_pool_reshape.defvjp(_max_pool_reshape_fwd, _max_pool_reshape_bwd)


# BatchNorm forms: "flax" is nn.BatchNorm; "fused" is FusedBatchNorm (same variables, same
# statistics, a hand-written gradient of two column sums and one elementwise pass).
BATCHNORM_IMPLS = ("auto", "flax", "fused")
AUTO_BATCHNORM_IMPL = {"cpu": "fused"}


def resolve_batchnorm_impl(impl: str) -> str:
    """"auto": fused on CPU (measured faster, README), flax elsewhere."""
    return _resolve("batchnorm_impl", impl, BATCHNORM_IMPLS, AUTO_BATCHNORM_IMPL, "flax")


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _batch_norm_train(x3, scale, bias, weights, epsilon):
    """BatchNorm of [B, P, C] ``x3`` over (B, P), examples weighted 0/1 by ``weights`` [B].

    Returns (y, mean, var).
    """
    y, mean, var, _ = _batch_norm_forward(x3, scale, bias, weights, epsilon)
    return y, mean, var


def _batch_norm_forward(x3, scale, bias, weights, epsilon):
    x = x3.astype(jnp.float32)
    w = weights[:, None, None]
    count = jnp.maximum(jnp.sum(weights) * x3.shape[1], 1.0)
    mean = jnp.sum(x * w, (0, 1)) / count
    # E[x^2] - E[x]^2, clipped at 0: nn.BatchNorm's default (use_fast_variance).
    var = jnp.maximum(jnp.sum(x * x * w, (0, 1)) / count - mean * mean, 0.0)
    inv = jax.lax.rsqrt(var + epsilon)
    y = ((x - mean) * (inv * scale) + bias).astype(x3.dtype)
    return y, mean, var, inv


def _batch_norm_train_fwd(x3, scale, bias, weights, epsilon):
    y, mean, var, inv = _batch_norm_forward(x3, scale, bias, weights, epsilon)
    return (y, mean, var), (x3, scale, weights, mean, inv)


def _batch_norm_train_bwd(epsilon, residuals, cotangents):
    del epsilon
    x3, scale, weights, mean, inv = residuals
    dy, dmean, dvar = cotangents
    x, dy = x3.astype(jnp.float32), dy.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(weights) * x3.shape[1], 1.0)
    xhat = (x - mean) * inv
    dbias = jnp.sum(dy, (0, 1))
    dscale = jnp.sum(dy * xhat, (0, 1))
    w = weights[:, None, None] / count
    # Through xhat directly, then through the batch mean and variance (weighted rows only),
    # then the cotangents of the returned mean and variance themselves.
    dx = (inv * scale) * dy - w * (inv * scale) * (dbias + xhat * dscale) \
        + w * (dmean + 2.0 * (x - mean) * dvar)
    return dx.astype(x3.dtype), dscale, dbias, jnp.zeros_like(weights)


_batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


class FusedBatchNorm(nn.Module):
    """nn.BatchNorm over all but the last axis, with a hand-written gradient.

    Same variables (params scale/bias, batch_stats mean/var), initialisers,
    statistics (masked rows excluded, variance E[x^2]-E[x]^2) and running-average
    update as ``nn.BatchNorm``, so the two share parameter trees. XLA's CPU
    backend differentiates nn.BatchNorm into several passes and a transposed copy
    of the activations; this gradient is two column sums and one elementwise
    pass, which XLA fuses with the ReLU and pooling gradients around it.
    """

    momentum: float = BATCHNORM_MOMENTUM
    epsilon: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, use_running_average: bool, mask=None):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones_init(), (c,))
        bias = self.param("bias", nn.initializers.zeros_init(), (c,))
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        x = jnp.asarray(x, self.dtype)
        if use_running_average:
            inv = jax.lax.rsqrt(ra_var.value + self.epsilon)
            return ((x - ra_mean.value) * (inv * scale) + bias).astype(self.dtype)
        batch = x.shape[0]
        weights = (jnp.ones((batch,), jnp.float32) if mask is None else
                   jnp.reshape(mask, (batch,)).astype(jnp.float32))
        y, mean, var = _batch_norm_train(x.reshape(batch, -1, c), scale, bias, weights,
                                         self.epsilon)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y.reshape(x.shape)


def _batch_norm(impl: str, dtype, name: str):
    if resolve_batchnorm_impl(impl) == "fused":
        return FusedBatchNorm(momentum=BATCHNORM_MOMENTUM, dtype=dtype, name=name)
    return nn.BatchNorm(momentum=BATCHNORM_MOMENTUM, dtype=dtype, name=name)


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

# He-normal over the fan-out, std sqrt(2 / (kh * kw * out)): the convolutions' initialiser in
# objax.zoo.wide_resnet (its conv_args), the WideResNet LiRA's code trains.
_WRN_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """lax's "SAME" padding of one axis: output ceil(size / stride), the extra pixel after."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class WideConv(nn.Module):
    """A bias-free k x k convolution with stride, "SAME" padding (lax's) and nn.Conv's layout.

    The CPU forms of :class:`PatchConv` ("patches", "slices": a patch matrix and one
    matmul, with its hand-written gradient) extended to strides and 1x1 kernels, which a
    WideResNet needs for its down-sampling convolutions and projection shortcuts. Every
    form holds the same ``kernel`` [kh, kw, in, out] and computes the same function.
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    dtype: Any = jnp.float32
    conv_impl: str = "auto"  # see resolve_conv_impl

    @nn.compact
    def __call__(self, x):
        k, s = self.kernel_size, self.stride
        cin = x.shape[-1]
        kernel = self.param("kernel", _WRN_CONV_INIT, (k, k, cin, self.features))
        x = jnp.asarray(x, self.dtype)
        impl = resolve_conv_impl(self.conv_impl)
        if impl == "conv":
            return jax.lax.conv_general_dilated(
                x, kernel.astype(self.dtype), (s, s), "SAME",
                dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if impl == "patches":
            cols = jax.lax.conv_general_dilated_patches(
                x, (k, k), (s, s), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
            matrix = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(cin * k * k, self.features)
        else:  # "slices": the kernel's strided windows of the padded input, offsets major
            _, h, w, _ = x.shape
            (top, bottom), (left, right) = _same_padding(h, k, s), _same_padding(w, k, s)
            x = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
            out_h, out_w = -(-h // s), -(-w // s)
            cols = jnp.concatenate(
                [x[:, i:i + s * (out_h - 1) + 1:s, j:j + s * (out_w - 1) + 1:s, :]
                 for i in range(k) for j in range(k)], axis=-1)
            matrix = kernel.reshape(k * k * cin, self.features)
        return _patch_matmul(cols, matrix.astype(self.dtype))


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


def lira_recipe(epochs: int = LIRA_EPOCHS, **overrides) -> "TrainConfig":
    """The LiRA/RMIA CIFAR-10 recipe as a TrainConfig: SGD momentum 0.9, L2 5e-4 on kernels,
    learning rate 0.1 on LiRA's cos(7 pi t / 16) schedule with a 1% warm-up, batch 256, flip +
    4-pixel-shift augmentation, 100 epochs, predictions from a 0.999 moving average of the
    weights.

    ``overrides`` replace any other TrainConfig field (e.g. ``eval_batch_size``), so a test
    can run the recipe at a few epochs and a small batch.
    """
    # Imported here: the model zoo stays importable without the trainer (and no cycle can form).
    from jaxpet.training import TrainConfig  # pylint: disable=import-outside-toplevel

    fields = dict(epochs=epochs, batch_size=256, learning_rate=0.1, optimizer="sgd",
                  momentum=0.9, weight_decay=5e-4, schedule="lira_cosine", decayed="kernels",
                  augment="flip_crop", ema=0.999)
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise ValueError(f"lira_recipe got unknown TrainConfig fields {unknown}; valid ones: "
                         f"{sorted(f.name for f in dataclasses.fields(TrainConfig))}.")
    return TrainConfig(**{**fields, **overrides})
