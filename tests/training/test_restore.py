"""A model trained outside jaxpet, restored as a one-model ensemble: exact, or refused in one
line that says which of its files' faults it is."""

from __future__ import annotations

from flax import serialization
import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxpet import files
from jaxpet.config import ConfigError
from jaxpet.training import restore


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.BatchNorm(use_running_average=not train)(nn.Dense(4)(x))
        return nn.Dense(3)(x)


def test_saved_variables_come_back_as_a_one_model_ensemble(tmp_path):
    model, sample = _Net(), np.zeros((1, 5), np.float32)
    variables = model.init(jax.random.PRNGKey(7), sample, train=False)
    blob = serialization.to_bytes(variables)
    (tmp_path / "t.msgpack").write_bytes(blob)
    restored, digest = restore.load_variables(tmp_path / "t.msgpack", model, sample)
    assert digest == files.digest(blob)
    flat = jax.tree.leaves(restored)
    assert all(leaf.shape[0] == 1 for leaf in flat)
    x = np.random.default_rng(0).normal(size=(2, 5)).astype(np.float32)
    one = jax.tree.map(lambda leaf: leaf[0], restored)
    np.testing.assert_array_equal(model.apply(one, x), model.apply(variables, x))


def _refusal(path, model=None):
    with pytest.raises(ConfigError) as error:
        restore.load_variables(path, model or _Net(), np.zeros((1, 5), np.float32),
                               model_name="mine")
    message = str(error.value)
    assert "\n" not in message
    return message


def _variables():
    return jax.tree.map(np.asarray, _Net().init(jax.random.PRNGKey(0), np.zeros((1, 5),
                                                                             np.float32)))


def test_a_missing_file_a_folder_and_an_empty_file_are_named_as_such(tmp_path):
    message = _refusal(tmp_path / "nowhere.msgpack")
    assert "nowhere.msgpack does not exist — pass the file your training wrote" in message
    assert "does not fit" not in message
    assert "is a folder (an orbax checkpoint directory?)" in _refusal(tmp_path)
    (tmp_path / "empty.msgpack").write_bytes(b"")
    assert "empty.msgpack is empty (0 bytes)" in _refusal(tmp_path / "empty.msgpack")
    assert "--target_checkpoint is empty" in _refusal("")
    assert "/dev/zero is not a regular file" in _refusal("/dev/zero")  # would read forever


@pytest.mark.parametrize("content, expected", [
    (b"params,weights\n1,2\n", "is not a Flax checkpoint (it holds text)"),
    (b"7", "is not a Flax checkpoint (it holds text)"),  # msgpack reads it as the number 7
    (b"\x93NUMPY\x01\x00", "(it looks like a NumPy .npy file)"),
    (b"PK\x03\x04rest", "(it looks like a zip archive: an .npz, or a PyTorch .pt/.pth)"),
    (b"\x80\x04\x95\x00", "(it looks like a Python pickle)"),
    (b"\xc1\xff\xfe", "is not a Flax checkpoint (msgpack"),
    (serialization.msgpack_serialize([1.0, 2.0]), "it decodes to a value of type list"),
    (serialization.to_bytes({"Dense_0": {"kernel": np.ones(2)}}),
     "holds no 'params' collection (its top level: Dense_0) — save the model's whole variables"),
    (serialization.msgpack_serialize({"params": {1: np.ones(2)}}),
     "is not a Flax checkpoint (params holds the key 1, not a name)"),
])
def test_a_file_that_is_not_flax_bytes_says_what_it_is(tmp_path, content, expected):
    (tmp_path / "t.msgpack").write_bytes(content)
    message = _refusal(tmp_path / "t.msgpack")
    assert expected in message and "flax.serialization.to_bytes(variables)" in message


@pytest.mark.parametrize("edit, expected", [
    (lambda v: {"params": {"x": np.ones(2)}},
     "does not fit the model --model=mine: batch_stats/BatchNorm_0/mean is in the model but "
     "not in the file (and 7 more)"),
    (lambda v: {**v, "params": {**v["params"], "Extra": {"kernel": np.ones(2)}}},
     "params/Extra/kernel is in the file but not in the model"),
    (lambda v: {"params": v["params"]},
     "batch_stats/BatchNorm_0/mean is in the model but not in the file"),
    (lambda v: {**v, "params": {**v["params"], "Dense_1": {"kernel": np.ones((4, 2)),
                                                           "bias": np.ones(2)}}},
     "params/Dense_1/bias has shape (2,) in the file, (3,) in the model"),
    (lambda v: jax.tree.map(lambda x: x.astype(np.int32), v),
     "batch_stats/BatchNorm_0/mean holds int32 values in the file, float32 in the model"),
    (lambda v: {**v, "params": {**v["params"], "Dense_1": {"kernel": "weights", "bias": None}}},
     "params/Dense_1/bias holds a NoneType in the file, a float32 array of shape (3,)"),
])
def test_the_variables_of_another_model_name_the_first_leaf_that_differs(tmp_path, edit,
                                                                        expected):
    (tmp_path / "t.msgpack").write_bytes(serialization.to_bytes(edit(_variables())))
    assert expected in _refusal(tmp_path / "t.msgpack")


def test_floating_point_variables_of_another_precision_are_cast_to_the_models(tmp_path):
    half = jax.tree.map(lambda x: x.astype(np.float16), _variables())
    (tmp_path / "t.msgpack").write_bytes(serialization.to_bytes(half))
    restored, _ = restore.load_variables(tmp_path / "t.msgpack", _Net(),
                                         np.zeros((1, 5), np.float32))
    assert {leaf.dtype for leaf in jax.tree.leaves(restored)} == {np.dtype(np.float32)}
    np.testing.assert_array_equal(restored["params"]["Dense_0"]["kernel"][0],
                                  half["params"]["Dense_0"]["kernel"].astype(np.float32))
