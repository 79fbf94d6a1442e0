"""A model trained outside jaxpet, restored as a one-model ensemble that jaxpet can query.

The user gives their trained model's variables in one of two forms:

* a file of Flax's bytes, ``flax.serialization.to_bytes(variables)``
  (``{"params": ..., "batch_stats": ...}``), read back without a template;
* an orbax checkpoint folder, as ``ocp.StandardCheckpointer().save(path, variables)``
  (or ``ocp.PyTreeCheckpointer``) writes it, restored without a template as host NumPy
  arrays (no device, so no sharding of the machine that saved it is needed). For an NNX
  classifier (:class:`~jaxpet.nnx_classifiers.NNXClassifier`) the folder may hold the
  module's own state, ``nnx.state(model)``, ``nnx.split(model)[1]`` or its
  ``nnx.to_pure_dict``: each of the model's ``nnx.Param`` and ``nnx.BatchStat`` leaves is
  looked up by its attribute path, and the random-number state (``.../key`` and
  ``.../count``) that Dropout keeps is not a variable jaxpet needs, so it is skipped.

:func:`load_variables` checks every leaf's path, shape and kind of number against the model's
own initialisation and adds the leading model axis of an ensemble (K=1), so they can be
queried beside jaxpet's trained models (e.g. ``prepend`` of
:func:`jaxpet.stages.ensemble_logits`). Each way a file or folder can fail is refused in one
line that says which: missing, empty, not Flax's bytes at all, a folder that is no orbax
checkpoint, an orbax save that never finished, a CheckpointManager's root (jaxpet reads one
checkpoint, not whichever step is the latest when it runs), a checkpoint that does not
restore, or the variables of another model (the first leaf that differs).
"""

from __future__ import annotations

from collections.abc import Mapping
import hashlib
import os
import pathlib
import re
from typing import Any

from flax import serialization
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxpet import config as config_lib, files, nnx_classifiers
from jaxpet.training import checkpoints

SAVE = "flax.serialization.to_bytes(variables)"
SAVE_ORBAX = "ocp.StandardCheckpointer().save(path, variables)"
SAVE_NNX = "ocp.StandardCheckpointer().save(path, nnx.state(model))"
COLLECTIONS = ("params", "batch_stats")

# The first bytes of files that are often passed by mistake, and what they are.
_OTHER_FORMATS = ((b"\x93NUMPY", "a NumPy .npy file"),
                  (b"PK\x03\x04", "a zip archive: an .npz, or a PyTorch .pt/.pth"),
                  (b"\x89HDF", "an HDF5 file (a Keras .h5?)"),
                  (b"\x80", "a Python pickle"))
# The tree of an orbax PyTree checkpoint, which orbax restores from: it marks the folder as one.
_TREE_FILE = "_METADATA"
# Other files orbax writes in a checkpoint folder: with no tree file, a damaged or partial one.
_ORBAX_FILES = ("_CHECKPOINT_METADATA", "manifest.ocdbt", "commit_success.txt")
# In the name of a save orbax is still writing; it renames the folder when the save is done.
_TMP_MARK = checkpoints._TMP_MARK
# The name of a CheckpointManager's step folder: the step, after an optional prefix ("ckpt_5").
_STEP_NAME = re.compile(r"(?:.+_)?(\d+)")
# The last names of the random-number state NNX keeps (RngKey, RngCount): not a model variable.
_RNG_NAMES = ("key", "count")


def load_variables(path, model, sample, *, model_name: str = "",
                   flag: str = "--target_checkpoint") -> tuple[dict, str]:
    """The variables saved at ``path`` (a file of Flax's bytes or an orbax checkpoint folder)
    for ``model`` (which takes ``sample``, [1, ...] model inputs) as a K=1 ensemble, and the
    digest of the file's bytes or the folder's files. ``flag`` and ``model_name`` name the
    checkpoint and the model in errors. Floating-point leaves are cast to the model's own
    dtypes (as JAX would cast them); a leaf of another kind is refused."""
    nnx_model = isinstance(model, nnx_classifiers.NNXClassifier)
    folder = _checkpoint_folder(path, flag, SAVE_NNX if nnx_model else SAVE_ORBAX)
    save = SAVE_NNX if nnx_model else SAVE if folder is None else SAVE_ORBAX  # the fix to name
    if folder is not None:
        digest = _folder_digest(folder, flag)
        state = _restore_folder(folder, flag, save)
    else:
        blob = _read(path, flag, save)
        state = _decode(blob, path, flag, save)
        digest = files.digest(blob)
    where = f"{flag}={path}"
    return _fitted(state, model, sample, where, f"--model={model_name or _label(model)}",
                   save), digest


