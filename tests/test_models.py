"""Model shapes, widths and exposed representations; a user's --model refused in one line."""

import importlib
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpet import classifiers, models
from jaxpet.config import ConfigError


def _num_params(variables):
    return sum(x.size for x in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("dataset, shape", [("cifar10", (2, 32, 32, 3)), ("mnist", (2, 28, 28, 1))])
def test_seed_cnn_widths_and_output(dataset, shape):
    x = jnp.zeros(shape)
    target, shadow = models.seed_cnn(dataset, "target"), models.seed_cnn(dataset, "shadow")
    assert (target.conv1, target.conv2, target.fc) == models.SEED_CNN_WIDTHS[(dataset, "target")]
    assert (shadow.conv1, shadow.conv2, shadow.fc) == tuple(
        w // 2 for w in (target.conv1, target.conv2, target.fc))
    # Shapes only (jax.eval_shape traces init and apply without running them): every claim
    # here is about shapes and sizes, and op-by-op execution of full-width CNNs costs seconds.
    vt = jax.eval_shape(target.init, jax.random.PRNGKey(0), x)
    vs = jax.eval_shape(shadow.init, jax.random.PRNGKey(0), x)
    assert jax.eval_shape(target.apply, vt, x).shape == (2, 10)
    assert "batch_stats" in vt
    assert _num_params(vs) < _num_params(vt) / 2


def test_seed_cnn_dropout_only_in_training():
    model = models.seed_cnn("mnist", "shadow", dropout_rate=0.5)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 28, 28, 1))
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    evaluate = jax.jit(model.apply)  # compiled: op by op, each call costs seconds
    np.testing.assert_array_equal(evaluate(variables, x), evaluate(variables, x))
    train = jax.jit(lambda key: model.apply(variables, x, train=True, rngs={"dropout": key},
                                            mutable=["batch_stats"])[0])
    assert not np.allclose(train(jax.random.PRNGKey(1)), train(jax.random.PRNGKey(2)))


def test_face_and_attack_mlps():
    # Shapes only: traced with jax.eval_shape, nothing run (the face MLP has 31M weights).
    face = models.face_mlp()
    x = jnp.zeros((3, 112, 92, 1))
    variables = jax.eval_shape(face.init, jax.random.PRNGKey(0), x)
    assert jax.eval_shape(face.apply, variables, x).shape == (3, 40)
    assert variables["params"]["Dense_0"]["kernel"].shape == (112 * 92, 3000)
    attack = models.attack_mlp()
    va = jax.eval_shape(attack.init, jax.random.PRNGKey(0), jnp.zeros((5, 3)))
    assert jax.eval_shape(attack.apply, va, jnp.zeros((5, 3))).shape == (5, 2)
    assert va["params"]["Dense_0"]["kernel"].shape == (3, 128)


def test_lenet_exposes_representations():
    model = models.LeNet(num_classes=2)
    x = jnp.ones((2, 50, 50, 3))
    # Shapes only: traced with jax.eval_shape, nothing run.
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    assert jax.eval_shape(model.apply, variables, x).shape == (2, 2)
    layer = lambda name: jax.eval_shape(
        lambda v: models.representation(model, v, x, name), variables).shape
    assert layer("fc2") == (2, 64)
    assert layer("fc1") == (2, 128)
    assert layer("conv3") == (2, 6 * 6 * 64)
    with pytest.raises(ValueError, match="fc9"):
        layer("fc9")


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="precision"):
        models.seed_cnn("cifar10", precision="float8")
    with pytest.raises(ValueError, match="svhn"):
        models.seed_cnn("svhn")


def test_bfloat16_compute_with_float32_params():
    model = models.seed_cnn("mnist", "shadow", precision="bfloat16")
    x = jnp.zeros((2, 28, 28, 1))
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)  # dtypes only: traced
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
    assert jax.eval_shape(model.apply, variables, x).dtype == jnp.bfloat16


@pytest.mark.parametrize("dataset, shape", [("cifar10", (4, 32, 32, 3)), ("mnist", (4, 28, 28, 1))])
def test_seed_cnn_conv_forms_agree_under_vmap(dataset, shape):
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    conv = models.seed_cnn(dataset, "shadow", conv_impl="conv", width_scale=0.25)
    patches = models.seed_cnn(dataset, "shadow", conv_impl="patches", width_scale=0.25)
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    variables = jax.jit(jax.vmap(lambda k: conv.init(k, x)))(keys)
    assert jax.tree.structure(variables) == jax.tree.structure(
        jax.eval_shape(jax.vmap(lambda k: patches.init(k, x)), keys))
    # Compiled, as training runs them (op by op, the vmapped forms take seconds).
    out_conv = jax.jit(jax.vmap(lambda v: conv.apply(v, x)))(variables)
    out_patches = jax.jit(jax.vmap(lambda v: patches.apply(v, x)))(variables)
    np.testing.assert_allclose(out_patches, out_conv, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="conv_impl"):
        models.seed_cnn(dataset, conv_impl="winograd")


