"""The ensemble's model axis across devices: a ``models`` mesh, sharding and padding.

Each device holds K/devices models; K is padded up to a multiple of the device
count with copies of model 0, which the trainer drops from its result. Across
processes (:mod:`jaxpet.distributed`) the mesh spans every process's devices, and
each process builds its part of a global array from its own copy of the host data
(every process loads the same data and splits), so it holds only its own models.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

from jaxpet.splits import MemberSets


def model_mesh(devices=None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all) whose axis ``models`` carries the ensemble."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("models",))


def default_mesh(strategy: str = "auto") -> Mesh | None:
    """The mesh an experiment should pass: all devices when there are several and the
    strategy can shard (auto or vmap; with a mesh "auto" means vmap), else None."""
    if jax.device_count() > 1 and strategy in ("auto", "vmap"):
        return model_mesh()
    return None


def shard_models(tree, mesh: Mesh):
    """Puts every leaf's leading (model) axis across the mesh's ``models`` axis."""
    return _put(tree, NamedSharding(mesh, PartitionSpec("models")))


def replicate(tree, mesh: Mesh):
    """Puts a full copy of every leaf on each device of the mesh (the shared data)."""
    return _put(tree, NamedSharding(mesh, PartitionSpec()))


def _put(tree, target: NamedSharding):
    if target.is_fully_addressable:
        return jax.device_put(tree, target)
    return jax.tree.map(lambda leaf: _global_array(leaf, target), tree)


def _global_array(leaf, target: NamedSharding):
    """A global array of ``target`` sharding built from this process's copy of the whole
    ``leaf``: only the rows of this process's devices are put on them."""
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        return jax.device_put(leaf, target)  # already global: resharded by XLA
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        data = _global_array(jax.random.key_data(leaf), target)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, target, lambda index: host[index])


def padded_model_count(num_models: int, mesh: Mesh) -> int:
    """``num_models`` rounded up to a multiple of the mesh's ``models`` axis."""
    return -(-num_models // mesh.shape["models"]) * mesh.shape["models"]


def pad_models(members: MemberSets, validation: MemberSets | None, keys, padded: int):
    """Member sets, validation sets and keys padded to ``padded`` models with model 0's."""
    extra = padded - members.num_models
    if extra == 0:
        return members, validation, keys

    def pad(sets):
        if sets is None:
            return None
        return MemberSets(np.concatenate([sets.indices, np.repeat(sets.indices[:1], extra, 0)]),
                          np.concatenate([sets.counts, np.repeat(sets.counts[:1], extra)]))

    return pad(members), pad(validation), jnp.concatenate([keys, jnp.repeat(keys[:1], extra, 0)])


def unpad_models(tree, num_models: int):
    """The first ``num_models`` models of every leaf (drops the padding copies)."""
    return jax.tree.map(lambda x: x[:num_models], tree)
