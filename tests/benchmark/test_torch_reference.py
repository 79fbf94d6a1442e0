"""Tests of the PyTorch reference CNN and its one-after-another benchmark.

torch is optional (CI installs none): the tests that need it are skipped one by one
without it, while the no-torch path is tested everywhere, with torch hidden where it
is installed.
"""

import math
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpet import config as config_lib, models, report
from jaxpet.benchmark import throughput, torch_reference
from jaxpet.benchmark.workloads import Cell
from jaxpet.experiments import benchmark

try:
    import torch
except ImportError:
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="needs torch (pip install "
                                 f"{torch_reference.TORCH_PIN})")
NEEDS_TORCH = re.escape(f"The PyTorch reference needs torch: `pip install "
                        f"{torch_reference.TORCH_PIN}`.")


@pytest.fixture
def no_torch(monkeypatch):
    """torch made unimportable for one test, whether or not it is installed."""
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    # Forget a model class an earlier test built with torch (restored afterwards).
    monkeypatch.delitem(vars(torch_reference), "SeedCNNTorch", raising=False)


def test_torch_is_seen_as_absent_when_hidden(no_torch):
    assert torch_reference.torch_available() is False


def test_without_torch_every_entry_point_says_how_to_install_it(no_torch):
    calls = [lambda: torch_reference.SeedCNNTorch,
             lambda: torch_reference.torch_model("mnist", "shadow"),
             lambda: torch_reference.make_optimizer(None),
             lambda: torch_reference.train_epoch(None, None, None, None),
             lambda: torch_reference.measure_torch("mnist_shadow", 2, 64, repeats=1),
             # The benchmark's torch cell goes through the same reference.
             lambda: throughput.measure(Cell("mnist_shadow", "torch", 2, "auto", "float32"), 64)]
    for call in calls:
        with pytest.raises(RuntimeError, match=f"^{NEEDS_TORCH}$") as err:
            call()
        assert isinstance(err.value.__cause__, ImportError)


def _fake_measure(measured):
    """A stand-in for throughput.measure: records the cell, returns a row of made-up figures."""
    def measure(cell, examples_per_model, batch_size, peak=None):
        measured.append((cell.strategy, cell.num_models))
        return {"workload": cell.workload, "strategy": cell.strategy,
                "num_models": cell.num_models, "conv_impl": cell.conv_impl,
                "conv_impl_resolved": "conv", "pool_impl": cell.pool_impl,
                "precision": cell.precision, "images_per_s": 100.0 * cell.num_models,
                "model_epochs_per_s": 1.0, "compile_seconds": 1.0, "flop_per_s": None,
                "fraction_of_peak": None, "peak_memory_bytes": None}
    return measure


def _sweep_config(tmp_path, strategies):
    return benchmark.Config(workloads=("mnist_shadow",), num_models=(1, 2), strategies=strategies,
                            workdir=str(tmp_path / "bench"), inversion_classes=0,
                            memory_estimate=False, peak_flops=1e12)


def test_benchmark_without_torch_skips_its_reference_and_says_how_to_install(
        no_torch, tmp_path, monkeypatch, caplog):
    measured = []
    monkeypatch.setattr(throughput, "measure", _fake_measure(measured))
    with caplog.at_level("WARNING"):
        results = benchmark.run(_sweep_config(tmp_path, ("vmap", "torch")))
    # No torch cell is attempted, recorded or compared against; the JAX cells all run.
    assert measured == [("vmap", 1), ("vmap", 2)]
    assert [(c["strategy"], c["num_models"]) for c in results["cells"]] == measured
    assert [r.getMessage() for r in caplog.records if "torch" in r.getMessage()] == [
        f"torch is not installed: skipping the PyTorch reference (pip install "
        f"{torch_reference.TORCH_PIN} to include it)."]
    rows = report.parse_markdown_table((tmp_path / "bench" / "benchmark.md").read_text())
    assert [(r["strategy"], r["K"], r["/ torch"]) for r in rows] == [("vmap", "1", ""),
                                                                     ("vmap", "2", "")]


def test_benchmark_with_torch_strategy_alone_fails_up_front_without_torch(no_torch, tmp_path,
                                                                           monkeypatch):
    measured = []
    monkeypatch.setattr(throughput, "measure", _fake_measure(measured))
    with pytest.raises(config_lib.ConfigError, match=re.escape(
            f"--strategies=torch needs torch, which is not installed — pip install "
            f"{torch_reference.TORCH_PIN} or add a JAX strategy.")):
        benchmark.run(_sweep_config(tmp_path, ("torch",)))
    assert measured == [] and not (tmp_path / "bench").exists()  # nothing run, nothing written


