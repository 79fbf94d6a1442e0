"""Tests of the PyTorch reference CNN and its one-after-another benchmark."""

import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpet import models
from jaxpet.benchmark import torch_reference

torch = pytest.importorskip("torch")


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


def test_torch_available_is_bool():
    assert torch_reference.torch_available() is True


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


def test_training_steps_lower_the_loss():
    torch.manual_seed(0)
    model = torch_reference.torch_model("mnist", "shadow")
    opt = torch_reference.make_optimizer(model)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    losses = [torch_reference.train_epoch(model, opt, x, y, batch_size=16) for _ in range(8)]
    assert losses[-1] < losses[0]


def test_measure_torch_row():
    row = torch_reference.measure_torch("mnist_shadow", 2, 64, repeats=1)
    expected = {"workload", "strategy", "num_models", "conv_impl", "conv_impl_resolved", "precision",
                "examples_per_model", "epoch_seconds", "images_per_s", "model_epochs_per_s",
                "seconds_per_model_epoch", "compile_seconds", "flops_per_epoch", "flop_per_s",
                "fraction_of_peak", "peak_flops", "peak_memory_bytes", "device", "backend",
                "torch_version", "threads"}
    assert expected <= set(row)
    assert row["strategy"] == "torch" and row["num_models"] == 2
    assert np.isfinite(row["images_per_s"]) and row["images_per_s"] > 0
    assert row["backend"] in ("torch-cpu", "torch-cuda")
    assert row["torch_version"] == torch.__version__


def test_same_logits_as_flax_with_copied_weights():
    flax_model = models.seed_cnn("mnist", "shadow", conv_impl="conv")
    images = np.random.default_rng(0).normal(size=(4, 28, 28, 1)).astype(np.float32)
    variables = flax_model.init(jax.random.PRNGKey(0), images)
    p = jax.tree.map(np.array, variables["params"])  # writable copies
    model = torch_reference.torch_model("mnist", "shadow").eval()
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in model.features if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for i, (conv, bn) in enumerate(zip(convs, bns)):
            conv.weight.copy_(torch.from_numpy(p[f"Conv_{i}"]["kernel"].transpose(3, 2, 0, 1)))
            bn.weight.copy_(torch.from_numpy(p[f"BatchNorm_{i}"]["scale"]))
            bn.bias.copy_(torch.from_numpy(p[f"BatchNorm_{i}"]["bias"]))
        for i, dense in enumerate((model.fc1, model.fc2)):
            dense.weight.copy_(torch.from_numpy(p[f"Dense_{i}"]["kernel"].T))
            dense.bias.copy_(torch.from_numpy(p[f"Dense_{i}"]["bias"]))
        logits = model(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(logits, np.asarray(flax_model.apply(variables, images)),
                               rtol=1e-4, atol=1e-4)
