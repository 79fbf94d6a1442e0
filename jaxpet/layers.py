"""Layer forms the models are built from: convolutions as one matmul, 2x2 max-pooling and
BatchNorm with hand-written gradients, and the switches that pick them per backend.

Each form computes the same function as the library layer it stands in for (tested in
``tests/test_layers.py``); "auto" picks the one measured faster on the default backend
(docs/performance.md): on CPU the patch-matrix convolutions, the reshape max-pool and the
fused BatchNorm; elsewhere ``nn.Conv``, ``nn.max_pool`` and ``nn.BatchNorm``.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch's BatchNorm momentum 0.1 (the seed's framework) is Flax's 0.9.
BATCHNORM_MOMENTUM = 0.9


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
        if self.patches not in ("patches", "slices"):
            raise ValueError(f"PatchConv patches must be 'patches' or 'slices', got "
                             f"{self.patches!r}.")
        cols, matrix = patch_columns(x, kernel, 1, self.padding, self.patches)
        y = _patch_matmul(cols, matrix.astype(self.dtype))
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
            y = y + bias.astype(self.dtype)
        return y


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """lax's "SAME" padding of one axis: output ceil(size / stride), the extra pixel after."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _shifted_slices(x, kh: int, kw: int, padding: str, stride: int = 1):
    """[B, H', W', kh*kw*C]: every kernel offset's (strided) window of NHWC ``x``, offsets
    major; "SAME" pads as lax does."""
    _, h, w, _ = x.shape
    if padding == "SAME":
        (top, bottom), (left, right) = _same_padding(h, kh, stride), _same_padding(w, kw, stride)
        x = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
        out_h, out_w = -(-h // stride), -(-w // stride)
    else:
        out_h, out_w = (h - kh) // stride + 1, (w - kw) // stride + 1
    return jnp.concatenate([x[:, i:i + stride * (out_h - 1) + 1:stride,
                              j:j + stride * (out_w - 1) + 1:stride, :]
                            for i in range(kh) for j in range(kw)], axis=-1)


def patch_columns(x, kernel, stride: int, padding: str, form: str):
    """(patch matrix of NHWC ``x``, ``kernel`` [kh, kw, in, out] reshaped to match) for a
    convolution as one matmul; ``form`` "slices" (shifted slices, features ordered row,
    column, channel) or "patches" (``lax.conv_general_dilated_patches``: channel, row,
    column)."""
    kh, kw, cin, features = kernel.shape
    if form == "slices":
        return _shifted_slices(x, kh, kw, padding, stride), kernel.reshape(kh * kw * cin, features)
    cols = jax.lax.conv_general_dilated_patches(
        x, (kh, kw), (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return cols, jnp.transpose(kernel, (2, 0, 1, 3)).reshape(cin * kh * kw, features)


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
# "auto" per backend, measured with experiments/benchmark.py --conv_impls (docs/performance.md).
AUTO_CONV_IMPL = {"cpu": "slices"}


def resolve_conv_impl(impl: str) -> str:
    """"auto" picks the faster form for the default backend: slices on CPU, conv elsewhere.

    Measured on a 2-core CPU (jax 0.10, batch 128, docs/performance.md): one
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


# 2x2 max-pooling forms: "window" is nn.max_pool (its gradient is XLA's select-and-scatter);
# "reshape" takes the max over a [H/2, 2, W/2, 2] view, whose gradient is an elementwise
# mask. Same forward; the same gradient wherever a window's maximum is unique.
POOL_IMPLS = ("auto", "window", "reshape")
AUTO_POOL_IMPL = {"cpu": "reshape"}


def resolve_pool_impl(impl: str) -> str:
    """"auto": reshape on CPU (select-and-scatter is XLA CPU's slowest op here), window
    elsewhere."""
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
    """"auto": fused on CPU (measured faster, docs/performance.md), flax elsewhere."""
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


# He-normal over the fan-out, std sqrt(2 / (kh * kw * out)): the convolutions' initialiser in
# objax.zoo.wide_resnet (its conv_args), the WideResNet LiRA's code trains.
HE_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class WideConv(nn.Module):
    """A bias-free k x k convolution with stride, "SAME" padding (lax's) and nn.Conv's layout.

    The CPU forms of :class:`PatchConv` (a patch matrix and one matmul, with its
    hand-written gradient) with strides and 1x1 kernels, which a WideResNet needs for its
    down-sampling convolutions and projection shortcuts. Every form holds the same
    ``kernel`` [kh, kw, in, out] and computes the same function.
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    dtype: Any = jnp.float32
    conv_impl: str = "auto"  # see resolve_conv_impl

    @nn.compact
    def __call__(self, x):
        k, s = self.kernel_size, self.stride
        kernel = self.param("kernel", HE_FAN_OUT, (k, k, x.shape[-1], self.features))
        x = jnp.asarray(x, self.dtype)
        impl = resolve_conv_impl(self.conv_impl)
        if impl == "conv":
            return jax.lax.conv_general_dilated(
                x, kernel.astype(self.dtype), (s, s), "SAME",
                dimension_numbers=("NHWC", "HWIO", "NHWC"))
        cols, matrix = patch_columns(x, kernel, s, "SAME", impl)
        return _patch_matmul(cols, matrix.astype(self.dtype))
