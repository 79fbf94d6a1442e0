"""The run store: the workdir lock, the stage cache, provenance and the run."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from jaxpet import runs


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
        arrays, _, _ = cache.run("logits", {"k": 1}, _stage(calls))
    assert len(calls) == 2 and arrays["x"].tolist() == [0, 2, 4, 6, 8]
    assert "recomputing" in caplog.text


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
