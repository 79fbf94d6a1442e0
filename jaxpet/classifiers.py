"""Classifiers by name, as the audit's ``--model`` gives them: jaxpet's built-in ones or a user's
factory by import path; the checks that a model can be driven as ``module(x, train=bool)``;
and its identity in a stage key, a digest of what it computes.
"""

from __future__ import annotations

from collections.abc import Callable
import difflib
import hashlib
import importlib
import inspect
import pathlib
from typing import Any

from flax import nnx, traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxpet import config as config_lib, nnx_classifiers
from jaxpet.models import MLP, SeedCNN, compute_dtype, wide_resnet

# jaxpet's own classifiers by name: the seed's CNN, a 256-unit MLP, WideResNet-28-2.
BUILTIN_CLASSIFIERS = ("seed_cnn", "mlp", "wrn")

_IMPORT_PATH = "--model takes an import path package.module:function"


def classifier(name: str, num_classes: int, *, width_scale: float = 1.0,
               precision: str = "float32") -> nn.Module:
    """A Flax classifier for ``num_classes`` classes called as ``module(x, train)``: one of
    :data:`BUILTIN_CLASSIFIERS` (``width_scale`` scales its widths), or a user's factory by
    import path ``module:function`` (or ``module:object.function``), called with
    ``num_classes``. A path that is not importable, a factory that cannot be called so, and
    one that returns no Flax module are refused in one line that says what to fix."""
    dtype = compute_dtype(precision)
    if name == "seed_cnn":
        conv1, conv2, fc = (max(1, round(w * width_scale)) for w in (128, 256, 256))
        return SeedCNN(conv1=conv1, conv2=conv2, fc=fc, num_classes=num_classes, dtype=dtype)
    if name == "wrn":  # width_scale scales the widen factor 2
        return wide_resnet(28, max(1, round(2 * width_scale)), num_classes=num_classes,
                           precision=precision)
    if name == "mlp":
        return MLP(hidden_sizes=(max(1, round(256 * width_scale)),), num_classes=num_classes,
                   dtype=dtype)
    return _user_module(name, _user_factory(name), num_classes)


def _first_line(error: BaseException) -> str:
    """``Type: the first line of its message``: one line, whatever the error holds."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def _file_path_refusal(name: str, where: str, function: str) -> config_lib.ConfigError | None:
    """The refusal of a file path given where a module path goes (``--model=dir/my.py:make``),
    with the PYTHONPATH and module name to use instead; None if ``where`` is no path."""
    if not (where.endswith(".py") or "/" in where or "\\" in where):
        return None
    path = pathlib.Path(where)
    function = function or "<function>"
    if path.suffix == ".py" and path.is_file():
        folder, parts = path.resolve().parent, [path.stem]
        while (folder / "__init__.py").is_file() and folder.name.isidentifier():
            parts.insert(0, folder.name)  # inside a package: import it by its dotted name
            folder = folder.parent
        if all(part.isidentifier() for part in parts):
            fix = f"run with PYTHONPATH={folder} and --model={'.'.join(parts)}:{function}"
        else:
            fix = (f"rename {path.name} to a Python module name (letters, digits, _), then run "
                   f"with PYTHONPATH={folder}")
    else:
        fix = (f"{where} is not a file here either; put its folder on PYTHONPATH and pass "
               f"--model=<file name without .py>:{function}")
    return config_lib.ConfigError(f"--model={name} is a file path, but {_IMPORT_PATH} with its "
                                  f"folder on PYTHONPATH — {fix}.")


def _user_factory(name: str) -> Any:
    """The object ``--model=package.module:attribute[.attribute]`` names, imported; every way
    the path can fail to resolve is a one-line :class:`~jaxpet.config.ConfigError`."""
    flag = f"--model={name}"
    module_name, colon, attribute = name.rpartition(":")
    refusal = (_file_path_refusal(name, module_name, attribute) if colon
               else _file_path_refusal(name, name, ""))
    if refusal is not None:
        raise refusal
    if not colon:
        raise config_lib.ConfigError(f"{flag} is neither one of {', '.join(BUILTIN_CLASSIFIERS)}"
                                     f" nor an import path package.module:function.")
    if name.count(":") > 1:
        raise config_lib.ConfigError(f"{flag} has {name.count(':')} colons; {_IMPORT_PATH} with "
                                     "one (a nested attribute as package.module:object.function).")
    if not module_name or not attribute:
        raise config_lib.ConfigError(f"{flag} names no {'function' if module_name else 'module'};"
                                     f" {_IMPORT_PATH}, e.g. mypkg.models:make_classifier.")
    for what, dotted in (("module", module_name), ("function", attribute)):
        if not all(part.isidentifier() for part in dotted.split(".")):
            raise config_lib.ConfigError(f"{flag}: {dotted!r} is not a {what} path of dotted "
                                         f"Python names; {_IMPORT_PATH}, e.g. "
                                         "mypkg.models:make_classifier.")
    try:
        target = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = e.name or module_name
        if module_name == missing or module_name.startswith(missing + "."):
            raise config_lib.ConfigError(
                f"{flag} does not resolve: no module {missing!r} on the Python path — put the "
                "folder that holds it on PYTHONPATH (PYTHONPATH=<folder> python ...).") from e
        raise config_lib.ConfigError(f"{flag}: importing {module_name} failed ({_first_line(e)})"
                                     " — install what it imports, or fix the import.") from e
    except (Exception, SystemExit) as e:  # whatever the module's own code raises on import
        raise config_lib.ConfigError(f"{flag}: importing {module_name} raised {_first_line(e)}"
                                     " — fix the module so that it imports.") from e
    reached = module_name
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except Exception as e:  # AttributeError, or whatever a module's __getattr__ raises
            names = [n for n in dir(target) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            raise config_lib.ConfigError(
                f"{flag} does not resolve: {reached} has no attribute {part!r}"
                f"{f' (did you mean {close[0]}?)' if close else ''}.") from e
        reached += f"{':' if reached == module_name else '.'}{part}"
    return target


def _user_module(name: str, factory: Any, num_classes: int) -> nn.Module:
    """``--model={name}``'s factory (or class) built for ``num_classes`` classes."""
    return from_object(factory, num_classes, flag=f"--model={name}",
                       attribute=name.rpartition(":")[2])