def given_variables(given, model, sample, *, flag: str = "target=") -> tuple[dict, str]:
    """Variables given from Python (Linen variables ``{"params": ..., "batch_stats": ...}``, a
    live trained ``nnx.Module`` or its ``nnx.State``) for ``model``, checked leaf by leaf as a
    checkpoint's are, as a K=1 ensemble, with the digest of their values."""
    from flax import nnx

    if isinstance(given, nnx.Module):
        given = nnx_classifiers.variables_of(given)
    elif isinstance(given, nnx.State):
        given = nnx.to_pure_dict(given)
    if not isinstance(given, Mapping):
        raise config_lib.ConfigError(
            f"{flag} is a {type(given).__name__}; give the trained target's Linen variables "
            "({'params': ..., 'batch_stats': ...}), the trained nnx.Module, or a checkpoint "
            "path.")
    state = jax.tree.map(_on_host, dict(given))
    variables = _fitted(state, model, sample, flag, f"model={_label(model)}",
                        "nnx.state(model) of a module built by this very factory"
                        if isinstance(model, nnx_classifiers.NNXClassifier) else
                        "model.init(...) of this very module")
    digest = files.digest(sorted((name, leaf) for name, leaf in _flat(variables).items()))
    return variables, digest


def _on_host(leaf):
    """A leaf as a NumPy array; a typed random key (NNX's random-number state) as its data."""
    if jnp.issubdtype(getattr(leaf, "dtype", np.float32), jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    return np.asarray(leaf)


def _fitted(state, model, sample, where: str, model_name: str, save: str) -> dict:
    """``state`` (a restored tree: Linen collections, or an NNX module's own state) checked
    against ``model``'s own initialisation on ``sample`` and as its variables, K=1."""
    nnx_model = isinstance(model, nnx_classifiers.NNXClassifier)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), sample)
    expected = _flat({name: shapes.get(name, {}) for name in COLLECTIONS})

    def refuse(why):
        fix = (f"give {save}" if where.endswith("=") else
               f"save the variables of this very architecture with {save}")
        return config_lib.ConfigError(f"{where} does not fit the model {model_name}: {why} — "
                                      f"{fix}.")

    if nnx_model and not _has_collections(state):  # the NNX module's own state
        if not isinstance(state, Mapping):
            raise config_lib.ConfigError(
                f"{where} holds a {type(state).__name__}, not the state of an NNX module — "
                f"save it with {save}.")
        full = {name.split("/", 1)[1]: name for name in expected}  # attribute path: collection
        want = {short: expected[name] for short, name in full.items()}
        checked = _fit(want, _nnx_leaves(state, want), refuse)
        variables = _nest({full[short]: leaf for short, leaf in checked.items()})
    else:
        _collections(state, where, save)
        try:
            found = _flat({name: state.get(name, {}) for name in COLLECTIONS})
        except TypeError as e:
            raise config_lib.ConfigError(f"{where} is not a Flax checkpoint ({e}) — jaxpet "
                                         f"reads {save}.") from e
        variables = _nest(_fit(expected, found, refuse))
    for name in COLLECTIONS:
        variables.setdefault(name, {})
    return variables


def _label(model) -> str:
    """The model's name in errors: an NNX classifier's factory, else the module's class."""
    if isinstance(model, nnx_classifiers.NNXClassifier):
        return getattr(model.factory, "__name__", type(model.factory).__name__)
    return type(model).__name__


def _fit(expected: Mapping[str, Any], found: Mapping[str, Any], refuse) -> dict:
    """``{name: leaf[None]}``: every leaf the model has, from the checkpoint, cast to the
    model's dtype; ``refuse(why)`` is raised for the first leaf missing from either side, of
    another shape or of another kind of number."""
    missing, extra = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    if missing:
        raise refuse(f"{missing[0]} is in the model but not in the file"
                     f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}")
    if extra:
        raise refuse(f"{extra[0]} is in the file but not in the model")
    checked = {}
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
        checked[name] = jnp.asarray(leaf, want.dtype)[None]
    return checked