def test_benchmark_measures_the_torch_reference_when_torch_is_there(tmp_path, monkeypatch):
    """The same sweep with torch present (faked here): the reference is measured and compared."""
    measured = []
    monkeypatch.setattr(torch_reference, "torch_available", lambda: True)
    monkeypatch.setattr(throughput, "measure", _fake_measure(measured))
    benchmark.run(_sweep_config(tmp_path, ("vmap", "torch")))
    assert measured == [("vmap", 1), ("torch", 1), ("vmap", 2), ("torch", 2)]
    rows = report.parse_markdown_table((tmp_path / "bench" / "benchmark.md").read_text())
    assert [r["/ torch"] for r in rows if r["strategy"] == "vmap"] == ["1.00x", "1.00x"]


def test_module_imports_without_torch():
    code = "\n".join([
        "import sys",
        "sys.modules['torch'] = None  # makes `import torch` fail",
        "import jaxpet.benchmark.torch_reference as t",
        "assert t.torch_available() is False",
        "try:",
        "    t.torch_model('mnist', 'shadow')",
        "except RuntimeError as e:",
        "    assert 'pip install torch==2.13.0' in str(e)",
        "else:",
        "    raise AssertionError('no RuntimeError')",
    ])
    subprocess.run([sys.executable, "-c", code], check=True)


def test_torch_available_says_whether_torch_imports():
    assert torch_reference.torch_available() is (torch is not None)


@needs_torch
@pytest.mark.parametrize("dataset,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
@pytest.mark.parametrize("role", ["target", "shadow"])
def test_parameter_count_and_output_shape_match_flax(dataset, shape, role):
    flax_model = models.seed_cnn(dataset, role)
    params = jax.eval_shape(lambda: flax_model.init(jax.random.PRNGKey(0),
                                                    jnp.zeros((1,) + shape)))["params"]
    flax_count = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))
    model = torch_reference.torch_model(dataset, role)
    assert isinstance(model, torch_reference.SeedCNNTorch)
    assert sum(p.numel() for p in model.parameters()) == flax_count
    h, w, c = shape
    assert model.eval()(torch.zeros(3, c, h, w)).shape == (3, 10)


@needs_torch
def test_training_steps_lower_the_loss():
    torch.manual_seed(0)
    model = torch_reference.torch_model("mnist", "shadow")
    opt = torch_reference.make_optimizer(model)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    losses = [torch_reference.train_epoch(model, opt, x, y, batch_size=16) for _ in range(8)]
    assert losses[-1] < losses[0]


@needs_torch
def test_measure_torch_row():
    row = torch_reference.measure_torch("mnist_shadow", 2, 64, repeats=1)
    expected = {"workload", "strategy", "num_models", "conv_impl", "conv_impl_resolved",
                "precision", "examples_per_model", "epoch_seconds", "images_per_s",
                "model_epochs_per_s", "seconds_per_model_epoch", "compile_seconds",
                "flops_per_epoch", "flop_per_s", "fraction_of_peak", "peak_flops",
                "peak_memory_bytes", "device", "backend", "torch_version", "threads"}
    assert expected <= set(row)
    assert row["strategy"] == "torch" and row["num_models"] == 2
    assert np.isfinite(row["images_per_s"]) and row["images_per_s"] > 0
    assert row["backend"] in ("torch-cpu", "torch-cuda")
    assert row["torch_version"] == torch.__version__


@needs_torch
def test_same_logits_as_flax_with_copied_weights():
    flax_model = models.seed_cnn("mnist", "shadow", conv_impl="conv")
    images = np.random.default_rng(0).normal(size=(4, 28, 28, 1)).astype(np.float32)
    variables = flax_model.init(jax.random.PRNGKey(0), images)
    p = jax.tree.map(np.array, variables["params"])  # writable copies
    model = torch_reference.torch_model("mnist", "shadow").eval()
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in model.features if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for i, (conv, bn) in enumerate(zip(convs, bns, strict=True)):
            conv.weight.copy_(torch.from_numpy(p[f"Conv_{i}"]["kernel"].transpose(3, 2, 0, 1)))
            bn.weight.copy_(torch.from_numpy(p[f"BatchNorm_{i}"]["scale"]))
            bn.bias.copy_(torch.from_numpy(p[f"BatchNorm_{i}"]["bias"]))
        for i, dense in enumerate((model.fc1, model.fc2)):
            dense.weight.copy_(torch.from_numpy(p[f"Dense_{i}"]["kernel"].T))
            dense.bias.copy_(torch.from_numpy(p[f"Dense_{i}"]["bias"]))
        logits = model(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(logits, np.asarray(flax_model.apply(variables, images)),
                               rtol=1e-4, atol=1e-4)
