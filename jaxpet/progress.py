"""Progress of long work: images/s, elapsed time and ETA per phase and for the whole run.

A *phase* is one long piece of work with a known size (an ensemble's training,
the logits of K models, an inversion); the code doing it opens
``with progress.phase(name, total) as p:`` and calls ``p.advance(done)``. The
current :class:`Tracker` turns that into reports at a sensible rate: a log line
through absl at most every ``interval`` seconds (and the trainer's own line
each epoch), or a one-line bar redrawn in place when stderr is a terminal; or
nothing (``mode="off"``, the ``--quiet`` of scripts).

Work is counted in *units* of one training image (a forward and backward
pass); a forward pass alone counts :data:`FORWARD` of one. A run tells its
tracker what it expects (:meth:`Tracker.expect`), so the ETA of the whole run
is the units still expected over the rate measured so far. A stage reused from
the run store drops its expectation (:meth:`Tracker.stage_reused`).

The tracker also carries each trained phase's per-epoch history to whoever
records it (:meth:`Tracker.record_history`): the run store keeps it with the
stage and writes ``history.jsonl``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import contextlib
import contextvars
import dataclasses
import sys
import time
from typing import Any

from absl import logging

MODES = ("auto", "bar", "log", "off")
# A forward pass costs about a third of a training step (forward + backward of the same batch).
FORWARD = 1.0 / 3.0


def format_seconds(seconds: float | None) -> str:
    """'1:02:03', '2:03' or '?' (unknown)."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(max(seconds, 0.0)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def resolve_mode(mode: str, stream=None) -> str:
    """"auto" is a bar when ``stream`` (default stderr) is a terminal, else log lines."""
    if mode not in MODES:
        raise ValueError(f"progress mode must be one of {MODES}, got {mode!r}.")
    if mode != "auto":
        return mode
    stream = sys.stderr if stream is None else stream
    return "bar" if getattr(stream, "isatty", lambda: False)() else "log"


@dataclasses.dataclass
class _Expected:
    units: float
    stage: str | None
    cost: float = 1.0  # seconds of one of its units relative to a training image's


class Phase:
    """One running phase: its size, what is done, and the rate so far."""

    def __init__(self, tracker: Tracker, name: str, total_units: float, unit: str,
                 images_per_unit: float, logs_itself: bool = False):
        self.tracker = tracker
        self.logs_itself = logs_itself  # e.g. the trainer's line per epoch: no extra log lines
        self.name = name
        self.total = float(total_units)
        self.unit = unit
        self.images_per_unit = images_per_unit
        self.done = 0.0
        self.images = 0.0
        self.cost = 1.0  # from the expectation it took over (see Tracker.expect)
        self.started = tracker.clock()
        self._last_report = self.started

    @property
    def elapsed(self) -> float:
        return self.tracker.clock() - self.started

    @property
    def rate(self) -> float | None:
        """Images (or the phase's unit) per second so far."""
        return self.images / self.elapsed if self.images and self.elapsed > 0 else None

    @property
    def eta(self) -> float | None:
        if not self.done or self.elapsed <= 0:
            return None
        return self.elapsed * max(self.total - self.done, 0.0) / self.done

    def advance(self, units: float, images: float | None = None) -> None:
        """``units`` more work done (``images`` processed; default units x images_per_unit)."""
        self.done += units
        self.images += units * self.images_per_unit if images is None else images
        self.tracker._advanced(self, units)

    def status(self) -> str:
        """'1152 images/s, 0:42 elapsed, ETA 1:20 (run 5:30)'."""
        parts = []
        if self.rate is not None:
            parts.append(f"{self.rate:.0f} {self.unit}/s")
        parts.append(f"{format_seconds(self.elapsed)} elapsed")
        parts.append(f"ETA {format_seconds(self.eta)}")
        run_eta = self.tracker.run_eta()
        if run_eta is not None:
            parts.append(f"run ETA {format_seconds(run_eta)}")
        return ", ".join(parts)


