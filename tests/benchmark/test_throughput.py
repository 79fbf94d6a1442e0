"""Throughput cells: every strategy measures, FLOPs scale with K, bad input is refused."""

import types

import numpy as np
import pytest

from jaxpet.benchmark import inversion, tables, throughput, workloads


@pytest.fixture(scope="module")
def cells():
    rows = {}
    for strategy, k in (("vmap", 1), ("vmap", 2), ("map", 2), ("loop", 2)):
        cell = workloads.Cell("mnist_shadow", strategy, k, "auto", "float32")
        rows[strategy, k] = throughput.measure(cell, examples_per_model=64, batch_size=32,
                                               repeats=1)
    return rows


def test_every_strategy_reports_positive_figures(cells):
    for (strategy, k), row in cells.items():
        assert row["strategy"] == strategy and row["num_models"] == k
        assert row["images_per_s"] > 0 and np.isfinite(row["images_per_s"])
        np.testing.assert_allclose(row["seconds_per_model_epoch"] * row["model_epochs_per_s"], 1.0)
        assert row["compile_seconds"] > 0
        assert row["flops_per_epoch"] > 0


def test_flops_scale_with_the_number_of_models(cells):
    one, two = cells["vmap", 1]["flops_per_epoch"], cells["vmap", 2]["flops_per_epoch"]
    np.testing.assert_allclose(two, 2 * one, rtol=0.05)
    # Every strategy does the same arithmetic.
    np.testing.assert_allclose(cells["loop", 2]["flops_per_epoch"], two, rtol=0.05)
    np.testing.assert_allclose(cells["map", 2]["flops_per_epoch"], two, rtol=0.05)


def test_markdown_has_the_vmap_over_loop_ratio(cells):
    rows = list(cells.values())
    table = tables.markdown(rows)
    ratio = cells["vmap", 2]["images_per_s"] / cells["loop", 2]["images_per_s"]
    assert f"{ratio:.2f}x" in table
    assert table.count("\n") == len(rows) + 2


def test_peak_lookup_and_unknown_chips():
    h200 = types.SimpleNamespace(device_kind="NVIDIA H200")
    assert workloads.peak_flops(h200, "bfloat16") == 2 * workloads.peak_flops(h200, "float32")
    mystery = types.SimpleNamespace(device_kind="Mystery chip")
    assert workloads.peak_flops(mystery, "float32") is None


def test_bad_cells_are_refused():
    with pytest.raises(ValueError, match="Unknown strategy"):
        throughput.measure(workloads.Cell("mnist_shadow", "pmap", 2, "auto", "float32"), 64)
    with pytest.raises(ValueError, match="Unknown workload"):
        throughput.measure(workloads.Cell("imagenet", "vmap", 2, "auto", "float32"), 64)
    with pytest.raises(ValueError, match=">= 1"):
        throughput.measure(workloads.Cell("mnist_shadow", "vmap", 0, "auto", "float32"), 64)


def test_inversion_timing_agrees_between_vmap_and_loop():
    out = inversion.measure_inversion(num_classes=3, iterations=5, hidden=16, image_shape=(8, 8, 1))
    assert out["classes"] == 3 and out["iterations"] == 5
    assert out["vmap_seconds"] > 0 and out["loop_seconds"] > 0
    assert out["max_abs_image_difference"] < 1e-5
