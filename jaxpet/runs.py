"""The run store: the workdir lock, one fingerprinted stage cache, provenance, the run.

Every experiment runs through this module (and writes its files through
:mod:`jaxpet.files`, whose writes are atomic):

* :class:`Workdir` checks the folder is writable before any work and holds an
  exclusive lock on it for the run, so a second writer is refused instead of
  mixing two runs' files.
* :class:`StageCache` keeps every reusable stage (trained phases, logits,
  checkpoints of a stage still running) under a fingerprint of what the
  stage's result depends on: its settings and the digest of the data it read.
  A matching stage is reused, a different one recomputed, and a stage file
  that does not load is discarded with a warning and recomputed;
  :meth:`StageCache.run` says which happened.
* :func:`provenance` is the block every ``results.json`` carries.
* :class:`Run` is one experiment run: its locked workdir, its stages, its
  timings, progress and training histories, and ``results.json``. The report
  page is not built here: the caller passes ``on_finish`` (the experiments pass
  :func:`jaxpet.page.write_page`), called when the run ends without error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import contextlib
import dataclasses
import datetime
import errno
import fcntl
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import IO, Any, NamedTuple

from absl import logging
import jax
import numpy as np

from jaxpet import __version__, distributed, files, progress
from jaxpet.errors import UserError

# ----------------------------------------------------------------------------- workdir


class WorkdirError(UserError):
    """The workdir cannot be used: not writable, or another run holds it."""


class Workdir:
    """A run's output folder, checked writable and locked for this process.

    Use as a context manager (``with runs.Workdir(path) as workdir:``); the lock
    is an ``flock`` on ``<path>/.jaxpet.lock``, released when the run ends or
    its process dies, so ``kill -9`` never leaves a stale lock.
    """

    LOCK_NAME = ".jaxpet.lock"

    def __init__(self, path, *, flag: str = "--workdir"):
        self.path = pathlib.Path(path)
        self.flag = flag
        self._lock_file: IO[str] | None = None
        # The writer's check; a failure stops every process (the others' sight of the
        # folder is checked when the run starts: distributed.check_shared).
        distributed.together(lambda: check_writable(self.path, flag) if distributed.is_writer()
                             else None)

    def __enter__(self) -> Workdir:
        self.lock()
        return self

    def __exit__(self, *exc) -> None:
        self.unlock()

    def __truediv__(self, name) -> pathlib.Path:
        return self.path / name

    def lock(self) -> None:
        lock_path = self.path / self.LOCK_NAME
        try:
            f = open(lock_path, "a+")
        except OSError as e:
            raise WorkdirError(f"cannot open the lock file {lock_path} ({e.strerror or e}) — "
                               f"choose a {self.flag} of your own.") from e
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                f.close()
                raise WorkdirError(f"{self.flag}={self.path} cannot be locked ({e.strerror or e}); "
                                   "its file system does not support locks — choose a local "
                                   "folder.") from e
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise WorkdirError(
                f"{self.flag}={self.path} is in use by another jaxpet run ({holder}) — wait for "
                f"it to finish or choose another {self.flag}.") from e
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}: {' '.join(sys.argv)[:300]}\n")
        f.flush()
        self._lock_file = f

    def unlock(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None


_PATH_MAX, _NAME_MAX = 4096, 255  # Linux's limits on a path and on one name in it
# The deepest file a run writes below its workdir: a stage's checkpoint inside orbax's
# layout (stages/checkpoints-<name>-<digest>/<step>/<item>/<array folders>/...), with room.
_DEEPEST_FILE = 300


def _short(path) -> str:
    text = str(path)
    return text if len(text) <= 120 else f"{text[:60]}...{text[-40:]} ({len(text)} characters)"


def check_writable(path, flag: str = "--workdir") -> pathlib.Path:
    """Creates ``path`` and proves it writable, before any work; else a :class:`WorkdirError`."""
    path = pathlib.Path(path)
    longest = len(os.fsencode(os.path.abspath(path))) + _DEEPEST_FILE
    if longest > _PATH_MAX or any(len(os.fsencode(p)) > _NAME_MAX for p in path.parts):
        raise WorkdirError(f"{flag}={_short(path)} is too long for the file system (a run's "
                           f"files lie up to {_DEEPEST_FILE} characters below it, within "
                           f"{_PATH_MAX} in all, each name within {_NAME_MAX}) — choose a "
                           "shorter path.")
    if path.exists() and not path.is_dir():
        raise WorkdirError(f"{flag}={path} is a file, not a folder — choose another {flag}.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test"):
            pass
    except OSError as e:
        raise WorkdirError(f"{flag}={path} is not writable ({e.strerror or e}) — choose a folder "
                           "you can write to.") from e
    return path


# ----------------------------------------------------------------------------- stage cache


class Stage(NamedTuple):
    """What :meth:`StageCache.run` gives: the stage's arrays and info, and whether they were
    reused (a finished stage of this key loaded) rather than computed now."""

    arrays: dict[str, np.ndarray]
    info: dict
    reused: bool


class StageCache:
    """Finished stages kept as ``<name>-<fingerprint>.npz`` (arrays) + ``.json`` (info).

    ``key`` is everything the stage's result depends on (settings and the data's
    digest); its fingerprint names the files, so a stage of other settings or
    other data never matches. The JSON is written last and marks the stage done.
    """

    def __init__(self, directory):
        self.directory = pathlib.Path(directory)

    def paths(self, name: str, key) -> tuple[pathlib.Path, pathlib.Path]:
        stem = f"{name}-{files.digest(key)}"
        return self.directory / f"{stem}.npz", self.directory / f"{stem}.json"

    def checkpoint_dir(self, name: str, key) -> pathlib.Path:
        """Where the stage keeps checkpoints while it runs (removed once it is done)."""
        return self.directory / f"checkpoints-{name}-{files.digest(key)}"

    def load(self, name: str, key) -> tuple[dict[str, np.ndarray], dict] | None:
        """The finished stage, or None; a stage file that does not load is discarded."""
        found = self._load(name, key)
        return None if found is None else (found[0], found[1]["info"])

    def _load(self, name: str, key) -> tuple[dict[str, np.ndarray], dict] | None:
        """(arrays, the stage's whole JSON record) of :meth:`load`.

        Every array is read whole here (its checksum checked), so a damaged file is found
        now, discarded and recomputed, and never fails a later step or every rerun.
        """
        arrays_path, meta_path = self.paths(name, key)
        if not meta_path.exists():
            return None
        try:
            meta = files.read_json(meta_path)
            if not isinstance(meta, dict) or meta.get("fingerprint") != files.digest(key):
                raise ValueError(f"it is not this stage's (fingerprint {files.digest(key)})")
            if "checksum" in meta and meta["checksum"] != _record_checksum(meta):
                raise ValueError(f"{meta_path.name} fails its checksum")
            if "info" not in meta:
                raise ValueError("it holds no info record")
            listed = meta.get("arrays", [])
            if not isinstance(listed, list) or not all(isinstance(a, str) for a in listed):
                raise ValueError("its list of arrays is not a list of names")
            arrays = files.read_npz(arrays_path)
            missing = set(listed) - set(arrays)
            if missing:
                raise ValueError(f"arrays {sorted(missing)} are missing")
        except MemoryError:
            raise  # the machine's shortage, not the file's damage (its checksums passed)
        except Exception as e:  # noqa: BLE001 - any stage file that does not load is recomputed
            logging.warning("Stage %s: discarding %s, which does not load (%s: %s); "
                            "recomputing it.", name, arrays_path, type(e).__name__, e)
            self._discard(meta_path, arrays_path)
            return None
        return arrays, meta

    @staticmethod
    def _discard(*paths: pathlib.Path) -> None:
        """Removes a stage's files (the JSON first: without it the stage is not done), folders
        in their place included; one that cannot be removed is a warning, and the stage is
        then written over when it is saved again."""
        if not distributed.is_writer():
            return
        for path in paths:
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            except OSError as e:
                logging.warning("Could not remove %s (%s).", path, e.strerror or e)

    def run(self, name: str, key, compute: Callable[[], tuple[dict[str, np.ndarray], dict]],
            ) -> Stage:
        """The stage's (arrays, info, reused): reused when finished with this key, else computed
        (``compute()``, which returns the arrays and the info) and saved.

        The training histories recorded while the stage computes are kept with it and
        recorded again when it is reused, so a run's ``history.jsonl`` is whole either way.
        """
        tracker = progress.current()
        # The key holds the data's digest: processes given other data (another copy under
        # their own --data_dir) would train one ensemble on different examples.
        distributed.check_same(files.digest(key), f"stage {name}'s settings and data",
                               "give every process the same data (and flags).")
        found = self._load(name, key)
        if not distributed.all_agree(found is not None):
            found = None  # seen by some processes only (a file system still syncing): recompute
        if found is not None:
            arrays, meta = found
            logging.info("Stage %s: reusing the finished result in %s", name,
                         self.paths(name, key)[0])
            tracker.stage_reused(name)
            saved = meta.get("histories")
            for phase, rows in (saved if isinstance(saved, dict) else {}).items():
                tracker.record_history(phase, rows)
            return Stage(arrays, meta["info"], reused=True)
        histories: dict[str, list[dict]] = {}
        remove = tracker.add_history_sink(lambda phase, rows: histories.__setitem__(phase, rows))
        try:
            arrays, info = compute()
        finally:
            remove()
        self.save(name, key, arrays, info, histories=histories)
        return Stage(arrays, info, reused=False)

    def save(self, name: str, key, arrays: dict[str, np.ndarray], info: dict,
             histories: Mapping[str, list[dict]] | None = None) -> None:
        """Writes a finished stage (arrays first, the JSON that marks it done last) and removes
        its checkpoints."""
        arrays_path, meta_path = self.paths(name, key)
        files.write_npz(arrays_path, **arrays)
        record = json.loads(json.dumps(files._jsonable(  # as it reads back, for its checksum
            {"fingerprint": files.digest(key), "key": files._canonical(key),
             "arrays": sorted(arrays), "info": info, "histories": dict(histories or {})})))
        files.write_json(meta_path, {**record, "checksum": _record_checksum(record)})
        if distributed.is_writer():
            shutil.rmtree(self.checkpoint_dir(name, key), ignore_errors=True)


# Settings each process may give its own way: paths (a host's own copy of the data; the
# workdir, which must then be one shared folder, checked by distributed.check_shared).
_PER_PROCESS = ("workdir", "data_dir")


def _shared_settings(config) -> dict:
    """The settings every process of a run must agree on: all but :data:`_PER_PROCESS`."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if f.name not in _PER_PROCESS}


def _record_checksum(record: Mapping) -> str:
    """The digest of a stage's JSON record (all but its checksum): a flipped digit in the
    info is found, not reported as the stage's result."""
    return files.digest({k: v for k, v in record.items() if k != "checksum"})


# ----------------------------------------------------------------------------- provenance


def _git_commit() -> str | None:
    root = pathlib.Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except (ImportError, AttributeError):
        return None


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def python_path() -> list[str] | None:
    """``$PYTHONPATH``'s entries made absolute (None when it is unset or empty): where a user's
    module given as ``--model=module:function`` was imported from, which the command that
    reproduces the run needs (:func:`jaxpet.page.reproduce_command`)."""
    entries = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
               if p]
    return entries or None


