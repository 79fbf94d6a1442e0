"""The TFDS fallback: lazy import, the mocked data source, and the offline failure that never
starts TFDS's retrying download."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

from jaxpet import data
from jaxpet.data import tfds as tfds_source


def test_module_import_does_not_import_tfds():
    code = "import sys, jaxpet.data; print('tensorflow_datasets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_data_source_path(tmp_path, monkeypatch, cache, name, shape):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.delitem(data.EXPECTED_COUNTS, name)  # 7 random mock examples: no count check
    monkeypatch.setattr(tfds_source, "probe_download", lambda *a, **k: None)  # "online"
    with tfds.testing.mock_data(num_examples=7):
        ds = data.load_dataset(name, tmp_path, cache_dir=cache)
        source = tfds.data_source(name, split="test")
        want_images = np.stack([np.asarray(source[i]["image"]) for i in range(7)])
        want_labels = np.array([source[i]["label"] for i in range(7)])
        again = data.load_dataset(name, tmp_path, cache_dir=cache)
    assert ds.info["source_kind"] == "tfds" and ds.info["tfds_name"] == name
    assert ds.info["tfds_version"] and ds.info["from_cache"] is False
    assert ds.train.images.shape == (7, *shape) and ds.train.images.dtype == np.uint8
    assert ds.train.labels.dtype == np.int32
    np.testing.assert_array_equal(ds.test.images, want_images)
    np.testing.assert_array_equal(ds.test.labels, want_labels)
    assert again.info["from_cache"] is True and again.digest == ds.digest
    np.testing.assert_array_equal(again.train.images, ds.train.images)


def test_tfds_unavailable_or_disallowed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import now fails
    with pytest.raises(data.DataError, match="tensorflow-datasets is not installed"):
        data.load_dataset("cifar10", tmp_path)
    with pytest.raises(data.DataError, match="allow the TFDS download"):
        data.load_dataset("cifar10", tmp_path, allow_download=False)


def _forbid_tfds_downloads(monkeypatch, tfds):
    """Every way TFDS could start its (retrying) download fails the test at once."""
    def refuse(*args, **kwargs):
        pytest.fail("the TFDS download must not start")

    monkeypatch.setattr(tfds, "data_source", refuse)
    monkeypatch.setattr(tfds, "load", refuse)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", refuse)
    monkeypatch.setattr(tfds.download.DownloadManager, "download", refuse)
    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", refuse)


def _offline_probe(monkeypatch, why):
    """``probe_download`` answering ``why`` (offline); returns the list of names it was asked."""
    asked = []
    monkeypatch.setattr(tfds_source, "probe_download",
                        lambda name, *a, **k: asked.append(name) or why)
    return asked


@pytest.mark.parametrize("name,layout", [("mnist", "t10k-labels-idx1-ubyte.gz"),
                                         ("cifar10", "cifar-10-binary.tar.gz")])
def test_tfds_offline_fails_without_starting_the_download(tmp_path, monkeypatch, cache, name,
                                                          layout):
    """No local copy, no prepared TFDS copy, no network: one DataError after the one short
    probe, naming the local layout, and TFDS's retrying download is never started."""
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: False)
    _forbid_tfds_downloads(monkeypatch, tfds)
    asked = _offline_probe(monkeypatch, "cannot connect to storage.googleapis.com:443 "
                                        "(gaierror: [Errno -3] Temporary failure)")
    with pytest.raises(data.DataError) as err:
        data.load_dataset(name, tmp_path, cache_dir=cache)
    assert asked == [name]  # the probe decided, once
    msg = str(err.value)
    for needle in (layout, str(tmp_path), "JAXPET_DATA_DIR", "--data_dir",
                   "cannot download", "cannot connect to storage.googleapis.com"):
        assert needle in msg
    assert not cache.exists() or not list(cache.iterdir())


def test_tfds_cache_hit_needs_no_network(tmp_path, monkeypatch, cache):
    """A TFDS dataset already in jaxpet's cache loads offline: the probe runs only to decode."""
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.delitem(data.EXPECTED_COUNTS, "mnist")
    monkeypatch.setattr(tfds_source, "probe_download", lambda *a, **k: None)
    with tfds.testing.mock_data(num_examples=3):
        first = data.load_dataset("mnist", tmp_path, cache_dir=cache)
        monkeypatch.setattr(tfds_source, "probe_download", lambda *a, **k: "offline")
        again = data.load_dataset("mnist", tmp_path, cache_dir=cache)
    assert again.info["from_cache"] is True and again.digest == first.digest