def _nest(flat: Mapping[str, Any]) -> dict:
    """``{"a/b/c": leaf}`` as ``{"a": {"b": {"c": leaf}}}``."""
    tree: dict = {}
    for name, leaf in flat.items():
        *keys, last = name.split("/")
        node = tree
        for key in keys:
            node = node.setdefault(key, {})
        node[last] = leaf
    return tree


def _has_collections(state) -> bool:
    """Whether ``state`` is a Linen-style ``{"params": ..., "batch_stats": ...}`` tree."""
    return (isinstance(state, Mapping) and isinstance(state.get("params"), Mapping)
            and set(state) <= set(COLLECTIONS))


def _nnx_leaves(state: Mapping, want: Mapping[str, Any]) -> dict:
    """An NNX module's saved state as ``{"attribute/path": leaf}``: each variable's
    ``{"value": leaf}`` node of ``nnx.state`` (not of ``nnx.to_pure_dict``) read as its
    leaf, and the random-number state that ``want`` (the model's leaves) lacks left out."""
    flat = _flat(state, names_only=False)
    if flat and all(name.endswith("/value") for name in flat):
        flat = {name.removesuffix("/value"): leaf for name, leaf in flat.items()}
    return {name: leaf for name, leaf in flat.items()
            if name in want or not _is_rng_state(name, leaf)}


def _is_rng_state(name: str, leaf) -> bool:
    """Whether a saved leaf is NNX random-number state (an RngKey's key data or an RngCount:
    unsigned integers under the name ``key`` or ``count``)."""
    dtype = getattr(leaf, "dtype", None)
    return (name.rsplit("/", 1)[-1] in _RNG_NAMES and dtype is not None
            and (jnp.issubdtype(dtype, jnp.unsignedinteger)
                 or jnp.issubdtype(dtype, jax.dtypes.prng_key)))


# ----------------------------------------------------------------------------- orbax folders


def _checkpoint_folder(path, flag: str, save: str) -> pathlib.Path | None:
    """The orbax checkpoint folder ``path`` names, or None where it names no folder (a file of
    Flax's bytes). A folder that holds no finished PyTree checkpoint is refused, saying what it
    is: a save orbax never finished, a CheckpointManager's root or one of its steps, a
    damaged checkpoint, or no orbax checkpoint at all."""
    if path is None or str(path) == "":
        return None
    folder = pathlib.Path(path)
    try:
        if not folder.is_dir():
            unfinished = None if folder.exists() else _unfinished_beside(folder)
            if unfinished:
                raise config_lib.ConfigError(
                    f"{flag}={path} does not exist, but {unfinished} beside it does: orbax "
                    f"never finished that save (cut short, or still running) — wait for it "
                    f"(.wait_until_finished(), or a with block), or save again with {save}.")
            return None
        if _TMP_MARK in folder.name:
            raise config_lib.ConfigError(
                f"{flag}={path} is a save orbax never finished (cut short, or still running; "
                f"orbax renames the folder when it is done) — wait for it "
                f"(.wait_until_finished(), or a with block) and pass the folder it becomes, or "
                f"save again with {save}.")
        if (folder / _TREE_FILE).is_file():
            return folder
        entries = _entries(folder)
    except OSError as e:
        raise config_lib.ConfigError(f"{flag}={path} cannot be read ({type(e).__name__}: "
                                     f"{e.strerror or e}) — check its permissions.") from e
    steps = sorted((int(match[1]), p) for p in entries
                   if (match := _STEP_NAME.fullmatch(p.name)) and _is_step(p))
    if steps:
        latest = steps[-1][1]
        items = _items(latest)
        where = items[0] if len(items) == 1 else latest
        raise config_lib.ConfigError(
            f"{flag}={path} is the root of an orbax CheckpointManager (steps "
            f"{'…, ' if len(steps) > 5 else ''}{', '.join(str(n) for n, _ in steps[-5:])}) "
            f"— pass one step's checkpoint, "
            f"not whichever is the latest when jaxpet runs: e.g. {flag}={where}.")
    items = _items(folder)
    if items:
        raise config_lib.ConfigError(
            f"{flag}={path} is one step of an orbax CheckpointManager, with the items "
            f"{', '.join(p.name for p in items)} — pass the item that holds the variables: "
            f"e.g. {flag}={items[0]}.")
    inside = [p.name for p in entries if _TMP_MARK in p.name]
    if inside:
        raise config_lib.ConfigError(
            f"{flag}={path} holds only a save orbax never finished ({inside[0]}: cut "
            f"short, or still running) — wait for it (.wait_until_finished(), or a with "
            f"block), or save again with {save}.")
    if any((folder / name).exists() for name in _ORBAX_FILES):
        raise config_lib.ConfigError(
            f"{flag}={path} holds orbax files but not its {_TREE_FILE}, the tree orbax "
            f"restores from: a damaged or partial checkpoint — save it again with {save}.")
    other = SAVE_NNX if save == SAVE_NNX else f"{save}, or the file of {SAVE}"
    raise config_lib.ConfigError(
        f"{flag}={path} is a folder (an orbax checkpoint directory?) but holds no orbax "
        f"checkpoint (no {_TREE_FILE} file) — pass the folder written by {other}.")


