"""The run store: workdirs, atomic writes, one fingerprinted stage cache, provenance.

Every experiment writes through this module:

* :class:`Workdir` checks the folder is writable before any work and holds an
  exclusive lock on it for the run, so a second writer is refused instead of
  mixing two runs' files.
* :func:`write_json`, :func:`write_npz`, :func:`write_text` and
  :func:`save_figure` write through a temporary file and a rename, so a crash
  never leaves half a file.
* :class:`StageCache` keeps every reusable stage (trained phases, logits,
  checkpoints of a stage still running) under a fingerprint of what the
  stage's result depends on: its settings and the digest of the data it read.
  A matching stage is reused, a different one recomputed, and a stage file
  that does not load is discarded with a warning and recomputed.
* :func:`provenance` is the block every ``results.json`` carries.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import hashlib
import io
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from typing import Any, Callable, Mapping

from absl import logging
from flax import traverse_util
import jax
import numpy as np

from jaxpet import __version__, progress
from jaxpet.errors import UserError

# ----------------------------------------------------------------------------- fingerprints


def _canonical(obj) -> Any:
    """A JSON-able, order-stable form of ``obj``; arrays by dtype, shape and content digest."""
    if isinstance(obj, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"__type__": type(obj).__name__,
                **{f.name: _canonical(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, float):
        return repr(obj)  # keeps nan/inf and every bit of precision
    if hasattr(obj, "__array__") and hasattr(obj, "shape"):
        arr = np.ascontiguousarray(np.asarray(obj))
        return {"__array__": str(arr.dtype), "shape": list(arr.shape),
                "sha256": hashlib.sha256(arr.tobytes()).hexdigest()}
    return repr(obj)


def digest(*parts: Any, length: int = 16) -> str:
    """Hex digest of ``parts`` (settings, arrays, dataclasses, nested containers).

    The one fingerprint function of jaxpet: stage caches, checkpoints and the
    data's content digest all use it, so equal inputs give equal keys everywhere.
    """
    text = json.dumps(_canonical(list(parts)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


# ----------------------------------------------------------------------------- atomic writes

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_UMASK = os.umask(0o022)  # read once (setting it back at once), not per write: threads share it
os.umask(_UMASK)



def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or one it came from) is a full disk or an exceeded quota.

    orbax writes arrays through tensorstore, which reports a full disk as a
    ``ValueError`` whose message carries the OS error, not as an ``OSError``.
    """
    texts = [os.strerror(code) for code in DISK_FULL]
    texts += [f"os_error_code='{code}'" for code in DISK_FULL]
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            return True
        if any(text in str(error) for text in texts):
            return True
        error = error.__cause__ or error.__context__
    return False


