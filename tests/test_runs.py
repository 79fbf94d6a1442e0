"""The run store: digests, atomic writes, the workdir lock, the stage cache and provenance."""

from __future__ import annotations

import dataclasses
import errno
import json

import numpy as np
import pytest

from jaxpet import runs


def test_digest_is_order_free_and_sees_array_content():
    a = {"x": 1, "arrays": [np.arange(4), 0.1]}
    assert runs.digest(a) == runs.digest({"arrays": [np.arange(4), 0.1], "x": 1})
    assert runs.digest(a) != runs.digest({"x": 1, "arrays": [np.arange(4) + 1, 0.1]})
    assert runs.digest(np.zeros(4, np.float32)) != runs.digest(np.zeros(4, np.float64))
    assert runs.digest(np.zeros((2, 2))) != runs.digest(np.zeros(4))

    @dataclasses.dataclass(frozen=True)
    class Knobs:
        rate: float

    assert runs.digest(Knobs(0.1)) != runs.digest(Knobs(0.2))


def test_atomic_write_leaves_no_half_file(tmp_path):
    path = tmp_path / "out.json"
    runs.write_json(path, {"a": 1})

    def fail(f):
        f.write(b"partial")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        runs.atomic_write(path, fail)
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left


def test_full_disk_is_one_user_error_naming_the_file(tmp_path):
    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(runs.UserError, match=r"no space left to write .*out\.npz .* free"):
        runs.atomic_write(tmp_path / "out.npz", full)
    assert not list(tmp_path.iterdir())


def test_disk_full_errors_are_recognised():
    assert runs.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert runs.is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    # tensorstore's form, as orbax raises it
    tensorstore = ValueError('RESOURCE_EXHAUSTED: Error writing "w/0": Failed to write 2673027 '
                             "bytes to file 7: No space left on device [os_error_code='28']")
    assert runs.is_disk_full(tensorstore)
    try:
        try:
            raise OSError(errno.ENOSPC, "full")
        except OSError as e:
            raise RuntimeError("save failed") from e
    except RuntimeError as chained:
        assert runs.is_disk_full(chained)
    assert not runs.is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not runs.is_disk_full(ValueError("shapes differ"))


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
    arrays, info = cache.run("train", {"epochs": 2, "data": "abc"}, _stage(calls))
    again, info2 = cache.run("train", {"data": "abc", "epochs": 2}, _stage(calls))
    assert len(calls) == 1 and info2 == info and np.array_equal(again["x"], arrays["x"])
    cache.run("train", {"epochs": 2, "data": "other"}, _stage(calls))  # other data: recomputed
    assert len(calls) == 2


@pytest.mark.parametrize("damage", ["truncate_npz", "garbage_json", "delete_npz"])
def test_a_stage_file_that_does_not_load_is_recomputed(tmp_path, damage, caplog):
    cache, calls = runs.StageCache(tmp_path), []
    cache.run("logits", {"k": 1}, _stage(calls))
    arrays_path, meta_path = cache.paths("logits", {"k": 1})
    if damage == "truncate_npz":
        arrays_path.write_bytes(arrays_path.read_bytes()[:20])
    elif damage == "garbage_json":
        meta_path.write_text("{not json")
    else:
        arrays_path.unlink()
    with caplog.at_level("WARNING"):
        arrays, _ = cache.run("logits", {"k": 1}, _stage(calls))
    assert len(calls) == 2 and arrays["x"].tolist() == [0, 2, 4, 6, 8]
    assert "recomputing" in caplog.text


def test_trees_round_trip_through_stage_arrays():
    tree = {"params": {"Dense_0": {"kernel": np.ones((2, 3)), "bias": np.zeros(3)}},
            "batch_stats": {}}
    arrays = runs.tree_to_arrays("target", tree)
    assert set(arrays) == {"target/params/Dense_0/kernel", "target/params/Dense_0/bias",
                           "target/batch_stats/__empty__"}
    back = runs.arrays_to_tree("target", {**arrays, "other/x": np.ones(1)})
    assert back["batch_stats"] == {} and set(back) == {"params", "batch_stats"}
    assert np.array_equal(back["params"]["Dense_0"]["kernel"], tree["params"]["Dense_0"]["kernel"])


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
