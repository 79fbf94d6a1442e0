"""Checkpoints of a running ensemble (orbax), keyed by a fingerprint of the run.

* :func:`run_fingerprint` digests everything that decides a run's result, with
  :func:`jaxpet.files.digest` (the one fingerprint of jaxpet); a directory that
  holds another run's checkpoints is refused, never resumed.
* :class:`Checkpoints` keeps the latest complete save. A save that does not fit
  on the disk fails once, before writing when the free space is known to be
  short, with a :class:`~jaxpet.errors.UserError` naming the directory and the
  space needed; the partial save is removed and the last complete one kept. A
  save that does not restore, whatever the damage (truncated, deleted or garbled
  files, a flipped bit in the arrays, which orbax itself would restore as other
  weights, found by the checksums each save records), is discarded with a
  warning, and the run resumes from an older one or starts from scratch.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging as stdlib_logging
import os
import shutil
import sys
import threading
import time
import zlib

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxpet import distributed, files
from jaxpet.errors import UserError
from jaxpet.splits import MemberSets
from jaxpet.training.state import ModelState

# Room for orbax's own metadata files on top of the state's and history's bytes.
_OVERHEAD_BYTES = 1 << 20
# In the name of a save orbax is still writing; it renames the folder to the step when done.
_TMP_MARK = ".orbax-checkpoint-tmp"
# After a failed orbax call, time for tensorstore to finish the operations it still runs.
_SETTLE_SECONDS = 0.2
# The longest wait for orbax's own threads of a failed call (its other reads or writes).
_JOIN_SECONDS = 30.0


def run_fingerprint(model, config, preprocess, images, labels, members: MemberSets,
                    validation: MemberSets | None, keys) -> str:
    """A digest of everything that decides a run's result (not the strategy or the mesh).

    The full images and labels are hashed, so a run on other data with the same
    shape never resumes this run's checkpoints.
    """
    keys = jnp.asarray(keys)
    if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
        keys = jax.random.key_data(keys)
    sets = lambda s: None if s is None else (np.asarray(s.indices), np.asarray(s.counts))
    return files.digest("training-checkpoint", repr(model), repr(config), repr(preprocess),
                       np.asarray(images), np.asarray(labels), sets(members), sets(validation),
                       np.asarray(keys))


def state_bytes(state) -> int:
    """Bytes of every array of ``state`` (an upper bound of its compressed checkpoint)."""
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))


def _free_bytes(directory: str) -> int | None:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def _join_new_threads(before: set, timeout: float = _JOIN_SECONDS) -> bool:
    """Waits (at most ``timeout`` seconds) for the threads started since ``before`` to end;
    whether they all did.

    ``threading.Thread.join`` is called, not the thread's own: orbax's commit threads
    override ``join`` to raise their save's error, or a TimeoutError while they still
    run, which would cut the wait short and let a partial save be removed while
    orbax still writes into it.
    """
    deadline = time.monotonic() + timeout
    while True:
        pending = [t for t in threading.enumerate()
                   if t not in before and t is not threading.current_thread()]
        left = deadline - time.monotonic()
        if not pending or left <= 0:
            return not pending
        for thread in pending:
            try:
                threading.Thread.join(thread, min(0.1, max(0.0, left)))
            except RuntimeError:  # created but not started yet
                time.sleep(0.01)


def state_checksum(state) -> int | None:
    """A CRC-32 of every array of ``state`` (values, dtypes and shapes), recorded with each
    save and checked on restore: orbax restores a flipped bit in its array files as other
    weights without a word. None when the arrays are not all on this process."""
    crc = 0
    for leaf in jax.tree.leaves(state):
        if isinstance(leaf, jax.Array):
            if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                leaf = jax.random.key_data(leaf)
            if not leaf.is_fully_addressable:
                return None
        array = np.ascontiguousarray(np.asarray(leaf))
        crc = zlib.crc32(f"{array.dtype}{array.shape}".encode(), crc)
        crc = zlib.crc32(array.reshape(-1).view(np.uint8).data, crc)
    return crc


def _record_checksum(record: dict) -> str:
    """The digest of a save's JSON record (all but its checksum), as it reads back."""
    return files.digest({k: v for k, v in json.loads(json.dumps(record)).items()
                         if k != "checksum"})


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.unlink(path)


def _mib(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:.1f} MiB"


class _DropLateReports(stdlib_logging.Filter):
    """Drops asyncio's "exception was never retrieved" reports (logged with a traceback
    when a failed orbax read or write is garbage-collected): all of them while a failed
    call settles, and later ones of a folder whose failure was already reported."""

    reported: set[str] = set()  # checkpoint folders whose failure was already reported

    def __init__(self, everything: bool = False):
        super().__init__()
        self.everything = everything

    def filter(self, record):
        if "never retrieved" not in record.getMessage():
            return True
        if self.everything:
            return False
        text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "")
        return not any(folder + os.sep in text for folder in self.reported)


