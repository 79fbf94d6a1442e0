"""One model's training state and its optimiser step: config, state, init, step, augmentation.

Everything here is about ONE model; the trainer (:mod:`jaxpet.training.trainer`)
vmaps it over the ensemble's leading model axis.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxpet import config as config_lib, dpsgd
from jaxpet.config import same_as, setting
from jaxpet.dpsgd import DPConfig
from jaxpet.training.recipe import Recipe

# Stream ids folded into a model's key, so shuffling, dropout and init never share randomness.
INIT_STREAM, SHUFFLE_STREAM, DROPOUT_STREAM, NOISE_STREAM, AUGMENT_STREAM = 0, 1, 2, 3, 4

# "flip_crop": random horizontal flip and a random 32x32 crop of the 4-pixel reflect-padded
# image, per example (the CIFAR-10 recipe of the LiRA and RMIA papers' models).
AUGMENTATIONS = ("none", "flip_crop")
_CROP_PAD = 4
OPTIMIZERS = ("adam", "sgd")
# exponential: learning_rate * lr_decay**epoch (the seed's); constant; cosine: from
# learning_rate down to 0 over schedule_epochs (default: epochs), one value per epoch.
SCHEDULES = ("exponential", "constant", "cosine", "lira_cosine")
# Which parameters weight_decay applies to: every one, or only conv and dense kernels (as LiRA's
# code, whose L2 term sums the ".w" variables).
DECAYED = ("all", "kernels")


def augment_batch(key, x, pad: int = _CROP_PAD):
    """Random horizontal flip and random crop of each [H, W, C] image of ``x`` (shape kept)."""
    b, h, w, c = x.shape
    flip_key, row_key, col_key = jax.random.split(key, 3)
    flip = jax.random.bernoulli(flip_key, 0.5, (b,))
    x = jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    rows = jax.random.randint(row_key, (b,), 0, 2 * pad + 1)
    cols = jax.random.randint(col_key, (b,), 0, 2 * pad + 1)
    crop = lambda image, i, j: jax.lax.dynamic_slice(image, (i, j, 0), (h, w, c))
    return jax.vmap(crop)(padded, rows, cols)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one ensemble run; defaults are the seed's Task 1 values.

    Every field is a :func:`jaxpet.config.setting`: its default, help and range are
    written here once, experiments take them with :func:`jaxpet.config.same_as`, and
    a bad value fails on construction (NaN and infinity refused) with a
    :class:`~jaxpet.errors.UserError`, before any work.
    """

    epochs: int = setting(50, "Training epochs.", low=1)
    batch_size: int = setting(128, "Batch size per model.", low=1)
    learning_rate: float = setting(1e-3, "Initial learning rate.", low=0, low_open=True, high=10)
    lr_decay: float = setting(0.96, "Per-epoch factor of the exponential schedule.", low=0,
                              low_open=True, high=1)
    weight_decay: float = setting(1e-4, "L2 weight decay added to the gradient (PyTorch Adam's "
                                  "weight_decay).", low=0, high=1)
    early_stopping: bool = setting(False, "Keep each model's best-validation weights; stop a "
                                   "model after --patience epochs without improvement.")
    patience: int = setting(10, "Early-stopping patience in epochs.", low=1)
    eval_batch_size: int = setting(1024, "Examples per prediction call (memory only).", low=1)
    augment: str = setting("none", "Training-time augmentation: none, or flip_crop (random "
                           "horizontal flips and 4-pixel crops).", choices=AUGMENTATIONS)
    # DP-SGD (Abadi et al. 2016, see jaxpet.dpsgd): clip each example's gradient to
    # dp_clip_norm, add Gaussian noise of std dp_noise_multiplier * dp_clip_norm to the batch
    # sum, divide by batch_size.
    dpsgd: bool = setting(False, "Train with DP-SGD.")
    dp_clip_norm: float = same_as(DPConfig, "clip_norm")
    dp_noise_multiplier: float = same_as(DPConfig, "noise_multiplier")
    dp_microbatch_size: int = same_as(DPConfig, "microbatch_size")
    optimizer: str = setting("adam", "adam, or sgd (with --momentum); both with coupled L2 "
                             "--weight_decay.", choices=OPTIMIZERS)
    momentum: float = setting(0.9, "SGD momentum.", low=0, high=1, high_open=True)
    schedule: str = setting("exponential", "Learning-rate schedule: exponential (x --lr_decay "
                            "per epoch), constant, cosine (to 0 over the epochs) or lira_cosine "
                            "(LiRA's code).", choices=SCHEDULES)
    schedule_epochs: int = setting(0, "The cosine schedules' length in epochs; 0: --epochs.",
                                   low=0)
    decayed: str = setting("all", "Which parameters weight decay applies to: all, or kernels "
                           "(LiRA's code).", choices=DECAYED)
    # An exponential moving average of the weights (and BatchNorm statistics) with this
    # momentum, debiased, is what the trained model predicts with (LiRA's code: 0.999); 0: off.
    ema: float = setting(0.0, "Momentum of the debiased moving average of the weights the "
                         "model predicts with (LiRA's code: 0.999); 0: off.", low=0, high=1,
                         high_open=True)
    # From Python only, not a setting (no flag, no range; ignored by the flag machinery): the
    # user's own optax optimiser and augmentation in place of the menu above (see Recipe).
    # (Not named "recipe": experiment configs have a --recipe flag that pick() would map here.)
    user_recipe: Recipe | None = None

    def __post_init__(self):
        config_lib.check(self)
        if self.ema and self.early_stopping:
            raise config_lib.ConfigError("--ema and --early_stopping both choose the weights the "
                                         "model predicts with — use one of them.")
        if self.user_recipe is not None and not isinstance(self.user_recipe, Recipe):
            raise config_lib.ConfigError(
                f"TrainConfig.user_recipe must be a jaxpet.training.Recipe, got a "
                f"{type(self.user_recipe).__name__} — pass "
                "user_recipe=Recipe(optimizer=optax.adam(1e-3)).")
        if self.augment != "none" and self.user_augment is not None:
            raise config_lib.ConfigError(f"--augment={self.augment} and the recipe's augment both "
                                         "augment the training batches — use one of them.")
        if self.dp_microbatch_size and self.batch_size % self.dp_microbatch_size:
            raise config_lib.ConfigError(
                f"--dp_microbatch_size must be 0 or divide --batch_size={self.batch_size}, got "
                f"{self.dp_microbatch_size}.")

    @property
    def user_optimizer(self) -> optax.GradientTransformation | None:
        """The recipe's own optimiser, or None: the flags' (a rate per epoch)."""
        return None if self.user_recipe is None else self.user_recipe.optimizer

    @property
    def user_augment(self):
        """The recipe's own augmentation, or None: the flags' (``augment``)."""
        return None if self.user_recipe is None else self.user_recipe.augment

    def learning_rate_at(self, epoch):
        """The learning rate of epoch ``epoch`` (an int or a traced int32) under the schedule."""
        if self.schedule == "constant":
            return jnp.asarray(self.learning_rate, jnp.float32)
        epoch = jnp.asarray(epoch).astype(jnp.float32)
        if self.schedule == "cosine":
            horizon = self.schedule_epochs or self.epochs
            progress = jnp.minimum(epoch / horizon, 1)
            return self.learning_rate * 0.5 * (1 + jnp.cos(jnp.pi * progress))
        if self.schedule == "lira_cosine":
            # LiRA's code: lr * cos(7 pi t / 16) * min(1, 100 t), t the training progress (a
            # 1% linear warm-up, ending at cos(7 pi / 16) = 0.195 lr); per epoch here, at the
            # epoch's midpoint.
            horizon = self.schedule_epochs or self.epochs
            t = jnp.minimum((epoch + 0.5) / horizon, 1)
            return self.learning_rate * jnp.cos(7 * jnp.pi * t / 16) * jnp.minimum(1, 100 * t)
        return self.learning_rate * self.lr_decay ** epoch