def atomic_write(path, write: Callable[[Any], None]) -> pathlib.Path:
    """Writes through a temp file in the same folder, then renames: no half file on a crash.

    A full disk is reported as one :class:`UserError` naming the folder, with the
    temp file removed.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide results from other users
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, IsADirectoryError):
            raise UserError(f"{path} is a folder where a file should be written — remove it or "
                            "choose another --workdir.") from e
        if is_disk_full(e):
            raise UserError(f"no space left to write {path} ({_free(path.parent)} free in "
                            f"{path.parent}) — free some disk space or choose another "
                            "--workdir; finished stages are kept, a rerun resumes.") from e
        raise
    return path


def _free(folder) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB"
    except OSError:
        return "unknown space"


def _jsonable(obj):
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def write_json(path, obj: Any) -> pathlib.Path:
    text = json.dumps(_jsonable(obj), indent=2) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()))


def read_json(path) -> Any:
    with open(path) as f:
        return json.load(f)


def write_npz(path, **arrays) -> pathlib.Path:
    return atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def read_npz(path) -> dict[str, np.ndarray]:
    """All arrays of an .npz, loaded now (never unpickled)."""
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def write_text(path, text: str) -> pathlib.Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def save_figure(fig, path, dpi: int | None = None) -> pathlib.Path:
    """Lays out and writes a ``matplotlib.figure.Figure`` atomically (PNG by the suffix).

    Figures are built as ``Figure`` objects, never through pyplot, so nothing
    here touches matplotlib's global backend or figure registry.
    """
    path = pathlib.Path(path)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", dpi=dpi)
    return atomic_write(path, lambda f: f.write(buffer.getvalue()))


def save_image(image, path) -> pathlib.Path:
    """Writes a PIL image as PNG atomically."""
    return atomic_write(path, lambda f: image.save(f, format="PNG", optimize=True))


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
        self._lock_file = None
        check_writable(self.path, flag)

    def __enter__(self) -> "Workdir":
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


def check_writable(path, flag: str = "--workdir") -> pathlib.Path:
    """Creates ``path`` and proves it writable, before any work; else a :class:`WorkdirError`."""
    path = pathlib.Path(path)
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


class StageCache:
    """Finished stages kept as ``<name>-<fingerprint>.npz`` (arrays) + ``.json`` (info).

    ``key`` is everything the stage's result depends on (settings and the data's
    digest); its fingerprint names the files, so a stage of other settings or
    other data never matches. The JSON is written last and marks the stage done.
    """

    def __init__(self, directory):
        self.directory = pathlib.Path(directory)

    def paths(self, name: str, key) -> tuple[pathlib.Path, pathlib.Path]:
        stem = f"{name}-{digest(key)}"
        return self.directory / f"{stem}.npz", self.directory / f"{stem}.json"

    def checkpoint_dir(self, name: str, key) -> pathlib.Path:
        """Where the stage keeps checkpoints while it runs (removed once it is done)."""
        return self.directory / f"checkpoints-{name}-{digest(key)}"

    def load(self, name: str, key) -> tuple[dict[str, np.ndarray], dict] | None:
        """The finished stage, or None; a stage file that does not load is discarded."""
        found = self._load(name, key)
        return None if found is None else (found[0], found[1]["info"])

    def _load(self, name: str, key) -> tuple[dict[str, np.ndarray], dict] | None:
        """(arrays, the stage's whole JSON record) of :meth:`load`."""
        arrays_path, meta_path = self.paths(name, key)
        if not meta_path.exists():
            return None
        try:
            meta = read_json(meta_path)
            if not isinstance(meta, dict) or meta.get("fingerprint") != digest(key):
                raise ValueError(f"it is not this stage's (fingerprint {digest(key)})")
            arrays = read_npz(arrays_path)
            missing = set(meta.get("arrays", [])) - set(arrays)
            if missing:
                raise ValueError(f"arrays {sorted(missing)} are missing")
            if "info" not in meta:
                raise ValueError("it holds no info record")
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, TypeError) as e:
            logging.warning("Stage %s: discarding %s, which does not load (%s: %s); "
                            "recomputing it.", name, arrays_path, type(e).__name__, e)
            for p in (meta_path, arrays_path):
                p.unlink(missing_ok=True)
            return None
        return arrays, meta

    def run(self, name: str, key, compute: Callable[[], tuple[dict[str, np.ndarray], dict]],
            ) -> tuple[dict[str, np.ndarray], dict]:
        """The stage's (arrays, info): reused when finished with this key, else computed and saved.

        The training histories recorded while the stage computes are kept with it and
        recorded again when it is reused, so a run's ``history.jsonl`` is whole either way.
        """
        tracker = progress.current()
        found = self._load(name, key)
        if found is not None:
            arrays, meta = found
            logging.info("Stage %s: reusing the finished result in %s", name,
                         self.paths(name, key)[0])
            tracker.stage_reused(name)
            histories = meta.get("histories")
            for phase, rows in (histories if isinstance(histories, dict) else {}).items():
                tracker.record_history(phase, rows)
            return arrays, meta["info"]
        histories: dict[str, list[dict]] = {}
        remove = tracker.add_history_sink(lambda phase, rows: histories.__setitem__(phase, rows))
        try:
            arrays, info = compute()
        finally:
            remove()
        self.save(name, key, arrays, info, histories=histories)
        return arrays, info

    def save(self, name: str, key, arrays: dict[str, np.ndarray], info: dict,
             histories: Mapping[str, list[dict]] | None = None) -> None:
        """Writes a finished stage (arrays first, the JSON that marks it done last) and removes
        its checkpoints."""
        arrays_path, meta_path = self.paths(name, key)
        write_npz(arrays_path, **arrays)
        write_json(meta_path, {"fingerprint": digest(key), "key": _canonical(key),
                               "arrays": sorted(arrays), "info": info,
                               "histories": dict(histories or {})})
        shutil.rmtree(self.checkpoint_dir(name, key), ignore_errors=True)


_EMPTY = "/__empty__"


def tree_to_arrays(prefix: str, tree) -> dict[str, np.ndarray]:
    """A pytree of arrays (e.g. Flax variables) as flat ``<prefix>/<path>`` arrays, to save in a
    stage; :func:`arrays_to_tree` reads it back."""
    flat = traverse_util.flatten_dict(jax.device_get(tree), sep="/", keep_empty_nodes=True)
    return {f"{prefix}/{k}" + (_EMPTY if v is traverse_util.empty_node else ""):
            np.zeros(0) if v is traverse_util.empty_node else np.asarray(v)
            for k, v in flat.items()}


