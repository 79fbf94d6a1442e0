"""The config system: one definition per setting gives checks, flags, defaults and presets."""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import typing

from absl import flags
import pytest

from jaxpet import config
from jaxpet.config import setting


@dataclasses.dataclass(frozen=True)
class Toy:
    preset: str = setting("base", "recorded preset", flag=False)
    dataset: str = setting("cifar10", "Dataset.", choices=("cifar10", "mnist"))
    epochs: int = setting(50, "Epochs.", low=1)
    rate: float = setting(1e-3, "Rate.", low=0, low_open=True)
    size: int | None = setting(None, "Size.", low=2)
    budgets: tuple[int, ...] = setting((5, 10), "Budgets.", low=1)
    defense: str = setting("none", "Defence.", choices=("none", "dpsgd"))
    clip: float = setting(1.0, "Clip.", low=0, low_open=True, when=("defense", ("dpsgd",)))
    augment: bool = setting(False, "Augment.")

    def __post_init__(self):
        config.check(self)


PRESETS = {"base": {}, "small": {"epochs": 3, "budgets": (1,)}}


def _parse(*argv):
    values = flags.FlagValues()
    config.define_flags(Toy, presets=PRESETS, flag_values=values, module_name="toy")
    values(["prog", *argv])
    return config.from_flags(Toy, presets=PRESETS, flag_values=values), values


def test_flags_give_the_preset_then_explicit_values():
    cfg, _ = _parse("--preset=small", "--rate=0.5", "--budgets=2,3", "--augment")
    assert cfg == Toy(preset="small", epochs=3, rate=0.5, budgets=(2, 3), augment=True)
    assert _parse()[0] == Toy()
    assert _parse("--preset=small", "--epochs=7")[0].epochs == 7  # a flag beats the preset


def test_help_shows_each_real_default_and_the_preset_value():
    _, values = _parse()
    text = values.module_help("toy")
    assert "--epochs: Epochs. Must be >= 1. [preset small: 3]" in text
    assert "(default: '50')" in text
    assert "--preset" in text and "--clip" in text
    assert "recorded preset" not in text  # flag=False settings are not flags


