"""Files: content fingerprints, and atomic writers and readers of JSON, arrays, text and images.

Everything jaxpet writes goes through :func:`atomic_write`: a temporary file in
the same folder, then a rename, so a crash never leaves half a file, and a full
disk (:func:`is_disk_full`, also in the form orbax's tensorstore reports it) is
one :class:`~jaxpet.errors.UserError` naming the folder. :func:`digest` is the
one fingerprint of settings, arrays and dataclasses (stage caches, checkpoints
and the data's content digest all use it), and :func:`tree_to_arrays` /
:func:`arrays_to_tree` flatten a pytree into named arrays for an ``.npz`` and
back. These live apart from :mod:`jaxpet.runs` (the run store: workdir lock,
stage cache, provenance) so the data loaders, the checkpoints and the report
page can write files without depending on the run store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import dataclasses
import errno
import hashlib
import io
import json
import os
import pathlib
import shutil
import struct
import tempfile
from typing import Any
import zipfile
import zlib

from flax import traverse_util
import jax
import numpy as np

from jaxpet import distributed
from jaxpet.errors import UserError

# ----------------------------------------------------------------------------- fingerprints


def _canonical(obj) -> Any:
    """A JSON-able, order-stable form of ``obj``; arrays by dtype, shape and content digest."""
    if isinstance(obj, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"__type__": type(obj).__name__,
                **{f.name: _canonical(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, float):
        return repr(obj)  # keeps nan/inf and every bit of precision
    if hasattr(obj, "__array__") and hasattr(obj, "shape"):
        arr = np.ascontiguousarray(np.asarray(obj))
        return {"__array__": str(arr.dtype), "shape": list(arr.shape),
                "sha256": hashlib.sha256(arr.tobytes()).hexdigest()}
    return repr(obj)


def digest(*parts: Any, length: int = 16) -> str:
    """Hex digest of ``parts`` (settings, arrays, dataclasses, nested containers).

    The one fingerprint function of jaxpet: stage caches, checkpoints and the
    data's content digest all use it, so equal inputs give equal keys everywhere.
    """
    text = json.dumps(_canonical(list(parts)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


# ----------------------------------------------------------------------------- atomic writes

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_UMASK = os.umask(0o022)  # read once (setting it back at once), not per write: threads share it
os.umask(_UMASK)


def is_disk_full(error: BaseException | None) -> bool:
    """Whether ``error`` (or one it came from) is a full disk or an exceeded quota.

    orbax writes arrays through tensorstore, which reports a full disk as a
    ``ValueError`` whose message carries the OS error, not as an ``OSError``.
    """
    texts = [os.strerror(code) for code in DISK_FULL]
    texts += [f"os_error_code='{code}'" for code in DISK_FULL]
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            return True
        if any(text in str(error) for text in texts):
            return True
        error = error.__cause__ or error.__context__
    return False


def atomic_write(path, write: Callable[[Any], None]) -> pathlib.Path:
    """Writes through a temp file in the same folder, then renames: no half file on a crash.

    A full disk is reported as one :class:`UserError` naming the folder, with the
    temp file removed. Of several processes only the writer writes
    (:func:`jaxpet.distributed.is_writer`); the others return at once.
    """
    path = pathlib.Path(path)
    if not distributed.is_writer():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide results from other users
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, IsADirectoryError):
            raise UserError(f"{path} is a folder where a file should be written — remove it or "
                            "choose another --workdir.") from e
        if is_disk_full(e):
            raise UserError(f"no space left to write {path} ({_free(path.parent)} free in "
                            f"{path.parent}) — free some disk space or choose another "
                            "--workdir; finished stages are kept, a rerun resumes.") from e
        raise
    return path


def _free(folder) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB"
    except OSError:
        return "unknown space"


def _jsonable(obj):
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def write_json(path, obj: Any) -> pathlib.Path:
    text = json.dumps(_jsonable(obj), indent=2) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()))


def read_json(path) -> Any:
    with open(path) as f:
        return json.load(f)


def write_npz(path, **arrays) -> pathlib.Path:
    return atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


# What reading a damaged, cut or foreign .npz raises besides ValueError and OSError: zipfile's
# own errors and those of the layers under it (zlib, bz2/lzma, struct), an encrypted member
# (RuntimeError), a compression it lacks (NotImplementedError), a member it cannot find.
_DAMAGED_NPZ = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, struct.error,
                RuntimeError, NotImplementedError, KeyError, IndexError, OverflowError)


def read_npz(path) -> dict[str, np.ndarray]:
    """All arrays of an .npz, loaded now, every member read whole and its checksum checked
    (never unpickled).

    A file that is not a whole .npz (cut, a flipped bit, not a zip, an object array) is one
    ``ValueError`` saying so; a file that cannot be opened stays an ``OSError``. The checksums
    are checked before numpy parses a member, so a damaged header never reaches numpy (which
    might then ask for an impossible allocation).
    """
    name = pathlib.Path(path).name
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every member to its end: zlib and the CRC check
        if bad is not None:
            raise ValueError(f"{name} is damaged (its member {bad} fails its checksum)")
        with np.load(path, allow_pickle=False) as f:
            try:
                arrays = {k: f[k] for k in f.files}
            except ValueError as e:  # an object array (pickled), a header numpy refuses
                raise ValueError(f"{name} is not an .npz of plain numpy arrays ({e})") from e
    except zipfile.BadZipFile as e:
        if "not a zip file" not in str(e):
            raise ValueError(f"{name} is damaged ({e})") from e
        with open(path, "rb") as f:
            cut = f.read(4) == b"PK\x03\x04"  # starts as a zip: its end (the directory) is lost
        raise ValueError(f"{name} is cut short or damaged (its zip directory is missing)" if cut
                         else f"{name} is not an .npz archive (not a zip file)") from e
    except _DAMAGED_NPZ as e:
        raise ValueError(f"{name} is damaged ({type(e).__name__}: {e})") from e
    for key, value in arrays.items():
        if not isinstance(value, np.ndarray):  # numpy gives a member that is no .npy as bytes
            raise ValueError(f"{name} is not an .npz archive (its member {key} is not an array)")
    return arrays


def write_text(path, text: str) -> pathlib.Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def save_figure(fig, path, dpi: int | None = None) -> pathlib.Path:
    """Lays out and writes a ``matplotlib.figure.Figure`` atomically (PNG by the suffix).

    Figures are built as ``Figure`` objects, never through pyplot, so nothing
    here touches matplotlib's global backend or figure registry.
    """
    path = pathlib.Path(path)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", dpi=dpi)
    return atomic_write(path, lambda f: f.write(buffer.getvalue()))


def save_image(image, path) -> pathlib.Path:
    """Writes a PIL image as PNG atomically."""
    return atomic_write(path, lambda f: image.save(f, format="PNG", optimize=True))


# ----------------------------------------------------------------------------- pytrees as arrays

_EMPTY = "/__empty__"


def tree_to_arrays(prefix: str, tree) -> dict[str, np.ndarray]:
    """A pytree of arrays (e.g. Flax variables) as flat ``<prefix>/<path>`` arrays, to save in a
    stage; :func:`arrays_to_tree` reads it back."""
    flat = traverse_util.flatten_dict(jax.device_get(tree), sep="/", keep_empty_nodes=True)
    return {f"{prefix}/{k}" + (_EMPTY if v is traverse_util.empty_node else ""):
            np.zeros(0) if v is traverse_util.empty_node else np.asarray(v)
            for k, v in flat.items()}


def arrays_to_tree(prefix: str, arrays: Mapping[str, np.ndarray]):
    """The pytree that :func:`tree_to_arrays` saved under ``prefix`` (as device arrays)."""
    mine: dict[str, Any] = {}
    for k, v in arrays.items():
        if k.startswith(prefix + "/"):
            k = k[len(prefix) + 1:]
            if k.endswith(_EMPTY):  # an empty collection, e.g. a model's batch_stats without BN
                mine[k[:-len(_EMPTY)]] = traverse_util.empty_node
            else:
                mine[k] = jax.numpy.asarray(v)
    return traverse_util.unflatten_dict(mine, sep="/")
