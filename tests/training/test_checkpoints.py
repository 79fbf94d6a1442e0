"""Checkpoints: resume == uninterrupted, another run refused, full disk and corrupt saves
handled."""

import asyncio
import errno
import json
import logging
import os
import pathlib
import shutil
import threading

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint._src.serialization import jax_array_handlers
import pytest

from jaxpet import training
from jaxpet.errors import UserError
from jaxpet.training import checkpoints


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def run(fitted):
    """``run(**kwargs)`` trains the shared 4-epoch, K=2 run (conftest.Fitted) again;
    ``run.whole`` is it uninterrupted."""
    def train(**kwargs):
        return fitted.train(**kwargs)

    train.whole = fitted.result
    train.args = (fitted.model, fitted.config, fitted.normalize, fitted.images, fitted.labels,
                  fitted.sets)
    return train


def _interrupt_after(epochs_done):
    def callback(epoch, state, metrics):
        if epoch + 1 == epochs_done:
            raise Interrupted

    return callback


def _assert_same_run(a, b):
    jax.tree.map(np.testing.assert_array_equal, a.state, b.state)
    assert len(a.history) == len(b.history)
    for x, y in zip(a.history, b.history, strict=True):
        assert set(x) == set(y)
        for name in set(x) - {"seconds"}:  # an epoch's wall time differs between runs
            np.testing.assert_array_equal(x[name], y[name])


def test_checkpointed_run_resumes_to_the_uninterrupted_result(run, tmp_path):
    directory = tmp_path / "ckpt"
    with pytest.raises(Interrupted):
        run(checkpoint_dir=str(directory), checkpoint_every=1, on_epoch_end=_interrupt_after(2))
    resumed = run(checkpoint_dir=directory)  # a pathlib.Path works as well
    assert len(resumed.history) == 4
    chex.assert_trees_all_close(run.whole.state.params, resumed.state.params, atol=1e-6)
    chex.assert_trees_all_close(run.whole.state.opt_state, resumed.state.opt_state, atol=1e-6)
    np.testing.assert_allclose(run.whole.history[0]["loss"], resumed.history[0]["loss"])
    # Another run's directory is refused, not silently resumed.
    model, config, normalize, images, labels, sets = run.args
    with pytest.raises(UserError, match=f"{directory}.*different run.*another directory"):
        training.train_ensemble(model, images, labels, sets, config, seed=6, preprocess=normalize,
                                checkpoint_dir=str(directory))


def test_fingerprint_covers_every_image_and_not_the_strategy(run):
    model, config, normalize, images, labels, sets = run.args
    keys = training.model_keys(5, 2)
    fingerprint = lambda imgs, k=keys: checkpoints.run_fingerprint(
        model, config, normalize, imgs, labels, sets, None, k)
    assert fingerprint(images) == fingerprint(images.copy())
    changed = images.copy()
    changed[3, 2, 2, 0] ^= 1  # one pixel of an image a strided sample would skip
    assert fingerprint(changed) != fingerprint(images)
    assert fingerprint(images, training.model_keys(6, 2)) != fingerprint(images)


def test_full_disk_before_a_save_fails_once_and_keeps_the_last_checkpoint(run, tmp_path,
                                                                          monkeypatch):
    directory = tmp_path / "ckpt"
    real_disk_usage = checkpoints.shutil.disk_usage
    full = []

    def disk_usage(path):
        usage = real_disk_usage(path)
        return usage._replace(free=0) if full else usage

    monkeypatch.setattr(checkpoints.shutil, "disk_usage", disk_usage)
    with pytest.raises(UserError) as raised:  # the save after epoch 3 finds no space
        run(checkpoint_dir=str(directory), checkpoint_every=1,
            on_epoch_end=lambda epoch, *_: full.append(True) if epoch == 1 else None)
    message = str(raised.value)
    assert str(directory) in message and "needs about" in message and "MiB" in message
    assert "epoch 2" in message and "\n" not in message
    assert os.listdir(directory) == ["2"]
    full.clear()
    _assert_same_run(run(checkpoint_dir=str(directory)), run.whole)