@flax.struct.dataclass
class ModelState:
    """One model's training state; with a leading [K] axis on every leaf, an ensemble's."""

    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    step: jax.Array  # number of updates applied
    active: jax.Array  # False once early stopping has fired
    best_params: Any  # None unless early stopping is on
    best_batch_stats: Any
    best_val_acc: jax.Array
    best_epoch: jax.Array
    epochs_since_best: jax.Array
    # The weights' moving average (None unless TrainConfig.ema): sums started at 0, and
    # 1 - ema^steps, which debiases them.
    ema_params: Any = None
    ema_batch_stats: Any = None
    ema_norm: Any = None

    @property
    def num_models(self) -> int:
        return int(jax.tree.leaves(self.rng)[0].shape[0])

    def variables(self, use_best: bool = False):
        """Flax variables for ``model.apply``; with ``use_best``, the ones the trained model
        predicts with: the best-validation ones under early stopping, the debiased moving
        average under TrainConfig.ema, else the last."""
        if use_best and self.best_params is not None:
            return {"params": self.best_params, "batch_stats": self.best_batch_stats}
        if use_best and self.ema_params is not None:
            norm = jnp.maximum(self.ema_norm, 1e-12)
            debias = lambda tree: jax.tree.map(
                lambda x: x / norm.reshape(norm.shape + (1,) * (x.ndim - norm.ndim)), tree)
            return {"params": debias(self.ema_params),
                    "batch_stats": debias(self.ema_batch_stats)}
        return {"params": self.params, "batch_stats": self.batch_stats}


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """The recipe's own optimiser if it has one; else Adam, or SGD with momentum, with coupled
    L2 (as PyTorch's ``weight_decay=``) and an injectable rate (set per epoch by the
    schedule)."""
    if config.user_optimizer is not None:
        return config.user_optimizer

    def with_l2(learning_rate, weight_decay):
        if config.optimizer == "sgd":
            step = optax.sgd(learning_rate, momentum=config.momentum or None)
        else:
            step = optax.adam(learning_rate)
        mask = None
        if config.decayed == "kernels":
            mask = lambda params: jax.tree_util.tree_map_with_path(
                lambda path, _: getattr(path[-1], "key", None) == "kernel", params)
        return optax.chain(optax.add_decayed_weights(weight_decay, mask=mask), step)

    return optax.inject_hyperparams(with_l2)(
        learning_rate=config.learning_rate, weight_decay=config.weight_decay
    )


