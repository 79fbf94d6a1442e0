"""Seed tables, the ensemble trainer's main and the benchmark sweep, each on tiny inputs."""

from __future__ import annotations

import functools
import json

import pytest

from jaxpet import report
from jaxpet.benchmark import throughput
from jaxpet.experiments import benchmark, seed_tables, train_ensemble


def test_seed_tables_set_our_numbers_beside_the_seeds(tmp_path, make_dataset, check_common_schema,
                                                      figures_not_drawn):
    config = seed_tables.Config(datasets=("mnist",), cases=("mnist_p10_e30", "mnist_p3_e30"),
                                workdir=str(tmp_path / "tables"), train_size=100, val_size=20,
                                attack_epochs=2, width_scale=0.5, batch_size=16)
    # (The sizes of the membership and DP-curve tests: their compiled programs serve here too.)
    with figures_not_drawn():  # the cases' figures are not what this test checks
        results = seed_tables.run(config, {"mnist": make_dataset()})
    assert results["cases_run"] == ["mnist_p10_e30", "mnist_p3_e30"]
    saved = check_common_schema(results, tmp_path / "tables")
    assert saved["cases_finished"] == results["cases_run"]
    # The two cases differ only in the attack: one trained target and shadow serve both.
    assert len(list((tmp_path / "tables" / "stages").glob("target-*.npz"))) == 1
    rows = report.parse_markdown_table((tmp_path / "tables" / "seed_tables.md").read_text())
    assert [(r["posteriors"], r["epochs"]) for r in rows] == [("10", "30"), ("3", "30")]
    for row, name in zip(rows, results["cases_run"], strict=True):
        case = json.loads((tmp_path / "tables" / name / "results.json").read_text())
        t, a = case["target"], case["attacks"]["shadow_mlp"]
        assert row["target train / test (%)"] == (
            f"seed 100.00 / {'98.88' if name.startswith('mnist_p10') else '98.86'}<br>ours "
            f"{100 * t['train_acc']:.2f} / {100 * t['test_acc']:.2f}")
        assert row["attack AUC"] == f"{a['auc']:.3f}"
        assert row["configuration"].startswith("seed: 100 members, width x0.5, 2 attack epochs")


def test_seed_tables_refuse_unknown_cases():
    with pytest.raises(ValueError, match="--cases must be one of"):
        seed_tables.Config(cases=("mnist_p7_e30",))


def test_train_ensemble_reports_every_model_and_reuses_the_training(tmp_path, make_dataset,
                                                                    check_common_schema):
    # 8x8 digits (the fixture's): the seed's MNIST CNN takes any size, and at 28x28 its
    # full-width layers run (and are evaluated) seconds longer on a CPU for the same claims.
    config = train_ensemble.Config(workdir=str(tmp_path / "ens"), num_models=2, train_size=64,
                                   epochs=2, batch_size=16)
    results = train_ensemble.run(config, make_dataset())
    assert len(results["models"]["train_acc"]) == 2 and results["images_per_second"] > 0
    check_common_schema(results, tmp_path / "ens")
    rows = report.parse_markdown_table((tmp_path / "ens" / "summary.md").read_text())
    assert [r["train acc"] for r in rows] == [f"{a:.4f}" for a in results["models"]["train_acc"]]
    again = train_ensemble.run(config, make_dataset())
    assert again["models"] == results["models"]
    assert again["seconds_incl_compile"] == results["seconds_incl_compile"]  # the stage, reused
    with pytest.raises(ValueError, match="train_size=5000 is larger than the train split"):
        train_ensemble.run(train_ensemble.Config(workdir=str(tmp_path / "e2"), train_size=5000),
                           make_dataset())


def test_benchmark_sweep_writes_each_cell(tmp_path, monkeypatch, check_common_schema):
    # The CPU's GEMM rate measured on one small product: the full set (a 2048^3 product and the
    # CIFAR-10 CNNs' largest layers, six times each) takes seconds, and nothing here needs the
    # rate to be the CPU's best, only measured and used as the cells' peak.
    monkeypatch.setattr(throughput, "gemm_flops",
                        functools.partial(throughput.gemm_flops, shapes=((256, 256, 256),)))
    config = benchmark.Config(workloads=("mnist_shadow",), num_models=(2,),
                              strategies=("vmap", "loop"), examples_per_model=32, batch_size=16,
                              workdir=str(tmp_path / "bench"), inversion_classes=2,
                              inversion_iterations=3, profile=True)
    results = benchmark.run(config)
    assert [(c["strategy"], c["num_models"]) for c in results["cells"]] == [("vmap", 2),
                                                                           ("loop", 2)]
    assert results["inversion"]["classes"] == 2
    assert {"cells", "inversion"} <= set(check_common_schema(results, tmp_path / "bench"))
    rows = report.parse_markdown_table((tmp_path / "bench" / "benchmark.md").read_text())
    vmap2 = next(r for r in rows if r["strategy"] == "vmap" and r["K"] == "2")
    cells = {(c["strategy"], c["num_models"]): c for c in results["cells"]}
    assert vmap2["vmap / loop"] == (
        f"{cells['vmap', 2]['images_per_s'] / cells['loop', 2]['images_per_s']:.2f}x")
    assert vmap2["images/s"] == f"{cells['vmap', 2]['images_per_s']:.0f}"
    assert results["gemm_flop_per_s"] > 0  # the CPU's measured limit, the cells' peak
    assert cells["vmap", 2]["fraction_of_peak"] == pytest.approx(
        cells["vmap", 2]["flop_per_s"] / results["gemm_flop_per_s"])
    (profile,) = results["profiles"]  # one model: one K=1 profile
    assert profile["num_models"] == 1 and profile["categories"]["matmul"] > 0
    summary = (tmp_path / "bench" / "benchmark.md").read_text()
    assert f"| {profile['total_ms']:.1f} |" in summary
