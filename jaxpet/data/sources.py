"""A located copy of a dataset (:class:`Source`): what it is, its fingerprint, how to decode it.

The fingerprint is cheap (paths, sizes, modification times or a TFDS version;
no file is read) and keys the array cache: a changed file gives a new key.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import pathlib

from jaxpet import files
from jaxpet.data import archives
from jaxpet.data.containers import Dataset

# Bumped when the decoded arrays or the cache layout change, so old cache entries are not used.
CACHE_FORMAT = 1


@dataclasses.dataclass
class Source:
    """A located source: its kind, where it is, a fingerprint for the cache key, a decoder."""

    kind: str
    path: str
    fingerprint: str
    load: Callable[[], Dataset]


def fingerprint(*parts) -> str:
    """The cache key of a source described by ``parts`` (JSON-able stamps, names, versions)."""
    return files.digest("source", CACHE_FORMAT, parts, length=64)


def file_stamp(path: pathlib.Path) -> list:
    """(resolved path, size, mtime) of a file, for a fingerprint."""
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


Build = Callable[[list[archives.Item], pathlib.Path], Dataset]


def archive_source(name: str, kind: str, path: pathlib.Path, want: archives.Want,
                   build: Build) -> Source:
    """A source read from one tar/zip archive: ``build(wanted members, path)`` decodes it."""
    return Source(kind, str(path), fingerprint(name, kind, file_stamp(path)),
                  lambda: build(archives.read_archive(path, want), path))


def folder_source(name: str, kind: str, path: pathlib.Path, want: archives.Want,
                  build: Build) -> Source:
    """A source read from a folder tree: ``build(wanted files, path)`` decodes it."""
    found = archives.scan_folder(path, want)
    key = fingerprint(name, kind, str(path.resolve()), [f[2] for f in found])
    return Source(kind, str(path), key, lambda: build(archives.read_folder_files(found), path))