def accepts_mask(model: nn.Module) -> bool:
    """Whether ``model(x, train, mask=...)`` takes jaxpet's row mask (the seed's models do)."""
    try:
        parameters = inspect.signature(type(model).__call__).parameters
    except (TypeError, ValueError):
        return False
    return "mask" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def full_batches_only(model: nn.Module, batch_stats) -> bool:
    """A module that cannot mask padded rows out of its BatchNorm statistics trains on full
    batches only: a partial batch (the end of a member set) is skipped, as drop_last does."""
    return not accepts_mask(model) and bool(jax.tree.leaves(batch_stats))


def model_keys(seed: int, num_models: int) -> jax.Array:
    """K independent model keys from one seed (model k's key depends only on seed and k)."""
    if num_models < 1:
        raise ValueError(f"num_models must be >= 1, got {num_models}.")
    base = jax.random.PRNGKey(seed)
    return jax.vmap(lambda k: jax.random.fold_in(base, k))(jnp.arange(num_models))


def init_model_state(model: nn.Module, config: TrainConfig, key, sample_input) -> ModelState:
    """Initialises ONE model (vmap it for an ensemble)."""
    variables = model.init(
        {"params": jax.random.fold_in(key, INIT_STREAM)}, sample_input, train=False
    )
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    keep_best = config.early_stopping
    return ModelState(
        params=params,
        batch_stats=batch_stats,
        opt_state=make_optimizer(config).init(params),
        rng=key,
        step=jnp.zeros((), jnp.int32),
        active=jnp.ones((), bool),
        best_params=params if keep_best else None,
        best_batch_stats=batch_stats if keep_best else None,
        best_val_acc=jnp.full((), -1.0, jnp.float32),
        best_epoch=jnp.full((), -1, jnp.int32),
        epochs_since_best=jnp.zeros((), jnp.int32),
        ema_params=jax.tree.map(jnp.zeros_like, params) if config.ema else None,
        ema_batch_stats=jax.tree.map(jnp.zeros_like, batch_stats) if config.ema else None,
        ema_norm=jnp.zeros((), jnp.float32) if config.ema else None,
    )


