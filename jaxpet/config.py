"""One source of truth per setting: dataclass fields that carry their help, range and flag.

An experiment's config is a frozen dataclass whose fields are made with
:func:`setting`: the default, the help text, the allowed choices or range,
and the setting it depends on are written once, there. From that one place:

* :func:`check` validates any config (built in code or from flags): types,
  NaN and infinity, ranges, choices, and settings given where they have no
  effect (e.g. a DP-SGD knob without ``--defense=dpsgd``);
* :func:`define_flags` derives the absl flags, with the real default in
  ``--help`` and each preset's value beside it;
* :func:`from_flags` builds the config: a named preset, then the flags given
  on the command line.

Presets are named configs (``{"quick": {...}}``) as the Flax examples' and
big_vision's ``get_config()``: small variants of the full setting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import math
import numbers
import sys
import types
import typing
from typing import Any

from absl import flags
import numpy as np

from jaxpet.errors import UserError


class ConfigError(UserError):
    """A setting out of its range, of the wrong type, or given where it has no effect."""


_META = "jaxpet"


@dataclasses.dataclass(frozen=True)
class Spec:
    """What :func:`setting` records about one field."""

    help: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself excluded
    high_open: bool = False
    when: tuple[str, tuple] | None = None  # (other field, values where this one applies)
    flag: bool = True  # False: set by the experiment, not a command-line flag
    origin: str | None = None  # 'Class.field' a same_as setting was taken from


def setting(default, help: str, *, choices: Sequence | None = None, low: float | None = None,
            high: float | None = None, low_open: bool = False, high_open: bool = False,
            when: tuple[str, Sequence] | None = None, flag: bool = True):
    """A dataclass field with its help text and checks; for tuples they apply to each item."""
    spec = Spec(help, tuple(choices) if choices is not None else None, low, high, low_open,
                high_open, None if when is None else (when[0], tuple(when[1])), flag)
    return dataclasses.field(default=default, metadata={_META: spec})


def spec(cls_or_config, name: str) -> Spec:
    return _fields(cls_or_config)[name][0].metadata[_META]


@dataclasses.dataclass(frozen=True)
class _Kind:
    base: type  # bool, int, float or str
    optional: bool
    sequence: bool


def _kind(annotation) -> _Kind:
    """bool / int / float / str, optionally ``| None``, optionally as ``tuple[x, ...]``."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    optional = False
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        optional = len(rest) < len(args)
        annotation = rest[0]
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is tuple:
        return _Kind(args[0], optional, True)
    return _Kind(annotation, optional, False)


def _fields(cls_or_config) -> dict[str, tuple[dataclasses.Field, _Kind]]:
    cls = cls_or_config if isinstance(cls_or_config, type) else type(cls_or_config)
    hints = typing.get_type_hints(cls)
    return {f.name: (f, _kind(hints[f.name])) for f in dataclasses.fields(cls)
            if _META in f.metadata}


def _describe_range(s: Spec) -> str:
    lo = "" if s.low is None else f"{'>' if s.low_open else '>='} {s.low:g}"
    hi = "" if s.high is None else f"{'<' if s.high_open else '<='} {s.high:g}"
    return " and ".join(p for p in (lo, hi) if p)


def _check_value(name: str, value, kind: _Kind, s: Spec) -> None:
    is_bool = isinstance(value, (bool, np.bool_))
    if kind.base is float and isinstance(value, numbers.Real) and not is_bool:
        if not math.isfinite(value):
            raise ConfigError(f"--{name} must be a finite number, got {value}.")
    elif kind.base is int and (is_bool or not isinstance(value, numbers.Integral)):
        raise ConfigError(f"--{name} must be an integer, got {value!r}.")
    elif kind.base is bool and not is_bool:
        raise ConfigError(f"--{name} must be true or false, got {value!r}.")
    elif kind.base is str and not isinstance(value, str):
        raise ConfigError(f"--{name} must be a string, got {value!r}.")
    elif kind.base is str and not value.strip():
        raise ConfigError(f"--{name} is empty — give it a value, or leave the flag out for its "
                          "default.")
    elif kind.base is float and (is_bool or not isinstance(value, numbers.Real)):
        raise ConfigError(f"--{name} must be a number, got {value!r}.")
    if s.choices is not None and value not in s.choices:
        raise ConfigError(f"--{name} must be one of {', '.join(map(str, s.choices))}; got "
                          f"{value!r}.")
    too_low = s.low is not None and (value < s.low or (s.low_open and value == s.low))
    too_high = s.high is not None and (value > s.high or (s.high_open and value == s.high))
    if too_low or too_high:
        raise ConfigError(f"--{name} must be {_describe_range(s)}, got {value}.")


