"""The run store: the workdir lock, the stage cache, provenance and the run."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import pathlib
import struct
import zipfile
import zlib

import numpy as np
import pytest

from jaxpet import files, runs
from jaxpet.errors import UserError


def test_a_second_writer_is_refused_until_the_first_finishes(tmp_path):
    with runs.Workdir(tmp_path / "run"):
        with pytest.raises(runs.WorkdirError, match=r"in use by another jaxpet run \(pid \d+"):
            runs.Workdir(tmp_path / "run").lock()
    with runs.Workdir(tmp_path / "run"):  # released: a later run may write
        pass


def test_unusable_workdirs_are_refused_before_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(runs.WorkdirError, match="is a file, not a folder"):
        runs.Workdir(blocker)
    with pytest.raises(runs.WorkdirError, match="not writable"):
        runs.Workdir(blocker / "sub", flag="--out")


def _stage(counter):
    def compute():
        counter.append(1)
        return {"x": np.arange(5) * len(counter)}, {"calls": len(counter)}
    return compute


def test_stage_is_reused_for_its_key_only(tmp_path):
    cache, calls = runs.StageCache(tmp_path), []
    arrays, info, _ = cache.run("train", {"epochs": 2, "data": "abc"}, _stage(calls))
    again, info2, _ = cache.run("train", {"data": "abc", "epochs": 2}, _stage(calls))
    assert len(calls) == 1 and info2 == info and np.array_equal(again["x"], arrays["x"])
    cache.run("train", {"epochs": 2, "data": "other"}, _stage(calls))  # other data: recomputed
    assert len(calls) == 2


def _big_stage(counter):
    """A stage whose arrays compress into a real deflate stream (Huffman-coded, back-references)."""
    def compute():
        counter.append(1)
        rng = np.random.default_rng(0)
        return ({"logits": rng.integers(0, 50, (4, 400)).astype(np.float32) * len(counter),
                 "labels": np.arange(400) % 10}, {"calls": len(counter), "acc": 0.91})
    return compute


def _member_data(path, member):
    """(offset, length) of ``member``'s compressed bytes in the zip file ``path``."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    header = path.read_bytes()[info.header_offset:info.header_offset + 30]  # the local header
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.compress_size


