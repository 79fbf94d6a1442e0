"""Model inversion: Fredrikson, Jha and Ristenpart's MI-FACE (CCS 2015, Algorithm 1).

The attack is a pure function of a model given as ``apply_fn(params, x) ->
logits`` (``x``: a batch of images with pixels in ``pixel_range``), so it
inverts any classifier, not only the face MLP. For a target class t it runs
gradient descent on the pixels of one image to minimise the paper's cost

    c(x) = 1 - softmax(apply_fn(params, x))[t]

starting from a blank (or a given) image: ``x <- Process(clip(x - lambda *
grad c(x)))``, and returns the lowest-cost image seen. It stops after
``max_iterations`` steps (alpha), by the rule beta (``patience``; see
``stopping``), when the cost falls to ``cost_threshold`` (gamma), or when the
cost or its gradient is not finite; each class records why it stopped.

Rule beta, ``stopping="window"`` (Algorithm 1, the default): stop at step i >= 1
when c(x_i) >= max(c(x_{i-1}), ..., c(x_{i-beta})), i.e. the new cost is no lower
than any of the last beta costs (fewer at the start). ``stopping="no_new_best"``
(jaxpet's earlier rule): stop after beta evaluations without a new lowest cost. The
loop is a ``lax.while_loop`` under ``jax.jit`` and the
classes are inverted together by ``jax.vmap``; each keeps its own stopping
state (a stopped class is frozen while the others run on).

``loss="cross_entropy"`` descends -log p instead (the seed's choice): the
same direction, scaled by 1/p, so the steps do not vanish while p is tiny.
Best image and stopping rules use the cost 1 - p either way.

The AT&T faces experiment around it is :mod:`jaxpet.inversion`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import functools
import math
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

# Stop codes; STOP_REASONS[code] names them. RUNNING only appears inside the loop.
RUNNING, MAX_ITERATIONS, PATIENCE, THRESHOLD, NON_FINITE = range(5)
STOP_REASONS = ("running", "max_iterations", "patience", "threshold", "non_finite")
# Rule beta: Fredrikson et al.'s window over the last beta costs, or beta steps without a new best.
STOPPING_RULES = ("window", "no_new_best")
PROCESSES = ("none", "denoise", "sharpen", "denoise_sharpen")
# What the gradient step descends: the paper's cost 1 - p, or the seed's cross entropy -log p
# (the same direction, scaled by 1/p: far larger steps while p is small).
LOSSES = ("one_minus_p", "cross_entropy")


@dataclasses.dataclass(frozen=True)
class MIFaceConfig:
    """Knobs of MI-FACE; hashable, so it is a static argument of the jitted loop.

    ``patience`` and ``cost_threshold`` are off when None, which makes a run a
    fixed budget of ``max_iterations`` steps (the seed's 5/10/100 runs).
    """

    step_size: float = 0.1  # lambda
    max_iterations: int = 100  # alpha: gradient steps at most
    patience: int | None = None  # beta: the window of costs (or steps without a new best)
    stopping: str = "window"  # how beta is read, one of STOPPING_RULES
    cost_threshold: float | None = None  # gamma: stop once the cost is <= this
    process: str = "none"  # Process step between iterations, one of PROCESSES
    loss: str = "one_minus_p"  # what the gradient descends, one of LOSSES
    sharpen_amount: float = 1.0  # unsharp-mask strength of the "sharpen" steps
    pixel_range: tuple[float, float] = (0.0, 1.0)  # pixels are clipped to this after every step

    def __post_init__(self):
        if not (isinstance(self.step_size, (int, float)) and math.isfinite(self.step_size)
                and self.step_size > 0):
            raise ValueError(f"step_size must be a positive finite number, got {self.step_size!r}.")
        if not isinstance(self.max_iterations, (int, np.integer)) or self.max_iterations < 1:
            raise ValueError(f"max_iterations must be a positive integer, got "
                             f"{self.max_iterations!r}.")
        if self.patience is not None and (not isinstance(self.patience, (int, np.integer))
                                          or self.patience < 1):
            raise ValueError(f"patience must be a positive integer or None (off), got "
                             f"{self.patience!r}.")
        if self.stopping not in STOPPING_RULES:
            raise ValueError(f"stopping must be one of {STOPPING_RULES}, got {self.stopping!r}.")
        if self.cost_threshold is not None and not math.isfinite(self.cost_threshold):
            raise ValueError(f"cost_threshold must be finite or None (off), got "
                             f"{self.cost_threshold!r}.")
        if self.process not in PROCESSES:
            raise ValueError(f"process must be one of {PROCESSES}, got {self.process!r}.")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}.")
        if not math.isfinite(self.sharpen_amount) or self.sharpen_amount < 0:
            raise ValueError(f"sharpen_amount must be >= 0, got {self.sharpen_amount!r}.")
        lo, hi = self.pixel_range
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"pixel_range must be (low, high) with low < high, got "
                             f"{self.pixel_range!r}.")
        object.__setattr__(self, "pixel_range", (float(lo), float(hi)))


@flax.struct.dataclass
class Inversion:
    """MI-FACE's output for one class, or for N classes with a leading [N] axis.

    ``trace[i]`` is the cost of the image after i steps (``trace[0]``: the start
    image); NaN for steps not taken.
    """

    image: jax.Array  # the lowest-cost image seen, [H, W, C]
    cost: jax.Array  # its cost 1 - p; 1 when no finite cost was ever seen
    log_p: jax.Array  # its log p(target), exact where the cost rounds to 1; -inf if none was finite
    best_iteration: jax.Array  # the step count at which it was reached
    iterations: jax.Array  # gradient steps taken
    stop_code: jax.Array  # index into STOP_REASONS
    trace: jax.Array  # [max_iterations + 1] costs

    @property
    def stop_reasons(self) -> list[str]:
        codes = np.atleast_1d(np.asarray(self.stop_code))
        return [STOP_REASONS[int(c)] for c in codes]


def _blur(x):
    """3x3 binomial blur of an [H, W, C] image with edge padding (the denoise step)."""
    taps = jnp.asarray([0.25, 0.5, 0.25], x.dtype)
    padded = jnp.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
    rows = sum(taps[i] * padded[i:i + x.shape[0]] for i in range(3))
    return sum(taps[j] * rows[:, j:j + x.shape[1]] for j in range(3))


def process_image(x, process: str, sharpen_amount: float = 1.0):
    """The paper's Process step between iterations: denoise (blur), sharpen (unsharp mask), both
    or none."""
    if process in ("denoise", "denoise_sharpen"):
        x = _blur(x)
    if process in ("sharpen", "denoise_sharpen"):
        x = x + sharpen_amount * (x - _blur(x))
    return x


def beta_stops(rule: str, step, log_p, since, window, beta: int):
    """Whether rule beta stops at ``step`` whose image has ``log_p`` (see the module docstring).

    ``window`` holds log p of the last ``beta`` images (+inf where none yet); ``since``
    counts evaluations since the last new best. The window rule compares in log p:
    c(x_i) >= max of the window's costs <=> log p_i <= min of its log p, exact where
    1 - p would round to 1 in float32 while p is tiny.
    """
    if rule == "window":
        return (step >= 1) & (log_p <= jnp.min(window))
    return since >= beta


def push_window(window, step, log_p):
    """The window after image ``step`` (a ring of the last beta log p; non-finite as -inf)."""
    return window.at[step % window.shape[0]].set(jnp.where(jnp.isfinite(log_p), log_p, -jnp.inf))


def _invert_one(apply_fn, config: MIFaceConfig, params, target, init) -> Inversion:
    """MI-FACE for ONE class as a ``lax.while_loop``; vmap it over (target, init) for many."""
    lo, hi = config.pixel_range
    alpha = config.max_iterations

    def loss_fn(x):
        logits = apply_fn(params, x[None])[0].astype(jnp.float32)
        log_p = jax.nn.log_softmax(logits)[target]
        loss = -log_p if config.loss == "cross_entropy" else -jnp.expm1(log_p)
        return loss, log_p

    loss_and_grad = jax.value_and_grad(loss_fn, has_aux=True)

    beta = config.patience or 1

    def body(state):
        x, step, best, best_log_p, best_step, since, _, trace, window = state
        (_, log_p), grad = loss_and_grad(x)
        cost = -jnp.expm1(log_p)  # 1 - p, exact to float32 precision even as p -> 1
        finite = jnp.isfinite(log_p) & jnp.all(jnp.isfinite(grad))
        # Compared in log p, which orders images like the cost but still resolves them
        # while p is tiny and 1 - p rounds to 1 in float32.
        improved = finite & (log_p > best_log_p)
        best = jnp.where(improved, x, best)
        best_log_p = jnp.where(improved, log_p, best_log_p)
        best_step = jnp.where(improved, step, best_step)
        since = jnp.where(improved, 0, since + 1)
        trace = trace.at[step].set(cost)
        code = jnp.asarray(RUNNING, jnp.int32)
        # Later checks overwrite earlier ones: a NaN outranks every other reason.
        code = jnp.where(step >= alpha, MAX_ITERATIONS, code)
        if config.patience is not None:
            code = jnp.where(beta_stops(config.stopping, step, log_p, since, window,
                                        config.patience), PATIENCE, code)
        if config.cost_threshold is not None:
            code = jnp.where(finite & (cost <= config.cost_threshold), THRESHOLD, code)
        code = jnp.where(finite, code, NON_FINITE)
        go = code == RUNNING
        moved = jnp.clip(process_image(jnp.clip(x - config.step_size * grad, lo, hi),
                                       config.process, config.sharpen_amount), lo, hi)
        x = jnp.where(go, moved, x)
        window = push_window(window, step, log_p)
        return (x, step + go.astype(jnp.int32), best, best_log_p, best_step, since, code, trace,
                window)

    init = jnp.asarray(init, jnp.float32)
    state = (init, jnp.zeros((), jnp.int32), init, jnp.asarray(-jnp.inf, jnp.float32),
             jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), jnp.asarray(RUNNING, jnp.int32),
             jnp.full((alpha + 1,), jnp.nan, jnp.float32),
             jnp.full((beta,), jnp.inf, jnp.float32))  # log p of the last beta images
    state = jax.lax.while_loop(lambda s: s[6] == RUNNING, body, state)
    _, step, best, best_log_p, best_step, _, code, trace, _ = state
    return Inversion(image=best, cost=-jnp.expm1(best_log_p), log_p=best_log_p,
                     best_iteration=best_step, iterations=step, stop_code=code, trace=trace)


@functools.partial(jax.jit, static_argnames=("apply_fn", "config"))
def invert_class(apply_fn, config: MIFaceConfig, params, target, init) -> Inversion:
    """MI-FACE for one class, jitted (no input checks: use :func:`mi_face`)."""
    return _invert_one(apply_fn, config, params, target, init)


@functools.partial(jax.jit, static_argnames=("apply_fn", "config"))
def invert_classes(apply_fn, config: MIFaceConfig, params, targets, inits) -> Inversion:
    """MI-FACE for N classes in ONE vmapped, jitted call: targets [N], inits [N, H, W, C]."""
    return jax.vmap(_invert_one, in_axes=(None, None, None, 0, 0))(
        apply_fn, config, params, targets, inits)


def model_num_classes(apply_fn, params, image_shape: Sequence[int]) -> int:
    """The number of classes ``apply_fn`` outputs for one image of ``image_shape``.

    Raises ValueError when the model cannot take such an image, so a wrong
    shape fails here, before any loop is compiled.
    """
    image_shape = tuple(int(d) for d in image_shape)
    if not image_shape or min(image_shape) < 1:
        raise ValueError(f"image_shape must be non-empty with positive sizes, got {image_shape}.")
    probe = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    try:
        out = jax.eval_shape(apply_fn, params, probe)
    except Exception as e:  # any tracing failure means the shape does not fit
        raise ValueError(f"An image of shape {image_shape} does not fit the model "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                         "pass the shape of the images it was trained on.") from e
    if not hasattr(out, "shape") or len(out.shape) != 2 or out.shape[0] != 1 or out.shape[1] < 2:
        raise ValueError(f"apply_fn must return logits [batch, classes>=2] for images of shape "
                         f"{image_shape}, got {getattr(out, 'shape', type(out).__name__)}.")
    return int(out.shape[1])


def prepare_inputs(apply_fn: Callable, params, targets=None, *,
                   image_shape: Sequence[int] | None = None, init=None,
                   config: MIFaceConfig = MIFaceConfig()) -> tuple[jax.Array, jax.Array]:
    """Checks :func:`mi_face`'s arguments and returns its (targets [N], inits [N, *image_shape])."""
    if not isinstance(config, MIFaceConfig):
        raise TypeError(f"config must be an MIFaceConfig, got {type(config).__name__}.")
    if image_shape is None:
        if init is None:
            raise ValueError("Give image_shape or an init image.")
        image_shape = np.shape(init)[1:] if np.ndim(init) >= 4 else np.shape(init)
    image_shape = tuple(int(d) for d in image_shape)
    num_classes = model_num_classes(apply_fn, params, image_shape)
    if targets is None:
        targets = np.arange(num_classes)
    targets = np.asarray(targets)
    if targets.ndim != 1 or targets.size == 0 or not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"targets must be a non-empty 1-D array of class indices, got "
                         f"{targets.dtype} of shape {targets.shape}.")
    bad = targets[(targets < 0) | (targets >= num_classes)]
    if bad.size:
        raise ValueError(f"Class index {int(bad[0])} is outside the model's {num_classes} "
                         f"classes (0..{num_classes - 1}).")
    n = targets.size
    if init is None:
        inits = np.full((n, *image_shape), config.pixel_range[0], np.float32)
    else:
        init = np.asarray(init, np.float32)
        if init.shape == image_shape:
            inits = np.broadcast_to(init, (n, *image_shape))
        elif init.shape == (n, *image_shape):
            inits = init
        else:
            raise ValueError(f"init has shape {init.shape}; expected {image_shape} or "
                             f"{(n, *image_shape)} for {n} targets.")
        if not np.all(np.isfinite(inits)):
            raise ValueError("init holds NaN or inf pixels.")
        lo, hi = config.pixel_range
        if inits.min() < lo or inits.max() > hi:
            raise ValueError(f"init pixels span [{inits.min():.3g}, {inits.max():.3g}], outside "
                             f"pixel_range {config.pixel_range}.")
    return jnp.asarray(targets, jnp.int32), jnp.asarray(inits, jnp.float32)


