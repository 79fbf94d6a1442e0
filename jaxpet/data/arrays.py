"""Labelled arrays from anywhere: a jaxpet dataset by name, or a user's ``.npz``, checked.

:func:`load_arrays` gives the training part (the candidates of an audit) and
the held-out part (RMIA's population) as model inputs with the preprocessing
the model sees. A user's ``.npz`` holds exactly these arrays (any other name is
refused, so a misspelt one is not silently ignored):

* ``images`` [N, H, W, C] (uint8, integers in 0..255, or floats; a greyscale
  stack [N, H, W] is refused with the fix ``images[..., None]``) or
  ``features`` [N, D...] (integers or floats), not both;
* ``labels`` [N]: integer class indices, at least two classes among them;
* optionally the held-out part, ``test_images`` / ``test_features`` of the same
  kind and per-example shape, with ``test_labels``, all or nothing;
* optionally ``num_classes``: one integer >= 2 above every label (else one more
  than the largest label, at most the number of examples).

Every inconsistency (a missing or extra array, mismatched lengths or shapes,
labels that are not class indices, booleans, complex numbers, strings, NaN,
infinity, no example) is a :class:`~jaxpet.data.DataError` naming the array and
the fix, raised before any work. :func:`read_indices` reads a user's list of
example indices (a target's members) with the same care. A file that is not
what its name says (a text file named .npy, an .npy named .npz, an empty file)
is named for what it is.
"""

from __future__ import annotations

import codecs
import dataclasses
import pathlib
from typing import Any
import zipfile
import zlib

import numpy as np

from jaxpet import config as config_lib, files
from jaxpet.data.containers import DataError
from jaxpet.data.loading import load_dataset
from jaxpet.data.normalization import Normalize, normalizer

# The datasets with a jaxpet normalisation (preprocess "dataset"); tfds:<name> also loads.
NORMALIZED = ("cifar10", "mnist")
# What the model sees: jaxpet's normalisation, uint8 pixels / 255, or the values as stored.
PREPROCESS = ("dataset", "unit", "raw")
# The arrays a user's .npz may hold.
NPZ_ARRAYS = ("images", "features", "labels", "test_images", "test_features", "test_labels",
              "num_classes")
# Labels are fed to the model as int32.
MAX_CLASSES = np.iinfo(np.int32).max
# What numpy, zip and zlib raise on a damaged or foreign file.
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


@dataclasses.dataclass(frozen=True, eq=False)
class LabelledArrays:
    """Training part (candidates) and held-out part (population) as model inputs."""

    x: np.ndarray
    y: np.ndarray
    test_x: np.ndarray | None  # None: no held-out part (the population comes from train)
    test_y: np.ndarray | None
    num_classes: int
    kind: str  # "images" or "features"
    preprocess: Any
    digest: str
    source: str

    def holding_out(self, indices: np.ndarray) -> LabelledArrays:
        """These arrays with training examples ``indices`` as the held-out part (the training
        part keeps them: callers leave them out of what they draw)."""
        return dataclasses.replace(self, test_x=self.x[indices], test_y=self.y[indices])


def load_arrays(name: str, data_dir: str | None = None,
                preprocess: str = "dataset") -> LabelledArrays:
    """``name``: a jaxpet dataset (cifar10, mnist, tfds:<name>) or the path of an .npz laid
    out as the module docstring says; every inconsistency is a one-line DataError."""
    if preprocess not in PREPROCESS:
        raise config_lib.ConfigError(f"--preprocess must be one of {', '.join(PREPROCESS)}; "
                                     f"got {preprocess!r}.")
    if name in NORMALIZED or name.startswith("tfds:"):
        ds = load_dataset(name, data_dir)
        if ds.test is None or len(ds.test) == 0:
            raise DataError(f"--data={name} has no held-out split for RMIA's population — use "
                            "an .npz with test_images and test_labels.")
        _check_classes(f"--data={name}", ds.train.images, ds.train.labels)
        return LabelledArrays(ds.train.images, ds.train.labels, ds.test.images, ds.test.labels,
                              len(ds.class_names), "images",
                              preprocessing(name, preprocess, np.uint8), ds.digest,
                              str(ds.info.get("source")))
    path = pathlib.Path(name)
    if path.suffix != ".npz":
        raise config_lib.ConfigError(f"--data={name} is neither a jaxpet dataset "
                                     f"({', '.join(NORMALIZED)}, tfds:<name>) nor an .npz file.")
    where = f"--data={path}"
    return from_arrays(_read_npz(path, where), where, str(path), preprocess)


