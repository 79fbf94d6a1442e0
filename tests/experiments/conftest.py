"""Tiny synthetic datasets for the experiment tests (seconds on a CPU, never the real data)."""

from __future__ import annotations

import contextlib
import pathlib

import numpy as np
import pytest

from jaxpet import data, files


def tiny_dataset(n_train=800, n_test=200, seed=0, name="mnist", shape=(8, 8, 1)):
    """Random images and labels: a model memorises them, so membership leaks on purpose."""
    rng = np.random.default_rng(seed)

    def split(n):
        labels = rng.integers(0, 10, n).astype(np.int32)
        images = rng.integers(0, 256, (n, *shape)).astype(np.uint8)
        return data.Split(images=images, labels=labels)

    return data.Dataset(name=name, train=split(n_train), test=split(n_test),
                        class_names=tuple(str(i) for i in range(10)), info={"source": "synthetic"})


@pytest.fixture(scope="session")
def make_dataset():
    """``make_dataset(seed=..., n_train=...)``: a tiny synthetic dataset (see tiny_dataset)."""
    return tiny_dataset


@pytest.fixture(scope="session")
def check_common_schema():
    """``check(results, workdir)``: what every experiment's results.json holds, on disk too."""
    import json

    def check(results, workdir):
        saved = json.loads((workdir / "results.json").read_text())
        assert json.loads((workdir / "config.json").read_text()) == saved["config"]
        assert {"config", "seconds", "provenance"} <= set(saved)
        prov = saved["provenance"]
        assert {"backend", "device_kind", "device_count", "versions", "git_commit", "command",
                "started", "finished"} <= set(prov)
        assert {"jaxpet", "jax", "flax", "optax"} <= set(prov["versions"])
        assert prov["started"] <= prov["finished"]
        assert all(isinstance(v, (int, float)) and v >= 0 for v in saved["seconds"].values())
        assert set(saved) == set(results)
        page = (workdir / "report.html").read_text()  # every run's page, built without error
        assert "<h2>Provenance</h2>" in page and "results.json" in page
        return saved

    return check


@contextlib.contextmanager
def _figures_not_drawn(keep=()):
    """Within it, every figure a run saves (files.save_figure) is written as an empty file
    instead of laid out and rendered, but for the file names in ``keep``.

    Drawing one costs about 0.3 s on a CPU, and a membership run draws five (its training curves
    after each of its four trainings, then the ROC curves): most of the run once its programs
    are compiled. For runs whose tests check other things; the figures themselves are checked
    where a test says so (e.g. test_membership's finished run, the DP curve's figure)."""
    real = files.save_figure

    def save(fig, path, dpi=None):
        if pathlib.Path(path).name in keep:
            return real(fig, path, dpi=dpi)
        return files.atomic_write(path, lambda f: None)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(files, "save_figure", save)
        yield


@pytest.fixture(scope="session")
def figures_not_drawn():
    """``with figures_not_drawn(keep=()):`` (see _figures_not_drawn)."""
    return _figures_not_drawn