def test_full_disk_during_a_save_fails_once_and_removes_the_partial_save(run, tmp_path,
                                                                         monkeypatch, caplog):
    """orbax's writer runs out of space halfway through the save after epoch 3, while
    orbax still writes that save's arrays in its own threads.

    The arrays are written only after the failure, and slowly: a cleanup that did not
    wait for them would see its partial save written again afterwards. The listing
    waits for those writes to end, so it does not depend on the threads' timing.
    """
    directory = tmp_path / "ckpt"
    handler = ocp.handlers.JsonCheckpointHandler
    real_save = handler._save_fn
    real_write = jax_array_handlers._async_serialize_replica_slices  # orbax's array writer
    failed, written = threading.Event(), threading.Event()

    async def out_of_space(self, item, path):
        (path / "metadata").write_text('{"fingerprint": "')  # half written
        failed.set()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    async def late_write(*args, **kwargs):
        try:
            await asyncio.to_thread(failed.wait, 60)
            await asyncio.sleep(0.5)  # a cleanup that stopped waiting would run first
            return await real_write(*args, **kwargs)
        finally:
            written.set()

    def fill_disk(epoch, state, metrics):
        if epoch == 1:
            monkeypatch.setattr(handler, "_save_fn", out_of_space)
            monkeypatch.setattr(jax_array_handlers, "_async_serialize_replica_slices", late_write)

    caplog.set_level(logging.INFO)
    with pytest.raises(UserError, match=f"no space to save a checkpoint in {directory}.*epoch 2"):
        run(checkpoint_dir=str(directory), checkpoint_every=1, on_epoch_end=fill_disk)
    assert written.wait(60)  # the failed save's writes are over: nothing adds to the listing
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert os.listdir(directory) == ["2"]  # the partial save is gone, the last complete one kept
    monkeypatch.setattr(handler, "_save_fn", real_save)
    monkeypatch.setattr(jax_array_handlers, "_async_serialize_replica_slices", real_write)
    _assert_same_run(run(checkpoint_dir=str(directory)), run.whole)