def _entries(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(folder.iterdir())


def _unfinished_beside(folder: pathlib.Path) -> str | None:
    """The name of a save orbax left unfinished where ``folder`` would be: orbax writes into
    ``<name>.orbax-checkpoint-tmp...`` and renames it to ``<name>`` when done."""
    if not folder.parent.is_dir():
        return None
    return next((p.name for p in _entries(folder.parent)
                 if p.name.startswith(folder.name + _TMP_MARK)), None)


def _is_step(folder: pathlib.Path) -> bool:
    """Whether a folder is one step of a CheckpointManager: its own metadata, or items."""
    return folder.is_dir() and ((folder / _ORBAX_FILES[0]).is_file() or bool(_items(folder)))


def _items(step: pathlib.Path) -> list[pathlib.Path]:
    """The PyTree checkpoints among a CheckpointManager step's items."""
    try:
        return [p for p in _entries(step) if (p / _TREE_FILE).is_file()]
    except OSError:
        return []


def _folder_digest(folder: pathlib.Path, flag: str) -> str:
    """A digest of the folder's files, their relative paths and bytes: an edited checkpoint
    gets another, a copy in another folder the same."""
    total = hashlib.sha256()
    try:
        names = sorted(os.path.relpath(os.path.join(root, name), folder)
                       for root, _, names in os.walk(folder) for name in names)
        for name in names:
            with open(folder / name, "rb") as f:
                content = hashlib.file_digest(f, "sha256").hexdigest()
            total.update(f"{pathlib.PurePath(name).as_posix()}\0{content}\n".encode())
    except OSError as e:
        raise config_lib.ConfigError(f"{flag}={folder} cannot be read ({type(e).__name__}: "
                                     f"{e.strerror or e}) — check its permissions.") from e
    return files.digest("orbax checkpoint", total.hexdigest())


def _restore_folder(folder: pathlib.Path, flag: str, save: str):
    """The tree of an orbax PyTree checkpoint, without a template: arrays as host NumPy arrays
    (the devices and shardings of the machine that saved it play no part), scalars and
    strings as saved. A checkpoint orbax cannot restore is refused in one line."""
    checkpoints._install_log_filters()  # orbax's INFO chatter out of the log, as for jaxpet's own
    handler = ocp.PyTreeCheckpointHandler()
    where, folder = folder, folder.resolve()  # orbax takes absolute paths only
    try:
        with checkpoints._settle_on_failure():  # no late tracebacks of orbax's other reads
            try:
                metadata = handler.metadata(folder)
                tree = getattr(metadata, "tree", metadata)
                args = jax.tree.map(_host_restore, tree)
                return handler.restore(folder, args=ocp.args.PyTreeRestore(restore_args=args))
            finally:
                handler.close()
    except MemoryError:
        raise
    except Exception as e:  # orbax and tensorstore raise many types on damaged files
        text = str(e).strip().split(" [tensorstore_spec")[0]
        first = text.splitlines()[0][:200] if text else ""
        raise config_lib.ConfigError(
            f"{flag}={where} does not restore ({type(e).__name__}"
            f"{f': {first}' if first else ''}): a damaged or partial orbax checkpoint — save it "
            f"again with {save}.") from e


def _host_restore(leaf_metadata):
    """orbax's restore arguments of one saved leaf: an array as a NumPy array, else as saved."""
    if (isinstance(leaf_metadata, ocp.metadata.ArrayMetadata)
            and not isinstance(leaf_metadata, ocp.metadata.ScalarMetadata)):
        return ocp.RestoreArgs(restore_type=np.ndarray)
    return ocp.RestoreArgs()


# ----------------------------------------------------------------------------- Flax's bytes


def _read(path, flag: str, save: str = SAVE) -> bytes:
    """The file's bytes; a missing path, an unreadable or empty file is refused (a folder is
    an orbax checkpoint, read by :func:`_restore_folder`)."""
    if path is None or str(path) == "":
        raise config_lib.ConfigError(f"{flag} is empty — pass the file your training wrote with "
                                     f"{save}.")
    file = pathlib.Path(path)
    if not file.exists():
        raise config_lib.ConfigError(f"{flag}={path} does not exist — pass the file your "
                                     f"training wrote with {save}.")
    if not file.is_file():  # a device or a pipe: reading it may never end
        raise config_lib.ConfigError(f"{flag}={path} is not a regular file — pass the file "
                                     f"your training wrote with {save}.")
    try:
        blob = file.read_bytes()
    except OSError as e:
        raise config_lib.ConfigError(f"{flag}={path} cannot be read ({type(e).__name__}: "
                                     f"{e.strerror or e}) — check its permissions.") from e
    if not blob:
        raise config_lib.ConfigError(f"{flag}={path} is empty (0 bytes), as a save cut short "
                                     f"leaves it — write it again with {save}.")
    return blob


def _decode(blob: bytes, path, flag: str, save: str = SAVE) -> dict:
    """The dict in Flax's msgpack bytes; anything else (another format, text, a value that is
    no dict) is refused, saying what the file seems to be."""
    try:
        state = serialization.msgpack_restore(blob)
    except Exception as e:  # msgpack raises many types on bytes it did not write
        text = str(e).strip()
        why = f"msgpack {type(e).__name__}{f': {text.splitlines()[0]}' if text else ''}"
        raise config_lib.ConfigError(f"{flag}={path} is not a Flax checkpoint "
                                     f"({_what(blob, why)}) — jaxpet reads the bytes of "
                                     f"{save}.") from e
    if not isinstance(state, dict):
        why = f"it decodes to a value of type {type(state).__name__}, not a dict of collections"
        raise config_lib.ConfigError(f"{flag}={path} is not a Flax checkpoint "
                                     f"({_what(blob, why)}) — jaxpet reads the bytes of "
                                     f"{save}.")
    return state


def _collections(state, where: str, save: str) -> None:
    """Refuses a tree that is not the model's whole variables, ``{"params": ...,
    "batch_stats": ...}``, naming what its top level holds instead."""
    if not isinstance(state, Mapping):
        raise config_lib.ConfigError(
            f"{where} holds a {type(state).__name__}, not a dict of collections — save "
            f"the model's whole variables, {save}, with variables = {{'params': ..., "
            "'batch_stats': ...}.")
    if not isinstance(state.get("params"), Mapping):
        top = ", ".join(sorted(map(str, state))[:5]) or "nothing"
        raise config_lib.ConfigError(
            f"{where} holds no 'params' collection (its top level: {top}) — save the "
            f"model's whole variables, {save}, with variables = {{'params': ..., "
            "'batch_stats': ...}.")
    if not isinstance(state.get("batch_stats", {}), Mapping):
        raise config_lib.ConfigError(f"{where} holds a 'batch_stats' that is not a "
                                     f"collection — save the model's whole variables, {save}.")


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


def _flat(tree: Mapping, names_only: bool = True) -> dict:
    """``{"collection/layer/name": leaf}``; a TypeError for a key that is not a string (Flax
    writes names only) unless ``names_only`` is False (an NNX state's list positions are
    numbers: written as strings)."""
    flat: dict = {}

    def walk(node: Mapping, prefix: str) -> None:
        for key, value in node.items():
            if names_only and not isinstance(key, str):
                raise TypeError(f"{prefix or 'its top level'} holds the key {key!r}, not a name")
            name = f"{prefix}/{key}" if prefix else str(key)
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