def test_seed_cnn_with_reshape_pooling_gives_the_same_logits():
    x = jax.random.normal(jax.random.PRNGKey(2), (4, 32, 32, 3))
    window = models.SeedCNN(8, 16, 16)
    reshaped = models.SeedCNN(8, 16, 16, pool_impl="reshape")
    variables = jax.jit(window.init)(jax.random.PRNGKey(0), x)
    np.testing.assert_allclose(jax.jit(reshaped.apply)(variables, x),
                               jax.jit(window.apply)(variables, x), rtol=1e-6)


def test_seed_cnn_cpu_forms_train_like_the_reference_forms_under_vmap():
    """conv/window/flax against slices/reshape/fused: the same logits and gradients per model."""
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 3))
    y = jnp.arange(4) % 10
    mask = jnp.array([True, True, True, False])
    reference = models.SeedCNN(6, 8, 8, conv_impl="conv", pool_impl="window", batchnorm_impl="flax")
    fast = models.SeedCNN(6, 8, 8, conv_impl="slices", pool_impl="reshape", batchnorm_impl="fused")
    # Compiled, as training runs them (op by op, the vmapped gradients take many seconds).
    variables = jax.jit(jax.vmap(lambda k: reference.init(k, x)))(
        jax.random.split(jax.random.PRNGKey(1), 2))

    def loss(model):
        def f(params, stats):
            logits, state = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                                        mask=mask, mutable=["batch_stats"])
            return jnp.sum(jnp.where(mask, -jax.nn.log_softmax(logits)[jnp.arange(4), y], 0)), state
        return jax.jit(jax.vmap(jax.value_and_grad(f, has_aux=True)))(variables["params"],
                                                                      variables["batch_stats"])

    (value, state), grads = loss(fast)
    (value_ref, state_ref), grads_ref = loss(reference)
    np.testing.assert_allclose(value, value_ref, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4),
                 state, state_ref)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-3),
                 grads, grads_ref)



# --- A user's --model: every way it can fail is one line, before any work ------------------

FACTORIES = textwrap.dedent('''
    import jax
    import flax.linen as nn

    CONSTANT = 3


    class Net(nn.Module):
        num_classes: int

        @nn.compact
        def __call__(self, x, train: bool = False):
            return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))


    class NoFields(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            return nn.Dense(2)(x.reshape((x.shape[0], -1)))


    class NoTrain(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(x.reshape((x.shape[0], -1)))


    class ExtraArgument(nn.Module):
        @nn.compact
        def __call__(self, x, lengths, train: bool = False):
            return nn.Dense(2)(x.reshape((x.shape[0], -1)))


    class OwnNoise(nn.Module):
        """Draws from a random stream jaxpet does not give, in training only."""

        @nn.compact
        def __call__(self, x, train: bool = False):
            x = x.reshape((x.shape[0], -1))
            if train:
                x = x + jax.random.normal(self.make_rng("noise"), x.shape)
            return nn.Dense(2)(x)


    class Labels(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            return nn.Dense(2)(x.reshape((x.shape[0], -1))).argmax(-1)[:, None].repeat(2, 1)


    class Pair(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            y = nn.Dense(2)(x.reshape((x.shape[0], -1)))
            return y, y


    def make(num_classes):
        return Net(num_classes)


    def no_argument():
        return Net(2)


    def two_arguments(num_classes, width):
        return Net(num_classes)


    def raises(num_classes):
        raise RuntimeError("no GPU here\\nand a second line")


    def exits(num_classes):
        raise SystemExit(2)


    def returns_class(num_classes):
        return Net


    def returns_string(num_classes):
        return "a string"


    class Holder:
        @staticmethod
        def make(num_classes):
            return Net(num_classes)


    holder = Holder()
    instance = Net(2)
''')
for _name in ("no_train", "extra_argument", "own_noise", "labels", "pair"):
    FACTORIES += (f"\n\ndef {_name}(num_classes):\n    return "
                  f"{''.join(w.title() for w in _name.split('_'))}()\n")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Writes a module of ``source`` on the Python path and returns its fresh name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names = []

    def write(source, name=None):
        name = name or f"user_factories_{len(names)}_{tmp_path.name}".replace("-", "_")
        (tmp_path / f"{name}.py").write_text(source)
        importlib.invalidate_caches()
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


def _refusal(name, num_classes=2):
    with pytest.raises(ConfigError) as error:
        classifiers.classifier(name, num_classes)
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("attribute, expected", [
    ("CONSTANT", "is not a function (it is of type int)"),
    ("instance", "is a Flax module, not a function"),
    ("no_argument", "no_argument() cannot be called as no_argument(2) (too many positional"),
    ("two_arguments", "cannot be called as two_arguments(2) (missing a required argument: "
                      "'width')"),
    ("raises", "raises(2) raised RuntimeError: no GPU here — fix the factory"),
    ("exits", "exits(2) raised SystemExit: 2"),
    ("NoFields", "is a Flax module class that cannot be built as NoFields(2) (TypeError"),
    ("returns_class", "returned the class Net, not a Flax module instance — return Net(...)"),
    ("returns_string", "returned a str, not a Flax module"),
    ("missing", "does not resolve: {module} has no attribute 'missing'"),
    ("mak", "has no attribute 'mak' (did you mean make?)"),
    ("Holder.missing", "does not resolve: {module}:Holder has no attribute 'missing'"),
])
def test_a_factory_that_cannot_give_a_module_is_refused_in_one_line(user_module, attribute,
                                                                   expected):
    module = user_module(FACTORIES)
    assert expected.format(module=module) in _refusal(f"{module}:{attribute}")


