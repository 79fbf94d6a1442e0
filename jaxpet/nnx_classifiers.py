"""NNX classifiers driven as jaxpet drives Linen ones.

jaxpet trains, queries and keys a classifier through Linen's functional calls
(``init``/``apply`` with ``params`` and ``batch_stats`` collections), vmapped over
a leading model axis. An NNX module keeps its state inside the object instead, so
:class:`NNXClassifier` gives it a Linen face: each call builds the user's module
from their factory (``factory(num_classes, rngs=nnx.Rngs(...))``), splits it into
its graph and its state (:class:`nnx.Param` to ``params``, :class:`nnx.BatchStat`
to ``batch_stats``), puts the given variables in, sets the mode with
``module.train()``/``module.eval()`` (what ``nnx.Dropout`` and ``nnx.BatchNorm``
follow) and calls ``module(x)``. The state is then an ordinary pytree, stacked over
the model axis like a Linen model's variables; dropout draws from the ``dropout``
stream the trainer gives each model and step. The rebuilt module's own
initialisation is dead code outside ``init`` and XLA drops it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import inspect
from typing import Any

from flax import nnx
import flax.linen as nn
import jax

from jaxpet import config as config_lib

# The call jaxpet makes of an NNX classifier, and the factory it needs.
SIGNATURE = "module(x) -> [batch, classes] logits, its mode set by module.train()/.eval()"
FACTORY = "def make(num_classes, rngs): return MyModule(num_classes, rngs=rngs)"
# __call__ parameters that would set a mode jaxpet never passes (it calls module(x) after
# module.train() or module.eval()).
MODE_PARAMETERS = ("train", "training", "is_training", "deterministic", "use_running_average",
                   "eval", "evaluation", "inference", "mode")
# Variable types the adapter carries, by the Linen collection that holds them.
COLLECTIONS = {"params": nnx.Param, "batch_stats": nnx.BatchStat}


def _build(factory: Callable, num_classes: int, params_key, dropout_key,
           initializing: bool) -> nnx.Module:
    """The user's module; its ``default`` stream is the init key while it initialises and the
    dropout key after, so randomness a layer draws from it differs per model and per step."""
    default = params_key if initializing else dropout_key
    return factory(num_classes, rngs=nnx.Rngs(default, params=params_key, dropout=dropout_key))


def _state_tree(module: nnx.Module, kind) -> dict:
    """The module's variables of type ``kind`` as a nested dict with string keys (list
    positions written as strings, as orbax and Linen collections keep them)."""
    return _string_keys(nnx.to_pure_dict(nnx.state(module, kind)))


def _string_keys(tree):
    if isinstance(tree, Mapping):
        return {str(k): _string_keys(v) for k, v in tree.items()}
    return tree


def _put(module: nnx.Module, kind, tree: Mapping) -> None:
    """Sets every variable of type ``kind`` in ``module`` from ``tree`` (string keys)."""
    state = nnx.state(module, kind)
    for path, variable in nnx.to_flat_state(state):
        leaf: Any = tree
        for part in path:
            leaf = leaf[str(part)]
        variable.set_value(leaf) if hasattr(variable, "set_value") else setattr(
            variable, "value", leaf)
    nnx.update(module, state)


class NNXClassifier(nn.Module):
    """The Linen face of an NNX classifier: ``NNXClassifier(factory, num_classes)(x, train)``.

    ``factory(num_classes, rngs=nnx.Rngs)`` returns the user's ``nnx.Module``, called as
    :data:`SIGNATURE`. Its ``params`` and ``batch_stats`` collections are the NNX state's
    :class:`nnx.Param` and :class:`nnx.BatchStat` variables, keyed by the module's attribute
    paths, so an NNX state saved by the user maps onto them one to one.
    """

    factory: Callable[..., nnx.Module]
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        initializing = self.is_initializing()
        params_key = self.make_rng("params") if initializing else jax.random.PRNGKey(0)
        dropout_key = (self.make_rng("dropout") if train and self.has_rng("dropout")
                       else jax.random.PRNGKey(0))
        module = _build(self.factory, self.num_classes, params_key, dropout_key, initializing)
        for collection, kind in COLLECTIONS.items():
            initial = _state_tree(module, kind)
            stored = {name: self.variable(collection, name, lambda v=value: v).value
                      for name, value in initial.items()}
            if not initializing:
                _put(module, kind, stored)
        module.train() if train else module.eval()
        logits = module(x)
        if train and self.is_mutable_collection("batch_stats"):
            for name, value in _state_tree(module, nnx.BatchStat).items():
                self.put_variable("batch_stats", name, value)
        return logits


def variables_of(module: nnx.Module) -> dict:
    """A (trained) NNX module's state as :class:`NNXClassifier` variables."""
    if not isinstance(module, nnx.Module):
        raise config_lib.ConfigError(f"expected a trained nnx.Module, got a "
                                     f"{type(module).__name__}.")
    return {collection: _state_tree(module, kind) for collection, kind in COLLECTIONS.items()}


def takes_rngs(factory: Callable) -> bool:
    """Whether ``factory`` (an NNX module class or a function) takes an ``rngs`` argument."""
    try:  # a class's own __init__: NNX's metaclass shows (*args, **kwargs) for the class
        signature = inspect.signature(factory.__init__ if is_nnx_class(factory) else factory)
    except (TypeError, ValueError):
        return False
    parameters = signature.parameters
    return "rngs" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def is_nnx_class(factory: Any) -> bool:
    return isinstance(factory, type) and issubclass(factory, nnx.Module)


def check_signature(module: nnx.Module, flag: str) -> None:
    """Refuses, in one line, an NNX module that cannot be called as ``module(x)``."""
    try:
        signature = inspect.signature(type(module).__call__)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(module, None)
    except TypeError as e:
        raise config_lib.ConfigError(
            f"{flag}: {type(module).__name__}.__call__{signature} cannot be called as module(x) "
            f"({e}) — jaxpet drives an NNX classifier as {SIGNATURE}: give every other "
            "parameter a default.") from e
    mode = [name for name in signature.parameters if name in MODE_PARAMETERS]
    if mode:
        raise config_lib.ConfigError(
            f"{flag}: {type(module).__name__}.__call__{signature} takes {mode[0]!r}, which jaxpet "
            f"never passes, so training would run in its default mode — drop it and let the "
            "layers follow module.train()/module.eval() (nnx.Dropout's deterministic and "
            "nnx.BatchNorm's use_running_average do).")
