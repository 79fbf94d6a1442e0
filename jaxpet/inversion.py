"""Model inversion (seed Task 2): Fredrikson, Jha and Ristenpart's MI-FACE (CCS 2015, Algorithm 1).

The attack is a pure function of a model given as ``apply_fn(params, x) ->
logits`` (``x``: a batch of images with pixels in ``pixel_range``), so it
inverts any classifier, not only the face MLP. For a target class t it runs
gradient descent on the pixels of one image to minimise the paper's cost

    c(x) = 1 - softmax(apply_fn(params, x))[t]

starting from a blank (or a given) image: ``x <- Process(clip(x - lambda *
grad c(x)))``, and returns the lowest-cost image seen. It stops after
``max_iterations`` steps (alpha), when the best cost has not improved for
``patience`` evaluations (beta), when the cost falls to ``cost_threshold``
(gamma), or when the cost or its gradient is not finite; each class records
why it stopped. The loop is a ``lax.while_loop`` under ``jax.jit`` and the
classes are inverted together by ``jax.vmap``; each keeps its own stopping
state (a stopped class is frozen while the others run on).

``loss="cross_entropy"`` descends -log p instead (the seed's choice): the
same direction, scaled by 1/p, so the steps do not vanish while p is tiny.
Best image and stopping rules use the cost 1 - p either way.

On the AT&T face MLP (pixels in [0, 1]), the paper's cost with lambda = 0.1
from a black image barely moves in 100 steps (p is 1e-7..1e-4, so the gradient is
tiny); from a grey start with the seed's cross entropy, every class
yields a faint but recognisable face. The experiment reports both.

:func:`run` is the whole AT&T faces experiment behind
``experiments/inversion.py``: train the target face MLP and an independent
evaluator, invert all 40 people for several iteration budgets, score the
reconstructions (MSE, SSIM, identification rates), time vmap against a
Python loop over classes, and draw the figures.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
import time
from typing import Any, Callable, Sequence

from absl import logging
import flax
import jax
import jax.numpy as jnp
import numpy as np

# Stop codes; STOP_REASONS[code] names them. RUNNING only appears inside the loop.
RUNNING, MAX_ITERATIONS, PATIENCE, THRESHOLD, NON_FINITE = range(5)
STOP_REASONS = ("running", "max_iterations", "patience", "threshold", "non_finite")
PROCESSES = ("none", "denoise", "sharpen", "denoise_sharpen")
# What the gradient step descends: the paper's cost 1 - p, or the seed's cross entropy -log p
# (the same direction, scaled by 1/p: far larger steps while p is small).
LOSSES = ("one_minus_p", "cross_entropy")


# --------------------------------------------------------------------------- the attack


@dataclasses.dataclass(frozen=True)
class MIFaceConfig:
    """Knobs of MI-FACE; hashable, so it is a static argument of the jitted loop.

    ``patience`` and ``cost_threshold`` are off when None, which makes a run a
    fixed budget of ``max_iterations`` steps (the seed's 5/10/100 runs).
    """

    step_size: float = 0.1  # lambda
    max_iterations: int = 100  # alpha: gradient steps at most
    patience: int | None = None  # beta: stop after this many evaluations without a new best cost
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
            raise ValueError(f"max_iterations must be a positive integer, got {self.max_iterations!r}.")
        if self.patience is not None and (not isinstance(self.patience, (int, np.integer))
                                          or self.patience < 1):
            raise ValueError(f"patience must be a positive integer or None (off), got {self.patience!r}.")
        if self.cost_threshold is not None and not math.isfinite(self.cost_threshold):
            raise ValueError(f"cost_threshold must be finite or None (off), got {self.cost_threshold!r}.")
        if self.process not in PROCESSES:
            raise ValueError(f"process must be one of {PROCESSES}, got {self.process!r}.")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}.")
        if not math.isfinite(self.sharpen_amount) or self.sharpen_amount < 0:
            raise ValueError(f"sharpen_amount must be >= 0, got {self.sharpen_amount!r}.")
        lo, hi = self.pixel_range
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"pixel_range must be (low, high) with low < high, got {self.pixel_range!r}.")
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
    """The paper's Process step between iterations: denoise (blur), sharpen (unsharp mask), both or none."""
    if process in ("denoise", "denoise_sharpen"):
        x = _blur(x)
    if process in ("sharpen", "denoise_sharpen"):
        x = x + sharpen_amount * (x - _blur(x))
    return x


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

    def body(state):
        x, step, best, best_log_p, best_step, since, _, trace = state
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
            code = jnp.where(since >= config.patience, PATIENCE, code)
        if config.cost_threshold is not None:
            code = jnp.where(finite & (cost <= config.cost_threshold), THRESHOLD, code)
        code = jnp.where(finite, code, NON_FINITE)
        go = code == RUNNING
        moved = jnp.clip(process_image(jnp.clip(x - config.step_size * grad, lo, hi),
                                       config.process, config.sharpen_amount), lo, hi)
        x = jnp.where(go, moved, x)
        return x, step + go.astype(jnp.int32), best, best_log_p, best_step, since, code, trace

    init = jnp.asarray(init, jnp.float32)
    state = (init, jnp.zeros((), jnp.int32), init, jnp.asarray(-jnp.inf, jnp.float32),
             jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), jnp.asarray(RUNNING, jnp.int32),
             jnp.full((alpha + 1,), jnp.nan, jnp.float32))
    state = jax.lax.while_loop(lambda s: s[6] == RUNNING, body, state)
    _, step, best, best_log_p, best_step, _, code, trace = state
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
    except Exception as e:  # noqa: BLE001  (any tracing failure means the shape does not fit)
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

