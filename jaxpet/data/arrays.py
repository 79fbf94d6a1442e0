"""Labelled arrays from anywhere: a jaxpet dataset by name, or a user's ``.npz``, checked.

:func:`load_arrays` gives the training part (the candidates of an audit) and
the held-out part (RMIA's population) as model inputs with the preprocessing
the model sees; every inconsistency of a user's file (missing arrays,
mismatched lengths, labels out of range, NaN, images of the wrong rank) is a
:class:`~jaxpet.data.DataError` naming the array and the fix, raised before
any work. :func:`read_indices` reads a user's list of example indices (a
target's members) with the same care.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import numpy as np

from jaxpet import config as config_lib, files
from jaxpet.data.containers import DataError
from jaxpet.data.loading import load_dataset
from jaxpet.data.normalization import Normalize, normalizer

# The datasets with a jaxpet normalisation (preprocess "dataset"); tfds:<name> also loads.
NORMALIZED = ("cifar10", "mnist")
# What the model sees: jaxpet's normalisation, uint8 pixels / 255, or the values as stored.
PREPROCESS = ("dataset", "unit", "raw")


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
    """``name``: a jaxpet dataset (cifar10, mnist, tfds:<name>) or the path of an .npz with
    'images' (NHWC) or 'features', 'labels', optionally 'test_images'/'test_features' +
    'test_labels' and 'num_classes'; every inconsistency is a clear error."""
    if preprocess not in PREPROCESS:
        raise config_lib.ConfigError(f"--preprocess must be one of {', '.join(PREPROCESS)}; "
                                     f"got {preprocess!r}.")
    if name in NORMALIZED or name.startswith("tfds:"):
        ds = load_dataset(name, data_dir)
        if ds.test is None or len(ds.test) == 0:
            raise DataError(f"--data={name} has no held-out split for RMIA's population — use "
                            "an .npz with test_images and test_labels.")
        scale = (normalizer(name) if name in NORMALIZED and preprocess == "dataset"
                 else scaling(preprocess, np.uint8))
        return LabelledArrays(ds.train.images, ds.train.labels, ds.test.images, ds.test.labels,
                              len(ds.class_names), "images", scale, ds.digest,
                              str(ds.info.get("source")))
    path = pathlib.Path(name)
    if path.suffix != ".npz":
        raise config_lib.ConfigError(f"--data={name} is neither a jaxpet dataset "
                                     f"({', '.join(NORMALIZED)}) nor an .npz file.")
    try:
        arrays = files.read_npz(path)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read --data={path} ({e}) — give an .npz written with "
                        "numpy.savez (no pickled objects).") from e
    kind = "images" if "images" in arrays else "features" if "features" in arrays else None
    if kind is None or "labels" not in arrays:
        raise DataError(f"--data={path} needs 'images' or 'features', and 'labels'; it holds "
                        f"{sorted(arrays)}.")
    x, y = arrays[kind], arrays["labels"]
    test_x, test_y = arrays.get(f"test_{kind}"), arrays.get("test_labels")
    if (test_x is None) != (test_y is None):
        raise DataError(f"--data={path} has only one of 'test_{kind}' and 'test_labels'; give "
                        "both (a held-out part) or neither.")
    if test_x is None or test_y is None:  # no held-out part: the caller sets one aside
        test_x, test_y = x[:0], y[:0]
    num_classes = _num_classes(path, arrays, y, test_y)
    for prefix, xs, ys in (("", x, y), ("test_", test_x, test_y)):
        _check_part(path, kind, prefix, xs, ys)
    if kind == "images" and np.issubdtype(x.dtype, np.integer) and x.dtype != np.uint8:
        if x.min(initial=0) < 0 or x.max(initial=0) > 255 or test_x.min(initial=0) < 0 \
                or test_x.max(initial=0) > 255:
            raise DataError(f"--data={path}: integer images must hold pixels in 0..255 (got "
                            f"{x.dtype} from {x.min()} to {x.max()}).")
        x, test_x = x.astype(np.uint8), test_x.astype(np.uint8)
    scale = scaling(preprocess, x.dtype)
    if x.dtype != np.uint8:
        x, test_x = x.astype(np.float32), test_x.astype(np.float32)
    digest = files.digest(x, y, test_x, test_y)
    held = len(test_x) > 0
    return LabelledArrays(x, y.astype(np.int32), test_x if held else None,
                          test_y.astype(np.int32) if held else None, num_classes, kind, scale,
                          digest, str(path))


def _num_classes(path, arrays, y, test_y) -> int:
    """One more than the largest label, or the file's num_classes (every label below it)."""
    num_classes = int(max(y.max(initial=0), test_y.max(initial=0))) + 1
    if "num_classes" in arrays:
        stated = int(arrays["num_classes"])
        if num_classes > stated:
            raise DataError(f"--data={path}: labels go up to {num_classes - 1}, outside "
                            f"[0, {stated}) of its num_classes={stated}.")
        num_classes = stated
    return num_classes


def _check_part(path, kind: str, prefix: str, xs: np.ndarray, ys: np.ndarray) -> None:
    if len(xs) != len(ys):
        raise DataError(f"--data={path}: {prefix}{kind} holds {len(xs)} examples but "
                        f"{prefix}labels {len(ys)} — they must match one to one.")
    if not np.issubdtype(ys.dtype, np.integer) or ys.ndim != 1 or ys.min(initial=0) < 0:
        raise DataError(f"--data={path}: {prefix}labels must be non-negative integers [N], got "
                        f"{ys.dtype} of shape {ys.shape}.")
    if kind == "images" and xs.ndim != 4:
        raise DataError(f"--data={path}: {prefix}images must be NHWC [N, H, W, C], got shape "
                        f"{xs.shape}.")
    if np.issubdtype(xs.dtype, np.floating) and not np.isfinite(xs).all():
        raise DataError(f"--data={path}: {prefix}{kind} holds NaN or infinity.")


def scaling(preprocess: str, dtype) -> Normalize:
    """uint8 pixels / 255 (dataset, unit), or values as stored (raw, and floats)."""
    scale = 255.0 if dtype == np.uint8 and preprocess != "raw" else 1.0
    return Normalize(mean=(0.0,), std=(1.0,), scale=scale)


def read_indices(path, num_examples: int, flag: str = "--target_members") -> np.ndarray:
    """The sorted example indices of a .npy or a .txt (one integer a line), each in
    [0, ``num_examples``) and given once; ``flag`` names the file in errors."""
    path = pathlib.Path(path)
    try:
        indices = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, dtype=np.int64)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {flag}={path} ({e}).") from e
    indices = np.asarray(indices).ravel()
    if not np.issubdtype(indices.dtype, np.integer):
        raise DataError(f"{flag}={path} must hold integer indices.")
    if indices.size == 0 or indices.min() < 0 or indices.max() >= num_examples:
        raise DataError(f"{flag}={path}: indices must be in [0, {num_examples}) (the training "
                        "part of the data).")
    if len(np.unique(indices)) != len(indices):
        raise DataError(f"{flag}={path} repeats indices; give each once.")
    return np.sort(indices)