@contextlib.contextmanager
def _settle_on_failure():
    """Runs an orbax call; if it fails, lets the reads or writes it left running finish.

    When one of orbax's concurrent writes (or reads) fails, orbax closes its
    event loop while tensorstore still completes the others. Waiting for them
    keeps them from writing into a partial save being removed. Their late
    reports (an unraisable "Event loop is closed" RuntimeError per callback,
    and asyncio's "exception was never retrieved" per failed future, each a
    traceback) are dropped meanwhile: the failure itself reaches the caller.
    """
    threads = set(threading.enumerate())
    previous = sys.unraisablehook
    asyncio_logger = stdlib_logging.getLogger("asyncio")
    late = _DropLateReports(everything=True)

    def hook(unraisable):
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and "Event loop is closed" in str(error)):
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    except Exception:
        asyncio_logger.addFilter(late)
        if not _join_new_threads(threads):
            logging.warning("orbax's threads still run %.0f s after a failed checkpoint read "
                            "or write; not waiting longer.", _JOIN_SECONDS)
        time.sleep(_SETTLE_SECONDS)  # tensorstore's own threads finish the other operations
        gc.collect()  # and the failed futures are reported now, not later
        raise
    finally:
        sys.unraisablehook = previous
        asyncio_logger.removeFilter(late)


class _QuietOrbax(stdlib_logging.Filter):
    """Drops orbax's INFO chatter (several lines per save) from the absl log, and its
    logged tracebacks of a failed write, which reaches the caller as one exception."""

    def filter(self, record):
        if "orbax" not in record.pathname:
            return True
        return (record.levelno > stdlib_logging.INFO
                and "raised an exception" not in record.getMessage())


def _install_log_filters() -> None:
    for name, kind in (("absl", _QuietOrbax), ("asyncio", _DropLateReports)):
        logger = stdlib_logging.getLogger(name)
        if not any(type(f) is kind for f in logger.filters):
            logger.addFilter(kind())


