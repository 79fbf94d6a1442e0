"""Starts N processes of one jaxpet command on this machine, as a cluster would start them.

    python -m jaxpet.launch --num_processes=2 --local_devices=2 -- \\
        experiments/lira.py --preset=quick --workdir=runs/lira_2p

Each process gets the coordinator's address (this machine, a free port), the process
count and its id in the environment (see :func:`jaxpet.distributed.initialize`), and,
with ``--local_devices``, that many CPU devices of its own. Process 0's output is shown
as it is; the others' lines are prefixed with ``[process i]`` (they print warnings and
errors only). When one process fails, the others are given the runtime's heartbeat
timeout to stop by themselves, then stopped; the exit status is the first failure's.
On a cluster the scheduler starts the processes instead: see the README's multi-host
section.
"""

from __future__ import annotations

from collections.abc import Sequence
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import app, flags

from jaxpet import distributed

_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 2, "How many processes to start.",
                                      lower_bound=1)
_LOCAL_DEVICES = flags.DEFINE_integer(
    "local_devices", 0, "CPU devices per process (XLA's forced host device count, CPU only; "
    "0: leave the platform and its devices as they are, e.g. one GPU each is the cluster's "
    "business).", lower_bound=0)
_ONE_GPU_EACH = flags.DEFINE_bool(
    "one_gpu_each", False, "Give process i the machine's GPU i alone (CUDA_VISIBLE_DEVICES=i): "
    "one process per GPU of a multi-GPU host.")
_PORT = flags.DEFINE_integer("port", 0, "The coordinator's port on localhost (0: a free one).",
                             lower_bound=0, upper_bound=65535)
_GRACE = flags.DEFINE_float(
    "grace_seconds", distributed.HEARTBEAT_TIMEOUT_SECONDS + 15.0,
    "After one process fails, how long the others get to stop by themselves (the runtime "
    "stops them within its heartbeat timeout) before they are killed.", lower_bound=0.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def command_line(argv: Sequence[str]) -> list[str]:
    """The command each process runs: a ``.py`` script runs under this Python."""
    argv = list(argv)
    if argv and argv[0].endswith(".py"):
        return [sys.executable, *argv]
    return argv


def environment(process_id: int, num_processes: int, port: int, local_devices: int,
                one_gpu_each: bool = False) -> dict:
    """The environment of process ``process_id``: the launcher's, with its place in the run."""
    env = {**os.environ, distributed.ENV_COORDINATOR: f"localhost:{port}",
           distributed.ENV_NUM_PROCESSES: str(num_processes),
           distributed.ENV_PROCESS_ID: str(process_id)}
    if local_devices:
        xla = [f for f in env.get("XLA_FLAGS", "").split()
               if not f.startswith("--xla_force_host_platform_device_count")]
        env["XLA_FLAGS"] = " ".join([*xla, f"--xla_force_host_platform_device_count="
                                     f"{local_devices}"])
        env["JAX_PLATFORMS"] = "cpu"
    if one_gpu_each:
        env["CUDA_VISIBLE_DEVICES"] = str(process_id)
    return env


def _relay(stream, out, prefix: str) -> None:
    for line in iter(stream.readline, ""):
        out.write(prefix + line)
        out.flush()
    stream.close()


def launch(argv: Sequence[str], num_processes: int, *, local_devices: int = 0, port: int = 0,
           grace_seconds: float = distributed.HEARTBEAT_TIMEOUT_SECONDS + 15.0,
           one_gpu_each: bool = False) -> int:
    """Runs ``argv`` as ``num_processes`` processes; returns the exit status (0 when every
    process succeeded, else the first failure's, 128 + signal for a killed one)."""
    command = command_line(argv)
    if not command:
        raise app.UsageError("no command to run: write it after --, e.g. -- experiments/lira.py "
                             "--preset=quick")
    port = port or free_port()
    processes, relays = [], []
    try:
        for i in range(num_processes):
            env = environment(i, num_processes, port, local_devices, one_gpu_each)
            p = subprocess.Popen(command, env=env,
                                 stdout=None if i == 0 else subprocess.PIPE,
                                 stderr=None if i == 0 else subprocess.PIPE, text=True)
            processes.append(p)
            for stream, out in ((p.stdout, sys.stdout), (p.stderr, sys.stderr)):
                if stream is not None:
                    relay = threading.Thread(target=_relay, args=(stream, out, f"[process {i}] "),
                                             daemon=True)
                    relay.start()
                    relays.append(relay)
        return _wait(processes, grace_seconds)
    finally:
        stop_all(processes, relays)


def stop_all(processes: Sequence[subprocess.Popen], readers: Sequence[threading.Thread] = ()):
    """Kills every process still running, waits for each, and for the threads reading their
    output: nothing a launch (or a test) started outlives it."""
    for p in processes:
        if p.poll() is None:
            p.kill()
        p.wait()
    for reader in readers:
        reader.join(timeout=5)


def _status(code: int) -> int:
    return 128 - code if code < 0 else code


def _wait(processes: list[subprocess.Popen], grace_seconds: float) -> int:
    failed_at, failure = None, 0
    while True:
        codes = [p.poll() for p in processes]
        if all(c is not None for c in codes):
            break
        bad = [(i, c) for i, c in enumerate(codes) if c is not None and c != 0]
        if bad and failed_at is None:
            i, code = bad[0]
            failed_at, failure = time.monotonic(), _status(code)
            how = (f"was killed by {signal.Signals(-code).name}" if code < 0
                   else f"exited with status {code}")
            print(f"jaxpet.launch: process {i} {how}; waiting up to {grace_seconds:.0f} s for "
                  "the others to stop", file=sys.stderr, flush=True)
        if failed_at is not None and time.monotonic() - failed_at > grace_seconds:
            for p in processes:
                if p.poll() is None:
                    p.kill()
            print("jaxpet.launch: stopped the processes still running", file=sys.stderr)
            break
        time.sleep(0.1)
    ends = [p.wait() for p in processes]
    if failure:
        return failure
    return next((_status(c) for c in ends if c != 0), 0)


def main(argv: Sequence[str]) -> None:
    sys.exit(launch(argv[1:], _NUM_PROCESSES.value, local_devices=_LOCAL_DEVICES.value,
                    port=_PORT.value, grace_seconds=_GRACE.value,
                    one_gpu_each=_ONE_GPU_EACH.value))


if __name__ == "__main__":
    app.run(main)