class Tracker:
    """Where phases report: rate-limited logs or a bar, expectations for the run's ETA, and the
    sinks that record training histories."""

    def __init__(self, mode: str = "log", interval: float = 10.0,
                 clock: Callable[[], float] = time.perf_counter, stream=None):
        self.mode = resolve_mode(mode, stream)
        self.interval = interval
        self.clock = clock
        self.stream = sys.stderr if stream is None else stream
        self.expected: dict[str, _Expected] = {}
        self.units_done = 0.0
        self.busy_seconds = 0.0  # time spent inside phases (the run's rate is measured there)
        self._phases: list[Phase] = []
        self._sinks: list[Callable[[str, list[dict]], None]] = []
        self._bar_shown = False
        self._planned = False  # a run that states no plan has no run ETA

    # -- the run's plan
    def expect(self, name: str, units: float, *, stage: str | None = None,
               cost: float = 1.0) -> None:
        """The run will do phase ``name`` of ``units`` (part of stage ``stage``, if any), each
        costing ``cost`` training images (e.g. 0.01 for a small MLP on 10 features)."""
        self.expected[name] = _Expected(float(units), stage, float(cost))
        self._planned = True

    def stage_reused(self, stage: str) -> None:
        """A finished stage was loaded: the phases it holds will not run."""
        for name in [n for n, e in self.expected.items() if e.stage == stage or n == stage]:
            del self.expected[name]

    def run_eta(self) -> float | None:
        """Seconds left for the whole run: units still expected over the rate so far."""
        if not self._planned or self.units_done <= 0:
            return None
        busy = self.busy_seconds + sum(p.elapsed for p in self._phases)
        if busy <= 0:
            return None
        left = sum(e.units * e.cost for e in self.expected.values())
        left += sum(max(p.total - p.done, 0.0) * p.cost for p in self._phases)
        return left * busy / self.units_done

    # -- phases
    @contextlib.contextmanager
    def phase(self, name: str, total_units: float, *, unit: str = "images",
              images_per_unit: float = 1.0, logs_itself: bool = False) -> Iterator[Phase]:
        """A phase of ``total_units``; it takes its units out of the expectation whose name
        begins its own ("logits" covers "logits, query 1/2"), which ends when used up."""
        p = Phase(self, name, total_units, unit, images_per_unit, logs_itself)
        for key in [k for k in self.expected if name == k or name.startswith(k + ",")
                    or name.startswith(k + " ")][:1]:
            p.cost = self.expected[key].cost
            self.expected[key].units -= total_units
            if self.expected[key].units <= 1e-9 * max(total_units, 1.0):
                del self.expected[key]
        self._phases.append(p)
        try:
            yield p
        finally:
            self._phases.remove(p)
            self.busy_seconds += p.elapsed
            if self.mode == "bar" and self._bar_shown:
                self.stream.write("\n")
                self.stream.flush()
                self._bar_shown = False
            elif self.mode == "log" and p.elapsed >= self.interval and not p.logs_itself:
                logging.info("%s: done, %s", p.name, p.status())

    def _advanced(self, p: Phase, units: float) -> None:
        self.units_done += units * p.cost
        now = self.clock()
        if self.mode == "bar":
            self._draw(p)
        elif (self.mode == "log" and not p.logs_itself and now - p._last_report >= self.interval
              and p.done < p.total):
            p._last_report = now
            logging.info("%s: %.0f%%, %s", p.name, 100 * p.done / max(p.total, 1e-12), p.status())

    def _draw(self, p: Phase) -> None:
        fraction = min(p.done / max(p.total, 1e-12), 1.0)
        width = 24
        filled = int(round(width * fraction))
        bar = "#" * filled + "." * (width - filled)
        line = f"{p.name} [{bar}] {100 * fraction:3.0f}% {p.status()}"
        self.stream.write("\r\033[K" + line)
        self.stream.flush()
        self._bar_shown = True

    def info(self, message: str, *args) -> None:
        """An absl info line that does not run into the bar (which is redrawn on the next
        advance); nothing in mode "off"."""
        if self.mode == "off":
            return
        if self._bar_shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._bar_shown = False
        logging.info(message, *args)

    def epoch_line(self, p: Phase) -> str:
        """The rate and ETA text the trainer appends to its epoch line ('' when quiet)."""
        return "" if self.mode == "off" else p.status()

    # -- histories
    def add_history_sink(self, sink: Callable[[str, list[dict]], None]) -> Callable[[], None]:
        """``sink(phase, rows)`` receives every recorded history; returns its remover."""
        self._sinks.append(sink)
        return lambda: self._sinks.remove(sink)

    def record_history(self, phase: str, rows: list[dict]) -> None:
        for sink in list(self._sinks):
            sink(phase, rows)


# Log lines name the code that reports (the trainer's epoch line says trainer.py), not this module.
logging.ABSLLogger.register_frame_to_skip(__file__, "info")
logging.ABSLLogger.register_frame_to_skip(__file__, "_advanced")
logging.ABSLLogger.register_frame_to_skip(__file__, "phase")
logging.ABSLLogger.register_frame_to_skip(__file__, "advance")
logging.ABSLLogger.register_frame_to_skip(contextlib.__file__, "__exit__")  # a phase's end

# One shared default tracker (it only logs) for code that runs outside a run: B039 on purpose.
_CURRENT: contextvars.ContextVar[Tracker] = contextvars.ContextVar(
    "jaxpet_progress", default=Tracker("log"))  # noqa: B039
_DEFAULT_MODE = ["log"]


def current() -> Tracker:
    """The tracker phases report to: the run's, or a default one that logs."""
    return _CURRENT.get()


def set_default_mode(mode: str) -> None:
    """The mode of the trackers runs make from now on (the scripts' --progress / --quiet)."""
    resolve_mode(mode)
    _DEFAULT_MODE[0] = mode
    _CURRENT.set(Tracker(mode))


def default_mode() -> str:
    return _DEFAULT_MODE[0]


@contextlib.contextmanager
def tracking(tracker: Tracker | None = None) -> Iterator[Tracker]:
    """Makes ``tracker`` (default: a new one in the default mode) current inside the block."""
    tracker = tracker or Tracker(default_mode())
    token = _CURRENT.set(tracker)
    try:
        yield tracker
    finally:
        _CURRENT.reset(token)


def phase(name: str, total_units: float, **kwargs) -> contextlib.AbstractContextManager[Phase]:
    """A phase of the current tracker (see :meth:`Tracker.phase`)."""
    return current().phase(name, total_units, **kwargs)


def history_rows(history: list[dict[str, Any]]) -> list[dict]:
    """A trainer's history (per epoch: name -> [K] array, or a scalar shared by the models) as
    one row per epoch per model: epoch (1-based), model, then every metric as a float."""
    import numpy as np  # local: the rest of this module needs no numpy

    rows = []
    for epoch, metrics in enumerate(history, start=1):
        arrays = {k: np.asarray(v) for k, v in metrics.items()}
        num_models = max((a.shape[0] for a in arrays.values() if a.ndim), default=1)
        for k in range(num_models):
            row: dict[str, Any] = {"epoch": epoch, "model": k}
            for name, a in arrays.items():
                value = a[k] if a.ndim else a
                # 7 significant digits: a float32's precision, without its binary tail
                row[name] = bool(value) if a.dtype == bool else float(f"{float(value):.7g}")
            rows.append(row)
    return rows
