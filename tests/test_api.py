"""jaxpet from Python: the audit on arrays gives the command's figures; NNX models, a live
trained target, the user's optax optimiser; the result object (table, renderings, scores, ROC
figure, most exposed); logits scored from arrays; bad arguments refused in one line."""

from __future__ import annotations

import jax
import matplotlib
from matplotlib.figure import Figure
import numpy as np
import optax
import pytest

import jaxpet
from jaxpet.errors import UserError
from jaxpet.experiments import audit as audit_lib

SETTINGS = dict(num_references=4, epochs=10, batch_size=16, learning_rate=1e-2,
                population_size=40, num_exposed=4)


def _features(n=160, test=80, d=12, seed=0):
    """Random vectors with random labels: a model memorises its members, so they leak."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, 4, n),
            rng.normal(size=(test, d)).astype(np.float32), rng.integers(0, 4, test))


def test_the_python_api_gives_the_commands_figures(tmp_path):
    x, y, test_x, test_y = _features()
    np.savez(tmp_path / "d.npz", features=x, labels=y, test_features=test_x, test_labels=test_y)
    command = audit_lib.run(audit_lib.Config(model="mlp", width_scale=0.25,
                                             data=str(tmp_path / "d.npz"),
                                             workdir=str(tmp_path / "cli"), **SETTINGS))
    backend = matplotlib.get_backend()
    result = jaxpet.audit("mlp", (x, y), population=(test_x, test_y), width_scale=0.25,
                          **SETTINGS)
    assert result.workdir is None  # no workdir: nothing kept
    assert result.table.keys() == command["attacks"].keys()
    for name, metrics in command["attacks"].items():
        assert result.table[name]["auc"] == pytest.approx(metrics["auc"], rel=1e-6), name
        assert result.table[name]["tpr_at_fpr"] == pytest.approx(metrics["tpr_at_fpr"],
                                                                  rel=1e-6), name
    saved = np.load(tmp_path / "cli" / "scores.npz")
    for name, scores in result.scores.items():
        np.testing.assert_allclose(scores, saved[f"score_{name}"], rtol=1e-6, err_msg=name)
    np.testing.assert_array_equal(result.membership, saved["membership"])
    assert result.most_exposed == command["most_exposed"]
    # The renderings a notebook shows, and the ROC as a Figure, the backend left as it was.
    assert "| lira_online |" in result.markdown().replace("`", "")
    assert "<table>" in result._repr_html_() and "# Membership audit" in result._repr_markdown_()
    figure = result.roc_figure()
    assert isinstance(figure, Figure) and len(figure.axes[0].lines) >= len(result.scores)
    assert matplotlib.get_backend() == backend


NNX_MODULE = """
from flax import nnx


