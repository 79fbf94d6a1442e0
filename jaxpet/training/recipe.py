"""A user's own training recipe from Python: any optax optimiser and any augmentation.

The command line chooses from a menu (``TrainConfig.optimizer``, ``learning_rate``,
``schedule``, ``augment``, ...); from Python, :class:`Recipe` replaces that menu with the
user's own ``optax.GradientTransformation`` (its learning-rate schedule inside it, counted in
optimiser steps as every optax schedule is) and an augmentation of the preprocessed batch.
It rides in ``TrainConfig.user_recipe``, so every model of an ensemble trains with it inside
the one jitted program.

* :class:`Recipe` refuses, on construction, what is no optimiser or no function;
* :func:`check_recipe` traces both against the model's parameters and a batch before any
  training, so an optimiser or augmentation that cannot train this model is refused in one
  line instead of failing deep inside ``jax.jit``;
* :func:`identity` digests the programs they lower to: what names a recipe in a stage key or a
  checkpoint's fingerprint (the same recipe built twice gives the same digest, a changed
  learning rate or schedule another).
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import hashlib
import inspect
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxpet.config import ConfigError

_FIX = "pass optax.adam(1e-3), or optax.chain(...)"
_AUGMENT = "augment(key, batch) -> a batch of the same shape and dtype"


def _what(value) -> str:
    """How a refusal names the value it got: its kind and, for a function or class, its name."""
    if isinstance(value, str):
        return f"the string {value!r}"
    name = getattr(value, "__qualname__", None)
    module = str(getattr(value, "__module__", "") or "").split("._")[0]  # optax._src... -> optax
    full = f"{module}.{name}" if module and name else name
    if inspect.isclass(value):
        return f"the class {full}"
    if callable(value) and name:
        return f"the function {full}"
    kind = type(value)
    where = "" if kind.__module__ == "builtins" else f"{kind.__module__}."
    return f"an object of type {where}{kind.__qualname__}"


def _first_line(error: BaseException) -> str:
    """``Type: first line of the message``: a user's error in one line."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def _hashable(value, name: str) -> None:
    """The trainer's compiled programs are cached by the config, hence by the recipe."""
    try:
        hash(value)
    except TypeError as e:
        raise ConfigError(f"Recipe.{name} must be hashable (jax.jit caches the training program "
                          f"by it), got {_what(value)} — use a function, or a frozen "
                          "dataclass.") from e


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A training recipe given from Python, in place of the command line's menu.

    ``optimizer``: any ``optax.GradientTransformation``, used as it is for every model
    (weight decay, clipping and the learning-rate schedule are the user's, inside it: the
    flags' optimizer, learning_rate, schedule, lr_decay, momentum, weight_decay and decayed
    then have no effect; DP-SGD, early stopping and the weights' moving average still apply).
    ``augment``: ``augment(key, batch) -> batch``, called inside the jitted step on each
    preprocessed training batch with a key of its own per model and per step; in place of
    ``TrainConfig.augment``. Either may be None (the flags' choice).
    """

    optimizer: optax.GradientTransformation | None = None
    augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None

    def __post_init__(self):
        if self.optimizer is None and self.augment is None:
            raise ConfigError("Recipe() sets neither optimizer nor augment, so it changes "
                              "nothing — give one of them, or pass no recipe.")
        if self.optimizer is not None:
            if not isinstance(self.optimizer, optax.GradientTransformation):
                raise ConfigError(f"Recipe.optimizer must be an optax.GradientTransformation, "
                                  f"got {_what(self.optimizer)} — {_FIX}.")
            if not (callable(self.optimizer.init) and callable(self.optimizer.update)):
                raise ConfigError(
                    f"Recipe.optimizer's init and update must be functions, got "
                    f"{_what(self.optimizer.init)} and {_what(self.optimizer.update)} — {_FIX}.")
            _hashable(self.optimizer, "optimizer")
        if self.augment is not None:
            if not callable(self.augment):
                raise ConfigError(f"Recipe.augment must be a function {_AUGMENT}, got "
                                  f"{_what(self.augment)}.")
            _hashable(self.augment, "augment")


def augmented(augment: Callable, key, x):
    """``augment(key, x)``, refused unless it keeps ``x``'s shape and dtype (the trainer's
    batch, its row mask and its labels stay as they are)."""
    out = augment(key, x)
    shape, dtype = getattr(out, "shape", None), getattr(out, "dtype", None)
    if shape != x.shape or dtype != x.dtype:
        got = f"{shape} {dtype}" if shape is not None else _what(out)
        raise ConfigError(f"Recipe.augment turns a batch of {x.shape} {x.dtype} into {got} — "
                          f"it must be {_AUGMENT}.")
    return out


def _shapes(tree):
    """Shapes and dtypes of ``tree``'s leaves (arrays or already shapes): what is lowered."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), tree)


def _key():
    return jax.eval_shape(lambda: jax.random.PRNGKey(0))


def _signature(tree, dtypes: bool = True):
    """A pytree's structure with each leaf's shape (and dtype): what ``lax.scan`` carries."""
    return (jax.tree.structure(tree),
            [(x.shape, x.dtype if dtypes else None) for x in jax.tree.leaves(tree)])


def _check_optimizer(optimizer: optax.GradientTransformation, params) -> None:
    fix = "its init(params) and update(grads, state, params) must work on the model's parameters"
    try:
        state = jax.eval_shape(optimizer.init, params)
    except Exception as e:  # whatever the user's optimiser raises, in one line
        raise ConfigError(f"Recipe.optimizer's init fails on the model's parameters "
                          f"({_first_line(e)}) — {fix}.") from e
    try:
        out = jax.eval_shape(optimizer.update, params, state, params)
    except Exception as e:  # whatever the user's optimiser raises, in one line
        raise ConfigError(f"Recipe.optimizer's update fails on the model's gradients "
                          f"({_first_line(e)}) — {fix}.") from e
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ConfigError(f"Recipe.optimizer's update returns {_what(out)}, not (updates, "
                          f"state) — {_FIX}.")
    updates, new_state = out
    if _signature(updates, dtypes=False) != _signature(params, dtypes=False):
        raise ConfigError("Recipe.optimizer's update returns updates whose structure or shapes "
                          f"differ from the parameters' — {fix}.")
    if _signature(new_state) != _signature(state):
        raise ConfigError("Recipe.optimizer's update returns a state whose structure, shapes or "
                          "dtypes differ from what its init returns (the trainer carries it "
                          f"from step to step) — {fix}.")


def check_recipe(recipe: Recipe, params, sample_batch) -> None:
    """Refuses in one line, before any training, a recipe that cannot train this model.

    ``params``: one model's parameters (arrays or ``jax.ShapeDtypeStruct``); ``sample_batch``:
    a preprocessed training batch (or its shape), as the trainer hands it to ``augment``.
    Refused: an optimiser whose ``init`` or ``update`` raises on them, or whose update changes
    the updates' or the state's structure, shapes or dtypes; an augmentation that raises or
    does not keep the batch's shape and dtype. Traced only; nothing is computed.
    """
    if recipe.optimizer is not None:
        _check_optimizer(recipe.optimizer, _shapes(params))
    augment = recipe.augment
    if augment is not None:
        batch = _shapes(sample_batch)
        try:
            jax.eval_shape(lambda key, x: augmented(augment, key, x), _key(), batch)
        except ConfigError:
            raise
        except Exception as e:  # whatever the user's function raises, in one line
            raise ConfigError(f"Recipe.augment fails on a batch of {batch.shape} {batch.dtype} "
                              f"({_first_line(e)}) — it must be {_AUGMENT}, traceable by "
                              "jax.jit.") from e


def _digest(*lowered) -> str:
    """sha256 of lowered programs' StableHLO text without debug info: the computation only (no
    file, line or object address), so equal in every process."""
    text = "\n".join(program.as_text(debug_info=False) for program in lowered)
    return hashlib.sha256(text.encode()).hexdigest()


def identity(recipe: Recipe, params, sample_batch) -> dict[str, Any]:
    """What identifies ``recipe`` in a stage key: the digest of the programs its optimiser's
    ``init`` and one ``update`` lower to on ``params``' shapes (gradients of the same shapes),
    and of its augmentation on ``sample_batch``'s; None for a part it leaves to the flags.

    What they compute decides the digest, not how they were built: ``optax.adam(1e-3)`` built
    twice (or in two processes) gives one digest, ``optax.adam(2e-3)`` or another schedule
    another. The recipe is checked first (:func:`check_recipe`).
    """
    check_recipe(recipe, params, sample_batch)
    params = _shapes(params)
    out: dict[str, Any] = {"optimizer": None, "augment": None}
    # Each called from a lambda, so the programs' names do not carry the functions' names.
    optimizer, augment = recipe.optimizer, recipe.augment
    if optimizer is not None:
        init = jax.jit(lambda p: optimizer.init(p)).lower(params)
        update = jax.jit(lambda g, s, p: optimizer.update(g, s, p)).lower(
            params, init.out_info, params)
        out["optimizer"] = _digest(init, update)
    if augment is not None:
        out["augment"] = _digest(jax.jit(lambda k, x: augment(k, x)).lower(
            _key(), _shapes(sample_batch)))
    return out
