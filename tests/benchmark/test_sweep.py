"""The sweep's bookkeeping: cell order, torch's absence, out-of-memory cells, per-model estimates
and profiles after each model's last cell, PyTorch rows' FLOPs (stand-ins for the timing and
the compiles: both are tested in test_throughput.py and test_memory.py)."""

import re

import pytest

from jaxpet import config as config_lib
from jaxpet.benchmark import memory, sweep, throughput, torch_reference
from jaxpet.benchmark.workloads import Cell


def _row(cell, examples_per_model=64, **extra):
    return {"workload": cell.workload, "strategy": cell.strategy, "num_models": cell.num_models,
            "conv_impl": cell.conv_impl, "pool_impl": cell.pool_impl,
            "batchnorm_impl": cell.batchnorm_impl, "precision": cell.precision,
            "examples_per_model": examples_per_model, "conv_impl_resolved": "slices",
            "images_per_s": 100.0, "model_epochs_per_s": 1.0, "compile_seconds": 1.0,
            "flop_per_s": None, "fraction_of_peak": None, "peak_memory_bytes": None, **extra}


def test_cells_cover_every_pool_form_with_one_torch_reference():
    cells = list(sweep.cells(("mnist_shadow",), ("float32",), (2,), ["vmap", "torch"],
                             pool_impls=("window", "reshape")))
    assert [(c.strategy, c.pool_impl) for c in cells] == [
        ("vmap", "window"), ("torch", "window"), ("vmap", "reshape")]
    cells = list(sweep.cells(("mnist_shadow",), ("float32",), (1,), ["vmap", "torch"],
                             batchnorm_impls=("flax", "fused")))
    assert [(c.strategy, c.batchnorm_impl) for c in cells] == [
        ("vmap", "flax"), ("torch", "flax"), ("vmap", "fused")]


def test_cells_go_workload_precision_k_strategy_and_torch_only_in_float32():
    cells = list(sweep.cells(("mnist_shadow", "cifar10_shadow"), ("float32", "bfloat16"), (1, 2),
                             ["vmap", "torch"]))
    assert [(c.workload[:5], c.precision[:2], c.num_models, c.strategy) for c in cells[:6]] == [
        ("mnist", "fl", 1, "vmap"), ("mnist", "fl", 1, "torch"), ("mnist", "fl", 2, "vmap"),
        ("mnist", "fl", 2, "torch"), ("mnist", "bf", 1, "vmap"), ("mnist", "bf", 2, "vmap")]
    assert len(cells) == 12
    assert sweep.model_key(cells[0]) == sweep.model_key(cells[2]) != sweep.model_key(cells[4])
    assert sweep.row_model_key(_row(cells[0])) == sweep.model_key(cells[0])


def test_usable_strategies_drop_torch_when_it_is_missing(monkeypatch, caplog):
    monkeypatch.setattr(torch_reference, "torch_available", lambda: False)
    with caplog.at_level("WARNING"):
        assert sweep.usable_strategies(("vmap", "torch")) == ["vmap"]
    assert "pip install" in caplog.text
    with pytest.raises(config_lib.ConfigError, match=re.escape("--strategies=torch needs torch")):
        sweep.usable_strategies(("torch",))
    monkeypatch.setattr(torch_reference, "torch_available", lambda: True)
    assert sweep.usable_strategies(("torch", "loop")) == ["torch", "loop"]


def test_out_of_memory_is_told_from_other_errors():
    assert sweep.out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert sweep.out_of_memory(RuntimeError("RESOURCE_EXHAUSTED: while allocating"))
    assert not sweep.out_of_memory(ValueError("shapes do not match"))


