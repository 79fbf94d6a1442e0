"""The model-inversion experiment end to end on a tiny synthetic face set."""


import numpy as np
from PIL import Image

from jaxpet import data, stages
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
    for name in ("results.json", "summary.md", "inversions.npz", "iterations.png",
                 "all_classes.png"):
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
    assert 0.0 <= saved["target"]["val_acc"] <= 1.0
    assert results["target"]["seed"]["val_acc"] == 0.9531
    # Each raw row of reconstructions has a stretched row under it: 2 people x 2 rows in
    # iterations.png; real, raw and stretched rows for the 4 people of all_classes.png.
    cell = 16 + 13 + 4  # tile height + caption + padding (report.image_grid)
    iterations_png = np.asarray(Image.open(workdir / "iterations.png"))
    all_classes_png = np.asarray(Image.open(workdir / "all_classes.png"))
    assert iterations_png.shape == (2 * 2 * cell + 4, 3 * (12 + 4) + 4)
    assert all_classes_png.shape == (3 * cell + 4, 4 * (12 + 4) + 4)
    raw, stretched = (all_classes_png[row * cell + 17:row * cell + 33, 4:16] for row in (1, 2))
    assert np.ptp(raw) < 255 and stretched.min() == 0 and stretched.max() == 255
    text = (workdir / "summary.md").read_text()
    assert "stretched per image (p1-p99)" in text and "1st and 99th pixel percentiles" in text
    spread = saved["figures"]["pixel_spread"]
    assert 0 <= spread["reconstruction"] and 0 < spread["real"] <= 255


def test_stretch_maps_each_images_p1_p99_to_0_255():
    ramp = np.linspace(0.40, 0.47, 101, dtype=np.float32)  # p1 = ramp[1], p99 = ramp[99] exactly
    image = ramp.reshape(1, 101, 1)
    out = inversion.stretch(image)
    assert out.shape == (1, 101) and out.dtype == np.uint8
    assert out[0, 1] == 0 and out[0, 99] == 255  # the percentiles themselves
    assert out[0, 0] == 0 and out[0, 100] == 255  # clipped outside them
    assert out[0, 50] in (127, 128)
    assert np.all(np.diff(out[0].astype(int)) >= 0)  # linear, so order is kept
    # Per image: a faint image and a full-range one both end up spanning 0..255.
    batch = np.stack([image, 0.1 + 0.8 * (image - 0.40) / 0.07])
    stretched = inversion.stretch(batch)
    np.testing.assert_allclose(stretched[0], stretched[1], atol=1)  # up to float rounding
    assert stretched[1].min() == 0 and stretched[1].max() == 255


def test_stretch_keeps_a_constant_image_mid_grey():
    out = inversion.stretch(np.full((2, 4, 3, 1), 0.3, np.float32))
    np.testing.assert_array_equal(out, 128)
    assert inversion.pixel_spread(np.full((1, 4, 3, 1), 0.3)) == 0.0


def test_presets_stage_key_and_train_configs():
    """The full setting is the first preset; quick is a valid config in its own workdir. The
    classifiers' key moves with their settings, not the attack's; --patience (MI-FACE's beta)
    never reaches the classifiers' training, so beta 0 (off) is fine."""
    assert list(inversion.PRESETS) == ["seed", "quick"] and inversion.PRESETS["seed"] == {}
    quick = inversion.Config(**inversion.PRESETS["quick"])
    assert quick.workdir != inversion.Config().workdir
    key = lambda **kw: stages.stage_key(inversion.Config(**kw),
                                        ignore=inversion.CLASSIFIERS_KEY_IGNORE)
    assert key() == key(step_size=1.0, iterations=(3,), patience=0, variants=(), workdir="x")
    assert key() != key(epochs=3) and key() != key(evaluator="mlp") and key() != key(seed=1)
    config = inversion.Config(patience=0, batch_size=32, evaluator_epochs=4)
    target, evaluator = config.train_config(config.epochs), config.train_config(4)
    assert (target.epochs, target.batch_size, evaluator.epochs) == (30, 32, 4)
    assert target.lr_decay == 1.0 and target.weight_decay == 0.0 and not target.early_stopping