def test_probe_download_open_refused_and_silent(monkeypatch):
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    monkeypatch.setattr(tfds_source, "_targets", lambda name: [("127.0.0.1", port)])
    try:
        assert tfds_source.probe_download("mnist", timeout=2) is None
    finally:
        server.close()
    why = tfds_source.probe_download("mnist", timeout=2)  # nothing listens now
    assert why.startswith("cannot connect to 127.0.0.1:") and "Refused" in why

    release, answered = threading.Event(), []

    def hang(*args, **kwargs):  # a lookup or connect that answers only once the probe is done
        release.wait(timeout=60)
        answered.append(True)
        raise OSError("timed out")

    monkeypatch.setattr(socket, "create_connection", hang)
    try:
        why = tfds_source.probe_download("mnist", timeout=0.3)
        hung = not answered  # the probe gave up before the connection answered
    finally:
        release.set()
    assert hung and why == "cannot connect to 1 more not answering within 0.3s"


def test_probe_targets_follow_the_https_proxy(monkeypatch):
    for var in ("https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    assert tfds_source._targets("cifar10") == [("storage.googleapis.com", 443),
                                               ("www.cs.toronto.edu", 443)]
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    assert tfds_source._targets("mnist") == [("proxy.example", 3128)]
    monkeypatch.setenv("no_proxy", "storage.googleapis.com")
    assert tfds_source._targets("mnist") == [("storage.googleapis.com", 443)]


def test_any_tfds_image_classification_dataset_by_name(tmp_path, monkeypatch, cache):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(tfds_source, "probe_download", lambda *a, **k: None)
    with tfds.testing.mock_data(num_examples=5):
        ds = data.load_dataset("tfds:fashion_mnist", cache_dir=cache)
        again = data.load_dataset("tfds:fashion_mnist", cache_dir=cache)
    assert ds.name == "fashion_mnist" and ds.train.images.shape == (5, 28, 28, 1)
    assert len(ds.class_names) == 10 and ds.class_names[0] == "T-shirt/top"
    assert again.info["from_cache"] is True and again.digest == ds.digest


def test_unknown_or_offline_tfds_names_point_to_the_npz_route(monkeypatch, cache):
    tfds = pytest.importorskip("tensorflow_datasets")
    with pytest.raises(data.DataError, match="tfds:no_such_dataset.*pass your data as an .npz"):
        data.load_dataset("tfds:no_such_dataset", cache_dir=cache)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: False)
    _forbid_tfds_downloads(monkeypatch, tfds)
    asked = _offline_probe(monkeypatch, "cannot connect")
    with pytest.raises(data.DataError, match="cannot download it: cannot connect"):
        data.load_dataset("tfds:fashion_mnist", cache_dir=cache)
    assert asked == ["mnist"]  # a dataset without hosts of its own probes TFDS's mirror


def test_an_unknown_tfds_name_is_one_line_not_the_list_of_every_dataset(cache, caplog):
    pytest.importorskip("tensorflow_datasets")
    with caplog.at_level(logging.INFO, logger="absl"), pytest.raises(data.DataError) as err:
        data.load_dataset("tfds:fashion_mnst", cache_dir=cache)
    # TFDS's own INFO line about the failed lookup is not shown before jaxpet's line.
    assert not [r for r in caplog.records if "Failed to load" in r.getMessage()]
    msg = str(err.value)
    assert "\n" not in msg and "abstract_reasoning" not in msg  # TFDS's list, first entry
    for needle in ("tfds:fashion_mnst", "TFDS has no dataset 'fashion_mnst'",
                   "did you mean fashion_mnist", tfds_source.CATALOG, "list_builders()"):
        assert needle in msg
    assert type(err.value.__cause__).__name__ == "DatasetNotFoundError"  # the cause is kept


@pytest.mark.parametrize("message, shown", [
    ("Parsing builder name string failed.\nThe builder name string must be of the following "
     "format:\n  dataset_name[/config_name]", "Parsing builder name string failed."),
    ("BuilderConfig 3.0.1 not found. Here are 10 BuilderConfigs whose name closely match:\n"
     "  - mnist\n  - fashion_mnist", "BuilderConfig 3.0.1 not found."),
])
def test_any_tfds_failure_is_one_line(monkeypatch, cache, message, shown):
    tfds = pytest.importorskip("tensorflow_datasets")

    def builder(name):
        raise ValueError(message)

    monkeypatch.setattr(tfds, "builder", builder)
    with pytest.raises(data.DataError) as err:
        data.load_dataset("tfds:mnist/3.0.1", cache_dir=cache)
    assert str(err.value).endswith(f"(TFDS failed: ValueError: {shown})")


@pytest.mark.parametrize("installed", [True, False])
def test_an_empty_tfds_name_is_refused_with_or_without_tfds(monkeypatch, cache, installed):
    if not installed:
        monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import now fails
        with pytest.raises(data.DataError) as err:  # and any other name says so, in one line
            data.load_dataset("tfds:no_such_dataset", cache_dir=cache)
        assert "\n" not in str(err.value)
        assert "tensorflow-datasets is not installed" in str(err.value)
    for name in ("tfds:", "tfds:  "):
        with pytest.raises(data.DataError, match="no dataset name after 'tfds:'; write e.g. "
                                                 "tfds:fashion_mnist"):
            data.load_dataset(name, cache_dir=cache)
