"""A model's identity in a stage key is what it computes: an edit the model reaches changes
it (a helper function, a constant, an initialiser, a layer in another module, a training-only
setting); a comment, reformatting or moved code does not; it is the same in every process."""

from __future__ import annotations

import importlib.util
import itertools
import os
import re
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import pytest

from jaxpet import classifiers, files

# A user's model file: act is the helper function the model calls, SCALE a constant it reads,
# BIAS_INIT an initialiser, MOMENTUM and DROPOUT settings only training uses; all outside the
# class, whose own source never changes.
MODEL = textwrap.dedent('''
    import functools

    import flax.linen as nn

    SCALE = 2.0
    MOMENTUM = 0.9
    DROPOUT = 0.1
    BIAS_INIT = nn.initializers.constant(0.1)


    def act(x):
        return nn.relu(x) * SCALE


    class Net(nn.Module):
        num_classes: int = 3
        pool: object = functools.partial(nn.avg_pool, window_shape=(2, 2), strides=(2, 2))

        @nn.compact
        def __call__(self, x, train: bool = False):
            x = self.pool(x)
            x = nn.Conv(4, (3, 3), use_bias=False)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=MOMENTUM)(x)
            x = act(x.reshape((x.shape[0], -1)))
            x = nn.Dropout(DROPOUT, deterministic=not train)(x)
            return nn.Dense(self.num_classes, bias_init=BIAS_INIT)(x)


    def make(num_classes):
        return Net(num_classes)
''')

# The same model, with comments, blank lines and reformatting, and the helper moved below
# the class.
MODEL_REFORMATTED = textwrap.dedent('''
    """The same model, written differently."""
    import functools

    import flax.linen as nn

    SCALE = 2.0  # the helper's scale
    MOMENTUM = 0.9
    DROPOUT = 0.1
    BIAS_INIT = nn.initializers.constant(0.1)


    class Net(nn.Module):
        """A docstring the first version did not have."""

        num_classes: int = 3
        pool: object = functools.partial(nn.avg_pool, window_shape=(2, 2),
                                         strides=(2, 2))

        @nn.compact
        def __call__(self, x, train: bool = False):
            # Pool first, then one convolution.
            x = self.pool(x)
            x = nn.Conv(4, (3, 3),
                        use_bias=False)(x)
            x = nn.BatchNorm(use_running_average=not train,
                             momentum=MOMENTUM)(x)

            x = act(x.reshape((x.shape[0], -1)))  # flatten
            x = nn.Dropout(DROPOUT, deterministic=(not train))(x)
            return nn.Dense(self.num_classes,
                            bias_init=BIAS_INIT)(x)


    def act(x):
        # moved below the class
        return nn.relu(x) * SCALE


    def make(num_classes):
        return Net(num_classes)
''')

SAMPLE = jnp.zeros((1, 8, 8, 3))
_names = itertools.count()


def _identity(tmp_path, source):
    """The identity of ``make(3)`` from ``source``, imported as a fresh module."""
    name = f"user_model_{next(_names)}"
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # flax's dataclass transform looks the class's module up
    try:
        spec.loader.exec_module(module)
        return classifiers.identity(module.make(3), SAMPLE)
    finally:
        del sys.modules[name]


@pytest.mark.parametrize("old, new", [
    ("return nn.relu(x) * SCALE", "return nn.tanh(x) * SCALE"),  # the helper function
    ("SCALE = 2.0", "SCALE = 3.0"),  # a module constant the helper reads
    ("constant(0.1)", "constant(0.2)"),  # an initialiser: only init's program sees it
    ("MOMENTUM = 0.9", "MOMENTUM = 0.99"),  # BatchNorm's update: only training sees it
    ("DROPOUT = 0.1", "DROPOUT = 0.3"),  # only training sees the dropout rate
])
def test_an_edit_outside_the_class_that_changes_the_computation_changes_the_identity(
        tmp_path, old, new):
    assert old in MODEL
    assert _identity(tmp_path, MODEL) != _identity(tmp_path, MODEL.replace(old, new))


def test_comments_reformatting_and_moved_code_keep_the_identity(tmp_path):
    assert _identity(tmp_path, MODEL_REFORMATTED) == _identity(tmp_path, MODEL)


def test_a_layer_edited_in_another_module_changes_the_identity(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    user = MODEL.replace("def act(x):\n    return nn.relu(x) * SCALE",
                         "from user_layers_{n} import act")

    def identity(layer_source, n):
        (tmp_path / f"user_layers_{n}.py").write_text(layer_source)
        importlib.invalidate_caches()
        try:
            return _identity(tmp_path, user.replace("{n}", str(n)))
        finally:
            sys.modules.pop(f"user_layers_{n}", None)

    relu = "import flax.linen as nn\n\ndef act(x):\n    return nn.relu(x)\n"
    assert identity(relu, 0) == identity(relu, 1)
    assert identity(relu, 2) != identity(relu.replace("relu(x)", "gelu(x)"), 3)


def test_the_identity_is_the_same_in_two_processes(tmp_path):
    """A field holding a functools.partial (whose repr holds an address) does not matter."""
    (tmp_path / "two_processes.py").write_text(MODEL)
    script = ("import jax.numpy as jnp, two_processes; from jaxpet import classifiers, files; "
              "print(files.digest(classifiers.identity(two_processes.make(3), "
              "jnp.zeros((1, 8, 8, 3)))))")
    runs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(tmp_path),
                                  "PYTHONHASHSEED": seed})
            for seed in ("1", "2")]
    digests = [run.communicate(timeout=120)[0].strip() for run in runs]
    assert all(run.returncode == 0 for run in runs)
    assert digests[0] == digests[1] == files.digest(_identity(tmp_path, MODEL))


@pytest.mark.parametrize("name, width_scale", [("seed_cnn", 0.125), ("mlp", 1.0), ("wrn", 0.5)])
def test_the_built_in_models_are_stable_and_their_programs_carry_no_source_or_address(
        name, width_scale):
    model = classifiers.classifier(name, 10, width_scale=width_scale)
    sample = jnp.zeros((1, 32, 32, 3))
    first = classifiers.identity(model, sample)
    assert classifiers.identity(classifiers.classifier(name, 10, width_scale=width_scale),
                           sample) == first
    text, _ = classifiers._programs(model, sample)
    assert "loc(" not in text and ".py" not in text
    # Hex float constants (dense<0x7F800000>, inf) aside, no address (0x7f...) is left.
    assert not re.search(r"\b0x[0-9a-fA-F]{4,}", re.sub(r"dense<0x[0-9A-F]+>", "", text))
    assert any("params/" in line for line in first["shapes"])


def test_the_variables_shapes_and_the_row_mask_are_part_of_the_identity():
    sample = jnp.zeros((1, 8, 8, 3))
    cnn = classifiers.classifier("seed_cnn", 10, width_scale=0.125)
    assert classifiers.identity(cnn, sample)["takes_mask"]
    shapes = classifiers.identity(cnn, sample)["shapes"]
    assert "params/Conv_0/kernel: (3, 3, 3, 16) float32" in shapes
    assert any(line.startswith("batch_stats/BatchNorm_0/mean") for line in shapes)