def _flip_until_zlib_fails(path):
    """Flips one byte in the middle of the logits member's deflate stream, trying bytes from
    there on until zlib itself (not only the CRC) rejects the stream: the case that escaped."""
    original = path.read_bytes()
    start, length = _member_data(path, "logits.npy")
    for pos in range(start + length // 2, start + length):
        damaged = bytearray(original)
        damaged[pos] ^= 0xFF
        path.write_bytes(bytes(damaged))
        try:
            with zipfile.ZipFile(path) as archive:
                archive.read("logits.npy")
        except zlib.error:
            return
        except zipfile.BadZipFile:  # the CRC caught it; look for a flip zlib rejects
            continue
    raise AssertionError("no byte flip made zlib fail")


def _flip_crc_caught(path):
    original = bytearray(path.read_bytes())
    start, length = _member_data(path, "labels.npy")
    original[start + length // 2] ^= 0x01
    path.write_bytes(bytes(original))


def _object_array(path):
    np.savez(path, logits=np.array([{"a": 1}], dtype=object), labels=np.arange(3))


def _json_with(path, **changes):
    record = json.loads(path.read_text())
    record.update(changes)
    path.write_text(json.dumps(record))


def _flip_a_digit(path):  # 0.91 -> 0.11: one bit of '9'
    path.write_text(path.read_text().replace('"acc": 0.91', '"acc": 0.11'))


def _replace_by_folder(path):
    path.unlink()
    path.mkdir()
    (path / "inside").write_text("x")


_DAMAGES = {
    "truncate_npz": lambda npz, meta: npz.write_bytes(npz.read_bytes()[:npz.stat().st_size // 2]),
    "truncate_npz_to_20_bytes": lambda npz, meta: npz.write_bytes(npz.read_bytes()[:20]),
    "empty_npz": lambda npz, meta: npz.write_bytes(b""),
    "flip_in_deflate_stream": lambda npz, meta: _flip_until_zlib_fails(npz),
    "flip_caught_by_crc": lambda npz, meta: _flip_crc_caught(npz),
    "delete_npz": lambda npz, meta: npz.unlink(),
    "npz_is_text": lambda npz, meta: npz.write_text("not an archive"),
    "npz_is_a_folder": lambda npz, meta: _replace_by_folder(npz),
    "object_array": lambda npz, meta: _object_array(npz),
    "array_missing": lambda npz, meta: np.savez(npz, labels=np.arange(3)),
    "garbage_json": lambda npz, meta: meta.write_text("{not json"),
    "binary_json": lambda npz, meta: meta.write_bytes(b"\xff\xfe\x00garbage"),
    "json_is_a_list": lambda npz, meta: meta.write_text("[1, 2]"),
    "json_is_a_folder": lambda npz, meta: _replace_by_folder(meta),
    "wrong_fingerprint": lambda npz, meta: _json_with(meta, fingerprint="0" * 16),
    "no_info": lambda npz, meta: meta.write_text(json.dumps(
        {k: v for k, v in json.loads(meta.read_text()).items() if k != "info"})),
    "arrays_not_a_list": lambda npz, meta: _json_with(meta, arrays=7),
    "flipped_digit_in_info": lambda npz, meta: _flip_a_digit(meta),
}


@pytest.mark.parametrize("damage", sorted(_DAMAGES))
def test_every_way_a_stage_fails_to_load_is_discarded_and_recomputed(tmp_path, damage, caplog):
    cache, calls = runs.StageCache(tmp_path), []
    first = cache.run("logits", {"k": 1}, _big_stage(calls))
    arrays_path, meta_path = cache.paths("logits", {"k": 1})
    _DAMAGES[damage](arrays_path, meta_path)
    with caplog.at_level("WARNING"):
        assert cache.load("logits", {"k": 1}) is None
    assert "discarding" in caplog.text and "recomputing" in caplog.text
    assert not arrays_path.exists() and not meta_path.exists()
    again = cache.run("logits", {"k": 1}, _big_stage(calls))  # the same damage, met by run()
    _DAMAGES[damage](arrays_path, meta_path)
    caplog.clear()
    with caplog.at_level("WARNING"):
        recomputed = cache.run("logits", {"k": 1}, _big_stage(calls))
    assert "recomputing" in caplog.text
    assert again.reused is recomputed.reused is False and len(calls) == 3
    assert recomputed.info["calls"] == 3
    np.testing.assert_array_equal(recomputed.arrays["logits"], 3 * first.arrays["logits"])
    assert cache.run("logits", {"k": 1}, _big_stage(calls)).reused is True  # saved whole again


@pytest.mark.parametrize("error", [MemoryError, KeyboardInterrupt])
def test_a_memory_error_or_an_interrupt_while_loading_a_stage_is_not_swallowed(
        tmp_path, monkeypatch, error):
    cache, calls = runs.StageCache(tmp_path), []
    cache.run("logits", {"k": 1}, _stage(calls))

    def fail(path):
        raise error()

    monkeypatch.setattr(runs.files, "read_npz", fail)
    with pytest.raises(error):
        cache.run("logits", {"k": 1}, _stage(calls))
    assert all(p.exists() for p in cache.paths("logits", {"k": 1}))  # kept: it was not damaged
    assert len(calls) == 1


def test_stage_reports_whether_it_was_reused(tmp_path):
    cache, calls = runs.StageCache(tmp_path), []
    first = cache.run("logits", {"k": 1}, _stage(calls))
    assert first.reused is False and first.info == {"calls": 1}
    again = cache.run("logits", {"k": 1}, _stage(calls))
    assert again.reused is True and again.info == {"calls": 1} and len(calls) == 1
    np.testing.assert_array_equal(again.arrays["x"], first.arrays["x"])
    arrays_path, _ = cache.paths("logits", {"k": 1})
    arrays_path.write_bytes(arrays_path.read_bytes()[:20])  # damaged: discarded, recomputed
    recomputed = cache.run("logits", {"k": 1}, _stage(calls))
    assert recomputed.reused is False and recomputed.info == {"calls": 2} and len(calls) == 2
    assert cache.run("logits", {"k": 1}, _stage(calls)).reused is True


def test_run_writes_config_results_and_provenance(tmp_path):
    @dataclasses.dataclass(frozen=True)
    class Cfg:
        epochs: int = 3

    with runs.Run(tmp_path / "run", Cfg()) as run:
        with run.timed("work"):
            pass
        results = run.finish({"value": np.float32(0.5)})
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == {"epochs": 3}
    assert saved["config"] == {"epochs": 3} and saved["value"] == 0.5
    assert saved["seconds"]["work"] >= 0 and results["provenance"] == saved["provenance"]
    prov = saved["provenance"]
    assert {"backend", "device_kind", "versions", "git_commit", "command", "started",
            "finished"} <= set(prov)
    assert {"jax", "flax", "optax", "jaxpet"} <= set(prov["versions"])
    assert prov["started"] <= prov["finished"]


@dataclasses.dataclass(frozen=True)
class _Cfg:
    epochs: int = 3


def test_on_finish_is_called_only_when_the_run_ends_without_error(tmp_path):
    finished = []
    with runs.Run(tmp_path / "ok", _Cfg(), on_finish=finished.append):
        pass
    assert finished == [tmp_path / "ok"]
    with pytest.raises(RuntimeError):
        with runs.Run(tmp_path / "failed", _Cfg(), on_finish=finished.append):
            raise RuntimeError("the run fails")
    assert finished == [tmp_path / "ok"]
    with runs.Run(tmp_path / "none", _Cfg()):  # no hook: nothing more than the results
        pass
    assert not (tmp_path / "none" / runs.Run.PAGE).exists()


def test_an_on_finish_that_fails_is_a_warning_not_a_lost_run(tmp_path, caplog):
    def broken(path):
        raise ValueError("cannot build the page")

    with caplog.at_level("WARNING"):
        with runs.Run(tmp_path / "run", _Cfg(), on_finish=broken) as run:
            run.finish({"value": 1})
    assert (tmp_path / "run" / "results.json").exists()
    assert "cannot build the page" in caplog.text and "results are complete" in caplog.text


_OUTPUTS = ("summary.md", "roc.png", "exposed.png")


def _finished_run(workdir, epochs, write=_OUTPUTS):
    """A run that ends well: results.json, then its outputs (as the experiments write them)."""
    with runs.Run(workdir, _Cfg(epochs), outputs=_OUTPUTS) as run:
        run.finish({"value": epochs})
        for name in write:
            files.write_text(workdir / name, f"{name} of the run of {epochs} epochs")


def _disk_full_at(monkeypatch, name):
    """Every later write of ``name`` fails as on a full disk (atomic_write's UserError)."""
    real = files.atomic_write

    def atomic_write(path, write):
        if pathlib.Path(path).name != name:
            return real(path, write)

        def no_space(f):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, no_space)

    monkeypatch.setattr(files, "atomic_write", atomic_write)


def _epochs_in(workdir):
    return json.loads((workdir / "results.json").read_text())["config"]["epochs"]


def test_a_run_that_fails_late_leaves_no_earlier_output_beside_its_results(tmp_path,
                                                                          monkeypatch):
    workdir = tmp_path / "run"
    _finished_run(workdir, 1)
    _disk_full_at(monkeypatch, "summary.md")
    with pytest.raises(UserError, match="no space left to write .*summary.md"):
        _finished_run(workdir, 2)
    assert _epochs_in(workdir) == 2
    assert json.loads((workdir / "config.json").read_text()) == {"epochs": 2}
    assert not [name for name in _OUTPUTS if (workdir / name).exists()]  # none of run 1's


def test_a_run_that_fails_after_writing_an_output_before_its_results_leaves_no_mix(tmp_path):
    workdir = tmp_path / "run"
    _finished_run(workdir, 1)
    with pytest.raises(RuntimeError):
        with runs.Run(workdir, _Cfg(2), outputs=_OUTPUTS):
            files.write_text(workdir / "roc.png", "roc.png of the run of 2 epochs")
            raise RuntimeError("fails before its results")
    assert sorted(p.name for p in workdir.iterdir() if not p.name.startswith(".")) == ["roc.png"]
    assert (workdir / "roc.png").read_text() == "roc.png of the run of 2 epochs"


def test_a_run_that_fails_before_writing_anything_keeps_the_earlier_run(tmp_path):
    workdir = tmp_path / "run"
    _finished_run(workdir, 1)
    with pytest.raises(RuntimeError):
        with runs.Run(workdir, _Cfg(2), outputs=_OUTPUTS):
            raise RuntimeError("fails early")
    assert _epochs_in(workdir) == 1
    assert all((workdir / name).read_text().endswith("run of 1 epochs") for name in _OUTPUTS)


def test_an_output_the_new_run_does_not_write_is_not_left_from_the_earlier_run(tmp_path):
    workdir = tmp_path / "run"
    _finished_run(workdir, 1)
    _finished_run(workdir, 2, write=("summary.md", "roc.png"))  # e.g. no exposed.png for features
    assert _epochs_in(workdir) == 2 and not (workdir / "exposed.png").exists()
    assert (workdir / "summary.md").read_text().endswith("run of 2 epochs")