def from_arrays(arrays: dict[str, np.ndarray], where: str, source: str,
                preprocess: str = "dataset") -> LabelledArrays:
    """The arrays an .npz holds (named as the module docstring says), checked as a file's are
    (``where`` names them in errors), as :class:`LabelledArrays` from ``source``."""
    kind, x, y, test_x, test_y = _parts(where, arrays)
    held = test_x is not None and test_y is not None
    if test_x is None or test_y is None:  # no held-out part: the caller sets one aside
        test_x, test_y = x[:0], y[:0]
    _check_labels(where, "labels", y, kind, len(x))
    if held:
        _check_labels(where, "test_labels", test_y, f"test_{kind}", len(test_x))
    _check_classes(where, x, y)
    num_classes = _num_classes(where, arrays, y, test_y, len(x) + len(test_x))
    x = _model_inputs(where, kind, kind, x)
    if held:
        test_x = _model_inputs(where, kind, f"test_{kind}", test_x)
        _check_alike(where, kind, x, test_x)
    else:
        test_x = x[:0]
    scale = preprocessing(source, preprocess, x.dtype)
    digest = files.digest(x, y, test_x, test_y)
    return LabelledArrays(x, y.astype(np.int32), test_x if held else None,
                          test_y.astype(np.int32) if held else None, num_classes, kind, scale,
                          digest, source)


# --------------------------------------------------------------------------- what a file is

def file_kind(path: pathlib.Path) -> str:
    """What ``path`` really holds, from its first bytes: "missing", "folder", "empty", "npz"
    (a zip archive), "npy", "pickle", "text" or "binary"."""
    if not path.exists():
        return "missing"
    if path.is_dir():
        return "folder"
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "npz"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    try:  # a cut multi-byte character at the end of the head is not a decoding error
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return "binary"
    return "binary" if b"\x00" in head else "text"


_DESCRIBED = {  # file_kind -> what the file is, in an error message
    "missing": "does not exist",
    "folder": "is a folder",
    "empty": "is empty (0 bytes)",
    "npz": "is an .npz archive (several named arrays)",
    "npy": "is a single .npy array",
    "pickle": "is a Python pickle, which jaxpet never loads (unpickling runs code)",
    "text": "is a text file",
    "binary": "is neither a numpy file nor text",
}


# --------------------------------------------------------------------------- the user's .npz

def _read_npz(path: pathlib.Path, where: str) -> dict[str, np.ndarray]:
    """Every array of the .npz at ``path``, loaded now and never unpickled."""
    fix = "write it with numpy.savez(path, images=... or features=..., labels=...)"
    kind = file_kind(path)
    if kind in ("missing", "folder"):
        raise DataError(f"{where} {_DESCRIBED[kind]} — give the path of your .npz file.")
    if kind != "npz":
        raise DataError(f"{where} {_DESCRIBED[kind]}, not an .npz archive — {fix}.")
    arrays = {}
    try:  # the file opened here: np.load leaks its own on a damaged archive
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as npz:
            for key in npz.files:
                try:
                    arrays[key] = npz[key]
                except ValueError as e:
                    if "allow_pickle" not in str(e):
                        raise
                    raise DataError(f"{where}: {key!r} is an object array (pickled Python "
                                    "objects, which jaxpet never unpickles) — store numbers "
                                    f"(an int or float dtype); {fix}.") from e
    except DataError:
        raise
    except _READ_ERRORS as e:
        raise DataError(f"{where} is a damaged .npz archive ({type(e).__name__}: "
                        f"{_first_line(e)}) — {fix}.") from e
    return arrays


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else ""


def _parts(where: str, arrays: dict[str, np.ndarray]):
    """(kind, x, y, test_x, test_y) of the file's arrays: one kind, the held-out part all or
    nothing and of the same kind, no array jaxpet would not read."""
    unknown = sorted(set(arrays) - set(NPZ_ARRAYS))
    if unknown:
        raise DataError(f"{where} holds arrays jaxpet does not read: {', '.join(unknown)} — "
                        f"remove or rename them (it reads {', '.join(NPZ_ARRAYS)}).")
    if "images" in arrays and "features" in arrays:
        raise DataError(f"{where} holds both 'images' and 'features' — keep one (images "
                        "[N, H, W, C] for a model of images, features [N, D] otherwise).")
    kind = "images" if "images" in arrays else "features" if "features" in arrays else None
    if kind is None or "labels" not in arrays:
        raise DataError(f"{where} needs 'images' or 'features', and 'labels'; it holds "
                        f"{sorted(arrays)}.")
    other = "features" if kind == "images" else "images"
    if f"test_{other}" in arrays:
        raise DataError(f"{where} holds '{kind}' but 'test_{other}' — the held-out part must "
                        f"be of the same kind: save it as 'test_{kind}'.")
    test_x, test_y = arrays.get(f"test_{kind}"), arrays.get("test_labels")
    if test_x is None and test_y is not None:
        raise DataError(f"{where} has 'test_labels' but no 'test_{kind}' — give both (a "
                        "held-out part) or neither.")
    if test_x is not None and test_y is None:
        raise DataError(f"{where} has 'test_{kind}' but no 'test_labels' — give both (a "
                        "held-out part) or neither.")
    if test_x is not None and test_y is not None and len(test_x) == 0 == len(test_y):
        raise DataError(f"{where}: test_{kind} and test_labels hold 0 examples — give "
                        "held-out examples, or leave both out to set RMIA's population aside "
                        "from the training part.")
    return kind, arrays[kind], arrays["labels"], test_x, test_y