def from_object(factory: Any, num_classes: int, *, flag: str = "model",
                attribute: str | None = None) -> nn.Module:
    """The classifier a Python object stands for: a Linen module as it is; a function that takes
    the number of classes and returns a Linen module; an NNX module class, or a function
    ``f(num_classes, rngs)`` returning an ``nnx.Module``, wrapped in
    :class:`~jaxpet.nnx_classifiers.NNXClassifier`. Anything else, and a factory that cannot be
    called so, raises or returns the wrong thing, is refused in one line naming ``flag``."""
    attribute = attribute or getattr(factory, "__name__", None) or "make"
    call = f"{attribute}({num_classes})"
    make = "def make(num_classes): return MyModule(num_classes)"
    if isinstance(factory, nn.Module):
        if flag.startswith("--"):
            raise config_lib.ConfigError(
                f"{flag} is a Flax module, not a function — name a function that takes the "
                f"number of classes and returns one: {make}.")
        return factory
    if isinstance(factory, nnx.Module):
        raise config_lib.ConfigError(
            f"{flag} is an nnx.Module instance; jaxpet builds every reference afresh, so it needs "
            f"its class or a factory: {nnx_classifiers.FACTORY}.")
    if not callable(factory):
        raise config_lib.ConfigError(f"{flag} is not a function (it is of type "
                                     f"{type(factory).__name__}) — name a function that takes "
                                     f"the number of classes and returns a Flax module: {make}.")
    if nnx_classifiers.is_nnx_class(factory) or nnx_classifiers.takes_rngs(factory):
        return _nnx_module(factory, num_classes, flag, attribute)
    if isinstance(factory, type) and issubclass(factory, nn.Module):
        try:  # a module class whose first field is the number of classes serves as its factory
            return factory(num_classes)
        except Exception as e:  # any failure to build it: refused, naming the fix
            raise config_lib.ConfigError(
                f"{flag} is a Flax module class that cannot be built as {call} "
                f"({_first_line(e)}) — name a function that takes the number of classes and "
                f"returns the module: {make}.") from e
    _check_binds(factory, (num_classes,), {}, flag, attribute, call, "the number of classes "
                 "alone (or, for an NNX module, with rngs=nnx.Rngs(...): name that parameter "
                 "rngs)")
    try:
        model = factory(num_classes)
    except (Exception, SystemExit) as e:  # whatever the user's factory raises
        raise config_lib.ConfigError(f"{flag}: {call} raised {_first_line(e)} — fix the factory "
                                     "(jaxpet calls it with the number of classes).") from e
    if isinstance(model, nnx.Module):
        raise config_lib.ConfigError(
            f"{flag} returned an nnx.Module but takes no rngs, so every reference would start "
            f"from the same weights — take them: {nnx_classifiers.FACTORY}.")
    if isinstance(model, type) and issubclass(model, nn.Module):
        raise config_lib.ConfigError(f"{flag} returned the class {model.__name__}, not a Flax "
                                     f"module instance — return {model.__name__}(...).")
    if not isinstance(model, nn.Module):
        raise config_lib.ConfigError(f"{flag} returned a {type(model).__name__}, not a Flax "
                                     "module (a flax.linen.Module or an nnx.Module).")
    return model