class Checkpoints:
    """The ensemble's state and history in an orbax CheckpointManager (latest save kept)."""

    def __init__(self, directory, fingerprint: str):
        _install_log_filters()
        self.directory = os.path.abspath(os.fspath(directory))
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise UserError(f"checkpoint directory {self.directory} is a file — remove it or "
                            "choose another workdir.")
        self.fingerprint = fingerprint
        # A save cut short (kill -9) holds disk space; the writer alone removes it.
        if os.path.isdir(self.directory) and distributed.is_writer():
            for name in os.listdir(self.directory):
                if _TMP_MARK in name:
                    _remove(os.path.join(self.directory, name))
        self.manager = self._open()

    def _manager(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False),
        )

    def _open(self) -> ocp.CheckpointManager:
        """orbax's manager of the directory. orbax reads every save's own metadata when it
        opens; one it cannot read (e.g. a JSON list where it wants an object) would fail
        every rerun, so the saves are then discarded (another run's still refused) and the
        run starts from scratch."""
        try:
            return self._manager()
        except MemoryError:
            raise
        except Exception as e:  # a damaged save must not stop every rerun (else re-raised)
            steps = (sorted(name for name in os.listdir(self.directory) if name.isdigit())
                     if os.path.isdir(self.directory) else [])
            if not steps:
                raise  # not a save's damage
            for step in steps:
                self._refuse_another_run(step)
            logging.warning("The checkpoints in %s do not open (%s: %s); discarding %s and "
                            "training from scratch.", self.directory, type(e).__name__,
                            str(e)[:300], ", ".join(steps))
            _DropLateReports.reported.add(self.directory)
            for step in steps:
                if distributed.is_writer():
                    _remove(os.path.join(self.directory, step))
            distributed.barrier(f"jaxpet-reopen-{self.directory}")
            return self._manager()

    def _refuse_another_run(self, step: str) -> None:
        """Raises the different-run UserError when save ``step``'s record, read directly
        (orbax keeps the Composite's ``meta`` item as ``<step>/meta/metadata``), is another
        run's; a record that does not read is left to the caller (damaged)."""
        try:
            with open(os.path.join(self.directory, step, "meta", "metadata")) as f:
                fingerprint = json.load(f).get("fingerprint")
        except Exception:  # noqa: BLE001 - unreadable: damaged, not another run's
            return
        if isinstance(fingerprint, str) and fingerprint != self.fingerprint:
            raise self._another_run(fingerprint)

    def _another_run(self, fingerprint) -> UserError:
        return UserError(
            f"checkpoint directory {self.directory} holds checkpoints of a different run "
            f"(fingerprint {fingerprint}, this run {self.fingerprint}) — use another directory, "
            "or delete that one to start over.")

    def restore(self, template: ModelState):
        """(state, history) of the latest save that restores, or None to start from scratch.

        Raises a UserError if the directory holds another run's checkpoints.
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        for step in steps:
            try:
                with _settle_on_failure():
                    meta = self.manager.restore(
                        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
                if not isinstance(meta, dict) or not isinstance(meta.get("fingerprint"), str):
                    raise ValueError("its record is not a jaxpet checkpoint's")
                if "checksum" in meta and meta["checksum"] != _record_checksum(meta):
                    raise ValueError("its record fails its checksum")
            except MemoryError:
                raise
            except Exception as e:  # noqa: BLE001  (any unreadable save is discarded)
                self._discard(step, e)
                continue
            if meta["fingerprint"] != self.fingerprint:
                raise self._another_run(meta["fingerprint"])
            try:
                with _settle_on_failure():
                    restored = self.manager.restore(
                        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(template)))
                history = [{k: np.asarray(v) for k, v in h.items()} for h in meta["history"]]
                if len(history) != step:
                    raise ValueError(f"history has {len(history)} epochs, not {step}")
                expected = meta.get("state_checksum")
                if expected is not None and state_checksum(restored["state"]) != expected:
                    raise ValueError("its arrays fail their checksum (a damaged array file)")
            except MemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - as above: an unreadable save is discarded
                self._discard(step, e)
                continue
            return restored["state"], history
        if steps:
            logging.warning("No checkpoint in %s restores; training from scratch.", self.directory)
        return None

    def _discard(self, step: int, error: Exception) -> None:
        logging.warning("Checkpoint %s of %s does not restore (%s: %s); discarding it.", step,
                        self.directory, type(error).__name__, str(error)[:300])
        _DropLateReports.reported.add(self.directory)
        self.manager.close()
        if distributed.is_writer():
            shutil.rmtree(os.path.join(self.directory, str(step)), ignore_errors=True)
        distributed.barrier(f"jaxpet-discard-{self.directory}-{step}")
        self.manager = self._open()

    def check_space(self, state: ModelState, history, epochs_done: int = 0) -> int:
        """Raises a UserError unless the disk has room for a save; returns the bytes needed."""
        need = (state_bytes(state) + len(json.dumps(self._meta(epochs_done, history)))
                + _OVERHEAD_BYTES)
        free = _free_bytes(self.directory)
        if free is not None and free < need:
            raise self._space_error(need, free)
        return need

    def _space_error(self, need: int, free: int | None) -> UserError:
        last = self.manager.latest_step()
        kept = (f"its last complete checkpoint (epoch {last}) is kept and a rerun resumes from it"
                if last is not None else "a rerun starts over")
        free_text = f", {_mib(free)} free" if free is not None else ""
        return UserError(f"no space to save a checkpoint in {self.directory}: it needs about "
                         f"{_mib(need)}{free_text} — free some disk space there or choose another "
                         f"workdir; {kept}.")

    def _meta(self, epochs_done: int, history) -> dict:
        return {"fingerprint": self.fingerprint, "epochs_done": epochs_done,
                "history": [{k: np.asarray(v).tolist() for k, v in h.items()} for h in history]}

    def _checked_meta(self, epochs_done: int, state, history) -> dict:
        """The save's JSON record with the checksums that :meth:`restore` checks."""
        meta = {**self._meta(epochs_done, history), "state_checksum": state_checksum(state)}
        return {**meta, "checksum": _record_checksum(meta)}

    def save(self, epochs_done: int, state: ModelState, history):
        """Saves after ``epochs_done`` epochs; a full disk is one UserError, the last save kept."""
        os.makedirs(self.directory, exist_ok=True)
        need = self.check_space(state, history, epochs_done)
        before = set(os.listdir(self.directory))
        try:
            with _settle_on_failure():
                self.manager.save(epochs_done, args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    meta=ocp.args.JsonSave(self._checked_meta(epochs_done, state, history))),
                    force=True)
                self.manager.wait_until_finished()
        except Exception as e:
            if not files.is_disk_full(e):
                raise
            _DropLateReports.reported.add(self.directory)
            self._remove_partial(before)
            raise self._space_error(need, _free_bytes(self.directory)) from e

    def _remove_partial(self, before: set[str]) -> None:
        """Removes what a failed save left (all but finalised step folders), reopening orbax.

        Runs once the save's threads ended (:func:`_settle_on_failure`), and closing the
        manager waits for a save orbax may still finalise: nothing writes into what is
        removed here. Every temporary folder goes (``3.orbax-checkpoint-tmp``,
        ``3.orbax-checkpoint-tmp-<time>``), even one an earlier failure left.
        """
        try:
            self.manager.close()  # waits for orbax's pending save and finalisation
        except Exception:  # noqa: BLE001  (the failed save may surface again; it is reported)
            pass
        for name in os.listdir(self.directory):
            if name.isdigit():
                continue  # orbax renames a save to its step only once it is complete
            if _TMP_MARK in name or name not in before:
                _remove(os.path.join(self.directory, name))
        left = [name for name in os.listdir(self.directory) if _TMP_MARK in name]
        if left:  # still written by tensorstore: the next run removes them on start
            logging.warning("Could not remove the partial checkpoint %s of %s.",
                            ", ".join(left), self.directory)
        self.manager = self._open()

    def close(self):
        self.manager.close()
