"""NNX classifiers through jaxpet's Linen face: built from a factory, trained K at once (equal to
one by one), BatchNorm and dropout modes, a live module's state as variables, and the factories
and signatures refused before any work."""

from __future__ import annotations

from flax import nnx
import jax
import numpy as np
import pytest

from jaxpet import classifiers, splits, training
from jaxpet.errors import UserError
from jaxpet.nnx_classifiers import NNXClassifier, variables_of


class Net(nnx.Module):
    """A user's NNX classifier: Linear, BatchNorm, Dropout, a list of layers."""

    def __init__(self, num_classes: int, *, rngs: nnx.Rngs):
        self.hidden = nnx.List([nnx.Linear(6, 16, rngs=rngs)])
        self.norm = nnx.BatchNorm(16, rngs=rngs)
        self.drop = nnx.Dropout(0.3, rngs=rngs)
        self.out = nnx.Linear(16, num_classes, rngs=rngs)

    def __call__(self, x):
        return self.out(self.drop(nnx.relu(self.norm(self.hidden[0](x)))))


def _data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)).astype(np.float32), rng.integers(0, 3, n).astype(np.int32)


CONFIG = training.TrainConfig(epochs=2, batch_size=8, optimizer="sgd", learning_rate=0.05,
                              schedule="constant")


def test_an_nnx_ensemble_trained_at_once_equals_its_models_trained_one_by_one():
    model = NNXClassifier(Net, 3)
    x, y = _data()
    members = splits.MemberSets.from_lists([np.arange(0, 32), np.arange(16, 48), np.arange(8, 40)])
    keys = training.model_keys(0, 3)
    together = training.train_ensemble(model, x, y, members, CONFIG, keys=keys, strategy="vmap")
    assert set(together.state.batch_stats) == {"norm"}  # BatchNorm's statistics trained
    for k in range(3):
        alone = training.train_ensemble(
            model, x, y, splits.MemberSets.from_lists([members.member(k)]), CONFIG,
            keys=keys[k:k + 1], strategy="vmap")
        for tree in ("params", "batch_stats"):
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a[k], b[0], rtol=1e-5, atol=1e-6),  # noqa: B023 - called now
                         getattr(together.state, tree), getattr(alone.state, tree))
    # Each model starts from its own initialisation and moves its BatchNorm statistics.
    first = together.state.params["out"]["kernel"]
    assert not np.allclose(first[0], first[1])
    assert np.abs(np.asarray(together.state.batch_stats["norm"]["mean"])).max() > 0


def test_dropout_draws_from_the_stream_it_is_given_and_eval_mode_is_deterministic():
    model = NNXClassifier(Net, 3)
    x, _ = _data(8)
    variables = model.init({"params": jax.random.PRNGKey(1)}, x, train=False)
    train = lambda key: model.apply(variables, x, train=True, rngs={"dropout": key},
                                    mutable=["batch_stats"])[0]
    a, b = train(jax.random.PRNGKey(2)), train(jax.random.PRNGKey(3))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, train(jax.random.PRNGKey(2)))
    eval_out = model.apply(variables, x, train=False)
    np.testing.assert_array_equal(eval_out, model.apply(variables, x, train=False))
    assert not np.allclose(eval_out, a)


class DefaultStream(nnx.Module):
    """Dropout drawing from the default stream, as ``nnx.Rngs(0)`` alone would give it."""

    def __init__(self, num_classes: int, *, rngs: nnx.Rngs):
        self.out = nnx.Linear(6, num_classes, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rng_collection="default", rngs=rngs)

    def __call__(self, x):
        return self.drop(self.out(x))


def test_randomness_from_the_default_stream_follows_each_models_dropout_key():
    model = NNXClassifier(DefaultStream, 3)
    x, _ = _data(8)
    variables = model.init({"params": jax.random.PRNGKey(1)}, x, train=False)
    train = lambda key: model.apply(variables, x, train=True, rngs={"dropout": key},
                                    mutable=["batch_stats"])[0]
    assert not np.allclose(train(jax.random.PRNGKey(2)), train(jax.random.PRNGKey(3)))
    other = model.init({"params": jax.random.PRNGKey(2)}, x, train=False)
    assert not np.allclose(variables["params"]["out"]["kernel"],
                           other["params"]["out"]["kernel"])