def _check_binds(factory, args, kwargs, flag: str, attribute: str, call: str, what: str):
    """Refuses a factory whose signature cannot take ``args``/``kwargs``, naming ``what`` it is
    called with."""
    try:
        signature: inspect.Signature | None = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin without one: calling it will tell
        signature = None
    if signature is not None:
        try:
            signature.bind(*args, **kwargs)
        except TypeError as e:
            raise config_lib.ConfigError(
                f"{flag}: {attribute}{signature} cannot be called as {call} ({e}) — jaxpet "
                f"calls it with {what}: take those and give any other parameter a "
                "default.") from e


def _nnx_module(factory, num_classes: int, flag: str, attribute: str) -> nn.Module:
    """An NNX factory or class, built once to check it (``rngs`` taken, an ``nnx.Module``
    returned, callable as ``module(x)``), as an :class:`NNXClassifier`."""
    call = f"{attribute}({num_classes}, rngs=rngs)"
    if not nnx_classifiers.takes_rngs(factory):
        raise config_lib.ConfigError(
            f"{flag} is an NNX module that takes no rngs argument, so every reference would "
            f"start from the same weights — take them: {nnx_classifiers.FACTORY}.")
    _check_binds(factory, (num_classes,), {"rngs": None}, flag, attribute, call,
                 "the number of classes and rngs=nnx.Rngs(...)")
    try:
        module = factory(num_classes, rngs=nnx.Rngs(0))
    except (Exception, SystemExit) as e:  # whatever the user's factory raises
        raise config_lib.ConfigError(f"{flag}: {call} raised {_first_line(e)} — fix the factory "
                                     f"({nnx_classifiers.FACTORY}).") from e
    if not isinstance(module, nnx.Module):
        raise config_lib.ConfigError(f"{flag} takes rngs but returned a "
                                     f"{type(module).__name__}, not an nnx.Module.")
    nnx_classifiers.check_signature(module, flag)
    return nnx_classifiers.NNXClassifier(factory, num_classes)


# The calls jaxpet makes of a classifier, as the trainer and inference make them
# (jaxpet.training.state.init_model_state and train_step, jaxpet.training.inference._apply):
# check_classifier traces them and identity() lowers them.

def _init_call(model: nn.Module) -> Callable:
    return lambda key, x: model.init({"params": key}, x, train=False)


def _trained(variables) -> dict:
    """The collections jaxpet trains, keeps and queries a model with."""
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def _eval_call(model: nn.Module) -> Callable:
    return lambda variables, x: model.apply(_trained(variables), x, train=False)


def _train_call(model: nn.Module) -> Callable:
    """One training-mode call: a 'dropout' stream, BatchNorm's statistics mutable, and the
    row mask for a module that takes one."""
    from jaxpet.training.state import accepts_mask  # here: the model zoo needs no trainer

    masked = accepts_mask(model)

    def call(variables, x, key):
        mask = {"mask": jnp.ones(x.shape[:1], bool)} if masked else {}
        return model.apply(_trained(variables), x, train=True, rngs={"dropout": key},
                           mutable=["batch_stats"], **mask)
    return call