# --------------------------------------------------------------------------- image similarity


def _gaussian_taps(size: int, sigma: float) -> np.ndarray:
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    taps = np.exp(-0.5 * (r / sigma) ** 2)
    return taps / taps.sum()


def _filter_valid(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of the last two axes of ``x`` with ``taps``."""
    view = np.lib.stride_tricks.sliding_window_view
    x = view(x, taps.size, axis=-1) @ taps
    return view(x, taps.size, axis=-2) @ taps


def ssim(a, b, *, data_range: float = 1.0, win_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> np.ndarray:
    """Mean structural similarity (Wang et al., 2004) with an 11x11 gaussian window (sigma 1.5).

    ``a`` and ``b`` are channel-last images [..., H, W, C] (or a single [H, W]
    image); returns the SSIM map's mean over the window positions that fit
    inside the image and over channels, one value per leading index. Local
    statistics use the window's weights directly (no N-1 correction), as in
    the paper, so identical images score exactly 1.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"ssim needs images of one shape, got {a.shape} and {b.shape}.")
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    if a.ndim < 3 or min(a.shape[-3:-1]) < win_size:
        raise ValueError(f"ssim needs [..., H, W, C] images with H, W >= {win_size}, got {a.shape}.")
    a, b = np.moveaxis(a, -1, -3), np.moveaxis(b, -1, -3)  # [..., C, H, W]
    taps = _gaussian_taps(win_size, sigma)
    mu_a, mu_b = _filter_valid(a, taps), _filter_valid(b, taps)
    var_a = _filter_valid(a * a, taps) - mu_a ** 2
    var_b = _filter_valid(b * b, taps) - mu_b ** 2
    cov = _filter_valid(a * b, taps) - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return ssim_map.mean(axis=(-3, -2, -1))


