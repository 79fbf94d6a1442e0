"""Safe archive reading: corrupt and truncated archives, tar-slip members, links."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from jaxpet import data
from jaxpet.data import archives


def test_corrupt_and_truncated_tarball(tmp_path, small_counts, make):
    (tmp_path / "att_faces.tar.gz").write_bytes(os.urandom(4096))
    with pytest.raises(data.DataError,
                       match=r"att_faces\.tar\.gz .*corrupt or truncated.*re-download"):
        data.load_dataset("att_faces", tmp_path, use_cache=False)
    members, _ = make.att_members()
    make.write_tar(tmp_path / "att_faces.tar.gz", members)
    blob = (tmp_path / "att_faces.tar.gz").read_bytes()
    (tmp_path / "att_faces.tar.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(data.DataError, match=r"att_faces\.tar\.gz .*corrupt or truncated"):
        data.load_dataset("att_faces", tmp_path, use_cache=False)


@pytest.mark.parametrize("bad", ["../evil.pgm", "att_faces/s1/../../evil.pgm", "/tmp/evil.pgm"])
@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_unsafe_archive_member_refused(tmp_path, small_counts, make, bad, kind):
    members, _ = make.att_members()
    members.append((bad, b"P5 evil"))
    if kind == "zip":
        make.write_zip(tmp_path / "att_faces.zip", members)
    else:
        make.write_tar(tmp_path / "att_faces.tar.gz", members)
    with pytest.raises(data.DataError, match="refusing archive member .*outside the target folder"):
        data.load_dataset("att_faces", tmp_path, use_cache=False)


@pytest.mark.parametrize("link_type,target,safe", [
    (tarfile.SYMTYPE, "../../../etc/passwd", False), (tarfile.SYMTYPE, "/etc/passwd", False),
    (tarfile.LNKTYPE, "../outside.pgm", False), (tarfile.SYMTYPE, "1.pgm", True)])
def test_links_in_archive(tmp_path, small_counts, make, link_type, target, safe):
    """Links that leave the archive are refused; a link inside it is skipped (never followed)."""
    members, _ = make.att_members()
    make.write_tar(tmp_path / "att_faces.tar.gz", members)
    with tarfile.open(tmp_path / "att_faces.tar.gz") as tf:  # rewrite with an extra link
        entries = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    with tarfile.open(tmp_path / "att_faces.tar.gz", "w:gz") as tf:
        for m, blob in entries:
            tf.addfile(m, io.BytesIO(blob))
        link = tarfile.TarInfo("att_faces/s1/11.pgm")
        link.type, link.linkname = link_type, target
        tf.addfile(link)
    if safe:
        assert len(data.load_dataset("att_faces", tmp_path, use_cache=False).train) == 30
        return
    with pytest.raises(data.DataError, match="refusing archive member 'att_faces/s1/11.pgm'"):
        data.load_dataset("att_faces", tmp_path, use_cache=False)


@pytest.mark.parametrize("name,link,is_symlink,ok", [
    ("a/b.png", None, False, True), ("a\\..\\..\\b.png", None, False, False),
    ("C:/x.png", None, False, False), ("a/l", "../b.png", True, True),
    ("a/l", "../../b.png", True, False), ("a/l", "a/b.png", False, True),
    ("a/l", "../b.png", False, False)])
def test_check_member(name, link, is_symlink, ok):
    """Symlink targets resolve from the link's folder, hard links from the archive root."""
    if ok:
        archives.check_member("x.tar", name, link, is_symlink=is_symlink)
    else:
        with pytest.raises(data.DataError, match="refusing archive member"):
            archives.check_member("x.tar", name, link, is_symlink=is_symlink)


def test_hidden_files_skipped_and_natural_order(tmp_path):
    for name in ("s10/1.pgm", "s2/1.pgm", ".hidden/s1/1.pgm", "s1/.1.pgm", "s1/1.pgm"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(name.encode())
    found = archives.scan_folder(tmp_path, lambda parts: archives.natural_key("/".join(parts)))
    assert [f[2][0] for f in found] == ["s1/1.pgm", "s2/1.pgm", "s10/1.pgm"]
    items = archives.read_folder_files(found)
    assert [it[2] for it in items] == [b"s1/1.pgm", b"s2/1.pgm", b"s10/1.pgm"]