def check_classifier(model: nn.Module, sample, num_classes: int, name: str, *,
                     flag: str | None = None) -> None:
    """Refuses (naming ``--model={name}``) a model that cannot be called as jaxpet calls it,
    ``module(x, train=bool)`` on ``sample`` ([1, ...] model inputs), at init, in inference and
    in training, or that does not return one floating-point logit per class; traced only,
    nothing computed."""
    flag = flag or f"--model={name}"
    shape = tuple(np.shape(sample)[1:])
    nnx_model = isinstance(model, nnx_classifiers.NNXClassifier)
    call = "module(x) in eval mode" if nnx_model else "module(x, train=False)"
    train_call = "module(x) after module.train()" if nnx_model else "module(x, train=True)"
    trained = ("nnx.Rngs streams 'params' and 'dropout' only" if nnx_model else
               "a 'dropout' random stream and a mutable 'batch_stats' collection, and no other")
    need = (f"jaxpet drives an NNX classifier as {nnx_classifiers.SIGNATURE}" if nnx_model else
            f"jaxpet needs module(x, train=bool) returning [batch, {num_classes}] logits")
    try:
        signature: inspect.Signature | None = inspect.signature(type(model).__call__)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        try:
            signature.bind(model, sample, train=False)
        except TypeError as e:
            raise config_lib.ConfigError(
                f"{flag}: {type(model).__name__}.__call__{signature} cannot be called as "
                f"module(x, train=...) ({e}) — {need}.") from e
    key = jax.random.PRNGKey(0)
    try:
        out, variables = jax.eval_shape(
            lambda k, x: model.init_with_output({"params": k}, x, train=False), key, sample)
    except Exception as e:  # any tracing failure means the model does not fit
        raise config_lib.ConfigError(
            f"{flag} fails when called as {call} on inputs of shape {shape} "
            f"({_first_line(e)}) — {need}.") from e
    _check_logits(out, num_classes, flag, "")
    try:
        out, _ = jax.eval_shape(_train_call(model), variables, sample, key)
    except Exception as e:  # any tracing failure means it cannot train
        raise config_lib.ConfigError(
            f"{flag} fails in training, called as {train_call} on inputs of shape {shape} "
            f"({_first_line(e)}) — jaxpet trains it with {trained}.") from e
    _check_logits(out, num_classes, flag, " in training")


def _check_logits(out, num_classes: int, flag: str, when: str) -> None:
    shape = getattr(out, "shape", None)
    if shape != (1, num_classes):
        found = shape if shape is not None else f"a {type(out).__name__}"
        raise config_lib.ConfigError(f"{flag} returns {found} for one example{when}; it needs "
                                     f"one logit per class: (1, {num_classes}).")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise config_lib.ConfigError(f"{flag} returns {out.dtype} logits{when}; it needs "
                                     "floating-point logits.")


def identity(model: nn.Module, sample) -> dict:
    """What identifies a model in a stage key: what it computes, not its text.

    The digest of the programs its init, its inference call and its training call lower to
    on ``sample``'s shape (:func:`_programs`), its variables' shapes and dtypes, and whether
    it takes the row mask (which changes how it trains). An edit anywhere the model reaches
    (a helper function, a constant, an initialiser, a layer in another module) changes the
    key; an edit to a comment, or code moved or reformatted, does not.
    """
    from jaxpet.training.state import accepts_mask

    text, variables = _programs(model, sample)
    return {"program": hashlib.sha256(text.encode()).hexdigest(),
            "takes_mask": accepts_mask(model),
            "shapes": [f"{'/'.join(map(str, path))}: {leaf.shape} {leaf.dtype}" for path, leaf
                       in traverse_util.flatten_dict(variables).items()]}


def _programs(model: nn.Module, sample) -> tuple[str, Any]:
    """(the StableHLO text of the model's init, inference and training calls on ``sample``'s
    shape and dtype, its variables' shapes). Lowered, not compiled: without debug info the
    text holds no file, line or object address, only the computation."""
    key = jax.random.PRNGKey(0)
    init = jax.jit(_init_call(model)).lower(key, sample)
    variables = init.out_info
    programs = (init, jax.jit(_eval_call(model)).lower(variables, sample),
                jax.jit(_train_call(model)).lower(variables, sample, key))
    return "\n".join(program.as_text(debug_info=False) for program in programs), variables