def provenance(started: str, argv=None) -> dict:
    """Where and how a result was made: backend, devices, versions, commit, command (with the
    ``PYTHONPATH`` it ran under, where one was set), times."""
    devices = jax.devices()
    path = python_path()
    return {
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),
        "versions": {"jaxpet": __version__, "jax": jax.__version__,
                     "flax": _version("flax"), "optax": _version("optax"),
                     "numpy": np.__version__, "python": platform.python_version()},
        "git_commit": _git_commit(),
        "command": list(sys.argv if argv is None else argv),
        "cwd": os.getcwd(),  # what the command's relative paths are relative to
        **({"pythonpath": path} if path else {}),
        "started": started,
        "finished": now(),
    }


# ----------------------------------------------------------------------------- one run


class Run:
    """One experiment run: its locked workdir, its config on disk, its stage cache, its timings,
    its progress and its training histories.

    ``with runs.Run(workdir, config) as run:`` checks and locks the workdir
    before any work; :meth:`finish` writes ``config.json`` and ``results.json``
    (the config, the results, the timings and the provenance block). A run
    that fails early leaves no output files; the stages it finished stay. The
    outputs of an earlier run in the workdir stay until this run writes its
    own; then every one it has not written over goes, so the folder never
    holds a mix of two runs' outputs.

    Inside the block the run's :class:`jaxpet.progress.Tracker` is current: every
    phase reports to it, and every trained phase's history lands in
    ``history.jsonl`` and ``curves.png`` as soon as it is trained (or reused).
    A run that ends without error then calls ``on_finish(path)``: the experiments
    pass :func:`jaxpet.page.write_page`, which writes ``report.html`` (the page is
    built outside the store; one that cannot be built is a warning, never a lost
    run: every result is already on disk).
    """

    HISTORY = "history.jsonl"
    CURVES = "curves.png"
    PAGE = "report.html"

    def __init__(self, workdir, config, *, outputs=(), stage_dir=None, flag: str = "--workdir",
                 on_finish: Callable[[pathlib.Path], Any] | None = None):
        self.workdir = Workdir(workdir, flag=flag)
        self.path = self.workdir.path
        self.config = config
        self.experiment = type(config).__module__.rsplit(".", 1)[-1]
        self.stages = StageCache(stage_dir if stage_dir is not None else self.path / "stages")
        self.started = now()
        self.seconds: dict[str, float] = {}
        self.progress = progress.Tracker(progress.default_mode())
        self.histories: dict[str, list[dict]] = {}
        self.on_finish = on_finish
        # What a finished run leaves besides history, curves and page (removed on entry):
        # results.json (last: it is what marks a finished run), config.json, and the outputs
        # the experiment declares.
        self.outputs = ("results.json", "config.json", *outputs)
        self._check_outputs((*self.outputs, self.HISTORY, self.CURVES, self.PAGE), flag)
        self._earlier: dict[str, tuple[int, ...]] = {}
        self._scope: contextlib.ExitStack | None = None

    def _check_outputs(self, outputs, flag: str) -> None:
        """Refuses, before any work, a workdir whose output places are taken, or that holds
        another experiment's results (which this run would mix with its own)."""
        for name in outputs:
            if (self.path / name).is_dir():
                raise WorkdirError(f"{flag}={self.path} holds a folder {name} where this run "
                                   f"writes a file — remove it or choose another {flag}.")
        if self.stages.directory.exists() and not self.stages.directory.is_dir():
            raise WorkdirError(f"{self.stages.directory} is a file where this run keeps its "
                               f"stages — remove it or choose another {flag}.")
        try:
            previous = files.read_json(self.path / "results.json")["provenance"]["experiment"]
        except (OSError, ValueError, KeyError, TypeError):
            return  # no earlier results (or none that say whose they are)
        if previous != self.experiment:
            raise WorkdirError(f"{flag}={self.path} holds the results of a {previous} run; this "
                               f"{self.experiment} run would mix its files with them — choose "
                               f"another {flag}.")

    def __enter__(self) -> Run:
        # Across processes: one config, one writer (process 0, which alone locks and writes
        # the workdir), and a workdir every process sees (stages are read by all).
        distributed.check_same(files.digest(_shared_settings(self.config)), "the config",
                               "start every process with the same flags.")
        distributed.together(self.workdir.lock if distributed.is_writer() else lambda: None)
        distributed.check_shared(self.path, self.workdir.flag)
        if not distributed.is_writer():
            self._earlier = {}
            self._scope = contextlib.ExitStack()
            self._scope.enter_context(progress.tracking(self.progress))
            self._scope.callback(self.progress.add_history_sink(self.record_history))
            return self
        # Stale files of an earlier run in this workdir would mix with this run's.
        for name in (self.HISTORY, self.CURVES, self.PAGE):
            (self.path / name).unlink(missing_ok=True)
        # The earlier run's outputs stay until this run writes its own: a run that fails
        # before writing any loses nothing.
        self._earlier = {name: key for name in self.outputs
                         if (key := _file_key(self.path / name)) is not None}
        self._scope = contextlib.ExitStack()
        self._scope.enter_context(progress.tracking(self.progress))
        self._scope.callback(self.progress.add_history_sink(self.record_history))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self._scope is not None:  # the sink removed, the previous tracker current again
                self._scope.close()
            if exc_type is None:
                self._finished()
            elif any(_file_key(self.path / name) != key for name, key in self._earlier.items()):
                # It failed after writing some of its outputs over the earlier run's: the
                # earlier run's others (its results.json first) go too, never a mix of two.
                self._remove_earlier()
        finally:
            self.workdir.unlock()

    def _remove_earlier(self) -> None:
        """Removes the outputs an earlier run left that this run has not written over
        (results.json first: without it the folder holds no finished run)."""
        removed = []
        for name, key in self._earlier.items():
            path = self.path / name
            if _file_key(path) == key:
                try:
                    path.unlink(missing_ok=True)
                    removed.append(name)
                except OSError as e:
                    logging.warning("Could not remove the earlier run's %s (%s); it does not "
                                    "belong to this run's results.", path, e.strerror or e)
        self._earlier = {}
        if removed:
            logging.info("Removed the earlier run's %s from %s.", ", ".join(removed), self.path)

    def expect(self, phase: str, units: float, *, stage: str | None = None,
               cost: float = 1.0) -> None:
        """This run will do ``phase`` (``units`` of work, each ``cost`` training images; part of
        ``stage``): what the whole run's ETA counts (see :mod:`jaxpet.progress`)."""
        self.progress.expect(phase, units, stage=stage, cost=cost)

    @contextlib.contextmanager
    def timed(self, name: str):
        """Adds the seconds spent in the block to ``seconds[name]``."""
        tick = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - tick

    def record_history(self, phase: str, rows: list[dict]) -> None:
        """Keeps a trained phase's per-epoch rows and rewrites ``history.jsonl`` and
        ``curves.png`` with every phase so far (a phase trained twice gets a ``#2`` name)."""
        name, n = phase, 1
        while name in self.histories:
            n += 1
            name = f"{phase}#{n}"
        self.histories[name] = rows
        lines = [json.dumps({"phase": p, **row}) for p, phase_rows in self.histories.items()
                 for row in phase_rows]
        files.write_text(self.path / self.HISTORY, "\n".join(lines) + "\n")
        from jaxpet import report  # local: report imports matplotlib
        files.save_figure(report.curves_figure(self.histories), self.path / self.CURVES)

    def _finished(self) -> None:
        """Calls ``on_finish`` (the report page); its failure is a warning, not a lost run."""
        if self.on_finish is None or not distributed.is_writer():
            return
        try:
            self.on_finish(self.path)
        except Exception as e:  # noqa: BLE001 - the results are written; the page is extra
            logging.warning("Could not write %s (%s: %s); the run's results are complete.",
                            self.path / self.PAGE, type(e).__name__, e)

    def finish(self, results: dict) -> dict:
        """Writes ``results.json``: the config, ``results``, the timings and the provenance.

        Every output of an earlier run in this workdir that this run has not yet written is
        removed first, so a run that fails later (a full disk while writing its summary)
        leaves part of its own outputs beside its results.json, never the earlier run's.
        """
        results = {"config": dataclasses.asdict(self.config), **results,
                   "seconds": {**self.seconds, **results.get("seconds", {})},
                   "provenance": {"experiment": self.experiment, **provenance(self.started)}}
        self._remove_earlier()
        files.write_json(self.path / "config.json", results["config"])
        files.write_json(self.path / "results.json", results)
        return results


def _file_key(path: pathlib.Path) -> tuple[int, ...] | None:
    """What tells one version of a file from another (its inode, size and time: jaxpet's
    writes replace a file by a new one); None when there is no file."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def read_history(path) -> list[dict]:
    """The rows of a ``history.jsonl`` (one JSON object per line)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