def mi_face(apply_fn: Callable, params, targets=None, *, image_shape: Sequence[int] | None = None,
            init=None, config: MIFaceConfig = MIFaceConfig()) -> Inversion:
    """Inverts classes ``targets`` (default: all) of the model in one vmapped call.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits [B, classes]`` for images ``x``
        [B, *image_shape] with pixels in ``config.pixel_range``. It is a static
        jit argument: pass the same hashable object each time (e.g.
        :func:`flax_apply`) to compile once.
      params: the model's parameters (any pytree ``apply_fn`` takes).
      targets: class indices [N]; None inverts every class.
      image_shape: the shape of one image; taken from ``init`` when omitted.
      init: start image(s), [*image_shape] or [N, *image_shape]; default all
        ``pixel_range[0]`` (a blank image, the paper's x0 = 0).
      config: step size, stopping rules, loss and Process step.

    Returns an :class:`Inversion` with a leading [N] axis. Bad input (class out
    of range, shape the model cannot take, start image of the wrong shape or
    outside the pixel range) raises ValueError before the loop starts.
    """
    targets, inits = prepare_inputs(apply_fn, params, targets, image_shape=image_shape,
                                    init=init, config=config)
    return invert_classes(apply_fn, config, params, targets, inits)


@dataclasses.dataclass(frozen=True)
class FlaxApply:
    """``model.apply(variables, preprocess(x), train=False)`` as a hashable ``apply_fn``.

    ``preprocess`` maps attack pixels (in ``pixel_range``) to the model's input,
    e.g. ``data.Normalize(mean=(0.5,), std=(0.5,), scale=1.0)`` for a model
    trained on [-1, 1] inputs; it must be hashable. None: pixels as they are.
    """

    model: Any
    preprocess: Callable | None = None

    def __call__(self, variables, x):
        if self.preprocess is not None:
            x = self.preprocess(x)
        return self.model.apply(variables, x, train=False)


def flax_apply(model, preprocess: Callable | None = None) -> FlaxApply:
    """The inference-mode apply function of a jaxpet Flax model, for :func:`mi_face`."""
    return FlaxApply(model, preprocess)


def timed(fn, *args):
    """(compile seconds, run seconds, compiled, output) of a jitted ``fn`` on ``args`` (the
    static arguments first, two of them, as mi_face's invert functions take)."""
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compiled_at = time.perf_counter()
    out = jax.block_until_ready(compiled(*args[2:]))
    return compiled_at - start, time.perf_counter() - compiled_at, compiled, out
