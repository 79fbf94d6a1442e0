"""Flax models of the seed write-up: target/shadow CNN, attack MLP, face MLP, UTKFace LeNet;
and the field's CIFAR-10 model, WideResNet-28-2, with LiRA's training recipe. They are built
from the layer forms of :mod:`jaxpet.layers`.

Every model takes ``(x, train=False, *, mask=None)``: ``train`` switches
BatchNorm to batch statistics and enables dropout; ``mask`` ([B] bool) marks
the real rows of a padded batch so that BatchNorm statistics ignore padding.
Parameters are always float32; ``dtype`` sets the compute precision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import difflib
import hashlib
import importlib
import inspect
import numbers
import pathlib
from typing import TYPE_CHECKING, Any

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxpet import config as config_lib
from jaxpet.layers import (
    WideConv,
    _batch_norm,
    _conv,
    _row_mask,
    max_pool_2x2,
    resolve_batchnorm_impl,
    resolve_conv_impl,
    resolve_pool_impl,
)

if TYPE_CHECKING:
    from jaxpet.training import TrainConfig

_ACTIVATIONS: dict[str, Callable[[Any], Any]] = {
    "relu": nn.relu,
    "sigmoid": nn.sigmoid,
    "tanh": nn.tanh,
}


NORMS = ("batch", "group", "none")


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


def lira_recipe(epochs: int = LIRA_EPOCHS, **overrides) -> TrainConfig:
    """The LiRA/RMIA CIFAR-10 recipe as a TrainConfig: SGD momentum 0.9, L2 5e-4 on kernels,
    learning rate 0.1 on LiRA's cos(7 pi t / 16) schedule with a 1% warm-up, batch 256, flip +
    4-pixel-shift augmentation, 100 epochs, predictions from a 0.999 moving average of the
    weights.

    ``overrides`` replace any other TrainConfig field (e.g. ``eval_batch_size``), so a test
    can run the recipe at a few epochs and a small batch.
    """
    # Imported here: the model zoo stays importable without the trainer (and no cycle can form).
    from jaxpet.training import TrainConfig

    fields = dict(epochs=epochs, batch_size=256, learning_rate=0.1, optimizer="sgd",
                  momentum=0.9, weight_decay=5e-4, schedule="lira_cosine", decayed="kernels",
                  augment="flip_crop", ema=0.999)
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise ValueError(f"lira_recipe got unknown TrainConfig fields {unknown}; valid ones: "
                         f"{sorted(f.name for f in dataclasses.fields(TrainConfig))}.")
    return TrainConfig(**{**fields, **overrides})


# --- Classifiers by name (the audit's --model) ----------------------------------------------

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
    """``factory(num_classes)``, refused in one line unless it is a Flax module instance: a
    factory that is no function, cannot take the one argument, raises, or returns a class."""
    flag = f"--model={name}"
    attribute = name.rpartition(":")[2]
    call = f"{attribute}({num_classes})"
    make = "def make(num_classes): return MyModule(num_classes)"
    if isinstance(factory, nn.Module):
        raise config_lib.ConfigError(f"{flag} is a Flax module, not a function — name a function "
                                     f"that takes the number of classes and returns one: {make}.")
    if not callable(factory):
        raise config_lib.ConfigError(f"{flag} is not a function (it is of type "
                                     f"{type(factory).__name__}) — name a function that takes "
                                     f"the number of classes and returns a Flax module: {make}.")
    if isinstance(factory, type) and issubclass(factory, nn.Module):
        try:  # a module class whose first field is the number of classes serves as its factory
            return factory(num_classes)
        except Exception as e:  # any failure to build it: refused, naming the fix
            raise config_lib.ConfigError(
                f"{flag} is a Flax module class that cannot be built as {call} "
                f"({_first_line(e)}) — name a function that takes the number of classes and "
                f"returns the module: {make}.") from e
    try:
        signature: inspect.Signature | None = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin without one: calling it will tell
        signature = None
    if signature is not None:
        try:
            signature.bind(num_classes)
        except TypeError as e:
            raise config_lib.ConfigError(
                f"{flag}: {attribute}{signature} cannot be called as {call} ({e}) — jaxpet "
                "calls it with the number of classes alone: take one parameter and give any "
                "other a default.") from e
    try:
        model = factory(num_classes)
    except (Exception, SystemExit) as e:  # whatever the user's factory raises
        raise config_lib.ConfigError(f"{flag}: {call} raised {_first_line(e)} — fix the factory "
                                     "(jaxpet calls it with the number of classes).") from e
    if isinstance(model, type) and issubclass(model, nn.Module):
        raise config_lib.ConfigError(f"{flag} returned the class {model.__name__}, not a Flax "
                                     f"module instance — return {model.__name__}(...).")
    if not isinstance(model, nn.Module):
        raise config_lib.ConfigError(f"{flag} returned a {type(model).__name__}, not a Flax "
                                     "module (a flax.linen.Module instance).")
    return model


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


def check_classifier(model: nn.Module, sample, num_classes: int, name: str) -> None:
    """Refuses (naming ``--model={name}``) a model that cannot be called as jaxpet calls it,
    ``module(x, train=bool)`` on ``sample`` ([1, ...] model inputs), at init, in inference and
    in training, or that does not return one floating-point logit per class; traced only,
    nothing computed."""
    flag = f"--model={name}"
    shape = tuple(np.shape(sample)[1:])
    need = f"jaxpet needs module(x, train=bool) returning [batch, {num_classes}] logits"
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
            f"{flag} fails when called as module(x, train=False) on inputs of shape {shape} "
            f"({_first_line(e)}) — {need}.") from e
    _check_logits(out, num_classes, flag, "")
    try:
        out, _ = jax.eval_shape(_train_call(model), variables, sample, key)
    except Exception as e:  # any tracing failure means it cannot train
        raise config_lib.ConfigError(
            f"{flag} fails in training, called as module(x, train=True) on inputs of shape "
            f"{shape} ({_first_line(e)}) — jaxpet trains it with a 'dropout' random stream and "
            "a mutable 'batch_stats' collection, and no other.") from e
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