def _truncate_arrays(step_dir):
    for root, _, files in os.walk(step_dir / "state"):
        for name in files:
            if os.path.basename(root) == "d":  # the array data files
                path = os.path.join(root, name)
                os.truncate(path, os.path.getsize(path) // 2)


def _garble_history(step_dir):
    (step_dir / "meta" / "metadata").write_bytes(b"\x00not json")


def _largest_file(step_dir):
    paths = [pathlib.Path(root, name) for root, _, names in os.walk(step_dir) for name in names]
    return max(paths, key=lambda p: p.stat().st_size)


def _flip_array_byte(step_dir):
    """One flipped byte in the middle of the largest array file: orbax restores it as other
    weights, without an error, so only the save's own checksum finds it."""
    path = _largest_file(step_dir / "state")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _orbax_metadata_a_list(step_dir):  # orbax's manager then fails when it opens the folder
    (step_dir / "_CHECKPOINT_METADATA").write_text("[1, 2]")


@pytest.mark.parametrize("corrupt", [_truncate_arrays, _garble_history, _flip_array_byte,
                                     _orbax_metadata_a_list])
def test_unreadable_checkpoint_is_discarded_and_the_run_still_finishes(run, tmp_path, caplog,
                                                                       corrupt):
    directory = tmp_path / "ckpt"
    with pytest.raises(Interrupted):
        run(checkpoint_dir=str(directory), checkpoint_every=1, on_epoch_end=_interrupt_after(2))
    corrupt(directory / "2")
    caplog.set_level(logging.WARNING)
    result = run(checkpoint_dir=str(directory))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(("does not restore" in w or "do not open" in w) and str(directory) in w
               for w in warnings), warnings
    _assert_same_run(result, run.whole)  # trained from scratch, to the same result
    assert os.listdir(directory) == ["4"]


def test_a_save_cut_short_is_removed_when_the_run_restarts(tmp_path):
    partial = tmp_path / "ckpt" / "3.orbax-checkpoint-tmp" / "state.orbax-checkpoint-tmp"
    partial.mkdir(parents=True)
    (partial / "data").write_bytes(b"\0" * 1000)
    saves = training.Checkpoints(tmp_path / "ckpt", "fingerprint")
    assert saves.restore(template=None) is None
    saves.close()
    assert os.listdir(tmp_path / "ckpt") == []


# A small state saved in one folder, damaged in every way a file can be, then restored: each
# damage is a warning and a fresh start (None), never a traceback, never other weights.
_STATE = {"w": np.arange(2000, dtype=np.float32).reshape(20, 100), "b": np.ones(7, np.float32)}
_HISTORY = [{"loss": np.float32(1.0)}, {"loss": np.float32(0.5)}]


def _all_files(folder):
    return sorted(pathlib.Path(root, name) for root, _, names in os.walk(folder)
                  for name in names)


def _on_largest_array_file(change):
    return lambda step: change(_largest_file(step / "state"))


def _on_every_file_in(sub, change):
    def damage(step):
        for path in _all_files(step / sub):
            change(path)
    return damage


def _truncate(path):
    os.truncate(path, path.stat().st_size // 2)


def _flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_record(change):
    def damage(step):
        path = step / "meta" / "metadata"
        record = json.loads(path.read_text())
        path.write_text(json.dumps(change(record)))
    return damage


_DAMAGES = {
    "array_file_truncated": _on_largest_array_file(_truncate),
    "array_file_byte_flipped": _on_largest_array_file(_flip),
    "array_file_deleted": _on_largest_array_file(os.unlink),
    "array_file_emptied": _on_largest_array_file(lambda p: p.write_bytes(b"")),
    "array_files_all_garbage": _on_every_file_in("state", lambda p: p.write_bytes(b"\0garbage")),
    "state_folder_deleted": lambda step: shutil.rmtree(step / "state"),
    "record_garbage": lambda step: (step / "meta" / "metadata").write_bytes(b"\xff\x00{"),
    "record_truncated": lambda step: _truncate(step / "meta" / "metadata"),
    "record_deleted": lambda step: (step / "meta" / "metadata").unlink(),
    "record_a_list": lambda step: (step / "meta" / "metadata").write_text("[1, 2]"),
    "record_without_fingerprint": _edit_record(
        lambda r: {k: v for k, v in r.items() if k not in ("fingerprint", "checksum")}),
    "record_digit_changed": _edit_record(lambda r: {**r, "history": [{"loss": 7.0}] * 2}),
    "history_entries_not_objects": _edit_record(
        lambda r: {k: v for k, v in {**r, "history": [1, 2]}.items() if k != "checksum"}),
    "orbax_metadata_a_list": _orbax_metadata_a_list,
}


@pytest.mark.parametrize("damage", sorted(_DAMAGES))
def test_every_damaged_save_is_discarded_with_a_warning(tmp_path, caplog, damage):
    directory = tmp_path / "ckpt"
    saves = training.Checkpoints(directory, "fingerprint")
    saves.save(2, _STATE, _HISTORY)
    saves.close()
    _DAMAGES[damage](directory / "2")
    caplog.set_level(logging.WARNING)
    saves = training.Checkpoints(directory, "fingerprint")
    assert saves.restore(_STATE) is None  # a fresh start, not other weights or a traceback
    warnings = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert str(directory) in warnings and ("does not restore" in warnings
                                           or "do not open" in warnings), warnings
    assert "2" not in os.listdir(directory)
    saves.save(3, _STATE, _HISTORY + _HISTORY[:1])  # the folder is usable again
    restored, history = saves.restore(_STATE)
    saves.close()
    np.testing.assert_array_equal(restored["w"], _STATE["w"])
    assert len(history) == 3


def test_an_undamaged_save_restores_and_another_runs_is_still_refused(tmp_path):
    directory = tmp_path / "ckpt"
    saves = training.Checkpoints(directory, "fingerprint")
    saves.save(2, _STATE, _HISTORY)
    saves.close()
    saves = training.Checkpoints(directory, "fingerprint")
    restored, history = saves.restore(_STATE)
    np.testing.assert_array_equal(restored["w"], _STATE["w"])
    assert [float(h["loss"]) for h in history] == [1.0, 0.5]
    saves.close()
    with pytest.raises(UserError, match="different run"):  # even when orbax cannot open it
        _orbax_metadata_a_list(directory / "2")
        training.Checkpoints(directory, "another")
    assert os.listdir(directory) == ["2"]  # another run's save is never removed


@pytest.mark.parametrize("error", [MemoryError, KeyboardInterrupt])
def test_a_memory_error_or_an_interrupt_while_restoring_is_not_swallowed(tmp_path, monkeypatch,
                                                                          error):
    directory = tmp_path / "ckpt"
    saves = training.Checkpoints(directory, "fingerprint")
    saves.save(2, _STATE, _HISTORY)

    def fail(*args, **kwargs):
        raise error()

    monkeypatch.setattr(saves.manager, "restore", fail)
    with pytest.raises(error):
        saves.restore(_STATE)
    saves.close()
    assert os.listdir(directory) == ["2"]  # kept: nothing showed it damaged
