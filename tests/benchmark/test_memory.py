"""The memory estimate: an exact line in K, the state's bytes, the largest K, clear refusals."""

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpet import config as config_lib, models, training
from jaxpet.benchmark import memory, throughput, torch_reference
from jaxpet.experiments import benchmark as experiment

SHAPE = (8, 8, 1)
TRAIN = training.TrainConfig(epochs=1, batch_size=8)
NORMALIZE = training.Normalize(mean=(0.5,), std=(0.25,))
GIB = 2**30


def _tiny_cnn(**kwargs):
    return models.SeedCNN(conv1=4, conv2=8, fc=16, num_classes=2, **kwargs)


def _estimate(model, **kwargs):
    return memory.estimate(model, TRAIN, NORMALIZE, SHAPE, examples_per_model=16,
                           **{"device_bytes": GIB, "fit_models": (2, 3), **kwargs})


@pytest.fixture(scope="module")
def tiny():
    return _estimate(_tiny_cnn())


def test_the_line_predicts_a_third_ensemble_size(tiny):
    compiled = memory.compile_epoch(_tiny_cnn(), TRAIN, NORMALIZE, SHAPE, num_models=4,
                                    examples_per_model=16, pool_size=32)
    four = memory.program_memory(compiled, 4)
    np.testing.assert_allclose(tiny.predict(4), four.total_bytes, rtol=0.03)
    assert [p.num_models for p in tiny.programs] == [2, 3]
    # The two fitted programs lie on the line by construction.
    for program in tiny.programs:
        np.testing.assert_allclose(tiny.predict(program.num_models), program.total_bytes)
    # Donation: the state is updated in place, so it is counted once per model, not twice.
    assert four.alias_bytes >= 4 * tiny.parameter_bytes


def test_state_bytes_are_the_state_pytree_sizes(tiny):
    variables = jax.eval_shape(lambda: _tiny_cnn().init(jax.random.PRNGKey(0),
                                                         jnp.zeros((1,) + SHAPE)))
    count = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables["params"]))
    assert tiny.parameter_count == count
    assert tiny.parameter_bytes == 4 * count
    # Adam: two moments per parameter, plus a step count and the injected hyperparameters.
    assert 2 * tiny.parameter_bytes <= tiny.optimizer_state_bytes <= 2 * tiny.parameter_bytes + 64
    assert tiny.batch_stats_bytes == 4 * 2 * (4 + 8)  # mean and variance of both BatchNorms
    assert tiny.activation_bytes > 0
    parts = (tiny.parameter_bytes + tiny.optimizer_state_bytes + tiny.batch_stats_bytes
             + tiny.activation_bytes)
    np.testing.assert_allclose(parts, tiny.per_model_bytes)
    row = tiny.as_dict()
    assert row["max_models"] == tiny.max_models and row["fit_models"] == [2, 3]


def test_bfloat16_keeps_float32_parameters():
    sample = NORMALIZE(jnp.zeros((1,) + SHAPE, jnp.uint8))
    f32 = memory.state_bytes(_tiny_cnn(), TRAIN, sample)
    bf16 = memory.state_bytes(_tiny_cnn(dtype=jnp.bfloat16), TRAIN, sample)
    assert bf16 == f32 and bf16["parameter_bytes"] == 4 * bf16["parameter_count"]


def test_max_models_is_monotone_in_memory_and_fits(tiny):
    sizes = [tiny.fixed_bytes + tiny.per_model_bytes * k for k in (0.5, 1, 7.9, 8, 100)]
    sizes += [GIB, 64 * GIB]
    ks = [memory.max_models(tiny.fixed_bytes, tiny.per_model_bytes, b) for b in sorted(sizes)]
    assert ks == sorted(ks) and ks[:4] == [0, 1, 7, 8]
    for b, k in zip(sorted(sizes), ks, strict=True):
        assert tiny.fixed_bytes + tiny.per_model_bytes * k <= b
        assert tiny.fixed_bytes + tiny.per_model_bytes * (k + 1) > b
    assert memory.max_models(10.0, 1.0, 5) == 0  # not even the shared part fits


def test_device_memory_comes_from_the_allocator_or_the_machine():
    gpu = types.SimpleNamespace(device_kind="NVIDIA H200",
                                memory_stats=lambda: {"bytes_limit": 100 * GIB})
    assert memory.device_memory_bytes(gpu) == (100 * GIB, "NVIDIA H200 memory_stats bytes_limit")
    cpu = types.SimpleNamespace(device_kind="cpu", memory_stats=lambda: None)
    size, source = memory.device_memory_bytes(cpu)
    assert size == memory.physical_memory_bytes() > 0 and "physical memory" in source


