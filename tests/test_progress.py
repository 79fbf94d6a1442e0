"""Progress reports: rates and ETAs on a fake clock, the run's ETA from its expectations, modes."""

from __future__ import annotations

import io
import logging as std_logging

import numpy as np
import pytest

from jaxpet import progress


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.mark.parametrize("seconds, text", [(0, "0:00"), (59.6, "1:00"), (61, "1:01"),
                                           (3725, "1:02:05"), (None, "?"), (float("inf"), "?")])
def test_format_seconds(seconds, text):
    assert progress.format_seconds(seconds) == text


def test_phase_rate_and_eta_follow_the_work_done():
    clock = FakeClock()
    tracker = progress.Tracker("off", clock=clock)
    with tracker.phase("train", 100, images_per_unit=2.0) as phase:
        assert phase.eta is None and phase.rate is None  # nothing done: nothing to extrapolate
        clock.now = 10.0
        phase.advance(25)
        assert phase.eta == pytest.approx(30.0)  # 75 units left at 2.5 units/s
        assert phase.rate == pytest.approx(5.0)  # 50 images in 10 s
        clock.now = 20.0
        phase.advance(25)
        assert phase.eta == pytest.approx(20.0)


def test_the_run_eta_counts_what_is_still_expected_at_the_rate_so_far():
    clock = FakeClock()
    tracker = progress.Tracker("off", clock=clock)
    tracker.expect("target", 100, stage="target")
    tracker.expect("shadow", 200, stage="shadow")
    tracker.expect("logits", 60, stage="shadow")
    assert tracker.run_eta() is None  # no rate measured yet
    with tracker.phase("target", 100) as phase:
        assert "target" not in tracker.expected  # the phase took its expectation over
        clock.now = 10.0
        phase.advance(50)
        # left: 50 of this phase + 200 + 60 expected, at 5 units/s
        assert tracker.run_eta() == pytest.approx(62.0)
    tracker.stage_reused("shadow")  # a finished stage: none of its phases will run
    assert tracker.expected == {}


def test_a_phase_uses_up_the_expectation_its_name_begins_with():
    tracker = progress.Tracker("off")
    tracker.expect("logits", 100)
    with tracker.phase("logits, query 1/2", 50):
        assert tracker.expected["logits"].units == pytest.approx(50)
    with tracker.phase("logits, query 2/2", 50):
        assert "logits" not in tracker.expected
    tracker.expect("attack", 10)
    with tracker.phase("attacker", 5):  # only whole words match
        assert tracker.expected["attack"].units == 10


def test_log_mode_logs_the_eta_at_the_interval(caplog):
    clock = FakeClock()
    tracker = progress.Tracker("log", interval=10.0, clock=clock)
    tracker.expect("later", 100)
    with caplog.at_level(std_logging.INFO):
        with tracker.phase("logits", 100) as phase:
            clock.now = 5.0
            phase.advance(10)  # before the interval: quiet
            assert not any("ETA" in r.getMessage() for r in caplog.records)
            clock.now = 11.0
            phase.advance(10)
            clock.now = 12.0
        messages = [r.getMessage() for r in caplog.records]
    progress_lines = [m for m in messages if "ETA" in m]
    assert len(progress_lines) == 2  # one at 20%, one when the phase ends
    assert progress_lines[0].startswith("logits: 20%")
    assert "run ETA" in progress_lines[0]
    assert progress_lines[1].startswith("logits: done")


def test_bar_mode_redraws_one_line_and_off_mode_is_silent(caplog):
    stream = io.StringIO()
    clock = FakeClock()
    tracker = progress.Tracker("bar", clock=clock, stream=stream)
    with tracker.phase("train", 4) as phase:
        for _ in range(4):
            clock.now += 1
            phase.advance(1)
    text = stream.getvalue()
    assert text.count("\r") == 4 and text.endswith("\n")
    assert "100%" in text and "train [" in text

    quiet = progress.Tracker("off", clock=clock, stream=io.StringIO())
    with caplog.at_level(std_logging.INFO):
        with quiet.phase("train", 2, ) as phase:
            clock.now += 100
            phase.advance(2)
        quiet.info("an info line")
    assert quiet.stream.getvalue() == "" and not caplog.records


def test_auto_mode_is_a_bar_only_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert progress.resolve_mode("auto", Terminal()) == "bar"
    assert progress.resolve_mode("auto", io.StringIO()) == "log"
    with pytest.raises(ValueError, match="progress mode"):
        progress.resolve_mode("loud")


def test_history_rows_are_one_per_epoch_per_model():
    history = [{"loss": np.array([1.0, 2.0]), "active": np.array([True, False])},
               {"loss": np.array([0.5, 1.5]), "active": np.array([True, True])}]
    rows = progress.history_rows(history)
    assert [(r["epoch"], r["model"]) for r in rows] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert [r["loss"] for r in rows] == [1.0, 2.0, 0.5, 1.5]
    assert rows[1]["active"] is False


def test_a_phase_that_logs_itself_gets_no_extra_lines(caplog):
    clock = FakeClock()
    tracker = progress.Tracker("log", interval=1.0, clock=clock)
    with caplog.at_level(std_logging.INFO):
        with tracker.phase("target", 10, logs_itself=True) as phase:
            for _ in range(10):
                clock.now += 5
                phase.advance(1)
    assert not caplog.records


def test_an_expected_phase_counts_at_its_cost():
    clock = FakeClock()
    tracker = progress.Tracker("off", clock=clock)
    tracker.expect("cnn", 100)
    tracker.expect("mlp", 1000, cost=0.01)  # 1000 cheap units: 10 training images' worth
    with tracker.phase("cnn", 100) as phase:
        clock.now = 10.0
        phase.advance(100)
    assert tracker.run_eta() == pytest.approx(1.0)  # 10 units left at 10 units/s
    with tracker.phase("mlp", 1000) as phase:
        assert phase.cost == 0.01
        clock.now = 10.5
        phase.advance(500)  # 5 weighted units in 0.5 s
        assert tracker.run_eta() == pytest.approx(5 * 10.5 / 105)