def check(config) -> None:
    """Raises :class:`ConfigError` naming the first bad setting of ``config``."""
    for name, (f, kind) in _fields(config).items():
        s = f.metadata[_META]
        value = getattr(config, name)
        if value is None:
            if not kind.optional:
                raise ConfigError(f"--{name} needs a value.")
        elif kind.sequence:
            if not isinstance(value, tuple):
                raise ConfigError(f"--{name} must be a list, got {value!r}.")
            for item in value:
                _check_value(name, item, kind, s)
            repeated = sorted({str(v) for v in value if value.count(v) > 1})
            if repeated:
                raise ConfigError(f"--{name} lists {', '.join(repeated)} more than once — give "
                                  "each value once.")
        else:
            _check_value(name, value, kind, s)
        if s.when is not None and value != f.default:
            other, allowed = s.when
            if getattr(config, other) not in allowed:
                raise ConfigError(_no_effect(name, value, other, allowed, getattr(config, other)))


def _no_effect(name, value, other, allowed, actual) -> str:
    return (f"--{name}={_show(value)} has no effect unless --{other} is "
            f"{' or '.join(map(str, allowed))} (it is {actual}) — drop --{name} or set --{other}.")


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


# ----------------------------------------------------------------------------- flags


def _preset_note(name: str, presets: Mapping[str, Mapping[str, Any]] | None) -> str:
    notes = [f"{p}: {_show(v[name])}" for p, v in (presets or {}).items() if name in v]
    return f" [preset {'; '.join(notes)}]" if notes else ""


def define_flags(cls, *, presets: Mapping[str, Mapping[str, Any]] | None = None,
                 preset_help: str = "", flag_values: flags.FlagValues = flags.FLAGS,
                 module_name: str | None = None) -> None:
    """Defines one absl flag per :func:`setting` of ``cls`` (and ``--preset`` if any).

    Each flag's default is the field's default, so ``--help`` shows it; values
    that a preset changes are listed in brackets after the help text.
    """
    # Flags belong to the script (``module_name``, default the caller), so its --help lists them.
    caller = sys._getframe(1).f_globals.get("__name__", "")
    module = module_name or (sys.argv[0] if caller == "__main__" else caller)
    if presets:
        flags.DEFINE_enum("preset", next(iter(presets)), list(presets),
                          preset_help or "Named configuration; flags given override its values.",
                          flag_values=flag_values, module_name=module)
    for name, (f, kind) in _fields(cls).items():
        s = f.metadata[_META]
        if not s.flag:
            continue
        limits = _describe_range(s)
        text = s.help + (f" Must be {limits}." if limits else "") + _preset_note(name, presets)
        default: Any = f.default
        if kind.sequence:
            flags.DEFINE_list(name, [str(v) for v in default], text, flag_values=flag_values,
                              module_name=module)
        elif kind.base is bool:
            flags.DEFINE_bool(name, default, text, flag_values=flag_values, module_name=module)
        elif s.choices is not None and kind.base is str:
            flags.DEFINE_enum(name, default, [str(c) for c in s.choices], text,
                              flag_values=flag_values, module_name=module)
        elif kind.base is int:
            flags.DEFINE_integer(name, default, text, flag_values=flag_values, module_name=module)
        elif kind.base is float:
            flags.DEFINE_float(name, default, text, flag_values=flag_values, module_name=module)
        else:
            flags.DEFINE_string(name, default, text, flag_values=flag_values, module_name=module)


def _convert(name: str, raw, kind: _Kind):
    """A list flag's strings as a tuple of the field's item type."""
    if not kind.sequence:
        return raw
    try:
        return tuple(kind.base(item) for item in raw)
    except ValueError:
        raise ConfigError(f"--{name} must be a comma-separated list of {kind.base.__name__} "
                          f"values, got {','.join(raw)!r}.") from None


