"""A model trained outside jaxpet, restored as a one-model ensemble that jaxpet can query.

The user saves their model's Flax variables with ``flax.serialization.to_bytes``
(``{"params": ..., "batch_stats": ...}``); :func:`load_variables` reads them
back without a template, checks every leaf's path, shape and kind of number against the
model's own initialisation, and adds the leading model axis of an ensemble (K=1), so
they can be queried beside jaxpet's trained models (e.g. ``prepend`` of
:func:`jaxpet.stages.ensemble_logits`). Each way a file can fail is refused in one line
that says which: missing, a folder, empty, not Flax's bytes at all, or the variables of
another model (the first leaf that differs).
"""

from __future__ import annotations

from collections.abc import Mapping
import pathlib

from flax import serialization
import jax
import jax.numpy as jnp
import numpy as np

from jaxpet import config as config_lib, files

SAVE = "flax.serialization.to_bytes(variables)"

# The first bytes of files that are often passed by mistake, and what they are.
_OTHER_FORMATS = ((b"\x93NUMPY", "a NumPy .npy file"),
                  (b"PK\x03\x04", "a zip archive: an .npz, or a PyTorch .pt/.pth"),
                  (b"\x89HDF", "an HDF5 file (a Keras .h5?)"),
                  (b"\x80", "a Python pickle"))


