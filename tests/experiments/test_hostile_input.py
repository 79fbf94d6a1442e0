"""Hostile but realistic input on the audit, lira, membership and train_ensemble routes: each
class of issue 23 refused in one line before any training, on every experiment that has the
route (the unit tests of each check live beside its module)."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

from jaxpet import config as config_lib
from jaxpet.experiments import audit, lira

REAL_DATA = os.environ.get("JAXPET_DATA_DIR")
needs_data = pytest.mark.skipif(not REAL_DATA, reason="needs JAXPET_DATA_DIR (../shared/data)")


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> pathlib.Path:
    """A small .npz of feature vectors, two classes."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "features.npz"
    np.savez(path, features=rng.normal(size=(400, 6)).astype(np.float32),
             labels=rng.integers(0, 2, 400))
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> pathlib.Path:
    """A small .npz of uint8 images, two classes."""
    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("data") / "images.npz"
    np.savez(path, images=rng.integers(0, 256, (400, 8, 8, 1), np.uint8),
             labels=rng.integers(0, 2, 400))
    return path


@pytest.fixture
def user_model(tmp_path, monkeypatch) -> str:
    """A user's model factory, importable as ``hostile_user_model:make_mlp``."""
    (tmp_path / "hostile_user_model.py").write_text(
        "from flax import linen as nn\n\n\n"
        "class TinyMLP(nn.Module):\n"
        "    num_classes: int\n\n"
        "    @nn.compact\n"
        "    def __call__(self, x, train: bool = False):\n"
        "        return nn.Dense(self.num_classes)(nn.relu(nn.Dense(16)(x.reshape(len(x), -1))))\n"
        "\n\n"
        "def make_mlp(num_classes):\n"
        "    return TinyMLP(num_classes)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "hostile_user_model:make_mlp"


def _no_output(folder: pathlib.Path) -> bool:
    return not [p for p in folder.rglob("*") if p.is_file() and p.name != ".jaxpet.lock"]


# --- settings with no effect, derived from what the run actually loads and builds ---------

NO_EFFECT = [  # (flags, what the line must say)
    (["--noflip_queries"], "--flip_queries=False has no effect: --data="),
    (["--label_only_shift=2"], "holds feature vectors"),
    (["--label_only_translations=diamond"], "--label_only_translations=diamond has no effect"),
    (["--augment=flip_crop"], "--augment=flip_crop has no effect"),
    (["--preprocess=unit"], "which it leaves as --preprocess=dataset does"),
    (["--preprocess=raw"], "--preprocess=raw has no effect"),
    (["--data_dir=/tmp"], "--data_dir only locates jaxpet's named datasets"),
    (["--model=mlp", "--width_scale=1.001"], "rounded to whole units"),
    (["--model={user}", "--width_scale=2"], "is built by your factory"),
    (["--model={user}", "--precision=bfloat16"], "--precision=bfloat16 has no effect"),
]


@pytest.mark.parametrize("argv, expected", NO_EFFECT, ids=[" ".join(a) for a, _ in NO_EFFECT])
def test_a_setting_the_audit_would_not_use_is_refused(tmp_path, main_error, features, user_model,
                                                      argv, expected):
    argv = [a.format(user=user_model) for a in argv]
    message = main_error("audit", ["--preset=quick", f"--data={features}", "--pool_size=200",
                                   "--population_size=100", f"--workdir={tmp_path}/out", *argv])
    assert message.startswith("error: ") and expected in message and "\n" not in message
    assert _no_output(tmp_path / "out")


def test_image_settings_stay_accepted_on_images(tmp_path, images, monkeypatch):
    """The same settings on image data have an effect: the run gets past every check (stopped
    at the first training call)."""
    monkeypatch.setattr(audit.stages, "ensemble_logits", _stop)
    config = audit.Config(model="mlp", data=str(images), pool_size=200, population_size=100,
                          num_references=2, epochs=1, batch_size=16, flip_queries=False,
                          label_only_shift=2, preprocess="raw", augment="flip_crop",
                          workdir=str(tmp_path / "out"))
    with pytest.raises(_Stopped):
        audit.run(config)


class _Stopped(Exception):
    pass


def _stop(*args, **kwargs):
    raise _Stopped


def test_a_preset_value_that_a_flag_makes_inapplicable_is_dropped_not_refused():
    """lira's quick preset narrows the seed CNN (--width_scale=0.25); under --model=wrn that
    value is the preset's, not the user's, so it falls back instead of being refused; the user
    giving it is refused."""
    from absl import flags

    values = flags.FlagValues()
    config_lib.define_flags(lira.Config, presets=lira.PRESETS, flag_values=values,
                            module_name="t")
    values(["prog", "--preset=quick", "--model=wrn"])
    config = config_lib.from_flags(lira.Config, presets=lira.PRESETS, flag_values=values)
    assert config.width_scale == 1.0 and config.model == "wrn"
    assert config_lib.given(config) == {"model"}
    values = flags.FlagValues()
    config_lib.define_flags(lira.Config, presets=lira.PRESETS, flag_values=values,
                            module_name="t")
    values(["prog", "--preset=quick", "--model=wrn", "--width_scale=0.5"])
    with pytest.raises(config_lib.ConfigError, match="--width_scale=0.5 has no effect unless "
                       "--model is seed_cnn"):
        config_lib.from_flags(lira.Config, presets=lira.PRESETS, flag_values=values)


# --- memory a run could never have, estimated before anything is allocated -----------------

MEMORY = [
    ("audit", ["--preset=quick", "--num_references=2000000"], "--num_references=2000000 needs"),
    ("lira", ["--preset=quick", "--dataset=mnist", "--num_models=2000000"],
     "--num_models=2000000 needs"),
    ("membership", ["--preset=quick", "--dataset=mnist", "--num_shadow=2000000"],
     "--num_shadow=2000000 needs"),
    ("train_ensemble", ["--preset=quick", "--dataset=mnist", "--num_models=20000000"],
     "--num_models=20000000 needs"),
]


@needs_data
@pytest.mark.parametrize("name, argv, expected", MEMORY, ids=[m[0] for m in MEMORY])
def test_an_ensemble_no_memory_holds_is_refused_before_allocating(tmp_path, main_error, name,
                                                                  argv, expected):
    message = main_error(name, [*argv, f"--data_dir={REAL_DATA}", f"--workdir={tmp_path}/out"]
                         + (["--data=mnist"] if name == "audit" else []))
    assert message.startswith("error: ") and expected in message and "\n" not in message
    assert "lower it to at most" in message
    assert _no_output(tmp_path / "out")


# --- a workdir path the file system cannot hold ----------------------------------------------

@pytest.mark.parametrize("name", ["audit", "lira", "membership"])
def test_a_workdir_path_too_long_for_the_file_system_is_one_line(tmp_path, main_error, name):
    deep = tmp_path.joinpath(*["d" * 200] * 21)  # > PATH_MAX (4096) in all
    message = main_error(name, [f"--workdir={deep}"])
    assert message.startswith("error: ") and "\n" not in message
    assert "too long" in message


# --- a stale answer after a model edit ---------------------------------------------------------

_MODEL = '''from flax import linen as nn


def act(x):{comment}
    return nn.{activation}(x)


class Net(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(self.num_classes)(act(nn.Dense(8)(x)))


def make(num_classes):
    return Net(num_classes)
'''


def test_an_edit_to_code_the_model_calls_is_never_answered_from_a_saved_stage(
        tmp_path, features, monkeypatch):
    """The model's class is untouched; only a module-level helper it calls changes. The rerun
    trains anew; a comment added to the helper reuses the stage."""
    import sys

    monkeypatch.syspath_prepend(str(tmp_path))
    source = tmp_path / "edited_user_model.py"
    config = audit.Config(model="edited_user_model:make", data=str(features), pool_size=200,
                          population_size=100, num_references=2, epochs=1, batch_size=16,
                          workdir=str(tmp_path / "out"))

    def run(activation, comment=""):
        source.write_text(_MODEL.format(activation=activation, comment=comment))
        sys.modules.pop("edited_user_model", None)
        audit.run(config)
        return sorted(p.name for p in (tmp_path / "out" / "stages").glob("logits-*.json"))

    first = run("relu")
    edited = run("tanh")
    assert len(first) == 1 and len(edited) == 2  # a new key: trained anew
    assert run("tanh", comment="  # the same computation") == edited  # reused
