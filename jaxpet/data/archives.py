"""Safe reading of release files: tar/zip members and folder trees, read into memory.

Archives are never extracted. Every member is checked before use: absolute
paths, '..' components and links that leave the archive (tar-slip) are refused,
links inside it are skipped, never followed. Hidden files and ``__MACOSX`` are
ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import os
import pathlib
import posixpath
import re
import stat
import tarfile
from typing import Any
import zipfile
import zlib

from jaxpet.data.containers import DataError

CORRUPT = "it is corrupt or truncated; re-download it or replace it with a good copy"

# Chooses members: path parts -> sort key, or None to skip the member.
Want = Callable[[tuple[str, ...]], Any]
# A member read into memory: (sort key, member or file name, bytes).
Item = tuple[Any, str, bytes]


def natural_key(text: str) -> tuple:
    """Sort key that orders embedded numbers numerically ("s2" < "s10")."""
    parts = re.split(r"(\d+)", text)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


def check_member(archive, name: str, linkname: str | None = None,
                 is_symlink: bool = False) -> None:
    """Refuse archive members that are absolute, climb out with '..', or link outside."""
    def refuse(why):
        raise DataError(f"refusing archive member {name!r} of {archive}: it points outside the "
                        f"target folder ({why}). The archive is unsafe; replace it with a clean "
                        "copy of the official release.")

    def absolute(p: str) -> bool:
        return p.startswith("/") or (len(p) > 1 and p[1] == ":" and p[0].isalpha())

    path = name.replace("\\", "/")
    if absolute(path) or ".." in path.split("/"):
        refuse("absolute path or '..' component")
    if linkname is not None:
        link = linkname.replace("\\", "/")
        if absolute(link):
            refuse(f"link to absolute path {linkname!r}")
        base = posixpath.dirname(path) if is_symlink else ""
        target = posixpath.normpath(posixpath.join(base, link))
        if target == ".." or target.startswith("../"):
            refuse(f"link to {linkname!r}")


def _hidden(parts: Sequence[str]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def read_archive(path: pathlib.Path, want: Want) -> list[Item]:
    """Wanted regular members of a tar (any compression) or zip, sorted by key.

    Every member is checked with :func:`check_member`, wanted or not.
    """
    items = []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    is_link = stat.S_ISLNK(info.external_attr >> 16)
                    link = zf.read(info).decode("utf-8", "replace") if is_link else None
                    check_member(path, info.filename, link, is_symlink=True)
                    parts = tuple(p for p in info.filename.split("/") if p)
                    if info.is_dir() or is_link or not parts or _hidden(parts):
                        continue
                    key = want(parts)
                    if key is not None:
                        items.append((key, info.filename, zf.read(info)))
        else:
            with tarfile.open(path, "r|*") as tf:
                for member in tf:
                    link = member.linkname if (member.issym() or member.islnk()) else None
                    check_member(path, member.name, link, is_symlink=member.issym())
                    parts = tuple(p for p in member.name.split("/") if p not in ("", "."))
                    if not member.isfile() or not parts or _hidden(parts):
                        continue
                    key = want(parts)
                    if key is not None:
                        handle = tf.extractfile(member)
                        assert handle is not None  # a regular file (isfile above) has one
                        items.append((key, member.name, handle.read()))
    except DataError:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError,
            ValueError) as e:
        raise DataError(f"could not read archive {path} ({type(e).__name__}: {e}): "
                        f"{CORRUPT}.") from e
    items.sort(key=lambda item: item[0])
    return items


def scan_folder(root: pathlib.Path, want: Want) -> list[tuple[Any, pathlib.Path, list]]:
    """(key, path, stamp) of wanted files under ``root``, sorted by key.

    The stamp (relative path, size, mtime) goes into the source fingerprint, so
    a changed file invalidates the cache without reading any file here.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not _hidden((d,))]
        rel = pathlib.Path(dirpath).relative_to(root).parts
        for fname in filenames:
            parts = (*rel, fname)
            if _hidden((fname,)):
                continue
            key = want(parts)
            if key is not None:
                p = pathlib.Path(dirpath, fname)
                st = p.stat()
                found.append((key, p, ["/".join(parts), st.st_size, st.st_mtime_ns]))
    found.sort(key=lambda item: item[0])
    return found


def read_folder_files(found) -> list[Item]:
    """The bytes of the files :func:`scan_folder` found, as items in the same order."""
    items = []
    for key, p, _ in found:
        try:
            items.append((key, str(p), p.read_bytes()))
        except OSError as e:
            raise DataError(f"could not read {p} ({e}); check its permissions or replace "
                            "it.") from e
    return items
