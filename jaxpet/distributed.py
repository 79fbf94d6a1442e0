"""One ensemble across processes: JAX's multi-controller runtime, the writer, agreement.

Every process runs the same program on its own devices (one host of a TPU pod slice, one
node of a GPU job, or one of :mod:`jaxpet.launch`'s local processes). jaxpet then:

* builds one mesh over every process's devices; the trainer shards the model axis over it,
  so each process trains its own models (:mod:`jaxpet.training.sharding`);
* builds its arrays from process-local data: every process loads the same data and splits,
  and each puts on its devices only its own models' rows;
* gathers what scoring needs (each epoch's metrics, the trained models, their logits) to
  every process with :func:`gather`, so the attacks run unchanged;
* lets one process, the writer (process 0), write the run's files (:func:`is_writer`; see
  :func:`jaxpet.files.atomic_write` and :mod:`jaxpet.runs`), while orbax's checkpoints are
  written by every process, each its own shards;
* checks at the start that every process runs the same config (:func:`check_same`) and
  sees the writer's workdir (:func:`check_shared`).

:func:`initialize` starts the runtime from flags or the environment the launcher sets
(``JAXPET_COORDINATOR_ADDRESS``, ``JAXPET_NUM_PROCESSES``, ``JAXPET_PROCESS_ID``), or
with JAX's own cluster detection (TPU pods, SLURM, Open MPI). With one process every
function here is a no-op, and jaxpet runs exactly as before.
"""

from __future__ import annotations

import os
import pathlib
import secrets
import socket
import time

from absl import logging
import jax
import numpy as np

from jaxpet.errors import UserError

ENV_COORDINATOR = "JAXPET_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAXPET_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXPET_PROCESS_ID"
ENV_AUTO = "JAXPET_DISTRIBUTED"  # "auto": JAX's cluster detection (TPU pod, SLURM, Open MPI)
# How long a process waits for the coordinator and the others at the start.
INIT_TIMEOUT_SECONDS = 60
# How long the runtime waits for a silent process before it stops the others (JAX's own
# default is 100 s; a local run wants to know sooner).
HEARTBEAT_TIMEOUT_SECONDS = 30

_started = False


def _running() -> bool:
    """Whether the runtime started (here, or by the user's own jax.distributed.initialize);
    asked without touching a backend, which must not start before the runtime does."""
    return _started or jax.distributed.is_initialized()


def process_count() -> int:
    return jax.process_count() if _running() else 1


def process_index() -> int:
    return jax.process_index() if _running() else 0


def is_writer() -> bool:
    """Whether this process writes the run's files: the only one, or process 0 of several."""
    return process_index() == 0


def is_multiprocess() -> bool:
    return process_count() > 1