def mse(a, b) -> np.ndarray:
    """Mean squared pixel error over the last three axes ([..., H, W, C])."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return np.mean(d * d, axis=(-3, -2, -1))


def correlation(a, b) -> np.ndarray:
    """Pearson correlation of the pixels of ``a`` [N, ...] with those of ``b`` [M, ...]: [N, M].

    Blind to brightness and contrast, so a faint reconstruction is still
    matched to the face whose pattern it carries.
    """
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b /= np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


# --------------------------------------------------------------------------- the AT&T faces experiment

EVALUATORS = ("cnn", "lenet", "mlp")
INITS = ("gray", "black")
INPUT_NORMS = ("pm1", "unit")
# The seed write-up's target (Task 2): 100% train / 95.31% validation accuracy.
SEED_TARGET = {"train_acc": 1.0, "val_acc": 0.9531, "train_loss": 0.003, "val_loss": 0.154}
# Alternatives run at 100 iterations beside the main setting, to show what each choice does.
VARIANTS = {
    "paper_cost_black": dict(loss="one_minus_p", init="black"),
    "paper_cost_gray": dict(loss="one_minus_p", init="gray"),
    "paper_cost_gray_step10": dict(loss="one_minus_p", init="gray", step_size=10.0),
    "cross_entropy_black": dict(loss="cross_entropy", init="black"),
    "cross_entropy_gray_denoise_sharpen": dict(loss="cross_entropy", init="gray",
                                               process="denoise_sharpen"),
}


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Every knob of the AT&T faces inversion run; defaults are the seed's Task 2 setting."""

    data_dir: str | None = None
    workdir: str = "runs/inversion"
    seed: int = 0
    val_per_person: int = 3  # of each person's 10 images, held out for validation
    target_hidden: int = 3000  # sigmoid units of the face MLP (Fredrikson's 3000)
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    input_norm: str = "pm1"  # pm1: the models see (x - 0.5) / 0.5; unit: x in [0, 1]
    evaluator: str = "cnn"
    evaluator_epochs: int = 30
    step_size: float = 0.1
    loss: str = "cross_entropy"  # the seed's; "one_minus_p" descends the paper's cost itself
    init: str = "gray"  # gray: every pixel 0.5, the model's input 0 under pm1; black: 0
    process: str = "none"
    iterations: tuple[int, ...] = (5, 10, 100)
    max_iterations: int = 1000  # the stopping-rule run's alpha
    patience: int | None = 100  # its beta
    cost_threshold: float | None = 0.01  # its gamma
    figure_people: int = 6
    time_loop: bool = True
    speed_iterations: int = 100  # iterations of the vmap-against-loop timing
    variants: tuple[str, ...] = tuple(VARIANTS)

    def validate(self) -> None:
        """Raises ValueError naming the bad flag, before any data is loaded."""
        for name in ("target_hidden", "epochs", "evaluator_epochs", "batch_size", "figure_people",
                     "speed_iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be positive, got {getattr(self, name)}.")
        if not 1 <= self.val_per_person <= 9:
            raise ValueError(f"--val_per_person must be in 1..9, got {self.val_per_person}.")
        if self.learning_rate <= 0:
            raise ValueError(f"--learning_rate must be positive, got {self.learning_rate}.")
        for name, value, choices in (("input_norm", self.input_norm, INPUT_NORMS),
                                     ("evaluator", self.evaluator, EVALUATORS),
                                     ("init", self.init, INITS)):
            if value not in choices:
                raise ValueError(f"--{name} must be one of {choices}, got {value!r}.")
        if not self.iterations or min(self.iterations) < 1:
            raise ValueError(f"--iterations must be positive integers, got {list(self.iterations)}.")
        unknown = set(self.variants) - set(VARIANTS)
        if unknown:
            raise ValueError(f"--variants: unknown {sorted(unknown)}; known: {sorted(VARIANTS)}.")
        try:
            for budget in (*self.iterations, self.max_iterations):
                self.attack_config(budget)
            self.attack_config(self.max_iterations, stopping_rules=True)
        except ValueError as e:
            raise ValueError(f"Bad attack flag: {e}") from e

    def attack_config(self, budget: int, stopping_rules: bool = False, **overrides) -> MIFaceConfig:
        """MI-FACE's config for a fixed budget, or for the stopping-rule run."""
        values = dict(step_size=self.step_size, max_iterations=budget, process=self.process,
                      loss=self.loss)
        if stopping_rules:
            values.update(patience=self.patience, cost_threshold=self.cost_threshold)
        values.update(overrides)
        return MIFaceConfig(**values)


def input_normalizer(input_norm: str, scale: float) -> Callable:
    """Maps pixels (uint8 with scale 255, attack pixels in [0, 1] with scale 1) to model inputs."""
    from jaxpet import data

    if input_norm == "pm1":
        return data.Normalize(mean=(0.5,), std=(0.5,), scale=scale)
    return data.Normalize(mean=(0.0,), std=(1.0,), scale=scale)


