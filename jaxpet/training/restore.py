"""A model trained outside jaxpet, restored as a one-model ensemble that jaxpet can query.

The user saves their model's Flax variables with ``flax.serialization.to_bytes``
(``{"params": ..., "batch_stats": ...}``); :func:`load_variables` reads them
back without a template, checks every leaf's path and shape against the model's
own initialisation, and adds the leading model axis of an ensemble (K=1), so
they can be queried beside jaxpet's trained models (e.g. ``prepend`` of
:func:`jaxpet.stages.ensemble_logits`). A file that does not fit is refused
with the first leaf that differs.
"""

from __future__ import annotations

import pathlib

from flax import serialization, traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from jaxpet import config as config_lib, files


def load_variables(path, model, sample, *, model_name: str = "",
                   flag: str = "--target_checkpoint") -> tuple[dict, str]:
    """The variables saved at ``path`` for ``model`` (which takes ``sample``, [1, ...] model
    inputs) as a K=1 ensemble, and the digest of the file's bytes. ``flag`` and
    ``model_name`` name the file and the model in errors."""
    init = jax.device_get(model.init(jax.random.PRNGKey(0), sample, train=False))
    template = {"params": init["params"], "batch_stats": init.get("batch_stats", {})}

    def refuse(why):
        return config_lib.ConfigError(
            f"{flag}={path} does not fit the model --model={model_name or type(model).__name__} "
            f"({why}) — save the variables of this very architecture with "
            "flax.serialization.to_bytes.")

    try:
        blob = pathlib.Path(path).read_bytes()
        state = serialization.msgpack_restore(blob)
    except (OSError, ValueError, TypeError) as e:
        raise refuse(f"{type(e).__name__}: {e}") from e
    if not isinstance(state, dict) or "params" not in state:
        raise refuse("no 'params' collection in it")
    variables = {"params": state["params"], "batch_stats": state.get("batch_stats", {})}
    shapes = lambda tree: {k: np.shape(v) for k, v in
                           traverse_util.flatten_dict(tree, sep="/").items()}
    expected, found = shapes(template), shapes(variables)
    if expected != found:
        wrong = sorted(k for k in expected.keys() | found.keys()
                       if expected.get(k) != found.get(k))
        raise refuse(f"{wrong[0]}: expected {expected.get(wrong[0])}, got {found.get(wrong[0])}")
    return jax.tree.map(lambda x: jnp.asarray(x)[None], variables), files.digest(blob)