def load_variables(path, model, sample, *, model_name: str = "",
                   flag: str = "--target_checkpoint") -> tuple[dict, str]:
    """The variables saved at ``path`` for ``model`` (which takes ``sample``, [1, ...] model
    inputs) as a K=1 ensemble, and the digest of the file's bytes. ``flag`` and
    ``model_name`` name the file and the model in errors. Floating-point leaves are cast to
    the model's own dtypes (as JAX would cast them); a leaf of another kind is refused."""
    blob = _read(path, flag)
    state = _decode(blob, path, flag)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), sample)
    expected = _flat({"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})})
    try:
        found = _flat({"params": state["params"], "batch_stats": state.get("batch_stats", {})})
    except TypeError as e:
        raise config_lib.ConfigError(f"{flag}={path} is not a Flax checkpoint ({e}) — jaxpet "
                                     f"reads the bytes of {SAVE}.") from e

    def refuse(why):
        return config_lib.ConfigError(
            f"{flag}={path} does not fit the model --model={model_name or type(model).__name__}"
            f": {why} — save the variables of this very architecture with {SAVE}.")

    missing, extra = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    if missing:
        raise refuse(f"{missing[0]} is in the model but not in the file"
                     f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}")
    if extra:
        raise refuse(f"{extra[0]} is in the file but not in the model")
    variables: dict = {}
    for name, want in sorted(expected.items()):
        if not isinstance(found[name], (np.ndarray, np.generic, int, float)):
            raise refuse(f"{name} holds a {type(found[name]).__name__} in the file, a "
                         f"{want.dtype} array of shape {want.shape} in the model")
        leaf = np.asarray(found[name])
        if leaf.shape != want.shape:
            raise refuse(f"{name} has shape {leaf.shape} in the file, {want.shape} in the model")
        if not _same_kind(leaf.dtype, want.dtype):
            raise refuse(f"{name} holds {leaf.dtype} values in the file, {want.dtype} in the "
                         "model")
        collection, *keys = name.split("/")
        node = variables.setdefault(collection, {})
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = jnp.asarray(leaf, want.dtype)[None]
    variables.setdefault("batch_stats", {})
    return variables, files.digest(blob)


def _read(path, flag: str) -> bytes:
    """The file's bytes; a missing path, a folder, an unreadable or empty file is refused."""
    if path is None or str(path) == "":
        raise config_lib.ConfigError(f"{flag} is empty — pass the file your training wrote with "
                                     f"{SAVE}.")
    file = pathlib.Path(path)
    if file.is_dir():
        raise config_lib.ConfigError(
            f"{flag}={path} is a folder (an orbax checkpoint directory?), which jaxpet cannot "
            f"read yet — pass one file written with {SAVE}.")
    if not file.exists():
        raise config_lib.ConfigError(f"{flag}={path} does not exist — pass the file your "
                                     f"training wrote with {SAVE}.")
    if not file.is_file():  # a device or a pipe: reading it may never end
        raise config_lib.ConfigError(f"{flag}={path} is not a regular file — pass the file "
                                     f"your training wrote with {SAVE}.")
    try:
        blob = file.read_bytes()
    except OSError as e:
        raise config_lib.ConfigError(f"{flag}={path} cannot be read ({type(e).__name__}: "
                                     f"{e.strerror or e}) — check its permissions.") from e
    if not blob:
        raise config_lib.ConfigError(f"{flag}={path} is empty (0 bytes), as a save cut short "
                                     f"leaves it — write it again with {SAVE}.")
    return blob


def _decode(blob: bytes, path, flag: str) -> dict:
    """The tree in Flax's msgpack bytes; anything else (another format, text, a tree with
    no 'params' collection) is refused, saying what the file seems to be."""
    try:
        state = serialization.msgpack_restore(blob)
    except Exception as e:  # msgpack raises many types on bytes it did not write
        text = str(e).strip()
        why = f"msgpack {type(e).__name__}{f': {text.splitlines()[0]}' if text else ''}"
        raise config_lib.ConfigError(f"{flag}={path} is not a Flax checkpoint "
                                     f"({_what(blob, why)}) — jaxpet reads the bytes of "
                                     f"{SAVE}.") from e
    if not isinstance(state, dict):
        why = f"it decodes to a value of type {type(state).__name__}, not a dict of collections"
        raise config_lib.ConfigError(f"{flag}={path} is not a Flax checkpoint "
                                     f"({_what(blob, why)}) — jaxpet reads the bytes of "
                                     f"{SAVE}.")
    if not isinstance(state.get("params"), dict):
        top = ", ".join(sorted(map(str, state))[:5]) or "nothing"
        raise config_lib.ConfigError(
            f"{flag}={path} holds no 'params' collection (its top level: {top}) — save the "
            f"model's whole variables, {SAVE}, with variables = {{'params': ..., "
            "'batch_stats': ...}.")
    if not isinstance(state.get("batch_stats", {}), dict):
        raise config_lib.ConfigError(f"{flag}={path} holds a 'batch_stats' that is not a "
                                     f"collection — save the model's whole variables, {SAVE}.")
    return state


def _what(blob: bytes, otherwise: str) -> str:
    """What bytes that are no Flax checkpoint seem to be, or ``otherwise``."""
    for magic, what in _OTHER_FORMATS:
        if blob.startswith(magic):
            return f"it looks like {what}"
    try:
        blob[:512].decode("utf-8")
    except UnicodeDecodeError:
        return otherwise
    return "it holds text"


def _flat(tree: Mapping) -> dict:
    """``{"collection/layer/name": leaf}``; a TypeError for a key that is not a string (Flax
    writes names only)."""
    flat: dict = {}

    def walk(node: Mapping, prefix: str) -> None:
        for key, value in node.items():
            if not isinstance(key, str):
                raise TypeError(f"{prefix or 'its top level'} holds the key {key!r}, not a name")
            name = f"{prefix}/{key}" if prefix else key
            if isinstance(value, Mapping):
                walk(value, name)
            else:
                flat[name] = value

    walk(tree, "")
    return flat


def _same_kind(found, want) -> bool:
    """Whether a saved leaf's dtype can stand for the model's: float for float (cast to it),
    integer for integer, bool for bool."""
    for kind in (jnp.floating, jnp.integer, jnp.bool_):
        if jnp.issubdtype(want, kind):
            return jnp.issubdtype(found, kind)
    return found == want
