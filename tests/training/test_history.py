"""Training histories: history.jsonl in the run's workdir, one row per epoch per model, kept with
the stage so a reused stage writes the same file."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from jaxpet import page, runs


@dataclasses.dataclass(frozen=True)
class _Config:
    name: str = "history test"


def _train_in_run(workdir, fitted, stage_key):
    with runs.Run(workdir, _Config(), on_finish=page.write_page) as run_:
        def compute():
            result = fitted.train(log_prefix="tiny ")
            return {"loss": np.stack([h["loss"] for h in result.history])}, {}
        arrays, _, _ = run_.stages.run("tiny", stage_key, compute)
    return arrays


def test_history_file_has_one_row_per_epoch_per_model_and_agrees_with_the_trainer(
        tmp_path, fitted):
    arrays = _train_in_run(tmp_path, fitted, {"k": 1})
    rows = runs.read_history(tmp_path / runs.Run.HISTORY)
    epochs, num_models = fitted.config.epochs, fitted.sets.num_models
    assert len(rows) == epochs * num_models
    assert {(r["epoch"], r["model"]) for r in rows} == {
        (e, k) for e in range(1, epochs + 1) for k in range(num_models)}
    assert {r["phase"] for r in rows} == {"tiny"}
    history = fitted.result.history  # the same run: the trainer's returned history
    for r in rows:
        for name in ("loss", "train_acc", "learning_rate"):
            assert r[name] == pytest.approx(float(history[r["epoch"] - 1][name][r["model"]]),
                                            rel=1e-6), name
        assert r["seconds"] > 0 and isinstance(r["active"], bool)
    np.testing.assert_allclose(arrays["loss"][:, 1], [r["loss"] for r in rows if r["model"] == 1],
                               rtol=1e-6)
    assert (tmp_path / runs.Run.CURVES).stat().st_size > 0
    assert (tmp_path / runs.Run.PAGE).exists()


def test_a_reused_stage_writes_the_same_history(tmp_path, fitted):
    _train_in_run(tmp_path, fitted, {"k": 2})
    first = runs.read_history(tmp_path / runs.Run.HISTORY)
    (tmp_path / runs.Run.HISTORY).unlink()
    _train_in_run(tmp_path, fitted, {"k": 2})  # the stage is reused: no training this time
    assert runs.read_history(tmp_path / runs.Run.HISTORY) == first


def test_each_epoch_line_logs_the_rate_and_the_eta(fitted, caplog):
    import logging as std_logging

    from jaxpet import progress

    with progress.tracking(progress.Tracker("log")), caplog.at_level(std_logging.INFO):
        fitted.train(log_prefix="tiny ")
    lines = [r.getMessage() for r in caplog.records if "epoch" in r.getMessage()]
    assert len(lines) == fitted.config.epochs
    assert all(re.search(r"\d+ images/s, \d+:\d\d elapsed, ETA \d+:\d\d", line) for line in lines)
