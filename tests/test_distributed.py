"""One ensemble across processes, tested with real processes on localhost (JAX's
multi-controller runtime, gloo CPU collectives), each run bounded in time and every process
it started stopped; and the one-process behaviour of jaxpet.distributed."""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from jaxpet import distributed, files, launch, models, splits, training
from jaxpet.errors import UserError
from jaxpet.experiments import lira

REPO = pathlib.Path(__file__).resolve().parents[1]
HELPERS = REPO / "tests" / "multiprocess"
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
ENV.pop("JAXPET_COORDINATOR_ADDRESS", None)


def _ensemble_module():
    spec = importlib.util.spec_from_file_location("ensemble", HELPERS / "ensemble.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REAL_DATA = os.environ.get("JAXPET_DATA_DIR")
needs_mnist = pytest.mark.skipif(not REAL_DATA, reason="needs JAXPET_DATA_DIR with the real MNIST")


@contextlib.contextmanager
def _processes(commands: list[list[str]], envs: list[dict]):
    """Starts one process per command (stdout and stderr collected line by line as they
    come); yields (processes, outputs), and kills every one still running at the end."""
    started = [subprocess.Popen(c, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, cwd=REPO) for c, e in zip(commands, envs, strict=True)]
    outputs: list[list[str]] = [[] for _ in started]
    readers = [threading.Thread(target=lambda p=p, o=o: o.extend(iter(p.stdout.readline, "")),
                                daemon=True) for p, o in zip(started, outputs, strict=True)]
    for r in readers:
        r.start()
    try:
        yield started, outputs
    finally:
        launch.stop_all(started, readers)


def _launch(*argv, num_processes=2, local_devices=1, timeout=240):
    return subprocess.run([sys.executable, "-m", "jaxpet.launch",
                           f"--num_processes={num_processes}", f"--local_devices={local_devices}",
                           "--grace_seconds=10", "--", *map(str, argv)],
                          capture_output=True, text=True, cwd=REPO, env=ENV, timeout=timeout)


def _script(name: str) -> str:
    return str(REPO / "experiments" / f"{name}.py")


# ----------------------------------------------------------------------------- real processes


def test_an_ensemble_across_two_processes_equals_one_process_model_by_model(tmp_path):
    out = tmp_path / "ensemble.npz"
    done = _launch(HELPERS / "ensemble.py", out, local_devices=2)
    assert done.returncode == 0, done.stderr[-3000:]
    across = files.read_npz(out)
    assert int(across["devices"]) == 4  # 2 processes x 2 devices; 6 models padded to 8
    alone = _ensemble_module()
    here = alone.arrays(alone.train())
    assert int(here["devices"]) == 1
    assert sorted(here) == sorted(across)
    for name in here:
        if name != "devices":
            np.testing.assert_allclose(across[name], here[name], rtol=1e-5, atol=1e-5,
                                       err_msg=name)
    assert across["history/2/loss"].shape == (alone.NUM_MODELS,)


_LIRA = dict(dataset="mnist", num_models=4, pool_size=200, population_size=100,
             width_scale=0.25, epochs=2, batch_size=32, max_reference_sweep=1)


def _figures(results: dict) -> dict:
    """Every attack figure of a results.json (what must not depend on the process count)."""
    return {k: results[k] for k in ("attacks", "per_target", "models", "sweep")}


@needs_mnist
def test_a_tiny_lira_run_across_two_processes_gives_one_process_figures_and_one_writer(
        tmp_path):
    flags = [f"--{k}={v}" for k, v in _LIRA.items()]
    across = tmp_path / "two"
    log = tmp_path / "writes"
    done = _launch(HELPERS / "audit_writes.py", across, log, _script("lira"), *flags,
                   f"--workdir={across}", "--progress=log")
    assert done.returncode == 0, done.stderr[-3000:]
    # One writer: process 1 wrote nothing in the workdir but its part of orbax's checkpoints
    # (each process writes its own shards there); process 0 wrote the run, and printed its
    # progress.
    written = {i: (tmp_path / f"writes.{i}").read_text().splitlines() for i in (0, 1)}
    assert any("/stages/checkpoints-" in line for line in written[1])  # the hook sees writes
    assert [line for line in written[1] if "/stages/checkpoints-" not in line] == []
    assert any("results.json" in line for line in written[0])
    assert "[process 1] " not in "".join(line for line in done.stderr.splitlines(True)
                                          if "epoch " in line)
    assert "epoch 2/2" in done.stderr
    # One process, same settings: the same figures.
    config = lira.Config(**_LIRA, workdir=str(tmp_path / "one"))
    alone = lira.run(config)
    two = json.loads((across / "results.json").read_text())
    assert two["provenance"]["process_count"] == 2 and alone["provenance"]["process_count"] == 1
    np.testing.assert_allclose(_numbers(_figures(two)), _numbers(_figures(alone)), rtol=1e-4,
                               atol=1e-4)
    # A rerun on one process reuses the logits the two processes computed.
    again = lira.run(lira.Config(**_LIRA, workdir=str(across)))
    assert again["reused_logits"] is True
    np.testing.assert_allclose(_numbers(_figures(again)), _numbers(_figures(two)))


def _numbers(tree) -> np.ndarray:
    """The numbers of a JSON tree, in order (strings and None skipped)."""
    if isinstance(tree, dict):
        return np.concatenate([_numbers(tree[k]) for k in sorted(tree)] or [np.zeros(0)])
    if isinstance(tree, list):
        return np.concatenate([_numbers(v) for v in tree] or [np.zeros(0)])
    if isinstance(tree, bool) or not isinstance(tree, (int, float)):
        return np.zeros(0)
    return np.asarray([tree], float)


@needs_mnist
def test_a_killed_process_ends_the_other_with_one_line_and_a_rerun_resumes(tmp_path):
    argv = [sys.executable, _script("train_ensemble"), "--dataset=mnist", "--role=shadow",
            "--num_models=4", "--train_size=500", "--epochs=8", "--batch_size=16",
            "--checkpoint_every=1",
            f"--workdir={tmp_path / 'run'}", "--progress=log"]
    port = launch.free_port()
    envs = [{**launch.environment(i, 2, port, 1), "PYTHONPATH": str(REPO)} for i in range(2)]
    with _processes([argv, argv], envs) as (started, outputs):
        deadline = time.monotonic() + 180
        while not any("epoch 3/8" in line for line in outputs[0]):
            assert started[0].poll() is None, "".join(outputs[0])[-3000:]
            assert time.monotonic() < deadline, "no third epoch within 180 s"
            time.sleep(0.05)
        started[1].kill()  # mid-training: epoch 2's checkpoint is saved, epoch 4 running
        killed = time.monotonic()
        code = started[0].wait(timeout=distributed.HEARTBEAT_TIMEOUT_SECONDS + 30)
        took = time.monotonic() - killed
    assert code == 1 and took < distributed.HEARTBEAT_TIMEOUT_SECONDS + 30
    last = [line for line in outputs[0] if line.strip()][-1]
    assert last.startswith("error: process 0: another process of this run stopped"), last
    assert "start the same command on every process again" in last
    done = _launch(*argv[1:])
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = [line for line in done.stderr.splitlines() if "resumed from" in line]
    assert len(resumed) == 1 and int(resumed[0].rsplit(" ", 1)[-1]) >= 2, done.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert len(results["models"]["train_acc"]) == 4


@needs_mnist
def test_processes_that_disagree_or_do_not_share_the_workdir_stop_with_one_line(tmp_path):
    base = [sys.executable, _script("train_ensemble"), "--dataset=mnist", "--num_models=2",
            "--train_size=100", "--epochs=1", "--batch_size=16"]
    # Process 1's own copy of MNIST (its --data_dir, a path each host may set its own way)
    # with one training label changed.
    real = pathlib.Path(REAL_DATA) / "mnist"
    other = tmp_path / "other_data" / "mnist"
    other.mkdir(parents=True)
    for path in real.glob("*.gz"):
        (other / path.name).symlink_to(path.resolve())
    labels = other / "train-labels-idx1-ubyte.gz"
    changed = bytearray(gzip.decompress(labels.read_bytes()))
    changed[8] = (changed[8] + 1) % 10  # the first label (after the 8-byte header)
    labels.unlink()
    labels.write_bytes(gzip.compress(bytes(changed)))
    cases = {
        "the processes disagree on the config": (["--seed=0", f"--workdir={tmp_path / 'a'}"],
                                                 ["--seed=1", f"--workdir={tmp_path / 'a'}"]),
        "is not shared: process 1 does not see what process 0 wrote": (
            [f"--workdir={tmp_path / 'b0'}"], [f"--workdir={tmp_path / 'b1'}"]),
        "the processes disagree on stage ensemble's settings and data": (
            [f"--workdir={tmp_path / 'c'}"],
            [f"--workdir={tmp_path / 'c'}", f"--data_dir={other.parent}"]),
    }
    for message, extra in cases.items():
        port = launch.free_port()
        envs = [{**launch.environment(i, 2, port, 1), "PYTHONPATH": str(REPO)}
                for i in range(2)]
        with _processes([base + extra[0], base + extra[1]], envs) as (started, outputs):
            codes = [p.wait(timeout=120) for p in started]
        for code, output in zip(codes, outputs, strict=True):
            last = [line for line in output if line.strip()][-1]
            assert code == 1 and last.startswith("error: ") and message in last, output[-5:]
        assert not (tmp_path / "b1" / "results.json").exists()


def test_a_coordinator_that_does_not_answer_is_one_line_within_the_timeout():
    port = launch.free_port()
    env = {**launch.environment(1, 2, port, 1), "PYTHONPATH": str(REPO)}
    tick = time.monotonic()
    done = subprocess.run([sys.executable, _script("train_ensemble"), "--coordinator_timeout=3",
                           "--workdir=/nonexistent/never"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert time.monotonic() - tick < 60
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1 and last.startswith(
        f"error: the coordinator at localhost:{port} could not be reached within 3 s"), last


# ----------------------------------------------------------------------------- the launcher


def test_the_launcher_returns_the_first_failure_and_stops_the_others():
    tick = time.monotonic()
    code = launch.launch([sys.executable, "-c", "import os, sys, time\n"
                          "if os.environ['JAXPET_PROCESS_ID'] == '1': sys.exit(3)\n"
                          "time.sleep(60)"], 2, grace_seconds=1)
    assert code == 3 and time.monotonic() - tick < 30


def test_the_launcher_passes_each_process_its_place():
    env = launch.environment(1, 4, 1234, local_devices=2)
    assert env[distributed.ENV_COORDINATOR] == "localhost:1234"
    assert (env[distributed.ENV_NUM_PROCESSES], env[distributed.ENV_PROCESS_ID]) == ("4", "1")
    assert "--xla_force_host_platform_device_count=2" in env["XLA_FLAGS"]
    assert launch.command_line(["run.py", "--x=1"]) == [sys.executable, "run.py", "--x=1"]
    with pytest.raises(Exception, match="no command to run"):
        launch.launch([], 2)


# ----------------------------------------------------------------------------- one process


@pytest.mark.parametrize("settings, message", [
    (dict(coordinator_address="localhost:1", num_processes=2), "needs --process_id too"),
    (dict(coordinator_address="localhost", num_processes=2, process_id=0), "is not host:port"),
    (dict(coordinator_address="localhost:1", num_processes=2, process_id=2),
     r"--process_id=2 must be in \[0, 2\)"),
])
def test_incomplete_or_impossible_settings_are_refused_before_the_runtime_starts(
        monkeypatch, settings, message):
    for name in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES,
                 distributed.ENV_PROCESS_ID):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UserError, match=message):
        distributed.initialize(**settings)
    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "two")
    with pytest.raises(UserError, match="JAXPET_NUM_PROCESSES='two' is not a whole number"):
        distributed.initialize()


def test_one_process_needs_no_runtime_and_splits_nothing(monkeypatch):
    monkeypatch.delenv(distributed.ENV_NUM_PROCESSES, raising=False)
    assert distributed.initialize(num_processes=1) is False
    assert distributed.is_writer() and not distributed.is_multiprocess()
    distributed.check_same("anything", "the config", "")
    assert distributed.all_agree(True) and not distributed.all_agree(False)
    calls = []
    out = distributed.split_models(lambda s: calls.append(s) or {"x": np.arange(5)[s]}, 5)
    assert calls == [slice(0, 5)] and out["x"].tolist() == [0, 1, 2, 3, 4]
    assert distributed.lost_peer(RuntimeError("Gloo AllGather failed")) is None


def test_strategies_that_cannot_shard_are_refused_across_processes(monkeypatch):
    monkeypatch.setattr(distributed, "process_count", lambda: 2)
    images = np.zeros((8, 4, 4, 1), np.float32)
    with pytest.raises(UserError, match="--strategy=loop runs every model in one process"):
        training.train_ensemble(models.MLP(hidden_sizes=(4,), num_classes=2), images,
                                np.zeros(8, int),
                                splits.random_member_sets(np.arange(8), 2, 4, seed=0),
                                strategy="loop")
