"""The benchmark's summary tables: speed-ups as ratios of rows of the same run, failed cells
listed apart, profiles and memory estimates after the cells."""

from jaxpet import report
from jaxpet.benchmark import tables


def _row(strategy, k, images_per_s, precision="float32", **extra):
    return {"workload": "mnist_shadow", "strategy": strategy, "num_models": k,
            "conv_impl": "auto", "conv_impl_resolved": "slices", "pool_impl": "auto",
            "batchnorm_impl": "auto", "precision": precision, "images_per_s": images_per_s,
            "model_epochs_per_s": k * images_per_s / 64, "compile_seconds": 2.0,
            "flop_per_s": 3e11, "fraction_of_peak": 0.25, "peak_memory_bytes": 2**30, **extra}


def test_the_cells_table_has_vmap_over_loop_and_over_float32_torch():
    rows = [_row("vmap", 2, 400.0), _row("loop", 2, 100.0), _row("torch", 2, 50.0),
            _row("vmap", 2, 800.0, precision="bfloat16")]
    table = report.parse_markdown_table(tables.markdown(rows))
    assert [(r["strategy"], r["precision"], r["vmap / loop"], r["/ torch"]) for r in table] == [
        ("vmap", "float32", "4.00x", "8.00x"), ("loop", "float32", "", "2.00x"),
        ("torch", "float32", "", ""), ("vmap", "bfloat16", "", "")]
    assert table[0]["TFLOP/s"] == "0.300" and table[0]["% of peak"] == "25.0"
    assert table[0]["peak mem (GiB)"] == "1.00"


def test_failed_cells_gemm_and_inversion_lines():
    failed = {"workload": "mnist_shadow", "strategy": "vmap", "num_models": 8,
              "precision": "bfloat16", "conv_impl": "auto", "pool_impl": "window",
              "error": "out of memory: RESOURCE_EXHAUSTED"}
    inversion = {"classes": 4, "iterations": 10, "backend": "cpu", "vmap_seconds": 0.5,
                 "loop_seconds": 1.5, "ratio": 3.0}
    text = tables.markdown([_row("vmap", 2, 400.0), failed], inversion, gemm=2e11)
    assert text.startswith("Peak of the CPU cells: this CPU's measured float32 GEMM rate, "
                           "200 GFLOP/s")
    assert ("- mnist_shadow vmap K=8 bfloat16 (auto, window pool): out of memory: "
            "RESOURCE_EXHAUSTED") in text
    assert text.endswith("mi_face, 4 classes x 10 iterations (cpu): vmapped 0.50 s, loop over "
                         "classes 1.50 s (3.0x).\n")
    assert len(report.parse_markdown_table(text.split("\n\n")[1])) == 1  # measured cells alone


def test_profile_lines():
    assert tables.profile_markdown([]) == []
    profile = {"workload": "mnist_shadow", "precision": "float32", "conv_impl": "slices",
               "pool_impl": "reshape", "batchnorm_impl": "fused", "total_ms": 7.25,
               "categories": {"matmul": 4.0, "pooling": 1.0},
               "top_ops": [{"layer": "Conv_1/dot_general", "ms": 3.0}]}
    lines = tables.profile_markdown([profile])
    assert lines[-1].startswith("| mnist_shadow | float32 | slices | reshape | fused | 7.2 | 4.0 |")
    assert lines[-1].endswith("| Conv_1/dot_general (3.0) |")


def test_memory_lines():
    assert tables.memory_markdown([]) == []
    lines = tables.memory_markdown([{"workload": "w", "precision": "float32",
                                     "conv_impl": "auto", "pool_impl": "window",
                                     "error": "no analysis"}])
    assert lines[-1] == "| w | float32 | auto | window | no estimate: no analysis |"