def holdout_split(labels: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class holdout: ``per_class`` random images of each class go to validation."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) <= per_class:
            raise ValueError(f"Class {c} has {len(idx)} images; holding out {per_class} leaves none "
                             "to train on.")
        val.append(idx[:per_class])
        train.append(idx[per_class:])
    return np.sort(np.concatenate(train)).astype(np.int32), np.sort(np.concatenate(val)).astype(np.int32)


def make_evaluator(name: str, num_classes: int):
    """The evaluator: a model of another architecture than the target, trained on the same faces."""
    from jaxpet import models

    if name == "cnn":  # LeNet at half width: 4x cheaper than "lenet" on a CPU
        return models.LeNet(features=(8, 16, 32), hidden_sizes=(64,), num_classes=num_classes)
    if name == "lenet":
        return models.LeNet(num_classes=num_classes)
    if name == "mlp":
        return models.MLP(hidden_sizes=(512,), num_classes=num_classes, activation="relu")
    raise ValueError(f"evaluator must be one of {EVALUATORS}, got {name!r}.")


def _describe(model) -> str:
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
              if f.name in ("hidden_sizes", "features", "activation", "num_classes")}
    return f"{type(model).__name__}({', '.join(f'{k}={v}' for k, v in fields.items())})"


def train_classifier(model, split, train_idx, val_idx, config: ExperimentConfig, epochs: int,
                     seed: int, what: str) -> tuple[Any, dict]:
    """Trains one model (K=1 ensemble) with plain Adam; returns its variables and accuracies."""
    from jaxpet import splits, training

    train_config = training.TrainConfig(epochs=epochs, batch_size=config.batch_size,
                                        learning_rate=config.learning_rate, lr_decay=1.0,
                                        weight_decay=0.0)
    preprocess = input_normalizer(config.input_norm, 255.0)
    members = splits.MemberSets.from_lists([train_idx])
    validation = splits.MemberSets.from_lists([val_idx])
    result = training.train_ensemble(model, split.images, split.labels, members, train_config,
                                     seed=seed, validation=validation, preprocess=preprocess,
                                     log_prefix=f"{what}: ")
    variables = result.variables()
    report = {"architecture": _describe(model), "epochs": epochs, "seconds": result.seconds}
    for name, sets in (("train", members), ("val", validation)):
        ev = training.evaluate(model, variables, split.images, split.labels, sets,
                                preprocess=preprocess)
        report[f"{name}_acc"] = float(ev["accuracy"][0])
        report[f"{name}_loss"] = float(ev["loss"][0])
    logging.info("%s: train acc %.4f, val acc %.4f (%.0fs)", what, report["train_acc"],
                 report["val_acc"], result.seconds)
    return training.take_model(variables, 0), report


def _timed(fn, *args):
    """(compiled seconds, run seconds, output) of a jitted ``fn`` on ``args`` (statics first)."""
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compiled_at = time.perf_counter()
    out = jax.block_until_ready(compiled(*args[2:]))
    return compiled_at - start, time.perf_counter() - compiled_at, compiled, out


def score(images, targets, person_means, classifiers: dict[str, tuple[Callable, Any]]) -> dict:
    """Per-class and mean MSE/SSIM against the person's mean training image, and identification.

    ``classifiers`` maps a name (target, evaluator) to (apply_fn, params); a
    reconstruction is identified when the classifier's top class is its
    person. ``nearest_mean`` identifies it by the highest pixel correlation
    with the 40 mean training faces (no model involved).
    """
    images = np.asarray(images, np.float32)
    targets = np.asarray(targets)
    own = person_means[targets]
    out = {"mse": mse(images, own), "ssim": ssim(images, own)}
    out["mse_mean"], out["ssim_mean"] = float(out["mse"].mean()), float(out["ssim"].mean())
    for name, (fn, params) in classifiers.items():
        probs = np.asarray(jax.nn.softmax(fn(params, jnp.asarray(images)).astype(jnp.float32)))
        predicted = probs.argmax(-1)
        out[f"{name}_predicted"] = predicted
        out[f"{name}_p_true"] = probs[np.arange(len(targets)), targets]
        out[f"{name}_identified"] = float(np.mean(predicted == targets))
    nearest = correlation(images, person_means).argmax(1)
    out["nearest_mean_predicted"] = nearest
    out["nearest_mean_identified"] = float(np.mean(nearest == targets))
    return out


