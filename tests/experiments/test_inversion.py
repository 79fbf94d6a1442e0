"""The model-inversion experiment end to end on a tiny synthetic face set."""


import numpy as np

from jaxpet import data
from jaxpet.experiments import inversion


def test_experiment_writes_every_output(tmp_path, check_common_schema):
    """The whole experiment on a tiny synthetic 4-person face set."""
    rng = np.random.default_rng(0)
    people = rng.integers(40, 215, (4, 16, 12, 1))
    images = np.concatenate([np.clip(p + rng.integers(-25, 25, (10, 16, 12, 1)), 0, 255)
                             for p in people]).astype(np.uint8)
    labels = np.repeat(np.arange(4), 10).astype(np.int32)
    dataset = data.Dataset("att_faces", data.Split(images, labels), None,
                           tuple(f"s{i}" for i in range(1, 5)))
    config = inversion.Config(workdir=str(tmp_path / "run"), target_hidden=32, epochs=3,
                                        evaluator_epochs=3, evaluator="mlp", batch_size=16,
                                        iterations=(2, 4), max_iterations=5, patience=2,
                                        figure_people=2, speed_iterations=4,
                                        variants=("paper_cost_black",))
    results = inversion.run(config, dataset=dataset)
    workdir = tmp_path / "run"
    for name in ("results.json", "summary.md", "inversions.npz", "iterations.png", "all_classes.png"):
        assert (workdir / name).stat().st_size > 0, name
    saved = check_common_schema(results, workdir)
    assert set(saved["budgets"]) == {"2", "4", "stopping_rules"}
    for report in saved["budgets"].values():
        assert len(report["mse"]) == len(report["ssim"]) == len(report["stop_reason"]) == 4
        for key in ("target_identified", "evaluator_identified", "nearest_mean_identified"):
            assert 0.0 <= report[key] <= 1.0
    assert saved["budgets"]["4"]["iterations"] == [4] * 4
    assert saved["speed"]["classes"] == 4 and saved["speed"]["ratio"] > 0
    assert saved["speed"]["max_abs_image_difference"] < 1e-5
    assert 0.0 <= saved["target"]["val_acc"] <= 1.0 and results["target"]["seed"]["val_acc"] == 0.9531