@pytest.mark.parametrize("changes, message", [
    (dict(rate=math.nan), "--rate must be a finite number, got nan"),
    (dict(rate=math.inf), "--rate must be a finite number"),
    (dict(rate=0.0), "--rate must be > 0, got 0.0"),
    (dict(epochs=0), "--epochs must be >= 1"),
    (dict(epochs=2.5), "--epochs must be an integer"),
    (dict(size=1), "--size must be >= 2"),
    (dict(budgets=(3, 0)), "--budgets must be >= 1, got 0"),
    (dict(dataset="svhn"), "--dataset must be one of cifar10, mnist"),
    (dict(clip=2.0), "--clip=2.0 has no effect unless --defense is dpsgd"),
    (dict(augment="yes"), "--augment must be true or false"),
])
def test_every_bad_value_names_its_flag(changes, message):
    with pytest.raises(config.ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        Toy(**changes)


def test_a_dependent_setting_is_fine_where_it_applies():
    assert Toy(defense="dpsgd", clip=2.0).clip == 2.0


def test_bad_list_items_are_a_config_error():
    with pytest.raises(config.ConfigError, match="--budgets must be a comma-separated list of int"):
        _parse("--budgets=1,x")


def test_inherit_copies_help_and_checks_with_a_new_default():
    @dataclasses.dataclass(frozen=True)
    class Override:
        epochs: int | None = config.inherit(Toy, "epochs")

        def __post_init__(self):
            config.check(self)

    assert Override().epochs is None
    assert config.spec(Override, "epochs").help.startswith("Epochs.")
    with pytest.raises(config.ConfigError, match="--epochs must be >= 1"):
        Override(epochs=0)


EXPERIMENTS = ("membership", "seed_tables", "dp_curve", "lira", "audit", "inversion",
               "attribute", "benchmark", "train_ensemble", "score")
# The score-only route has no preset: its every run reads the user's own logits.
WITH_PRESETS = tuple(name for name in EXPERIMENTS if name != "score")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_numeric_setting_of_every_experiment_has_a_range(name):
    """No numeric flag without a range check (so NaN, inf and impossible values are refused)."""
    module = importlib.import_module(f"jaxpet.experiments.{name}")
    hints = typing.get_type_hints(module.Config)
    for f in dataclasses.fields(module.Config):
        spec = f.metadata["jaxpet"]
        base = config._kind(hints[f.name]).base
        if base in (int, float) and spec.choices is None:
            assert spec.low is not None, f"{name}.{f.name} has no lower bound"
        module.Config()  # the defaults pass their own checks


@pytest.mark.parametrize("name", WITH_PRESETS)
def test_every_experiment_has_a_quick_preset_shown_in_help(name):
    module = importlib.import_module(f"jaxpet.experiments.{name}")
    assert "quick" in module.PRESETS and module.PRESET_HELP
    values = flags.FlagValues()
    config.define_flags(module.Config, presets=module.PRESETS, preset_help=module.PRESET_HELP,
                        flag_values=values, module_name="script")
    assert "quick" in values["preset"].help and "quick" in values["preset"].parser.enum_values
    for key in module.PRESETS["quick"]:  # every preset value is a setting the config checks
        assert key in {f.name for f in dataclasses.fields(module.Config)}
    values(["script", "--preset=quick"])
    config.from_flags(module.Config, presets=module.PRESETS, flag_values=values)


# Settings that share a TrainConfig name but are another thing: MI-FACE's stopping window
# (0: off, default 100), not training's early-stopping patience.
_NOT_TRAINING_SETTINGS = {("inversion", "patience")}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_no_experiment_restates_a_training_or_scoring_default(name):
    """A setting named as a TrainConfig or AttackConfig one is taken from it with same_as (its
    help, checks and default written once, there), never written again by hand."""
    from jaxpet import training
    from jaxpet.attacks import reference

    module = importlib.import_module(f"jaxpet.experiments.{name}")
    owners = {f.name: cls.__name__ for cls in (training.TrainConfig, reference.AttackConfig)
              for f in dataclasses.fields(cls) if "jaxpet" in f.metadata}
    for f in dataclasses.fields(module.Config):
        if (name, f.name) in _NOT_TRAINING_SETTINGS:
            assert config.spec(module.Config, f.name).origin is None
        elif f.name in owners:
            assert config.spec(module.Config, f.name).origin == f"{owners[f.name]}.{f.name}", (
                f"{name}.Config.{f.name} restates {owners[f.name]}'s setting: use "
                "config.same_as")


def test_same_as_takes_help_checks_and_default_once():
    @dataclasses.dataclass(frozen=True)
    class Base:
        lr: float = setting(0.1, "Learning rate.", low=0, low_open=True)
        size: int = setting(8, "Size.", low=1)

    @dataclasses.dataclass(frozen=True)
    class Uses:
        mode: str = setting("a", "Mode.", choices=("a", "b"))
        lr: float = config.same_as(Base, "lr", when=("mode", ("a",)))
        size: int = config.same_as(Base, "size", default=4)

        def __post_init__(self):
            config.check(self)

    assert (Uses().lr, Uses().size) == (0.1, 4)
    assert config.spec(Uses, "lr").help == "Learning rate." and config.spec(Uses, "lr").low == 0
    with pytest.raises(config.ConfigError, match="--lr must be > 0"):
        Uses(lr=0.0)
    with pytest.raises(config.ConfigError, match="has no effect unless --mode"):
        Uses(mode="b", lr=0.2)
    # pick: the same-named fields carried across, the rest given.
    assert config.pick(Uses(size=5), Base) == Base(lr=0.1, size=5)
    assert config.pick(Uses(), Base, size=9) == Base(lr=0.1, size=9)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_the_command_line_written_for_a_config_rebuilds_it(name):
    """config.command_line (the report page's reproduce command) round-trips through the flags:
    the quick preset with one setting changed comes back equal."""
    module = importlib.import_module(f"jaxpet.experiments.{name}")
    values = flags.FlagValues()
    config.define_flags(module.Config, presets=module.PRESETS, flag_values=values,
                        module_name="script")
    preset = ["--preset=quick"] if module.PRESETS else ["--logits=my_logits.npz"]
    values(["script", *preset, "--seed=3"] if "seed" in values else ["script", *preset])
    built = config.from_flags(module.Config, presets=module.PRESETS, flag_values=values)
    recorded = json.loads(json.dumps(dataclasses.asdict(built)))  # as config.json holds it
    words = config.command_line(module.Config, recorded, presets=module.PRESETS)
    again = flags.FlagValues()
    config.define_flags(module.Config, presets=module.PRESETS, flag_values=again,
                        module_name="script")
    again(["script", *words])
    assert config.from_flags(module.Config, presets=module.PRESETS, flag_values=again) == built