def _inversion_report(result: Inversion, config: MIFaceConfig, compile_s, run_s) -> dict:
    reasons = result.stop_reasons
    return {
        "max_iterations": config.max_iterations, "patience": config.patience,
        "cost_threshold": config.cost_threshold, "step_size": config.step_size,
        "loss": config.loss, "process": config.process,
        "seconds": run_s, "compile_seconds": compile_s,
        "cost": np.asarray(result.cost), "cost_mean": float(np.mean(result.cost)),
        "iterations": np.asarray(result.iterations),
        "best_iteration": np.asarray(result.best_iteration),
        "stop_reason": reasons,
        "stop_reasons": {r: reasons.count(r) for r in sorted(set(reasons))},
    }


def _tile(images: np.ndarray) -> np.ndarray:
    """[H, W, 1] float image in [0, 1] -> uint8 [H, W]."""
    return (np.clip(np.asarray(images)[..., 0], 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def _mosaic(rows: list[list[np.ndarray]], row_labels: list[list[str]], pad: int = 4,
            label_height: int = 13) -> "PIL.Image.Image":
    """A grey mosaic of equally sized uint8 tiles, each with a caption above it."""
    from PIL import Image, ImageDraw

    h, w = rows[0][0].shape
    ncols = max(len(r) for r in rows)
    cell_h, cell_w = h + label_height + pad, w + pad
    canvas = np.full((len(rows) * cell_h + pad, ncols * cell_w + pad), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            top, left = i * cell_h + label_height + pad, j * cell_w + pad
            canvas[top:top + h, left:left + w] = tile
    image = Image.fromarray(canvas, mode="L")
    draw = ImageDraw.Draw(image)
    for i, labels in enumerate(row_labels):
        for j, text in enumerate(labels):
            draw.text((j * cell_w + pad, i * cell_h + pad), text, fill=0)
    return image


def plot_iterations(path, people, real, budget_images: dict[int, np.ndarray], class_names):
    """The seed's figure: each row a person, a real image then the reconstructions per budget."""
    rows, labels = [], []
    for c in people:
        rows.append([_tile(real[c])] + [_tile(imgs[c]) for imgs in budget_images.values()])
        labels.append([f"{class_names[c]} real"] + [f"{b} iterations" if b != 1 else "1 iteration"
                                                      for b in budget_images])
    image = _mosaic(rows, labels)
    path = pathlib.Path(path)
    image.save(path, optimize=True)
    return path


def plot_all_classes(path, real, recon, class_names, predicted=None, columns: int = 8):
    """Every person's reconstruction under a real image of that person; captions: who the
    evaluator takes the reconstruction for."""
    n = len(recon)
    rows, labels = [], []
    for start in range(0, n, columns):
        people = range(start, min(start + columns, n))
        rows.append([_tile(real[c]) for c in people])
        labels.append([f"{class_names[c]} real" for c in people])
        rows.append([_tile(recon[c]) for c in people])
        labels.append([f"-> {class_names[predicted[c]]}" if predicted is not None else "inverted"
                       for c in people])
    image = _mosaic(rows, labels)
    path = pathlib.Path(path)
    image.save(path, optimize=True)
    return path


def _summary(results: dict) -> str:
    from jaxpet import reporting

    t, e = results["target"], results["evaluator"]
    lines = [
        "# Model inversion (mi_face), AT&T faces\n",
        f"Target {t['architecture']}: train {100 * t['train_acc']:.2f}% / validation "
        f"{100 * t['val_acc']:.2f}% (seed: 100 / 95.31). Evaluator {e['architecture']}: "
        f"train {100 * e['train_acc']:.2f}% / validation {100 * e['val_acc']:.2f}%.\n",
        f"Attack: step {results['config']['step_size']}, loss {results['config']['loss']}, "
        f"start {results['config']['init']}, process {results['config']['process']}. MSE/SSIM "
        "against the person's mean training image; identified = top-1 class is the person.\n",
    ]
    headers = ["run", "iterations", "cost", "MSE", "SSIM", "target id.", "evaluator id.",
               "nearest-mean id.", "seconds"]
    rows = []

    def row(name, r):
        its = r.get("iterations")
        its = f"{np.mean(its):.0f}" if its is not None else "-"
        cost = f"{r['cost_mean']:.3f}" if "cost_mean" in r else "-"
        seconds = f"{r['seconds']:.1f}" if "seconds" in r else "-"
        rows.append([name, its, cost, f"{r['mse_mean']:.4f}", f"{r['ssim_mean']:.3f}",
                     f"{100 * r['target_identified']:.1f}%", f"{100 * r['evaluator_identified']:.1f}%",
                     f"{100 * r['nearest_mean_identified']:.1f}%", seconds])

    for name, r in results["budgets"].items():
        row(name, r)
    for name, r in results.get("variants", {}).items():
        row(f"variant {name}", r)
    for name, r in results["references"].items():
        row(f"reference: {name}", r)
    lines.append(reporting.markdown_table(headers, rows))
    s = results.get("speed")
    if s:
        lines.append(f"\nSpeed ({s['classes']} classes x {s['iterations']} iterations, "
                     f"{s['backend']}): vmapped {s['vmap_seconds']:.2f}s, Python loop over classes "
                     f"{s['loop_seconds']:.2f}s: {s['ratio']:.1f}x.\n")
    stop = results["budgets"].get("stopping_rules")
    if stop:
        lines.append(f"\nStopping rules (alpha {stop['max_iterations']}, beta {stop['patience']}, "
                     f"gamma {stop['cost_threshold']}): {stop['stop_reasons']}.\n")
    return "\n".join(lines)


def run(config: ExperimentConfig, dataset=None) -> dict:
    """The whole experiment; writes results.json, summary.md, inversions.npz and the figures."""
    from jaxpet import data, models, reporting

    config.validate()
    start = time.perf_counter()
    workdir = pathlib.Path(config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if dataset is None:
        dataset = data.load_dataset("att_faces", config.data_dir)
    split = dataset.train
    num_classes = len(dataset.class_names)
    image_shape = split.images.shape[1:]
    train_idx, val_idx = holdout_split(split.labels, config.val_per_person, config.seed)

    target = models.face_mlp(num_classes=num_classes, hidden=config.target_hidden)
    target_vars, target_report = train_classifier(target, split, train_idx, val_idx, config,
                                                  config.epochs, config.seed, "target")
    evaluator = make_evaluator(config.evaluator, num_classes)
    # A different seed as well as a different architecture: nothing shared with the target.
    eval_vars, eval_report = train_classifier(evaluator, split, train_idx, val_idx, config,
                                              config.evaluator_epochs, config.seed + 1, "evaluator")
    pixels = input_normalizer(config.input_norm, 1.0)
    target_fn, eval_fn = flax_apply(target, pixels), flax_apply(evaluator, pixels)
    classifiers = {"target": (target_fn, target_vars), "evaluator": (eval_fn, eval_vars)}

    train_pixels = split.images[train_idx].astype(np.float32) / 255.0
    train_labels = split.labels[train_idx]
    person_means = np.stack([train_pixels[train_labels == c].mean(0) for c in range(num_classes)])
    real = np.stack([train_pixels[np.flatnonzero(train_labels == c)[0]] for c in range(num_classes)])

    def start_image(init):
        return np.full(image_shape, 0.5 if init == "gray" else 0.0, np.float32)

    def invert(attack: MIFaceConfig, init: str, what: str):
        targets, inits = prepare_inputs(target_fn, target_vars, image_shape=image_shape,
                                        init=start_image(init), config=attack)
        compile_s, run_s, compiled, result = _timed(invert_classes, target_fn, attack,
                                                    target_vars, targets, inits)
        report = {**_inversion_report(result, attack, compile_s, run_s),
                  **score(result.image, np.asarray(targets), person_means, classifiers)}
        logging.info("%s: %.1fs (+%.1fs compile), cost %.3f, MSE %.4f, SSIM %.3f, target %.0f%%, "
                     "evaluator %.0f%%, stops %s", what, run_s, compile_s, report["cost_mean"],
                     report["mse_mean"], report["ssim_mean"], 100 * report["target_identified"],
                     100 * report["evaluator_identified"], report["stop_reasons"])
        return result, report, (targets, inits, run_s, np.asarray(result.image))

    budgets, budget_images, runs = {}, {}, {}
    for budget in sorted(set(config.iterations)):
        result, budgets[str(budget)], runs[budget] = invert(config.attack_config(budget),
                                                            config.init, f"{budget} iterations")
        budget_images[budget] = np.asarray(result.image)
    stop_result, budgets["stopping_rules"], _ = invert(
        config.attack_config(config.max_iterations, stopping_rules=True), config.init,
        "stopping rules")
    budget_images_all = {**{str(b): v for b, v in budget_images.items()},
                         "stopping_rules": np.asarray(stop_result.image)}

    variants = {}
    for name in config.variants:
        overrides = dict(VARIANTS[name])
        init = overrides.pop("init", config.init)
        _, variants[name], _ = invert(config.attack_config(100, **overrides), init, f"variant {name}")

    references = {
        "mean_face_of_everyone": score(np.broadcast_to(train_pixels.mean(0), person_means.shape),
                                       np.arange(num_classes), person_means, classifiers),
        "start_image": score(np.broadcast_to(start_image(config.init), person_means.shape),
                             np.arange(num_classes), person_means, classifiers),
    }

    speed = None
    if config.time_loop:
        speed = time_vmap_vs_loop(target_fn, target_vars,
                                  config.attack_config(config.speed_iterations), image_shape,
                                  runs.get(config.speed_iterations), start_image(config.init))

    largest = max(budget_images)
    people = np.unique(np.linspace(0, num_classes - 1, min(config.figure_people, num_classes))
                       .round().astype(int))
    plot_iterations(workdir / "iterations.png", people, real, budget_images, dataset.class_names)
    plot_all_classes(workdir / "all_classes.png", real, budget_images[largest], dataset.class_names,
                     budgets[str(largest)]["evaluator_predicted"])
    reporting.write_npz(workdir / "inversions.npz", person_means=_tile(person_means),
                        real=_tile(real),
                        **{f"budget_{k}": _tile(v) for k, v in budget_images_all.items()})

    results = {
        "config": {**dataclasses.asdict(config), "backend": jax.default_backend()},
        "target": {**target_report, "seed": SEED_TARGET},
        "evaluator": eval_report,
        "budgets": budgets,
        "variants": variants,
        "references": references,
        "speed": speed,
        "figures": {"iterations": "iterations.png", "all_classes": "all_classes.png",
                    "all_classes_budget": largest},
        "seconds_total": time.perf_counter() - start,
    }
    reporting.write_json(workdir / "results.json", results)
    reporting.write_text(workdir / "summary.md", _summary(results))
    return results


def time_vmap_vs_loop(apply_fn, params, attack: MIFaceConfig, image_shape, vmapped_run=None,
                      init=None) -> dict:
    """Seconds for all classes x ``attack.max_iterations``: one vmapped call against a Python
    loop calling the same jitted single-class function per class (compile times excluded)."""
    if vmapped_run is None:
        targets, inits = prepare_inputs(apply_fn, params, image_shape=image_shape, init=init,
                                        config=attack)
        _, vmap_s, _, vmapped = _timed(invert_classes, apply_fn, attack, params, targets, inits)
        vmapped_images = np.asarray(vmapped.image)
    else:  # (targets, inits, seconds, images) of a vmapped run with this same config
        targets, inits, vmap_s, vmapped_images = vmapped_run
    compile_s, first_s, compiled, first = _timed(invert_class, apply_fn, attack, params,
                                                 targets[0], inits[0])
    tick = time.perf_counter()
    outs = [first] + [compiled(params, targets[i], inits[i]) for i in range(1, len(targets))]
    outs = jax.block_until_ready(outs)
    loop_s = first_s + time.perf_counter() - tick
    looped = np.stack([np.asarray(o.image) for o in outs])
    diff = float(np.max(np.abs(looped - vmapped_images)))
    logging.info("speed: vmapped %.2fs, loop %.2fs (%.1fx); max |difference| %.2g", vmap_s, loop_s,
                 loop_s / vmap_s, diff)
    return {"classes": int(len(targets)), "iterations": attack.max_iterations,
            "backend": jax.default_backend(), "vmap_seconds": vmap_s, "loop_seconds": loop_s,
            "ratio": loop_s / vmap_s, "loop_compile_seconds": compile_s,
            "max_abs_image_difference": diff}
