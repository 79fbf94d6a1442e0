"""jaxpet from Python: audit a model from a notebook, or score logits from any framework.

:func:`audit` runs the same stages as ``experiments/audit.py`` (one pipeline,
:func:`jaxpet.experiments.audit.run`) on Python objects: arrays, a Linen module or an NNX
class or factory, a trained target (Linen variables, a live ``nnx.Module``, or a checkpoint
path), an optax optimiser and an augmentation function. :func:`score_logits` runs the
score-only route (:mod:`jaxpet.experiments.score`) on logits computed anywhere. Both return an
:class:`AuditResult`: the attack table (a plain mapping; Markdown and HTML renderings that a
notebook displays), every candidate's scores, the ROC as a matplotlib Figure (built without
pyplot, so the user's backend is never switched) and the most exposed examples.

With ``workdir`` the run is kept there as the command keeps it (results.json, summary.md,
figures, scores.npz, report.html, the reusable training stage); without, it runs in a
temporary folder that is removed once its results are read back.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
import contextlib
import dataclasses
import difflib
import pathlib
import tempfile
from typing import Any

import numpy as np

from jaxpet import config as config_lib, files, report
from jaxpet.page import FROM_PYTHON as PYTHON  # how config.json names a Python object given

# Settings the arguments of audit() stand for: given by keyword, they would be given twice.
_ARGUMENTS = {"model": "model", "data": "data", "target": "target", "logits": "logits",
              "target_checkpoint": "target", "target_members": "members",
              "workdir": "workdir"}


@dataclasses.dataclass(frozen=True)
class AuditResult:
    """What an audit (or a score-only run) found, as its files hold it."""

    results: dict[str, Any]  # results.json: every figure, the config and the provenance
    scores: dict[str, np.ndarray]  # attack -> every candidate's membership score
    indices: np.ndarray  # the candidates' positions in the data (or the logits' examples)
    membership: np.ndarray  # whether the target trained on each candidate
    summary: str  # summary.md
    workdir: pathlib.Path | None  # where the run is kept; None: not kept

    @property
    def table(self) -> dict[str, dict[str, Any]]:
        """Each attack's metrics (AUC, balanced accuracy, TPR at low FPR, ...)."""
        return self.results["attacks"]

    @property
    def most_exposed(self) -> list[dict[str, Any]]:
        """The training examples the ranking attack finds most exposed, highest score first."""
        return self.results["most_exposed"]

    def markdown(self) -> str:
        """The attack table in Markdown."""
        return report.attack_table(self.table)

    def _repr_markdown_(self) -> str:
        return self.summary

    def _repr_html_(self) -> str:
        from jaxpet import page  # the page's Markdown renderer; page imports this module's peers

        return page.markdown_to_html(self.summary)

    def roc_figure(self, title: str = ""):
        """Every attack's ROC (log-log) as a ``matplotlib.figure.Figure``."""
        return report.roc_figure({name: (self.membership, s) for name, s in self.scores.items()},
                                 title=title)


def audit(model, data, *, members=None, target=None, population=None, num_references: int = 8,
          optimizer=None, augment=None, workdir=None, **settings) -> AuditResult:
    """The membership-inference audit of ``model`` on ``data``.

    ``model``: a Linen module, an NNX module class or a factory ``f(num_classes, rngs)``
    returning an ``nnx.Module``, a function ``f(num_classes)`` returning a Linen module, or a
    name as ``--model`` takes it (``mlp``, ``pkg.mod:function``). ``data``: ``(x, y)`` (images
    NHWC or feature vectors, integer labels) or a name as ``--data`` takes it. ``population``:
    held-out ``(x, y)`` for RMIA (default: set aside from ``data``). ``target``: None (jaxpet
    trains one on a recorded half of the pool), the trained target (Linen variables, a live
    ``nnx.Module``, or a checkpoint path: flax bytes or an orbax folder) with ``members``, the
    indices (or a boolean mask) of the examples it trained on. ``optimizer``: an optax
    ``GradientTransformation`` (its schedule inside it) for the target and the references, or
    ``"adam"``/``"sgd"`` (the command line's menu); ``augment(key, batch) -> batch``: an
    augmentation of each training batch. ``settings``: any other flag of
    ``experiments/audit.py`` by name (``epochs=30``, ``references="offline"``, ...).
    """
    from jaxpet.experiments import audit as audit_lib
    from jaxpet.training import Recipe

    recipe = _recipe(optimizer, augment, Recipe)
    if isinstance(optimizer, str):
        settings["optimizer"] = optimizer
    values = _settings(audit_lib.Config, settings)
    given_target = target is not None
    if members is not None and not given_target:
        raise config_lib.ConfigError("members= names the examples your target trained on; give "
                                     "the target too (target=...), or neither (jaxpet trains "
                                     "one on a recorded half of the pool).")
    if given_target and members is None:
        raise config_lib.ConfigError("target= needs members=, the indices of the examples it "
                                     "trained on.")
    values.update(model=_name(model), data=data if isinstance(data, str) else PYTHON + "arrays",
                  num_references=num_references)
    if population is not None and "population_size" not in values:  # all of a small one
        default: int = audit_lib.Config().population_size
        values["population_size"] = min(default, len(_pair(population, "population")[1]))
    if given_target:
        values.update(target="checkpoint", target_checkpoint=_path_or(target, "object"),
                      target_members=_path_or(members, "array"))
    sources = audit_lib.Sources(
        model=None if isinstance(model, str) else model,
        data=None if isinstance(data, str) else _pair(data, "data"),
        population=None if population is None else _pair(population, "population"),
        members=None if _is_path(members) else members,
        target=None if _is_path(target) else target, recipe=recipe)
    with _folder(workdir) as folder:
        config = audit_lib.Config(**values, workdir=str(folder))
        audit_lib.run(config, sources)
        return read_result(folder, kept=workdir is not None)


