"""The scaling benchmark's arithmetic and outputs (the launched runs are measured, not tested:
tests/test_distributed.py runs real processes)."""

import pytest

from jaxpet import report
from jaxpet.benchmark import scaling


def _cells():
    cell = lambda series, p, k, t: {"series": series, "processes": p, "models": k,
                                    "epoch_seconds": t, "models_per_second": k / t}
    return [cell("same total work", 1, 8, 1.0), cell("same total work", 2, 8, 0.8),
            cell("same work per process", 1, 2, 0.25), cell("same work per process", 2, 4, 1.0)]


def test_ratios_are_speed_ups_or_weak_efficiencies_against_their_bounds():
    rows = {(r["series"], r["processes"]): r for r in scaling.efficiencies(_cells())}
    assert rows["same total work", 2]["ratio"] == pytest.approx(1.25)  # 10 vs 8 models/s
    assert rows["same work per process", 2]["ratio"] == pytest.approx(0.25)  # 0.25 s vs 1 s
    assert scaling.bound(rows["same total work", 2]) == 1.0
    assert scaling.bound(rows["same work per process", 2]) == 0.5
    table = report.parse_markdown_table(scaling.markdown({"cells": _cells(), "cpu_count": 2}))
    assert [r["of the bound"] for r in table] == ["100%", "125%", "100%", "50%"]


def test_the_figure_has_each_series_and_its_bound():
    fig = scaling.figure({"cells": _cells(), "cpu_count": 2})
    labels = [line.get_label() for line in fig.axes[0].lines]
    assert labels == ["same total work", "same total work: bound on shared cores",
                      "same work per process", "same work per process: bound on shared cores"]
    assert list(fig.axes[0].lines[3].get_ydata()) == [8.0, 8.0]