def test_bad_input_is_refused_with_a_clear_error(tiny):
    one = tiny.programs[0]
    with pytest.raises(ValueError, match="two different ensemble sizes"):
        memory.fit(one, one)
    with pytest.raises(ValueError, match="does not grow with K"):
        memory.fit(one, memory.ProgramMemory(one.num_models + 1, 0, 0, 0, 0, 0))
    with pytest.raises(ValueError, match="fit_models must be two different"):
        _estimate(_tiny_cnn(), fit_models=(2, 2))
    with pytest.raises(ValueError, match="fit_models must be two different"):
        _estimate(_tiny_cnn(), fit_models=(1, 2, 4))
    with pytest.raises(ValueError, match="fit_models must be an integer >= 1"):
        _estimate(_tiny_cnn(), fit_models=(0, 1))
    with pytest.raises(ValueError, match="fit_models must be an integer >= 1"):
        _estimate(_tiny_cnn(), fit_models=(1.5, 2))
    for bad in (0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="device_bytes must be a positive"):
            _estimate(_tiny_cnn(), device_bytes=bad)
    with pytest.raises(ValueError, match="smaller than one batch"):
        memory.estimate(_tiny_cnn(), TRAIN, NORMALIZE, SHAPE, examples_per_model=4)
    with pytest.raises(ValueError, match="per_model_bytes must be a positive"):
        memory.max_models(0.0, 0.0, GIB)
    with pytest.raises(ValueError, match="device_bytes must be a positive"):
        memory.max_models(0.0, 1.0, -5)
    with pytest.raises(ValueError, match="num_models must be an integer >= 1"):
        tiny.predict(0)
    with pytest.raises(ValueError, match="Unknown workload"):
        memory.estimate_workload("imagenet")
    no_analysis = types.SimpleNamespace(memory_analysis=lambda: None)
    with pytest.raises(ValueError, match="reports no memory analysis"):
        memory.program_memory(no_analysis, 1)


def test_the_benchmark_writes_the_estimate_after_each_model(tmp_path, monkeypatch, tiny):
    """The sweep's bookkeeping, with stand-ins for the timing and the compiles (both tested
    above and in test_throughput.py; tests/experiments runs the sweep for real)."""
    estimates, measured = [], []

    def estimate_workload(workload, **kwargs):
        estimates.append((workload, kwargs["precision"], tuple(measured)))
        return {"workload": workload, "precision": kwargs["precision"],
                "conv_impl": kwargs["conv_impl"], "conv_impl_resolved": "conv",
                "pool_impl": kwargs["pool_impl"], **tiny.as_dict(),
                "device_bytes": kwargs["device_bytes"], "device_memory_source": "given",
                "max_models": memory.max_models(tiny.fixed_bytes, tiny.per_model_bytes,
                                                kwargs["device_bytes"])}

    def measure(cell, examples_per_model, batch_size, peak=None):
        measured.append((cell.workload, cell.precision, cell.strategy, cell.num_models))
        if (cell.workload, cell.precision, cell.strategy, cell.num_models) == (
                "cifar10_shadow", "bfloat16", "vmap", 8):
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9 GiB")
        return {"workload": cell.workload, "strategy": cell.strategy,
                "num_models": cell.num_models, "conv_impl": cell.conv_impl,
                "conv_impl_resolved": "conv", "pool_impl": cell.pool_impl,
                "precision": cell.precision, "images_per_s": 100.0, "model_epochs_per_s": 1.0,
                "compile_seconds": 1.0, "flop_per_s": None, "fraction_of_peak": None,
                "peak_memory_bytes": None}

    monkeypatch.setattr(memory, "estimate_workload", estimate_workload)
    # The torch cells are stand-ins too: the sweep is the same with torch installed or not.
    monkeypatch.setattr(torch_reference, "torch_available", lambda: True)
    monkeypatch.setattr(throughput, "measure", measure)
    config = experiment.Config(workloads=("mnist_shadow", "cifar10_shadow"), num_models=(2, 8),
                               strategies=("vmap", "torch"), precisions=("float32", "bfloat16"),
                               workdir=str(tmp_path / "bench"), inversion_classes=0,
                               device_memory_gib=139.0)
    results = experiment.run(config)
    # One estimate per model, right after its last cell (torch cells are no model of ours).
    assert [e[:2] for e in estimates] == [(w, p) for w in config.workloads
                                          for p in config.precisions]
    assert [len(e[2]) for e in estimates] == [4, 6, 10, 12]
    rows = results["memory"]
    assert rows[0]["device_bytes"] == 139 * GIB
    # A cell out of device memory is recorded and the sweep goes on; others still fail.
    (failed,) = [c for c in results["cells"] if "error" in c]
    assert failed["num_models"] == 8 and failed["error"].startswith("out of memory: RESOURCE_")
    for cell in results["cells"]:
        if cell["strategy"] == "vmap":
            np.testing.assert_allclose(cell["predicted_memory_bytes"], tiny.predict(
                cell["num_models"]))
        else:
            assert "predicted_memory_bytes" not in cell
    table = (tmp_path / "bench" / "benchmark.md").read_text()
    assert "Device memory per model" in table
    assert f"| {tiny.per_model_bytes / 2**20:.1f} |" in table
    assert f"| {rows[0]['max_models']} |" in table
    cells_table = next(block for block in table.split("\n\n") if block.startswith("|"))
    assert cells_table.count("\n") == len(results["cells"])  # measured cells alone
    assert "- cifar10_shadow vmap K=8 bfloat16 (auto, auto pool): out of memory" in table


def test_the_benchmark_flags_are_checked():
    with pytest.raises(config_lib.ConfigError, match="two ensemble sizes"):
        experiment.Config(memory_fit_models=(1, 2, 4))
    with pytest.raises(config_lib.ConfigError, match="has no effect unless --memory_estimate"):
        experiment.Config(memory_estimate=False, device_memory_gib=80.0)
    with pytest.raises(config_lib.ConfigError, match="--device_memory_gib must be > 0"):
        experiment.Config(device_memory_gib=0.0)