def test_measure_cell_records_out_of_memory_and_raises_anything_else(monkeypatch):
    cell = Cell("mnist_shadow", "vmap", 8, "auto", "float32")

    def oom(*args, **kwargs):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9 GiB\n"
                           "more detail")

    monkeypatch.setattr(throughput, "measure", oom)
    row = sweep.measure_cell(cell, 64, 32, peak=None)
    assert row["num_models"] == 8 and row["error"] == (
        "out of memory: RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9 GiB")
    monkeypatch.setattr(throughput, "measure", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        sweep.measure_cell(cell, 64, 32, peak=None)


def test_memory_row_names_why_there_is_no_estimate(monkeypatch):
    def no_analysis(workload, **kwargs):
        raise ValueError("the backend reports no memory analysis")

    monkeypatch.setattr(memory, "estimate_workload", no_analysis)
    row = sweep.memory_row(Cell("mnist_shadow", "vmap", 2, "auto", "float32"), 64, 32, (2, 4),
                           None)
    assert row == {"workload": "mnist_shadow", "precision": "float32", "conv_impl": "auto",
                   "pool_impl": "auto", "batchnorm_impl": "auto",
                   "error": "the backend reports no memory analysis"}


def test_torch_rows_get_the_same_models_flops():
    jax_row = {"workload": "mnist_shadow", "strategy": "vmap", "num_models": 2,
               "examples_per_model": 100, "precision": "float32", "flops_per_epoch": 4e9}
    torch_row = {"workload": "mnist_shadow", "strategy": "torch", "num_models": 1,
                 "images_per_s": 500.0, "backend": "torch-cpu"}
    other = {"workload": "cifar10_shadow", "strategy": "torch", "num_models": 1,
             "images_per_s": 50.0, "backend": "torch-cpu"}
    sweep.fill_torch_flops([jax_row, torch_row, other], gemm=1e11)
    assert torch_row["flop_per_s"] == pytest.approx(2e7 * 500)  # 4e9 / 200 images per image
    assert torch_row["fraction_of_peak"] == pytest.approx(1e10 / 1e11)
    assert "flop_per_s" not in other  # no JAX cell of that workload to take FLOPs from


def test_each_model_is_estimated_and_profiled_once_after_its_last_cell(monkeypatch):
    events, peaks = [], []

    def measure(cell, examples_per_model, batch_size, peak=None):
        events.append(("cell", cell.precision, cell.strategy, cell.num_models))
        peaks.append(peak)
        return _row(cell, examples_per_model)

    def estimate_workload(workload, **kwargs):
        events.append(("estimate", kwargs["precision"]))
        assert kwargs["fit_models"] == (2, 4) and kwargs["device_bytes"] == 10**9
        return {"workload": workload, "precision": kwargs["precision"], "fixed_bytes": 10.0,
                "per_model_bytes": 3.0}

    def profile_cell(cell, examples_per_model, batch_size):
        events.append(("profile", cell.precision, cell.strategy, cell.num_models))
        return {"categories": {"matmul": 1.0}}

    monkeypatch.setattr(throughput, "measure", measure)
    monkeypatch.setattr(memory, "estimate_workload", estimate_workload)
    monkeypatch.setattr(memory, "describe", lambda row: "")
    monkeypatch.setattr(throughput, "profile_cell", profile_cell)
    changes = []
    measured = sweep.Sweep(64, 32, gemm=5e9, memory_fit_models=(2, 4), device_bytes=10**9,
                           profile=True, on_change=lambda: changes.append(len(measured.rows)))
    for cell in sweep.cells(("mnist_shadow",), ("float32", "bfloat16"), (1, 2),
                            ["vmap", "torch"]):
        measured.measure(cell)
    measured.finish_model()
    measured.finish_model()  # once each
    assert events == [
        ("cell", "float32", "vmap", 1), ("cell", "float32", "torch", 1),
        ("cell", "float32", "vmap", 2), ("cell", "float32", "torch", 2),
        ("estimate", "float32"), ("profile", "float32", "vmap", 1),
        ("cell", "bfloat16", "vmap", 1), ("cell", "bfloat16", "vmap", 2),
        ("estimate", "bfloat16"), ("profile", "bfloat16", "vmap", 1)]
    assert peaks == [5e9] * 4 + [None] * 2  # the CPU's GEMM rate holds float32 cells only
    assert changes == [1, 2, 3, 4, 4, 5, 6, 6]  # after every row and every estimate
    results = measured.results()
    assert [c.get("predicted_memory_bytes") for c in results["cells"]] == [
        13.0, None, 16.0, None, 13.0, 16.0]
    assert len(results["memory"]) == len(results["profiles"]) == 2
    assert results["gemm_flop_per_s"] == 5e9 and results["inversion"] is None


def test_a_sweep_without_estimates_or_profiles_only_measures(monkeypatch):
    monkeypatch.setattr(throughput, "measure", lambda cell, *a, **k: _row(cell))
    monkeypatch.setattr(memory, "estimate_workload", lambda *a, **k: pytest.fail("estimated"))
    monkeypatch.setattr(throughput, "profile_cell", lambda *a, **k: pytest.fail("profiled"))
    measured = sweep.Sweep(64, 32, peak_flops=1e12)
    measured.finish_model()  # nothing measured yet: nothing to close
    measured.measure(Cell("mnist_shadow", "vmap", 2, "auto", "float32"))
    measured.measure(Cell("cifar10_shadow", "vmap", 2, "auto", "float32"))
    measured.finish_model()
    assert [r["workload"] for r in measured.results()["cells"]] == ["mnist_shadow",
                                                                     "cifar10_shadow"]
    assert measured.results()["memory"] == [] and "| mnist_shadow | vmap |" in measured.markdown()