def score_logits(logits, labels, keep, *, target: int = 0, population_logits=None,
                 population_labels=None, workdir=None, **settings) -> AuditResult:
    """The score-only route on arrays: ``logits`` [models, examples, (queries,) classes] of
    the target and its references, ``labels`` [examples], ``keep`` [models, examples]
    (boolean: which examples each model trained on), ``target`` (the target's row), optional
    population logits and labels for RMIA (see ``docs/score_logits.md``). ``settings``: the
    scoring flags of ``experiments/score.py`` (``fpr_rule``, ``lira_convention``, ...)."""
    from jaxpet.experiments import score as score_lib

    inputs = score_lib.LogitsInputs(logits=np.asarray(logits), labels=np.asarray(labels),
                                    keep=np.asarray(keep), target=target,
                                    population_logits=_optional(population_logits),
                                    population_labels=_optional(population_labels))
    values = _settings(score_lib.Config, settings)
    with _folder(workdir) as folder:
        score_lib.run(score_lib.Config(**values, logits=PYTHON + "arrays", workdir=str(folder)),
                      inputs)
        return read_result(folder, kept=workdir is not None)


def read_result(folder, *, kept: bool = True) -> AuditResult:
    """The :class:`AuditResult` of a finished audit or score-only run in ``folder``."""
    folder = pathlib.Path(folder)
    saved = files.read_npz(folder / "scores.npz")
    return AuditResult(
        results=files.read_json(folder / "results.json"),
        scores={k.removeprefix("score_"): v for k, v in saved.items() if k.startswith("score_")},
        indices=saved["indices"], membership=saved["membership"].astype(bool),
        summary=(folder / "summary.md").read_text(), workdir=folder if kept else None)


@contextlib.contextmanager
def _folder(workdir) -> Iterator[pathlib.Path]:
    """``workdir`` as a path, or a temporary folder removed afterwards."""
    if workdir is not None:
        yield pathlib.Path(workdir)
        return
    with tempfile.TemporaryDirectory(prefix="jaxpet-") as folder:
        yield pathlib.Path(folder) / "run"


def _settings(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` checked to be fields of ``cls`` that no argument stands for."""
    names = {f.name for f in dataclasses.fields(cls)}
    for name in settings:
        if name in _ARGUMENTS:
            raise config_lib.ConfigError(f"{name}= is an argument of its own here — pass "
                                         f"{_ARGUMENTS[name]}=... .")
        if name not in names:
            close = difflib.get_close_matches(name, sorted(names), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise config_lib.ConfigError(f"{name}= is not a setting{hint}; the settings are the "
                                         "flags of the command, by name.")
    return dict(settings)


def _recipe(optimizer, augment, recipe_cls):
    """The user's own recipe (None: the menu's), refused in one line if it is no recipe."""
    if optimizer is None or isinstance(optimizer, str):
        return None if augment is None else recipe_cls(augment=augment)
    return recipe_cls(optimizer=optimizer, augment=augment)


def _name(model) -> str:
    """How results.json names a model given as an object: its import path."""
    if isinstance(model, str):
        return model
    kind = model if isinstance(model, type) or callable(model) and not hasattr(
        model, "__dataclass_fields__") else type(model)
    name = getattr(kind, "__qualname__", type(kind).__name__)
    return f"{PYTHON}{getattr(kind, '__module__', '?')}.{name}"


def _is_path(value) -> bool:
    return isinstance(value, (str, pathlib.PurePath))


def _path_or(value, otherwise: str) -> str:
    return str(value) if _is_path(value) else PYTHON + otherwise


def _pair(value, name: str) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise config_lib.ConfigError(f"{name}= must be a pair (x, y) of arrays, or a dataset "
                                     f"name; got a {type(value).__name__}.")
    return np.asarray(value[0]), np.asarray(value[1])


def _optional(value):
    return None if value is None else np.asarray(value)
