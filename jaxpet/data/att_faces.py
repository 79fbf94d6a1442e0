"""AT&T (ORL) faces: s1..s40/1..10.pgm, as a folder, tarball or the official zip."""

from __future__ import annotations

import pathlib
import re

import numpy as np

from jaxpet.data import sources
from jaxpet.data.containers import DataError, Dataset, Split
from jaxpet.data.images import decode_images

ATT_FACES_SHAPE = (112, 92, 1)
LAYOUT = ("att_faces/s1..s40/1..10.pgm as folder {d}/att_faces, {d}/att_faces.tar.gz "
          "or {d}/att_faces.zip")


def _want(parts):
    if len(parts) < 2:
        return None
    subject = re.fullmatch(r"s(\d+)", parts[-2])
    index = re.fullmatch(r"(\d+)\.pgm", parts[-1], re.IGNORECASE)
    if subject is None or index is None:
        return None
    return (int(subject.group(1)), int(index.group(1)))


def _from_items(items, where) -> Dataset:
    subjects = sorted({it[0][0] for it in items})
    if not subjects:
        raise DataError(f"att_faces: {where} holds no s<N>/<M>.pgm images; "
                        "re-download att_faces.tar.gz.")
    if subjects != list(range(1, len(subjects) + 1)):
        missing = sorted(set(range(1, max(subjects) + 1)) - set(subjects))
        raise DataError(f"att_faces: {where} has subject folders s{subjects[0]}..s{subjects[-1]} "
                        f"with gaps (missing {', '.join(f's{m}' for m in missing[:10])}) or not "
                        "starting at s1; the copy is incomplete, re-download it.")
    images = decode_images(items, where, ATT_FACES_SHAPE, "AT&T faces (92 wide x 112 high grey)")
    labels = np.array([it[0][0] - 1 for it in items], np.int32)
    index = np.array([it[0][1] for it in items], np.int32)
    train = Split(images, labels, {"image_index": index})
    return Dataset("att_faces", train, None, tuple(f"s{s}" for s in subjects))


def find(root: pathlib.Path) -> sources.Source | None:
    """The att_faces folder, else att_faces.tar.gz or .zip in ``root``, else None."""
    folder = root / "att_faces"
    if folder.is_dir():
        return sources.folder_source("att_faces", "local-image-folder", folder, _want,
                                     _from_items)
    for fname in ("att_faces.tar.gz", "att_faces.zip"):
        if (root / fname).is_file():
            return sources.archive_source("att_faces", "local-image-archive", root / fname,
                                          _want, _from_items)
    return None