def _check_labels(where: str, name: str, ys: np.ndarray, of: str, n: int) -> None:
    """One non-negative integer class index per example of the ``n`` in array ``of``."""
    if ys.ndim == 2 and ys.shape[1] > 1:
        raise DataError(f"{where}: {name} has shape {ys.shape}, one row per example — give "
                        f"one class index per example, shape [N] ({name}.argmax(1) for "
                        "one-hot rows).")
    if ys.ndim == 2:
        raise DataError(f"{where}: {name} has shape {ys.shape} — give shape [N] "
                        f"({name}.ravel()).")
    if ys.ndim != 1:
        raise DataError(f"{where}: {name} must be one class index per example, shape [N]; "
                        f"got shape {ys.shape}.")
    if ys.dtype.kind in "USO":
        raise DataError(f"{where}: {name} are strings ({ys.dtype}) — store integer class "
                        f"indices 0..K-1, e.g. np.unique({name}, return_inverse=True)[1].")
    if ys.dtype.kind == "b":
        raise DataError(f"{where}: {name} are booleans — store integer class indices "
                        f"({name}.astype(np.int64)).")
    if ys.dtype.kind not in "iu":
        raise DataError(f"{where}: {name} must be non-negative integers [N], got {ys.dtype} "
                        f"of shape {ys.shape} — store class indices "
                        f"({name}.astype(np.int64) if they are whole numbers).")
    if len(ys) != n:
        raise DataError(f"{where}: {of} holds {n} examples but {name} {len(ys)} — they must "
                        "match one to one.")
    if len(ys) and ys.min() < 0:
        raise DataError(f"{where}: {name} must be non-negative integers [N]; it holds "
                        f"{ys.min()} — class indices start at 0.")


def _num_classes(where: str, arrays, y: np.ndarray, test_y: np.ndarray,
                 num_examples: int) -> int:
    """The file's num_classes (every label below it), else one more than the largest label;
    either at least 2 and a class count a model can have."""
    which, largest = max(("labels", int(y.max(initial=0))),
                         ("test_labels", int(test_y.max(initial=0))), key=lambda t: t[1])
    if "num_classes" not in arrays:
        if largest + 1 > max(num_examples, 2):
            raise DataError(f"{where}: {which} go up to {largest} with only {num_examples} "
                            "examples, so most classes have none — relabel them 0..K-1 "
                            "(np.unique(labels, return_inverse=True)[1]) or state the "
                            "model's class count as num_classes.")
        return largest + 1
    stated = arrays["num_classes"]
    fix = "save it as one integer, e.g. numpy.savez(..., num_classes=10)"
    if stated.size != 1:
        raise DataError(f"{where}: num_classes must be one integer; it has shape "
                        f"{stated.shape} — {fix}.")
    if stated.dtype.kind not in "iu":
        raise DataError(f"{where}: num_classes must be one integer; it is {stated.dtype} "
                        f"{stated.ravel()[0].item()!r} — {fix}.")
    value = int(stated.ravel()[0])
    if not 2 <= value <= MAX_CLASSES:
        raise DataError(f"{where}: num_classes={value} must be in [2, {MAX_CLASSES}] — an "
                        "audit needs at least two classes.")
    if largest >= value:
        raise DataError(f"{where}: {which} go up to {largest}, outside [0, {value}) of its "
                        f"num_classes={value}.")
    return value


def _check_classes(where: str, x: np.ndarray, y: np.ndarray) -> None:
    """At least one training example, and at least two classes among them."""
    if len(x) == 0:
        raise DataError(f"{where} holds 0 training examples — an audit needs examples to "
                        "train on and score.")
    present = np.unique(y)
    if len(present) < 2:
        raise DataError(f"{where}: every training label is {present[0]} — an audit needs at "
                        "least two classes among the training labels.")