@pytest.mark.parametrize("attribute", ["make", "Net", "Holder.make", "holder.make"])
def test_a_factory_a_module_class_or_a_nested_attribute_builds_the_model(user_module, attribute):
    model = classifiers.classifier(f"{user_module(FACTORIES)}:{attribute}", 4)
    assert model.num_classes == 4


@pytest.mark.parametrize("source, expected", [
    ('raise RuntimeError("no licence\\nsecond line")',
     "importing {module} raised RuntimeError: no licence — fix the module"),
    ("def f(:\n    pass", "importing {module} raised SyntaxError: invalid syntax"),
    ("x = undefined_name", "raised NameError: name 'undefined_name' is not defined"),
    ("import sys\nsys.exit(3)", "raised SystemExit: 3"),
    ("import a_package_that_is_not_installed",
     "importing {module} failed (ModuleNotFoundError: No module named "
     "'a_package_that_is_not_installed') — install what it imports"),
])
def test_a_module_that_fails_to_import_is_named_with_its_error(user_module, source, expected):
    module = user_module(source)
    assert expected.format(module=module) in _refusal(f"{module}:make")


@pytest.mark.parametrize("name, expected", [
    (":make", "names no module"),
    ("mymodels:", "names no function"),
    ("a:b:c", "has 2 colons"),
    (".relative:make", "'.relative' is not a module path"),
    ("my-models:make", "'my-models' is not a module path"),
    ("mymodels:make()", "'make()' is not a function path"),
    ("no_such_package.models:make", "does not resolve: no module 'no_such_package' on the "
                                    "Python path — put the folder that holds it on PYTHONPATH"),
    ("resnet50", "is neither one of seed_cnn, mlp, wrn nor an import path"),
    ("examples/nowhere.py:make", "is a file path, but --model takes an import path "
                                 "package.module:function"),
    ("nowhere.py:make", "nowhere.py is not a file here either"),
    ("nowhere.py", "is a file path"),
])
def test_a_model_path_that_is_not_an_import_path_is_refused(name, expected):
    assert expected in _refusal(name)


def test_a_file_path_is_refused_with_the_pythonpath_and_module_to_use(tmp_path):
    (tmp_path / "my_net.py").write_text(FACTORIES)
    message = _refusal(f"{tmp_path}/my_net.py:make")
    assert f"run with PYTHONPATH={tmp_path.resolve()} and --model=my_net:make." in message
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(FACTORIES)
    assert (f"PYTHONPATH={tmp_path.resolve()} and --model=mypkg.nets:make"
            in _refusal(f"{package}/nets.py:make"))
    (tmp_path / "my-net.py").write_text(FACTORIES)
    assert "rename my-net.py to a Python module name" in _refusal(f"{tmp_path}/my-net.py:make")


@pytest.mark.parametrize("attribute, expected", [
    ("no_train", "NoTrain.__call__(self, x) cannot be called as module(x, train=...) (got an "
                 "unexpected keyword argument 'train') — jaxpet needs module(x, train=bool) "
                 "returning [batch, 2] logits"),
    ("extra_argument", "cannot be called as module(x, train=...) (missing a required argument: "
                       "'lengths')"),
    ("own_noise", "fails in training, called as module(x, train=True) on inputs of shape (4, 4, "
                  "1) (InvalidRngError"),
    ("labels", "returns int32 logits; it needs floating-point logits"),
    ("pair", "returns a tuple for one example; it needs one logit per class: (1, 2)"),
])
def test_a_module_jaxpet_cannot_call_says_the_call_it_needs(user_module, attribute, expected):
    name = f"{user_module(FACTORIES)}:{attribute}"
    model = classifiers.classifier(name, 2)
    with pytest.raises(ConfigError) as error:
        classifiers.check_classifier(model, jnp.zeros((1, 4, 4, 1)), 2, name)
    assert expected in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("name", ["seed_cnn", "mlp", "wrn"])
def test_the_built_in_classifiers_pass_the_check(name):
    model = classifiers.classifier(name, 10, width_scale=0.125)
    classifiers.check_classifier(model, jnp.zeros((1, 32, 32, 3)), 10, name)
    with pytest.raises(ConfigError, match=r"needs one logit per class: \(1, 7\)"):
        classifiers.check_classifier(model, jnp.zeros((1, 32, 32, 3)), 7, name)