def test_training_mode_updates_the_batchnorm_statistics_and_eval_mode_uses_them():
    model = NNXClassifier(Net, 3)
    x, _ = _data(16)
    variables = model.init({"params": jax.random.PRNGKey(0)}, x, train=False)
    _, updated = model.apply(variables, x + 3.0, train=True, rngs={"dropout": jax.random.key(0)},
                             mutable=["batch_stats"])
    before = np.asarray(variables["batch_stats"]["norm"]["mean"])
    after = np.asarray(updated["batch_stats"]["norm"]["mean"])
    assert np.abs(after - before).max() > 1e-3
    moved = {**variables, "batch_stats": updated["batch_stats"]}
    assert not np.allclose(model.apply(moved, x, train=False), model.apply(variables, x,
                                                                           train=False))


def test_a_live_modules_state_is_the_adapters_variables():
    """A module trained by the user's own NNX loop, taken as jaxpet's variables, gives the
    module's own eval-mode logits."""
    module = Net(3, rngs=nnx.Rngs(5))
    x, _ = _data(8)
    module.train()
    module(x + 1.0)  # moves the BatchNorm statistics
    module.eval()
    expected = module(x)
    variables = variables_of(module)
    np.testing.assert_allclose(NNXClassifier(Net, 3).apply(variables, x, train=False), expected,
                               rtol=1e-6)


def test_the_factory_forms_and_the_model_identity():
    x, _ = _data(1)
    by_class = classifiers.from_object(Net, 3)
    by_function = classifiers.from_object(lambda num_classes, rngs: Net(num_classes, rngs=rngs),
                                          3)
    assert isinstance(by_class, NNXClassifier) and isinstance(by_function, NNXClassifier)
    classifiers.check_classifier(by_class, x, 3, "Net")
    assert (classifiers.identity(by_class, x)["program"]
            == classifiers.identity(by_function, x)["program"])


class NeedsTrainFlag(nnx.Module):
    def __init__(self, num_classes: int, *, rngs: nnx.Rngs):
        self.out = nnx.Linear(6, num_classes, rngs=rngs)

    def __call__(self, x, train):
        return self.out(x)


class TrainKeyword(nnx.Module):
    def __init__(self, num_classes: int, *, rngs: nnx.Rngs):
        self.out = nnx.Linear(6, num_classes, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x, *, train: bool = False):
        return self.drop(self.out(x), deterministic=not train)


class NoRngs(nnx.Module):
    def __init__(self, num_classes: int):
        self.out = nnx.Linear(6, num_classes, rngs=nnx.Rngs(0))

    def __call__(self, x):
        return self.out(x)


@pytest.mark.parametrize("factory, expected", [
    (NeedsTrainFlag, r"NeedsTrainFlag.__call__\(self, x, train\) cannot be called as module\(x\)"),
    (TrainKeyword, "takes 'train', which jaxpet never passes, so training would run in its "
                   "default mode"),
    (lambda num_classes, r: NoRngs(num_classes), "name that parameter rngs"),
    (NoRngs, "takes no rngs argument, so every reference would start from the same weights"),
    (lambda num_classes: NoRngs(num_classes), "returned an nnx.Module but takes no rngs"),
    (lambda num_classes, rngs: "not a module", "takes rngs but returned a str"),
    (lambda num_classes, rngs: 1 / 0, "raised ZeroDivisionError"),
    (Net(3, rngs=nnx.Rngs(0)), "is an nnx.Module instance"),
], ids=["train_argument", "train_keyword", "rngs_misnamed", "class_without_rngs",
        "factory_without_rngs", "not_a_module", "raises", "instance"])
def test_an_nnx_model_jaxpet_cannot_drive_is_refused_in_one_line(factory, expected):
    with pytest.raises(UserError, match=expected) as caught:
        classifiers.from_object(factory, 3)
    assert "\n" not in str(caught.value)