_FIXES = {  # dtype kind -> how to store such values as model inputs
    "b": "store them as numbers ({name}.astype(np.float32))",
    "c": "store real values ({name}.real, or the real and imaginary parts side by side)",
    "U": "store numbers",
    "S": "store numbers",
    "M": "store numbers (e.g. seconds as floats)",
    "m": "store numbers (e.g. seconds as floats)",
    "V": "store one plain numeric array (numpy.lib.recfunctions.structured_to_unstructured)",
}


def _model_inputs(where: str, kind: str, name: str, xs: np.ndarray) -> np.ndarray:
    """``xs`` checked and as the model takes it: images as uint8 (integers in 0..255) or
    float32, features as float32; finite; at least one value per example."""
    if xs.dtype.kind not in "iuf":
        fix = _FIXES.get(xs.dtype.kind, "store integers or floats")
        raise DataError(f"{where}: {name} holds {xs.dtype} values, not numbers a model takes — "
                        f"{fix.format(name=name)}.")
    if kind == "images" and xs.ndim != 4:
        fix = (f"for greyscale add a channel axis, {name}[..., None] (shape "
               f"{(*xs.shape, 1)})" if xs.ndim == 3 else "one H x W x C image per example")
        raise DataError(f"{where}: {name} must be NHWC [N, H, W, C], got shape {xs.shape} — "
                        f"{fix}.")
    if kind == "features" and xs.ndim < 2:
        raise DataError(f"{where}: {name} must be [N, D], one row per example; got shape "
                        f"{xs.shape} — for one feature per example use {name}[:, None].")
    if 0 in xs.shape[1:]:
        raise DataError(f"{where}: {name} has shape {xs.shape}: its examples hold no values.")
    if xs.dtype.kind in "iu":
        if kind == "features":
            return xs.astype(np.float32)
        low, high = xs.min(initial=0), xs.max(initial=0)
        if low < 0 or high > 255:
            raise DataError(f"{where}: integer images must hold pixels in 0..255; {name} "
                            f"({xs.dtype}) goes from {low} to {high} — rescale them, or store "
                            "floats.")
        return xs.astype(np.uint8)
    finite = np.isfinite(xs).reshape(len(xs), -1).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise DataError(f"{where}: {name} holds NaN or infinity ({len(bad)} examples, the "
                        f"first at index {bad[0]}) — drop or fix those examples.")
    big = float(np.abs(xs).max(initial=0))
    if big > float(np.finfo(np.float32).max):
        raise DataError(f"{where}: {name} holds values up to {big:.3g}, beyond float32's range "
                        "(the model's) — rescale them.")
    return xs.astype(np.float32)


def _check_alike(where: str, kind: str, x: np.ndarray, test_x: np.ndarray) -> None:
    """The held-out part has the training part's per-example shape and storage."""
    if test_x.shape[1:] != x.shape[1:]:
        each = "image of" if kind == "images" else "example of"
        raise DataError(f"{where}: test_{kind} has one {each} shape {test_x.shape[1:]}, "
                        f"{kind} {x.shape[1:]} — the held-out part must match the training "
                        "part.")
    if (x.dtype == np.uint8) != (test_x.dtype == np.uint8):
        raise DataError(f"{where}: {kind} are stored as {x.dtype} but test_{kind} as "
                        f"{test_x.dtype} — store both parts the same way (integer pixels "
                        "0..255, or floats), so they are scaled alike.")


def preprocessing(name: str, preprocess: str, dtype) -> Normalize:
    """What the model sees of data ``name`` stored as ``dtype`` under ``preprocess``: jaxpet's
    normalisation of a named dataset (preprocess "dataset"), else :func:`scaling`."""
    if name in NORMALIZED and preprocess == "dataset":
        return normalizer(name)
    return scaling(preprocess, dtype)


def scaling(preprocess: str, dtype) -> Normalize:
    """uint8 pixels / 255 (dataset, unit), or values as stored (raw, and floats)."""
    scale = 255.0 if dtype == np.uint8 and preprocess != "raw" else 1.0
    return Normalize(mean=(0.0,), std=(1.0,), scale=scale)


# --------------------------------------------------------------------------- example indices