def from_flags(cls, *, presets: Mapping[str, Mapping[str, Any]] | None = None,
               flag_values: flags.FlagValues = flags.FLAGS, **values):
    """The config of ``cls``: the chosen preset's values, then every flag given explicitly,
    then ``values`` (settings the experiment fills in itself)."""
    preset = dict(presets[str(flag_values["preset"].value)]) if presets else {}
    merged = dict(preset)
    if presets and "preset" in {f.name for f in dataclasses.fields(cls)}:
        merged["preset"] = flag_values["preset"].value
    given = {name for name, (f, _) in _fields(cls).items()
             if f.metadata[_META].flag and flag_values[name].present}
    for name in given:
        merged[name] = _convert(name, flag_values[name].value, _fields(cls)[name][1])
    merged.update(values)
    # A preset's value for a setting that the flags given make inapplicable (the quick preset's
    # --width_scale under --model=wrn) is the preset's, not the user's: it falls back to the
    # default rather than being refused as a setting with no effect.
    for name, (f, _) in _fields(cls).items():
        when = f.metadata[_META].when
        if name in preset and name not in given and when is not None:
            other, allowed = when
            if merged.get(other, _fields(cls)[other][0].default) not in allowed:
                del merged[name]
    config = cls(**merged)
    object.__setattr__(config, _GIVEN, frozenset(given))
    for name, (f, _) in _fields(cls).items():  # a flag given has effect, even at its default
        s = f.metadata[_META]
        if s.when is not None and s.flag and flag_values[name].present:
            other, allowed = s.when
            if getattr(config, other) not in allowed:
                raise ConfigError(_no_effect(name, getattr(config, name), other, allowed,
                                             getattr(config, other)))
    return config


_GIVEN = "_jaxpet_given"


def given(config) -> frozenset[str]:
    """The settings of ``config`` its user chose: the flags given on the command line (for a
    config from :func:`from_flags`), else every setting that differs from its default."""
    recorded = getattr(config, _GIVEN, None)
    if recorded is not None:
        return recorded
    return frozenset(name for name, (f, _) in _fields(config).items()
                     if getattr(config, name) != f.default)


def refuse_no_effect(config, names, why: str) -> None:
    """Raises :class:`ConfigError` for the first of ``names`` the user chose (:func:`given`)
    although, as ``why`` says, it has no effect on this run: a setting that is accepted but
    changes nothing would be recorded in results.json as if it had been used."""
    for name in names:
        if name in given(config):
            raise ConfigError(f"--{name}={_show(getattr(config, name))} has no effect: {why} "
                              f"— drop --{name}.")


def _flag_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def command_line(cls, values: Mapping[str, Any], *,
                 presets: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """The flags that :func:`from_flags` turns back into ``values`` (a config of ``cls`` as
    config.json records it): ``--preset`` where a recorded preset is not the default one, then
    every flag whose value differs from what that preset gives."""
    presets = presets or {}
    preset = values.get("preset") if values.get("preset") in presets else None
    base = {f.name: f.default for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING}
    base.update(presets.get(preset, {}) if preset else {})
    words = []
    if preset is not None and preset != next(iter(presets)):
        words.append(f"--preset={preset}")
    for f in dataclasses.fields(cls):
        if not spec(cls, f.name).flag or f.name not in values:
            continue
        value, default = values[f.name], base.get(f.name)
        if isinstance(default, tuple):
            default = list(default)
        if value is None or value == default:
            continue
        words.append(f"--{f.name}={_flag_value(value)}")
    return words


def default_workdir(stem: str, preset: str, presets: Mapping[str, Any]) -> str:
    """``runs/<stem>``, suffixed ``_<preset>`` for every preset but the first (the full
    setting), so a quick run never writes over a full one."""
    return f"runs/{stem}" + ("" if preset == next(iter(presets)) else f"_{preset}")


def inherit(cls, name: str, default=None, help: str | None = None):
    """A setting that overrides ``cls``'s setting ``name`` (same help, checks and choices);
    default None: the other config's value (e.g. its preset's)."""
    s = spec(cls, name)
    return dataclasses.field(default=default, metadata={_META: dataclasses.replace(
        s, help=help or f"{s.help} Default: the preset's value.", when=None)})


_KEEP: Any = object()


def same_as(cls, name: str, *, default=_KEEP, help: str | None = None, when=_KEEP):
    """The setting ``name`` of config class ``cls`` as a field of another config: the same
    help, checks and default, so each is written once (``default`` where an experiment's
    own default deliberately differs; ``when`` where the setting applies only with another)."""
    f = _fields(cls)[name][0]
    s = f.metadata[_META]
    s = dataclasses.replace(s, help=help or s.help, origin=f"{cls.__name__}.{name}",
                            when=s.when if when is _KEEP else
                            None if when is None else (when[0], tuple(when[1])))
    return dataclasses.field(default=f.default if default is _KEEP else default,
                             metadata={_META: s})


def pick(config, cls, **values):
    """``cls`` built from the fields of ``config`` that ``cls`` also has, then ``values``:
    no field mapped across by hand."""
    names = {f.name for f in dataclasses.fields(cls)}
    shared = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
              if f.name in names}
    return cls(**{**shared, **values})
