"""DP-SGD (Abadi et al. 2016): the private gradient and the privacy it spends.

* :func:`clipped_gradient_sum` forms each example's gradient, clips it to an
  L2 norm and sums the clipped gradients, optionally a microbatch at a time.
* :func:`private_gradient` adds Gaussian noise to that sum and divides by the
  fixed batch size: the gradient a DP-SGD optimiser step uses.
* :func:`dpsgd_epsilon` and :func:`training_epsilon` give the epsilon spent,
  from Google's maintained accountant (``dp_accounting``).

The gradient functions are model-agnostic (they take a per-example loss), as
jax_privacy keeps ``clipped_grad`` apart from its trainers, so this module
needs nothing from :mod:`jaxpet.training`.

DP-SGD's guarantee is stated for Poisson subsampling with rate q = batch/N;
jaxpet, like most DP-SGD code, trains on shuffled fixed-size batches, and
reports the Poisson-subsampled RDP bound as the customary approximation.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxpet.config import check, setting


@dataclasses.dataclass(frozen=True)
class DPConfig:
    """DP-SGD's settings, each written once: :class:`jaxpet.training.TrainConfig` and the
    experiments take them from here (:func:`jaxpet.config.same_as`)."""

    clip_norm: float = setting(1.0, "DP-SGD per-example gradient clip norm.", low=0,
                               low_open=True)
    noise_multiplier: float = setting(1.0, "DP-SGD noise std / clip norm.", low=0,
                                      low_open=True)
    microbatch_size: int = setting(0, "DP-SGD: per-example gradients formed this many "
                                   "examples at a time (0: the whole batch); bounds memory "
                                   "(K x microbatch x parameters) without changing the "
                                   "result.", low=0)
    delta: float = setting(1e-5, "delta at which DP-SGD's epsilon is reported.", low=0, high=1,
                           low_open=True, high_open=True)

    def __post_init__(self):
        check(self)


# loss_fn(params, x, y, key) -> (loss, logits) of ONE example (no batch axis); the key is
# that example's own (e.g. for dropout).
ExampleLoss = Callable[[Any, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def clipped_gradient_sum(loss_fn: ExampleLoss, params, x, y, row_mask, keys, clip_norm: float,
                         microbatch_size: int = 0):
    """Sum over the batch of each example's gradient clipped to L2 norm ``clip_norm``.

    Rows where ``row_mask`` is False (padding) contribute nothing. With
    ``microbatch_size`` (dividing the batch) the per-example gradients are
    formed that many at a time: less memory, the same sum.

    Returns:
      (clipped gradient sum, a pytree like ``params``; per-example losses [B]; logits [B, C]).
    """

    def clip_and_sum(xs, ys, mask, ks):
        (losses, logits), grads = jax.vmap(
            jax.value_and_grad(loss_fn, has_aux=True), in_axes=(None, 0, 0, 0))(params, xs, ys, ks)
        weights = mask.astype(jnp.float32)  # padded rows contribute nothing
        grads = jax.tree.map(lambda g: g * weights.reshape((-1,) + (1,) * (g.ndim - 1)), grads)
        summed, _ = optax.per_example_global_norm_clip(jax.tree.leaves(grads), clip_norm)
        return summed, losses, logits

    batch = x.shape[0]
    micro = microbatch_size or batch
    if batch % micro:
        raise ValueError(f"microbatch_size {micro} must divide the batch size {batch}.")
    if micro == batch:
        clipped_sum, losses, logits = clip_and_sum(x, y, row_mask, keys)
    else:  # the batch in chunks, summing the clipped gradients: same result, less memory
        chunks = batch // micro
        split = lambda a: a.reshape((chunks, micro) + a.shape[1:])

        def body(total, chunk):
            summed, losses, logits = clip_and_sum(*chunk)
            return [t + g for t, g in zip(total, summed, strict=True)], (losses, logits)

        zeros = [jnp.zeros_like(p) for p in jax.tree.leaves(params)]
        clipped_sum, (losses, logits) = jax.lax.scan(
            body, zeros, (split(x), split(y), split(row_mask), split(keys)))
        losses, logits = losses.reshape(batch), logits.reshape((batch, -1))
    return jax.tree.unflatten(jax.tree.structure(params), clipped_sum), losses, logits


def private_gradient(loss_fn: ExampleLoss, params, x, y, row_mask, *, example_key, noise_key,
                     clip_norm: float, noise_multiplier: float, batch_size: int,
                     microbatch_size: int = 0):
    """DP-SGD's gradient: per-example gradients clipped, summed, noised, averaged.

    Gaussian noise of std ``noise_multiplier * clip_norm`` is added to the clipped
    sum, which is then divided by the fixed ``batch_size`` (not the number of real
    rows), as the privacy accounting assumes.

    Args:
      loss_fn: one example's ``(loss, logits)``; see :data:`ExampleLoss`.
      params: the parameters to differentiate.
      x, y, row_mask: the (padded) batch and which of its rows are real.
      example_key: split into one key per example, passed to ``loss_fn``.
      noise_key: the noise's key (one split per parameter leaf).

    Returns:
      (noisy averaged gradient like ``params``, per-example losses [B], logits [B, C]).
    """
    keys = jax.random.split(example_key, x.shape[0])
    clipped_sum, losses, logits = clipped_gradient_sum(loss_fn, params, x, y, row_mask, keys,
                                                       clip_norm, microbatch_size)
    leaves, treedef = jax.tree.flatten(clipped_sum)
    noise_keys = jax.random.split(noise_key, len(leaves))
    std = noise_multiplier * clip_norm
    noisy = [(g + std * jax.random.normal(k, g.shape, g.dtype)) / batch_size
             for g, k in zip(leaves, noise_keys, strict=True)]
    return jax.tree.unflatten(treedef, noisy), losses, logits


# ----------------------------------------------------------------------------- accountant


def _check(noise_multiplier: float, sampling_rate: float, steps: int, delta: float) -> None:
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError(f"noise multiplier must be > 0, got {noise_multiplier}.")
    if not 0 < sampling_rate <= 1:
        raise ValueError(f"sampling rate (batch / dataset size) must be in (0, 1], got "
                         f"{sampling_rate}.")
    if not steps >= 1:  # also refuses NaN
        raise ValueError(f"steps must be >= 1, got {steps}.")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}.")


def dpsgd_event(noise_multiplier: float, sampling_rate: float, steps: int):
    """The dp_accounting event of ``steps`` Poisson-subsampled Gaussian steps."""
    # Imported here, not at the top: dp_accounting (scipy) costs ~0.5 s to import and only
    # the accountant needs it, not every run that imports the trainer.
    import dp_accounting

    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(sampling_rate,
                                            dp_accounting.GaussianDpEvent(noise_multiplier)),
        steps)


def dpsgd_epsilon(noise_multiplier: float, sampling_rate: float, steps: int, delta: float,
                  accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` after ``steps`` DP-SGD steps ("rdp" or "pld" accountant)."""
    _check(noise_multiplier, sampling_rate, steps, delta)
    from dp_accounting import pld, rdp  # see dpsgd_event

    if accountant == "rdp":
        acc = rdp.RdpAccountant()
    elif accountant == "pld":
        acc = pld.PLDAccountant()
    else:
        raise ValueError(f"accountant must be 'rdp' or 'pld', got {accountant!r}.")
    acc.compose(dpsgd_event(noise_multiplier, sampling_rate, steps))
    return float(acc.get_epsilon(delta))


def training_epsilon(noise_multiplier: float, batch_size: int, dataset_size: int, epochs: int,
                     delta: float) -> dict:
    """Epsilon of a DP-SGD training run, with the numbers it came from (for results files)."""
    if dataset_size < 1 or batch_size < 1:
        raise ValueError("batch_size and dataset_size must be >= 1.")
    steps = epochs * math.ceil(dataset_size / batch_size)
    rate = min(1.0, batch_size / dataset_size)
    return {"epsilon": dpsgd_epsilon(noise_multiplier, rate, steps, delta), "delta": delta,
            "noise_multiplier": noise_multiplier, "sampling_rate": rate, "steps": steps,
            "accountant": "RDP, Poisson-subsampled Gaussian (dp_accounting); an approximation "
                          "here, where batches are shuffled, not Poisson-sampled"}