def read_indices(path, num_examples: int, flag: str = "--target_members") -> np.ndarray:
    """The sorted example indices of a .npy (written with numpy.save) or a text file (one
    integer a line; blank lines and # comments skipped), whatever its name: each a whole
    number in [0, ``num_examples``), given once; ``flag`` names the file in errors."""
    path = pathlib.Path(path)
    where = f"{flag}={path}"
    fix = ("write them with numpy.save(path, indices) or one integer a line in a text file")
    kind = file_kind(path)
    if kind == "npy":
        try:
            with open(path, "rb") as f:
                indices = np.load(f, allow_pickle=False)
        except ValueError as e:
            if "allow_pickle" not in str(e):
                raise DataError(f"{where} is a damaged .npy file ({_first_line(e)}) — "
                                f"{fix}.") from e
            raise DataError(f"{where} is an object array (pickled Python objects, which "
                            f"jaxpet never unpickles) — {fix}.") from e
        except _READ_ERRORS as e:
            raise DataError(f"{where} is a damaged .npy file ({type(e).__name__}: "
                            f"{_first_line(e)}) — {fix}.") from e
    elif kind == "text":
        indices = _text_indices(path, where)
    elif kind in ("missing", "folder"):
        raise DataError(f"{where} {_DESCRIBED[kind]} — give the path of the file of indices.")
    else:
        raise DataError(f"{where} {_DESCRIBED[kind]}, not a list of indices — {fix}.")
    return check_indices(indices, num_examples, where)


def check_indices(indices, num_examples: int, where: str) -> np.ndarray:
    """``indices`` (of examples the target trained on), sorted: whole numbers in
    [0, ``num_examples``), each once, at least one; ``where`` names them in errors."""
    indices = _whole_numbers(where, np.asarray(indices))
    if indices.size == 0:
        raise DataError(f"{where} holds no index — list the examples the target trained on.")
    outside = indices[(indices < 0) | (indices >= num_examples)]
    if outside.size:
        raise DataError(f"{where}: indices must be in [0, {num_examples}) (the training part "
                        f"of the data); it holds {outside[0]}"
                        f"{f' and {outside.size - 1} more outside' if outside.size > 1 else ''}.")
    unique, counts = np.unique(indices, return_counts=True)
    if len(unique) != len(indices):
        raise DataError(f"{where} repeats indices ({unique[counts > 1][0]} appears "
                        f"{counts[counts > 1][0]} times); give each once.")
    return unique


def _text_indices(path: pathlib.Path, where: str) -> np.ndarray:
    """The integers of a text file, one a line (as strings are parsed: exact)."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{where} is not UTF-8 text ({_first_line(e)}) — write one integer "
                        "a line, or a .npy with numpy.save.") from e
    values = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            values.append(int(text))
        except ValueError:
            try:  # a whole number written as a float, as numpy.savetxt does by default
                value = float(text)
            except ValueError:
                value = None
            if value is None or not value.is_integer():
                raise DataError(f"{where}: line {number} is {text[:40]!r}, not one integer "
                                "index — write one integer a line.") from None
            values.append(int(value))
        if abs(values[-1]) > np.iinfo(np.int64).max:
            raise DataError(f"{where}: line {number} is {text[:40]!r}, too large for an "
                            "index.")
    return np.asarray(values, dtype=np.int64)


def _whole_numbers(where: str, indices: np.ndarray) -> np.ndarray:
    """``indices`` as int64: a 1-D array of integers or of whole floats."""
    if indices.ndim > 1:
        raise DataError(f"{where} is a {indices.ndim}-D array of shape {indices.shape} — give "
                        "a 1-D array of indices (np.flatnonzero(mask) for a mask, .ravel() for "
                        "a column).")
    indices = indices.reshape(-1)
    if indices.dtype.kind == "b":
        raise DataError(f"{where} holds booleans — give the indices of the members "
                        "(np.flatnonzero(mask)), not a mask.")
    if indices.dtype.kind == "f":
        if not np.isfinite(indices).all():
            raise DataError(f"{where} holds NaN or infinity — give integer indices.")
        fractional = indices[indices != np.round(indices)]
        if fractional.size:
            raise DataError(f"{where} holds {fractional[0].item()!r}, not a whole number — give "
                            "integer indices.")
        if np.abs(indices).max(initial=0) > 2 ** 53:
            raise DataError(f"{where} holds {np.abs(indices).max().item()!r}, too large for an "
                            "index — give integer indices.")
        return indices.astype(np.int64)
    if indices.dtype.kind not in "iu":
        raise DataError(f"{where} must hold integer indices; it holds {indices.dtype} values.")
    if indices.dtype == np.uint64 and indices.size and indices.max() > np.iinfo(np.int64).max:
        raise DataError(f"{where} holds {indices.max()}, too large for an index.")
    return indices.astype(np.int64)