@functools.partial(jax.jit, static_argnames=("model", "config"))
def init_ensemble(model: nn.Module, config: TrainConfig, keys, sample_input) -> ModelState:
    """Initialises K models, one per key, as one [K]-leading pytree."""
    return jax.vmap(init_model_state, in_axes=(None, None, 0, None))(
        model, config, keys, sample_input
    )


def select(pred, new, old):
    """``new`` where ``pred`` holds, else ``old``, leaf by leaf (a no-op update when False)."""
    return jax.tree.map(lambda n, o: jnp.where(pred, n, o), new, old)


def _example_loss(model):
    """One example's cross-entropy in training mode, for DP-SGD's per-example gradients."""

    def loss(params, x1, y1, key):
        logits = model.apply({"params": params}, x1[None], train=True, rngs={"dropout": key})
        logits = logits.astype(jnp.float32)[0]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y1), logits

    return loss


def train_step(model, config: TrainConfig, state: ModelState, x, y, row_mask, learning_rate):
    """One optimiser step of ONE model on a padded batch; returns (state, metric sums).

    Under ``config.dpsgd`` the gradient is :func:`jaxpet.dpsgd.private_gradient`'s.
    ``learning_rate`` is the flags' schedule's rate of this epoch; a recipe's own optimiser
    ignores it (its schedule runs on the step count in its state), as does None.
    """
    num_real = jnp.sum(row_mask)
    weights = row_mask.astype(jnp.float32)
    masked = accepts_mask(model)
    full_only = full_batches_only(model, state.batch_stats)
    dropout_key = jax.random.fold_in(jax.random.fold_in(state.rng, DROPOUT_STREAM), state.step)

    def loss_fn(params):
        logits, mutated = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            x,
            train=True,
            rngs={"dropout": dropout_key},
            mutable=["batch_stats"],
            **({"mask": row_mask} if masked else {}),
        )
        logits = logits.astype(jnp.float32)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        loss = jnp.sum(losses * weights) / jnp.maximum(num_real, 1)
        return loss, (logits, losses, mutated.get("batch_stats", {}))

    if config.dpsgd:
        if jax.tree.leaves(state.batch_stats):
            raise ValueError("DP-SGD needs a model without BatchNorm (it mixes examples, so "
                             "per-example gradients are not defined): build it with norm='group'.")
        noise_key = jax.random.fold_in(jax.random.fold_in(state.rng, NOISE_STREAM), state.step)
        grads, losses, logits = dpsgd.private_gradient(
            _example_loss(model), state.params, x, y, row_mask, example_key=dropout_key,
            noise_key=noise_key, clip_norm=config.dp_clip_norm,
            noise_multiplier=config.dp_noise_multiplier, batch_size=config.batch_size,
            microbatch_size=config.dp_microbatch_size)
        batch_stats = state.batch_stats
    else:
        (_, (logits, losses, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
    opt_state = state.opt_state
    if config.user_optimizer is None:  # the flags' optimiser: the epoch's rate injected
        opt_state = opt_state._replace(
            hyperparams={**opt_state.hyperparams,
                         "learning_rate": jnp.asarray(learning_rate, jnp.float32)})
    updates, opt_state = make_optimizer(config).update(grads, opt_state, state.params)
    updated = dataclasses.replace(
        state,
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
        step=state.step + 1,
    )
    if config.ema:  # after every applied step, as LiRA's code updates its EMA model
        m = config.ema
        blend = lambda avg, new: jax.tree.map(lambda a, n: m * a + (1 - m) * n, avg, new)
        updated = dataclasses.replace(  # (flax's state.replace, which mypy cannot see)
            updated, ema_params=blend(state.ema_params, updated.params),
            ema_batch_stats=blend(state.ema_batch_stats, batch_stats),
            ema_norm=m * state.ema_norm + (1 - m))
    applies = num_real == x.shape[0] if full_only else num_real > 0
    state = select(state.active & applies, updated, state)
    correct = (jnp.argmax(logits, -1) == y) & row_mask
    return state, {
        "loss_sum": jnp.sum(losses * weights),
        "correct": jnp.sum(correct),
        "count": num_real,
    }
