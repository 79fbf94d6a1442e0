"""Step profiles: op names map to categories, helpers inherit their consumer's, a real step
breaks down into the layers that cost it."""

import numpy as np
import pytest

from jaxpet.benchmark import profile, throughput, workloads


@pytest.mark.parametrize("op_name, category", [
    ("jit(train_ensemble_epoch)/while/body/closed_call/jvp(SeedCNN)/Conv_1/dot_general", "matmul"),
    ("jit(e)/while/body/closed_call/transpose(jvp(SeedCNN))/Conv_0/transpose", "matmul"),
    ("jit(e)/while/body/closed_call/jvp(SeedCNN)/Dense_0/dot_general", "matmul"),
    ("jit(e)/while/body/closed_call/jvp(SeedCNN)/Conv_1/concatenate", "im2col"),
    ("jit(e)/while/body/closed_call/transpose(jvp(SeedCNN))/Conv_1/jit(_pad)/pad", "im2col"),
    ("jit(e)/while/body/closed_call/jvp(SeedCNN)/Conv_0/conv_general_dilated", "im2col"),
    ("jit(e)/while/body/closed_call/transpose(jvp(SeedCNN))/BatchNorm_0/reduce_sum", "batchnorm"),
    ("jit(e)/while/body/closed_call/transpose(jvp(SeedCNN))/select_and_scatter", "pooling"),
    ("jit(e)/while/body/closed_call/jvp(SeedCNN)/reduce_max", "pooling"),
    ("jit(e)/while/body/closed_call/div", "other"),
])
def test_op_names_map_to_categories(op_name, category):
    assert profile.categorize(op_name) == category


def test_helpers_without_metadata_take_their_consumers_name():
    text = "\n".join([
        '  %wrapped_iota.5 = s32[8]{0} fusion(), kind=kLoop',
        '  %copy.1 = s32[8]{0} copy(%wrapped_iota.5)',
        '  %reduce-window.2 = f32[8]{0} fusion(%copy.1, %p), '
        'metadata={op_name="a/jvp(M)/reduce_max"}',
        '  %dot.3 = f32[8]{0} dot(%x, %y), metadata={op_name="a/jvp(M)/Conv_0/dot_general"}',
    ])
    names = profile.op_names(text)
    assert names["wrapped_iota.5"] == names["copy.1"] == "a/jvp(M)/reduce_max"
    result = profile.breakdown(text, {"wrapped_iota.5": 1.0, "dot.3": 2.0, "unknown": 0.5})
    assert result["categories"] == {"matmul": 2.0, "pooling": 1.0, "other": 0.5}
    assert [op["op"] for op in result["top_ops"]] == ["dot.3", "wrapped_iota.5", "unknown"]
    assert result["total_ms"] == pytest.approx(3.5)


def test_a_real_step_breaks_down_into_its_layers():
    cell = workloads.Cell("mnist_shadow", "vmap", 1, "auto", "float32")
    row = throughput.profile_cell(cell, examples_per_model=64, batch_size=32)
    categories = row["categories"]
    for name in ("matmul", "im2col", "batchnorm", "pooling"):
        assert categories.get(name, 0) > 0, name
    np.testing.assert_allclose(sum(categories.values()), row["total_ms"], rtol=1e-9)
    times = [op["ms"] for op in row["top_ops"]]
    assert times == sorted(times, reverse=True)
    assert (row["conv_impl"], row["pool_impl"], row["batchnorm_impl"]) == (
        "slices", "reshape", "fused")


def test_gemm_rate_is_positive_and_finite():
    rate = throughput.gemm_flops(shapes=((64, 32, 16), (128, 128, 128)), repeats=2)
    assert np.isfinite(rate) and rate > 0