def _answers(address: str, timeout: float) -> bool:
    """Whether something accepts connections at ``address`` (host:port) within ``timeout``
    seconds (the coordinator of process 0 may start a little after this process)."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]") or "localhost", int(port)), 1.0):
                return True
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)


def settings_from_env() -> dict:
    """The coordinator, process count and id the launcher (or a job script) put in the
    environment; {} when none is set."""
    names = {ENV_COORDINATOR: "coordinator_address", ENV_NUM_PROCESSES: "num_processes",
             ENV_PROCESS_ID: "process_id"}
    found: dict[str, str | int] = {}
    for env, key in names.items():
        value = os.environ.get(env, "")
        if not value:
            continue
        if key == "coordinator_address":
            found[key] = value
            continue
        try:
            found[key] = int(value)
        except ValueError:
            raise UserError(f"{env}={value!r} is not a whole number — set it to one, or unset "
                            "it.") from None
    return found


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto: bool = False,
               timeout_seconds: int = INIT_TIMEOUT_SECONDS,
               heartbeat_timeout_seconds: int = HEARTBEAT_TIMEOUT_SECONDS) -> bool:
    """Starts JAX's multi-controller runtime when this process is one of several; returns
    whether it did.

    Explicit values win, then the environment (:func:`settings_from_env`); ``auto`` (or
    ``JAXPET_DISTRIBUTED=auto``) leaves everything to JAX's cluster detection (TPU pod
    slices, SLURM, Open MPI). With none of them, or one process, nothing starts. Must run
    before anything touches a device. A coordinator that cannot be reached within
    ``timeout_seconds`` is one :class:`UserError` naming its address.
    """
    global _started
    if _running():  # already started (by jax.distributed.initialize in the user's script)
        _started = True
        _quiet_others()
        return True
    settings = {**settings_from_env(),
                **{k: v for k, v in dict(coordinator_address=coordinator_address,
                                         num_processes=num_processes,
                                         process_id=process_id).items() if v is not None}}
    auto = auto or os.environ.get(ENV_AUTO, "") == "auto"
    if not settings and not auto:
        return False
    if settings.get("num_processes", 2) == 1 and not auto:
        return False
    if not auto:
        _check_settings(settings)
    # The CPU backend's collectives across processes (GPUs use NCCL, TPUs their own).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    address = str(settings.get("coordinator_address", "the cluster's coordinator"))
    fix = ("start process 0 too, check the address and port (process 0's host, a free port "
           "every host can reach), and start every one of the --num_processes processes.")
    if settings.get("process_id", 0) != 0:
        logging.set_verbosity(logging.WARNING)  # the writer logs; the others warn and fail
    if settings.get("process_id", 0) != 0 and not _answers(address, timeout_seconds):
        # Checked here: JAX's client aborts the whole process when it cannot connect.
        raise UserError(f"the coordinator at {address} could not be reached within "
                        f"{timeout_seconds} s: nothing answers there — {fix}")
    try:
        jax.distributed.initialize(**settings, initialization_timeout=timeout_seconds,
                                   heartbeat_timeout_seconds=heartbeat_timeout_seconds)
    except (RuntimeError, ValueError) as e:
        raise UserError(f"the multi-process runtime did not start with the coordinator at "
                        f"{address} within {timeout_seconds} s ({str(e).splitlines()[0][:200]})"
                        f" — {fix}") from e
    _started = True
    _quiet_others()
    logging.info("Process %d of %d: %d local devices of %d", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def _quiet_others() -> None:
    """Progress and info lines are shown once, by the writer; the others warn and fail."""
    if process_index() != 0:
        from jaxpet import progress  # local: progress is not needed to start the runtime
        progress.set_default_mode("off")
        logging.set_verbosity(logging.WARNING)


def _check_settings(settings: dict) -> None:
    missing = [f"--{name}" for name in ("coordinator_address", "num_processes", "process_id")
               if name not in settings]
    if missing:
        raise UserError(f"a multi-process run needs {', '.join(missing)} too (or "
                        f"{ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}) — give all "
                        "three, or use --distributed on a TPU pod, SLURM or Open MPI.")
    count, index = settings["num_processes"], settings["process_id"]
    if count < 1:
        raise UserError(f"--num_processes={count} must be >= 1.")
    if not 0 <= index < count:
        raise UserError(f"--process_id={index} must be in [0, {count}) for --num_processes="
                        f"{count}.")
    address = settings["coordinator_address"]
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UserError(f"--coordinator_address={address!r} is not host:port — e.g. "
                        "localhost:12355, or process 0's host name and a free port.")


# What a collective or the runtime reports when another process of the run is gone.
_PEER_GONE = ("Gloo", "Connection reset by peer", "Connection closed", "heartbeat",
              "coordination service", "UNAVAILABLE")


def lost_peer(error: BaseException) -> str | None:
    """The one-line error for ``error`` when it says another process of this run stopped
    (a collective that lost its peer, the runtime's heartbeat timeout); else None."""
    if not is_multiprocess():
        return None
    seen: set[int] = set()
    found: BaseException | None = error
    while found is not None and id(found) not in seen:  # the error, or one it came from
        seen.add(id(found))
        if isinstance(found, (RuntimeError, ValueError)) and any(
                mark in str(found) for mark in _PEER_GONE):
            break
        found = found.__cause__ or found.__context__
    else:
        return None
    text = str(found)
    return (f"process {process_index()}: another process of this run stopped "
            f"({text.strip().splitlines()[0][:160]}) — see its output for why; then start the "
            "same command on every process again: finished stages and the last checkpoint are "
            "reused.")


def abort(message: str) -> None:
    """Prints ``message`` and ends this process at once, with status 1: with a peer gone,
    the runtime's orderly shutdown would wait for it and then abort."""
    import sys
    print(message, file=sys.stderr, flush=True)
    os._exit(1)


# ----------------------------------------------------------------------------- agreement


def _allgather_bytes(data: bytes, width: int) -> list[bytes]:
    from jax.experimental import multihost_utils  # local: only multi-process runs need it
    padded = np.zeros(width, np.uint8)
    padded[:min(len(data), width)] = np.frombuffer(data[:width], np.uint8)
    rows = np.asarray(multihost_utils.process_allgather(padded))
    return [bytes(row).rstrip(b"\0") for row in rows.reshape(process_count(), width)]


def check_same(digest: str, what: str, fix: str) -> None:
    """Raises the same :class:`UserError` on every process unless all hold ``digest`` (of
    their config, their data, ...): processes that disagree would train different models
    under one name."""
    if not is_multiprocess():
        return
    digests = _allgather_bytes(digest.encode(), 64)
    differ = [i for i, d in enumerate(digests) if d != digests[0]]
    if differ:
        raise UserError(f"the processes disagree on {what}: process {differ[0]} has "
                        f"{digests[differ[0]].decode()[:16]}, process 0 "
                        f"{digests[0].decode()[:16]} — {fix}")


def together(fn) -> None:
    """Runs ``fn`` on every process; when it raises a :class:`UserError` on any, every
    process raises that error (the first failing process's), instead of one stopping while
    the others wait for it in the next collective."""
    if not is_multiprocess():
        fn()
        return
    try:
        fn()
        message = b""
    except UserError as e:
        message = str(e).encode()[:1000] or b"failed"
    messages = _allgather_bytes(message, 1000)
    failed = [(i, m) for i, m in enumerate(messages) if m]
    if failed:
        i, first = failed[0]
        raise UserError(first.decode(errors="replace") + ("" if i == 0 else f" (process {i})"))


def all_agree(flag: bool) -> bool:
    """Whether ``flag`` holds on every process (one collective; True with one process)."""
    if not is_multiprocess():
        return flag
    return all(b == b"1" for b in _allgather_bytes(b"1" if flag else b"0", 1))


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier ``name``."""
    if is_multiprocess():
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def check_shared(path, flag: str = "--workdir") -> None:
    """Raises on every process unless all see the folder ``path`` the writer sees: the
    writer writes a token there, and every other process must read it back (orbax's
    checkpoints, and a rerun's reuse of stages, need one folder all processes share)."""
    if not is_multiprocess():
        return
    path = pathlib.Path(path)
    token = secrets.token_hex(8) if is_writer() else ""
    tokens = _allgather_bytes(token.encode(), 16)
    if is_writer():
        (path / ".jaxpet-shared").write_text(tokens[0].decode())
    barrier("jaxpet-shared")
    try:
        seen = (path / ".jaxpet-shared").read_text()
    except OSError:
        seen = ""
    sees = _allgather_bytes(b"1" if seen == tokens[0].decode() else b"0", 1)
    barrier("jaxpet-shared-read")
    if is_writer():
        (path / ".jaxpet-shared").unlink(missing_ok=True)
    blind = [i for i, s in enumerate(sees) if s != b"1"]
    if blind:
        raise UserError(f"{flag}={path} is not shared: process {blind[0]} does not see what "
                        f"process 0 wrote there — give every process one folder on a file "
                        "system all hosts mount (NFS, a cluster file system, GCS FUSE).")


# ----------------------------------------------------------------------------- gathering


def gather(tree):
    """Every leaf of ``tree`` whole, as numpy, on every process: global arrays sharded over
    the processes' devices are gathered; host arrays are returned as they are."""
    if not is_multiprocess():
        return jax.tree.map(np.asarray, tree)
    from jax.experimental import multihost_utils

    def whole(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                return jax.random.wrap_key_data(
                    np.asarray(multihost_utils.process_allgather(jax.random.key_data(leaf),
                                                                 tiled=True)),
                    impl=jax.random.key_impl(leaf))
            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return leaf if isinstance(leaf, jax.Array) else np.asarray(leaf)

    return jax.tree.map(whole, tree)


def own_models(num_models: int) -> slice:
    """The models (of ``num_models``, padded up to a multiple of the process count) this
    process computes when work is split by process; see :func:`split_models`."""
    per = -(-num_models // process_count())
    return slice(process_index() * per, (process_index() + 1) * per)


def split_models(fn, num_models: int):
    """``fn(models)`` (a slice of the model axis -> a dict of arrays with that leading model
    axis) run by each process on its own models, the results gathered whole on every
    process: inference over many models split like their training. One process: ``fn`` of
    every model."""
    if not is_multiprocess():
        return fn(slice(0, num_models))
    from jax.experimental import multihost_utils
    mine = own_models(num_models)
    per = mine.stop - mine.start
    # A process with no model left (fewer models than processes) computes model 0 as
    # padding, dropped below: every process must contribute rows of one shape.
    start, stop = min(mine.start, num_models), min(mine.stop, num_models)
    part = fn(slice(start, stop) if stop > start else slice(0, 1))
    part = {k: _pad_rows(np.asarray(v), per) for k, v in part.items()}
    whole = {k: np.asarray(multihost_utils.process_allgather(v, tiled=True))
             for k, v in sorted(part.items())}
    return {k: v[:num_models] for k, v in whole.items()}


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    if array.shape[0] == rows:
        return array
    filler = np.zeros((rows - array.shape[0], *array.shape[1:]), array.dtype)
    return np.concatenate([array, filler])
