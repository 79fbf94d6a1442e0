"""UTKFace: labels parsed from <age>_<gender>_<race>_<time>.jpg.chip.jpg names.

Malformed names are skipped with a warning (and counted in ``info``), as the
release holds a few; names with no race field keep race -1.
"""

from __future__ import annotations

import pathlib
import re

from absl import logging
import numpy as np

from jaxpet.data import sources
from jaxpet.data.archives import natural_key
from jaxpet.data.containers import DataError, Dataset, Split
from jaxpet.data.images import decode_images

UTKFACE_GENDERS = ("male", "female")
UTKFACE_RACES = ("White", "Black", "Asian", "Indian", "Others")
LAYOUT = ("UTKFace/<age>_<gender>_<race>_<time>.jpg.chip.jpg as folder {d}/UTKFace or "
          "an archive {d}/UTKFace*.tar.gz (e.g. UTKFace-64px.tar.gz, UTKFace.tar.gz)")


def parse_utkface_name(filename: str) -> tuple[int, int, int] | None:
    """(age, gender, race) parsed from ``<age>_<gender>_<race>_<time>...jpg``.

    A name with only three fields has no race (-1, kept); a name whose fields are
    not ASCII integers, or with gender not 0/1 or race not 0..4, is malformed (None).
    """
    fields = pathlib.PurePosixPath(filename).name.split("_")
    if len(fields) < 3:
        return None
    wanted = fields[:3] if len(fields) >= 4 else fields[:2]
    if not all(re.fullmatch(r"[0-9]{1,3}", f) for f in wanted):
        return None
    age, gender = int(wanted[0]), int(wanted[1])
    race = int(wanted[2]) if len(wanted) == 3 else -1
    if age > 150 or gender not in (0, 1) or race not in (-1, *range(len(UTKFACE_RACES))):
        return None
    return age, gender, race


def _want(parts):
    if not parts[-1].lower().endswith(".jpg"):
        return None
    return (natural_key(parts[-1]), parts)


def _from_items(items, where) -> Dataset:
    kept, attrs, skipped = [], [], []
    for item in items:
        parsed = parse_utkface_name(item[1])
        if parsed is None:
            skipped.append(pathlib.PurePosixPath(item[1]).name)
        else:
            kept.append(item)
            attrs.append(parsed)
    if not kept:
        raise DataError(f"utkface: {where} holds no <age>_<gender>_<race>_<time>.jpg images "
                        f"({len(skipped)} unparsable names); re-download UTKFace.tar.gz.")
    if skipped:
        logging.warning("utkface: skipped %d files whose names do not parse, e.g. %s.",
                        len(skipped), skipped[:3])
    images = decode_images(kept, where, None, "UTKFace images (all must share one size)")
    age, gender, race = (np.array(col, np.int32) for col in zip(*attrs, strict=True))
    train = Split(images, gender.copy(), {"age": age, "gender": gender, "race": race})
    info = {"skipped_names": len(skipped), "skipped_examples": skipped[:5],
            "missing_race": int((race == -1).sum())}
    return Dataset("utkface", train, None, UTKFACE_GENDERS,
                   {"race": UTKFACE_RACES, "gender": UTKFACE_GENDERS}, info)


def find(root: pathlib.Path) -> sources.Source | None:
    """A folder of .jpg faces, else the first UTKFace*.tar.gz, under ``root``; else None."""
    for folder in (root / "UTKFace", root / "utkface" / "UTKFace", root / "utkface"):
        if folder.is_dir() and any(p.suffix.lower() == ".jpg" for p in folder.iterdir()):
            return sources.folder_source("utkface", "local-image-folder", folder, _want,
                                         _from_items)
    for base in (root, root / "utkface"):
        tarballs = sorted(base.glob("UTKFace*.tar.gz")) if base.is_dir() else []
        if tarballs:
            return sources.archive_source("utkface", "local-image-archive", tarballs[0], _want,
                                          _from_items)
    return None