class Net(nnx.Module):
    def __init__(self, num_classes: int, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(12, 64, rngs=rngs)
        self.drop = nnx.Dropout(0.1, rngs=rngs)
        self.out = nnx.Linear(64, num_classes, rngs=rngs)

    def __call__(self, x):
        return self.out(self.drop(nnx.relu(self.hidden(x))))
"""


def _nnx_net():
    """The user's NNX class (:data:`NNX_MODULE`), defined here rather than imported."""
    namespace: dict = {}
    exec(NNX_MODULE, namespace)
    return namespace["Net"]


def _train_nnx(net, x, y, steps=300, seed=0):
    """The user's own NNX training loop (no jaxpet): full-batch Adam on ``x``."""
    from flax import nnx

    model = net(4, rngs=nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        def loss(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
        grads = nnx.grad(loss)(model)
        optimizer.update(model, grads)

    model.train()
    for _ in range(steps):
        step(model, optimizer)
    model.eval()
    return model


def test_an_nnx_target_trained_by_the_user_is_audited_with_an_optax_recipe(tmp_path):
    x, y, test_x, test_y = _features()
    net = _nnx_net()
    members = np.zeros(len(x), bool)
    members[np.random.default_rng(1).permutation(len(x))[:80]] = True
    target = _train_nnx(net, x[members], y[members])
    own_accuracy = float((np.argmax(target(x[members]), -1) == y[members]).mean())
    result = jaxpet.audit(net, (x, y), population=(test_x, test_y), members=members,
                          target=target, optimizer=optax.adam(1e-2),
                          workdir=tmp_path / "nnx", **{k: v for k, v in SETTINGS.items()
                                                       if k != "learning_rate"})
    assert result.results["target"]["train_acc"] == pytest.approx(own_accuracy)
    assert result.results["recipe"]["optimizer"] == "your optax optimiser"
    # The target memorised its members; with 4 references, RMIA and the loss see it.
    assert result.table["rmia_online"]["auc"] > 0.8 and result.table["global_loss"]["auc"] > 0.8
    assert result.membership.sum() == 80 and (tmp_path / "nnx" / "report.html").exists()
    assert result.workdir == tmp_path / "nnx"




def test_an_nnx_target_saved_with_orbax_is_audited_from_the_command_as_from_python(
        tmp_path, monkeypatch):
    """The user's NNX class by import path, its trained state saved with orbax and its members
    in a .npy: the command's audit equals the Python API's on the live module."""
    from flax import nnx
    import orbax.checkpoint as ocp

    (tmp_path / "user_nnx.py").write_text(NNX_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import user_nnx

    x, y, test_x, test_y = _features()
    np.savez(tmp_path / "d.npz", features=x, labels=y, test_features=test_x, test_labels=test_y)
    members = np.sort(np.random.default_rng(2).permutation(len(x))[:80])
    target = _train_nnx(user_nnx.Net, x[members], y[members], steps=200)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "state", nnx.state(target))
    np.save(tmp_path / "members.npy", members)
    settings = dict(SETTINGS, epochs=4)
    command = audit_lib.run(audit_lib.Config(
        model="user_nnx:Net", data=str(tmp_path / "d.npz"), target="checkpoint",
        target_checkpoint=str(tmp_path / "state"), target_members=str(tmp_path / "members.npy"),
        workdir=str(tmp_path / "cli"), **settings))
    live = jaxpet.audit(user_nnx.Net, (x, y), population=(test_x, test_y), members=members,
                        target=target, **settings)
    assert command["target"] == live.results["target"]
    assert command["target"]["train_acc"] == 1.0
    for name, metrics in command["attacks"].items():
        assert live.table[name]["auc"] == pytest.approx(metrics["auc"], rel=1e-6), name


def test_logits_from_anywhere_are_scored_from_arrays():
    rng = np.random.default_rng(0)
    keep = rng.random((6, 100)) < 0.5
    logits = rng.normal(size=(6, 100, 3)) + 3.0 * keep[..., None] * np.eye(3)[
        rng.integers(0, 3, 100)][None]
    labels = np.argmax(logits[0], -1)
    result = jaxpet.score_logits(logits, labels, keep, target=0)
    assert result.table["lira_online"]["auc"] > 0.6
    np.testing.assert_array_equal(result.membership, keep[0])


@pytest.mark.parametrize("kwargs, expected", [
    (dict(epoch=3), r"epoch= is not a setting \(did you mean epochs\?\)"),
    (dict(workdir_="x"), "is not a setting"),
    (dict(target_members="m.npy"), "target_members= is an argument of its own here — pass "
                                   "members="),
    (dict(members=np.arange(3)), "members= names the examples your target trained on"),
    (dict(target={"params": {}}), "target= needs members="),
    (dict(optimizer=optax.adam), "optimizer"),
    (dict(optimizer=optax.adam(1e-3), learning_rate=0.5), "--learning_rate=0.5 has no effect"),
], ids=["misspelt", "unknown", "twice", "members_alone", "target_alone", "uncalled_optax",
        "menu_with_optax"])
def test_bad_arguments_are_refused_in_one_line(tmp_path, kwargs, expected):
    x, y, _, _ = _features(n=40)
    with pytest.raises(UserError, match=expected) as caught:
        jaxpet.audit("mlp", (x, y), workdir=tmp_path / "bad", **kwargs)
    assert "\n" not in str(caught.value)


def test_the_users_recipe_keys_the_training_stage(tmp_path):
    """The same optax optimiser built again reuses the trained stage; another rate trains
    anew."""
    x, y, test_x, test_y = _features(n=64, test=40)
    settings = dict(SETTINGS, epochs=1, population_size=20, num_references=2)
    del settings["learning_rate"]
    stages = tmp_path / "run" / "stages"

    def run(optimizer, augment=None):
        jaxpet.audit("mlp", (x, y), population=(test_x, test_y), width_scale=0.125,
                     optimizer=optimizer, augment=augment, workdir=tmp_path / "run", **settings)
        return len(list(stages.glob("logits-*.npz")))

    assert run(optax.adam(1e-2)) == 1
    assert run(optax.adam(1e-2)) == 1  # rebuilt, the same programs: reused
    assert run(optax.adam(2e-2)) == 2
    # (The augmentation enters the key the same way: tests/training/test_recipe.py.)


def test_a_targets_nnx_state_with_its_random_keys_is_taken_as_the_live_module():
    from flax import nnx

    from jaxpet import classifiers
    from jaxpet.training import restore

    net = _nnx_net()
    x, y, _, _ = _features(n=40)
    target = _train_nnx(net, x, y, steps=5)
    model = classifiers.from_object(net, 4)
    live, _ = restore.given_variables(target, model, x[:1])
    for given in (nnx.state(target), nnx.split(target)[1], nnx.to_pure_dict(nnx.state(target))):
        variables, _ = restore.given_variables(given, model, x[:1])
        jax_equal = [np.array_equal(a, b) for a, b in zip(jax.tree.leaves(variables),
                                                          jax.tree.leaves(live), strict=True)]
        assert all(jax_equal)
    other = _nnx_net()
    with pytest.raises(UserError, match=r"target= does not fit the model model=Net: .* — give "
                                        r"nnx.state\(model\) of a module built by this very"):
        restore.given_variables({"hidden": {"kernel": np.zeros((3, 3))}}, classifiers.from_object(
            other, 4), x[:1])


@pytest.mark.parametrize("case, expected", [
    ("greyscale", r"images must be NHWC \[N, H, W, C\], got shape \(40, 4, 4\) — for greyscale "
                  r"add a channel axis"),
    ("unseen_class", "population= holds class 7, which no example of data= has"),
    ("diverges", r"the target gives NaN or infinite logits after training \(3 of 3 models\)"),
], ids=["greyscale", "unseen_class", "diverges"])
def test_what_would_give_a_silently_wrong_audit_is_refused(tmp_path, case, expected):
    x, y, test_x, test_y = _features(n=40, test=20)
    kwargs: dict = dict(population=(test_x, test_y), num_references=2, epochs=1, batch_size=8)
    if case == "greyscale":  # as torchvision and Keras give MNIST: no channel axis
        x = np.random.default_rng(0).integers(0, 256, (40, 4, 4)).astype(np.uint8)
        kwargs["population"] = None
        kwargs["population_size"] = 8
    elif case == "unseen_class":
        kwargs["population"] = (test_x, np.where(test_y == 0, 7, test_y))
    else:
        kwargs["optimizer"] = optax.sgd(1e30)
    with pytest.raises(UserError, match=expected) as caught:
        jaxpet.audit("mlp", (x, y), width_scale=0.125, workdir=tmp_path / "run", **kwargs)
    assert "\n" not in str(caught.value)


def test_a_small_population_is_used_whole_and_the_page_says_how_to_rerun(tmp_path):
    x, y, test_x, test_y = _features(n=48, test=30)
    result = jaxpet.audit("mlp", (x, y), population=(test_x, test_y), width_scale=0.125,
                          num_references=2, epochs=1, batch_size=8, workdir=tmp_path / "run")
    assert result.results["data"]["population_size"] == 30
    page = (tmp_path / "run" / "report.html").read_text()
    assert "Run from Python" in page and "python experiments/audit.py" not in page
