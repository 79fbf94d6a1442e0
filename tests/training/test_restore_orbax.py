"""A target given as an orbax checkpoint folder: Linen variables and an NNX module's own state
restored exactly, keyed by the folder's files, and each folder jaxpet cannot read refused in one
line that says what it is."""

from __future__ import annotations

import shutil

from flax import nnx, serialization
import flax.linen as nn
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from jaxpet.config import ConfigError
from jaxpet.nnx_classifiers import NNXClassifier, variables_of
from jaxpet.training import restore

SAMPLE = np.zeros((1, 5), np.float32)
X = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.BatchNorm(use_running_average=not train)(nn.Dense(4)(x))
        return nn.Dense(3)(x)


class _NNXNet(nnx.Module):
    """A user's NNX classifier: Linear layers (one in a list), BatchNorm, Dropout."""

    def __init__(self, num_classes: int, *, rngs: nnx.Rngs, width: int = 8):
        self.hidden = nnx.List([nnx.Linear(5, width, rngs=rngs)])
        self.norm = nnx.BatchNorm(width, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.out = nnx.Linear(width, num_classes, rngs=rngs)

    def __call__(self, x):
        return self.out(self.drop(nnx.relu(self.norm(self.hidden[0](x)))))


def _save(path, tree, checkpointer=ocp.StandardCheckpointer, **kwargs):
    with checkpointer() as saver:  # leaving the block waits for the save to finish
        saver.save(path, tree, **kwargs)
    return path


def _linen_variables(seed=0):
    return jax.tree.map(np.asarray, _Net().init(jax.random.PRNGKey(seed), SAMPLE))


def _trained_nnx(width=8):
    """An NNX module moved off its initialisation: noise on its weights, and a training-mode
    call that updates its BatchNorm statistics and draws from its dropout stream."""
    module = _NNXNet(3, rngs=nnx.Rngs(0), width=width)
    params = nnx.state(module, nnx.Param)
    noise = jax.random.normal(jax.random.PRNGKey(1), (1,))
    nnx.update(module, jax.tree.map(lambda p: p + 0.3 * noise * np.cos(np.arange(p.size))
                                    .reshape(p.shape), params))
    module.train()
    module(X * 3.0 + 1.0)
    module.eval()
    return module


@pytest.fixture(scope="module")
def nnx_module():
    return _trained_nnx()


def _refusal(path, model=None):
    with pytest.raises(ConfigError) as error:
        restore.load_variables(path, model or _Net(), SAMPLE, model_name="mine")
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("checkpointer", [ocp.StandardCheckpointer, ocp.PyTreeCheckpointer])
def test_linen_variables_saved_with_orbax_come_back_exactly(tmp_path, checkpointer,
                                                            monkeypatch):
    variables = _Net().init(jax.random.PRNGKey(7), SAMPLE)
    _save(tmp_path / "ckpt", variables, checkpointer)
    monkeypatch.chdir(tmp_path)  # a path relative to where the command runs, as users give it
    restored, digest = restore.load_variables("ckpt", _Net(), SAMPLE)
    assert len(digest) == 16 and all(leaf.shape[0] == 1 for leaf in jax.tree.leaves(restored))
    one = jax.tree.map(lambda leaf: leaf[0], restored)
    jax.tree.map(np.testing.assert_array_equal, one, jax.tree.map(np.asarray, variables))
    np.testing.assert_array_equal(_Net().apply(one, X), _Net().apply(variables, X))


@pytest.mark.parametrize("form", ["state", "split", "pure_dict", "bytes_pure_dict",
                                  "bytes_variables"])
def test_an_nnx_modules_saved_state_answers_as_the_live_module(tmp_path, nnx_module, form):
    module = nnx_module
    if form.startswith("bytes"):  # Flax's bytes: of the state without its random keys
        tree = (variables_of(module) if form == "bytes_variables" else
                nnx.to_pure_dict(nnx.state(module, nnx.Not(nnx.RngState))))
        (tmp_path / "t.msgpack").write_bytes(serialization.to_bytes(tree))
        path = tmp_path / "t.msgpack"
    else:
        tree = {"state": nnx.state(module), "split": nnx.split(module)[1],
                "pure_dict": nnx.to_pure_dict(nnx.state(module))}[form]
        path = _save(tmp_path / "ckpt", tree)
    model = NNXClassifier(_NNXNet, 3)
    restored, _ = restore.load_variables(path, model, SAMPLE)
    one = jax.tree.map(lambda leaf: leaf[0], restored)
    jax.tree.map(np.testing.assert_array_equal, one, variables_of(module))
    np.testing.assert_allclose(model.apply(one, X, train=False), module(X), rtol=1e-6,
                               atol=1e-6)
    fresh = model.apply(model.init(jax.random.PRNGKey(0), SAMPLE), X, train=False)
    assert not np.allclose(fresh, module(X))  # the weights restored are the trained ones


def test_the_digest_follows_the_checkpoints_files_not_its_folder(tmp_path):
    variables = _linen_variables()
    _save(tmp_path / "a" / "ckpt", variables)
    shutil.copytree(tmp_path / "a" / "ckpt", tmp_path / "b" / "elsewhere")
    digest = lambda path: restore.load_variables(path, _Net(), SAMPLE)[1]
    first = digest(tmp_path / "a" / "ckpt")
    assert digest(tmp_path / "b" / "elsewhere") == first
    edited = jax.tree.map(lambda leaf: leaf, variables)
    edited["params"]["Dense_1"]["bias"] = edited["params"]["Dense_1"]["bias"] + 1.0
    _save(tmp_path / "a" / "ckpt", edited, force=True)
    assert digest(tmp_path / "a" / "ckpt") != first


def test_a_folder_with_no_orbax_checkpoint_says_how_to_save_one(tmp_path):
    (tmp_path / "notes.txt").write_text("weights elsewhere")
    message = _refusal(tmp_path)
    assert "holds no orbax checkpoint (no _METADATA file)" in message
    assert "ocp.StandardCheckpointer().save(path, variables)" in message
    message = _refusal(tmp_path, NNXClassifier(_NNXNet, 3))
    assert "ocp.StandardCheckpointer().save(path, nnx.state(model))" in message


def test_a_checkpoint_managers_root_and_step_name_the_checkpoint_to_pass(tmp_path):
    root = tmp_path / "run"
    with ocp.CheckpointManager(root) as manager:
        for step in (0, 5):
            manager.save(step, args=ocp.args.StandardSave(_linen_variables(step)))
        manager.wait_until_finished()
    message = _refusal(root)
    assert "is the root of an orbax CheckpointManager (steps 0, 5)" in message
    assert f"--target_checkpoint={root / '5' / 'default'}." in message
    message = _refusal(root / "5")
    assert "is one step of an orbax CheckpointManager, with the items default" in message
    assert f"--target_checkpoint={root / '5' / 'default'}." in message
    prefixed = tmp_path / "prefixed"
    options = ocp.CheckpointManagerOptions(step_prefix="ckpt")
    with ocp.CheckpointManager(prefixed, options=options) as manager:
        manager.save(3, args=ocp.args.StandardSave(_linen_variables()))
    message = _refusal(prefixed)
    assert "(steps 3) — pass one step's checkpoint" in message
    assert f"--target_checkpoint={prefixed / 'ckpt_3' / 'default'}." in message
    restored, _ = restore.load_variables(root / "5" / "default", _Net(), SAMPLE)
    np.testing.assert_array_equal(restored["params"]["Dense_0"]["kernel"][0],
                                  _linen_variables(5)["params"]["Dense_0"]["kernel"])


def test_a_save_orbax_never_finished_is_named_as_such(tmp_path):
    _save(tmp_path / "done", _linen_variables())
    shutil.copytree(tmp_path / "done", tmp_path / "ckpt.orbax-checkpoint-tmp-1234")
    message = _refusal(tmp_path / "ckpt.orbax-checkpoint-tmp-1234")
    assert "is a save orbax never finished" in message and ".wait_until_finished()" in message
    message = _refusal(tmp_path / "ckpt")  # the folder the save would have been renamed to
    assert "ckpt does not exist, but ckpt.orbax-checkpoint-tmp-1234 beside it does" in message
    (tmp_path / "run" / "5.orbax-checkpoint-tmp").mkdir(parents=True)  # a manager's first save
    assert "holds only a save orbax never finished (5.orbax-checkpoint-tmp" in _refusal(
        tmp_path / "run")
    (tmp_path / "done" / "_METADATA").unlink()
    message = _refusal(tmp_path / "done")
    assert "holds orbax files but not its _METADATA" in message and "partial" in message


def test_a_checkpoint_of_another_tree_is_refused(tmp_path):
    variables = _linen_variables()
    _save(tmp_path / "opt", optax.adam(1e-3).init(variables["params"]), ocp.PyTreeCheckpointer)
    assert "holds a list, not a dict of collections" in _refusal(tmp_path / "opt")
    _save(tmp_path / "params", variables["params"])
    message = _refusal(tmp_path / "params")
    assert "holds no 'params' collection (its top level: BatchNorm_0, Dense_0, Dense_1)" in message
    other = {**variables, "params": {**variables["params"], "Dense_1": {
        "kernel": np.ones((4, 2), np.float32), "bias": np.ones(2, np.float32)}}}
    _save(tmp_path / "other", other)
    message = _refusal(tmp_path / "other")
    assert ("does not fit the model --model=mine: params/Dense_1/bias has shape (2,) in the "
            "file, (3,) in the model — save the variables of this very architecture with "
            "ocp.StandardCheckpointer().save(path, variables).") in message


@pytest.mark.parametrize("tree, expected", [
    (lambda m: nnx.state(_trained_nnx(width=6)),
     "hidden/0/bias has shape (6,) in the file, (8,) in the model"),
    (lambda m: {**nnx.to_pure_dict(nnx.state(m)), "extra": {"kernel": np.ones(2, np.float32)}},
     "extra/kernel is in the file but not in the model"),
    (lambda m: {k: v for k, v in nnx.to_pure_dict(nnx.state(m)).items() if k != "norm"},
     "norm/bias is in the model but not in the file (and 3 more)"),
    (lambda m: optax.adam(1e-3).init(nnx.to_pure_dict(nnx.state(m, nnx.Param))),
     "holds a list, not the state of an NNX module"),
])
def test_an_nnx_state_of_another_module_is_refused(tmp_path, nnx_module, tree, expected):
    _save(tmp_path / "ckpt", tree(nnx_module), ocp.PyTreeCheckpointer)
    message = _refusal(tmp_path / "ckpt", NNXClassifier(_NNXNet, 3))
    assert expected in message and "save(path, nnx.state(model))" in message


@pytest.mark.parametrize("damage, expected", [
    (lambda path: [file.unlink() for file in (path / "d").iterdir()], "ValueError: NOT_FOUND"),
    (lambda path: (path / "_METADATA").write_text("{not json"), "JSONDecodeError"),
])
def test_a_damaged_checkpoint_is_refused_in_one_line(tmp_path, capfd, damage, expected):
    _save(tmp_path / "ckpt", _linen_variables())
    damage(tmp_path / "ckpt")
    message = _refusal(tmp_path / "ckpt")
    assert "does not restore (" in message and expected in message
    assert "a damaged or partial orbax checkpoint" in message
    assert "Traceback" not in capfd.readouterr().err