def arrays_to_tree(prefix: str, arrays: Mapping[str, np.ndarray]):
    """The pytree that :func:`tree_to_arrays` saved under ``prefix`` (as device arrays)."""
    mine = {}
    for k, v in arrays.items():
        if k.startswith(prefix + "/"):
            k = k[len(prefix) + 1:]
            if k.endswith(_EMPTY):  # an empty collection, e.g. a model's batch_stats without BN
                mine[k[:-len(_EMPTY)]] = traverse_util.empty_node
            else:
                mine[k] = jax.numpy.asarray(v)
    return traverse_util.unflatten_dict(mine, sep="/")


# ----------------------------------------------------------------------------- provenance


def _git_commit() -> str | None:
    root = pathlib.Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
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
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def provenance(started: str, argv=None) -> dict:
    """Where and how a result was made: backend, devices, versions, commit, command, times."""
    devices = jax.devices()
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
        "started": started,
        "finished": now(),
    }


# ----------------------------------------------------------------------------- one run


class Run:
    """One experiment run: its locked workdir, its config on disk, its stage cache, its timings,
    its progress, its training histories and its report page.

    ``with runs.Run(workdir, config) as run:`` checks and locks the workdir
    before any work; :meth:`finish` writes ``config.json`` and ``results.json``
    (the config, the results, the timings and the provenance block). A run
    that fails early leaves no output files; the stages it finished stay.

    Inside the block the run's :class:`jaxpet.progress.Tracker` is current: every
    phase reports to it, and every trained phase's history lands in
    ``history.jsonl`` and ``curves.png`` as soon as it is trained (or reused).
    A run that ends without error writes ``report.html``, one self-contained page
    of everything in the workdir.
    """

    HISTORY = "history.jsonl"
    CURVES = "curves.png"
    PAGE = "report.html"

    def __init__(self, workdir, config, *, outputs=(), stage_dir=None, flag: str = "--workdir"):
        self.workdir = Workdir(workdir, flag=flag)
        self.path = self.workdir.path
        self.config = config
        self.experiment = type(config).__module__.rsplit(".", 1)[-1]
        self.stages = StageCache(stage_dir if stage_dir is not None else self.path / "stages")
        self.started = now()
        self.seconds: dict[str, float] = {}
        self.progress = progress.Tracker(progress.default_mode())
        self.histories: dict[str, list[dict]] = {}
        self._check_outputs(("config.json", "results.json", self.HISTORY, self.CURVES, self.PAGE,
                             *outputs), flag)
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
            previous = read_json(self.path / "results.json")["provenance"]["experiment"]
        except (OSError, ValueError, KeyError, TypeError):
            return  # no earlier results (or none that say whose they are)
        if previous != self.experiment:
            raise WorkdirError(f"{flag}={self.path} holds the results of a {previous} run; this "
                               f"{self.experiment} run would mix its files with them — choose "
                               f"another {flag}.")

    def __enter__(self) -> "Run":
        self.workdir.lock()
        # Stale files of an earlier run in this workdir would mix with this run's.
        for name in (self.HISTORY, self.CURVES, self.PAGE):
            (self.path / name).unlink(missing_ok=True)
        self._scope = contextlib.ExitStack()
        self._scope.enter_context(progress.tracking(self.progress))
        self._scope.callback(self.progress.add_history_sink(self.record_history))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._scope.close()  # the sink removed, the previous tracker current again
            if exc_type is None:
                self.write_page()
        finally:
            self.workdir.unlock()

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
        write_text(self.path / self.HISTORY, "\n".join(lines) + "\n")
        from jaxpet import report  # local: report imports matplotlib
        save_figure(report.curves_figure(self.histories), self.path / self.CURVES)

    def write_page(self) -> pathlib.Path | None:
        """``report.html`` of this workdir (a page that cannot be built is a warning, not a
        lost run: every result is already on disk)."""
        try:
            from jaxpet import page  # local: the page module reads every experiment's outputs
            return page.write_page(self.path)
        except Exception as e:  # noqa: BLE001 - the results are written; the page is extra
            logging.warning("Could not write %s (%s: %s); the run's results are complete.",
                            self.path / self.PAGE, type(e).__name__, e)
            return None

    def finish(self, results: dict) -> dict:
        """Writes ``results.json``: the config, ``results``, the timings and the provenance."""
        results = {"config": dataclasses.asdict(self.config), **results,
                   "seconds": {**self.seconds, **results.get("seconds", {})},
                   "provenance": {"experiment": self.experiment, **provenance(self.started)}}
        write_json(self.path / "config.json", results["config"])
        write_json(self.path / "results.json", results)
        return results


def read_history(path) -> list[dict]:
    """The rows of a ``history.jsonl`` (one JSON object per line)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
