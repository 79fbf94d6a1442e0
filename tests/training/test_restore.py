"""A model trained outside jaxpet, restored as a one-model ensemble: exact, or refused."""

from __future__ import annotations

from flax import serialization
import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxpet import files
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


@pytest.mark.parametrize("saved, expected", [
    ({"params": {"x": np.ones(2)}}, "does not fit the model --model=mine"),
    ({"weights": np.ones(2)}, "no 'params' collection"),
    (None, "does not fit the model --model=mine \\(ExtraData"),  # not msgpack
])
def test_a_file_of_another_model_is_refused(tmp_path, saved, expected):
    path = tmp_path / "t.msgpack"
    path.write_bytes(b"not msgpack at all" if saved is None else serialization.to_bytes(saved))
    with pytest.raises(ValueError, match=expected):
        restore.load_variables(path, _Net(), np.zeros((1, 5), np.float32), model_name="mine")
