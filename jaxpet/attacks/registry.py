"""One registry of membership attacks by name, and the records the attacks exchange.

Each attack belongs to a family, and every attack of a family has one call signature,
so an experiment runs a whole family without knowing its members:

* ``"shadow"``: fitted on a shadow model's posteriors, applied to the target's::

      fn(shadow: LabeledPosteriors, target: LabeledPosteriors, *, config, seed) -> AttackOutput

  ``config`` is the experiment's :class:`~jaxpet.attacks.shadow.ShadowAttackConfig`.
* ``"reference"``: scores one target model from reference models' signals::

      fn(signals, target, references, ref_keep, use, config) -> scores [N]

  ``signals``: :class:`~jaxpet.attacks.lira.Signals` (queries already selected);
  ``target``: the target's model index; ``references``: the reference models'
  indices; ``ref_keep`` / ``use``: bool [len(references), N] membership of the
  references and which of their scores to use (None: all); ``config``:
  :class:`~jaxpet.attacks.reference.AttackConfig`.

Scores are oriented so that higher means "more likely a member". Attacks are
listed in registration order, which is the import order of ``jaxpet/attacks/__init__.py``.
To add one, decorate it with :func:`register` in a module imported there.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses

import numpy as np

FAMILIES = ("shadow", "reference")


@dataclasses.dataclass
class AttackOutput:
    """One attack's result on the target: scores, hard decisions, the report and extras
    (``info``)."""

    scores: np.ndarray
    predictions: np.ndarray
    report: dict
    info: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class LabeledPosteriors:
    """One model's posteriors [N, C] on N examples, their labels [N] and membership [N]
    (1: member)."""

    posteriors: np.ndarray
    labels: np.ndarray
    membership: np.ndarray
    # bool [N, Q]: the predicted label is right on each label-only query (see label_only)
    correct: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class MembershipAttack:
    """A registered attack: its name, family, callable and a one-line description.

    ``uses_references`` is False for a reference-family attack that ignores the
    references (a baseline); reference-count sweeps leave it out.
    """

    name: str
    family: str
    fn: Callable
    description: str
    uses_references: bool = True
    # Inputs beyond the family's usual ones, by attribute name (e.g. "correct": label-only
    # queries); an experiment that does not make them skips the attack.
    needs: tuple[str, ...] = ()
    # The reference sides each example is compared with: ("in", "out") for an online attack,
    # ("out",) for an offline one, () for one that pools the references or ignores them.
    compares: tuple[str, ...] = ()

    def runs_on(self, observed) -> bool:
        """Whether ``observed`` (LabeledPosteriors or Signals) carries what this attack needs."""
        return all(getattr(observed, need, None) is not None for need in self.needs)


_REGISTRY: dict[str, MembershipAttack] = {}


def _check_family(family: str | None) -> None:
    if family is not None and family not in FAMILIES:
        raise ValueError(f"Unknown attack family {family!r}; known: {FAMILIES}.")


def register(name: str, *, family: str, description: str, uses_references: bool = True,
             needs: tuple[str, ...] = (), compares: tuple[str, ...] = (),
             replace: bool = False) -> Callable[[Callable], Callable]:
    """Decorator adding ``fn`` to the registry as attack ``name``; returns ``fn`` unchanged.

    ``compares``: the reference sides ("in", "out") each example's score compares it with;
    where no example has them all, the attack's figure is not available
    (:func:`jaxpet.attacks.reference.not_available`).

    A name already taken raises ValueError unless ``replace`` is set.
    """
    _check_family(family)
    if not name or not isinstance(name, str):
        raise ValueError(f"An attack needs a non-empty str name, got {name!r}.")

    def add(fn: Callable) -> Callable:
        if not callable(fn):
            raise TypeError(f"Attack {name!r} must be callable, got {type(fn).__name__}.")
        if name in _REGISTRY and not replace:
            raise ValueError(f"A membership attack named {name!r} is already registered "
                             f"({_REGISTRY[name].family} family); pass replace=True to replace it.")
        if set(compares) - {"in", "out"}:
            raise ValueError(f"Attack {name!r}: compares holds only 'in' and 'out', got "
                             f"{compares!r}.")
        _REGISTRY[name] = MembershipAttack(name, family, fn, description, uses_references,
                                           tuple(needs), tuple(compares))
        return fn

    return add


def unregister(name: str) -> MembershipAttack:
    """Removes attack ``name`` and returns its record (e.g. a test's toy attack)."""
    get_attack(name)
    return _REGISTRY.pop(name)


def list_attacks(family: str | None = None) -> tuple[MembershipAttack, ...]:
    """Every registered attack of ``family`` (default: all), in registration order."""
    _check_family(family)
    return tuple(a for a in _REGISTRY.values() if family is None or a.family == family)


def attack_names(family: str | None = None) -> tuple[str, ...]:
    """The names of :func:`list_attacks`."""
    return tuple(a.name for a in list_attacks(family))


def get_attack(name: str, family: str | None = None) -> MembershipAttack:
    """The attack called ``name``; ValueError listing the known ones if there is none (in
    ``family``)."""
    _check_family(family)
    attack = _REGISTRY.get(name)
    if attack is None or (family is not None and attack.family != family):
        kind = f"{family} attack" if family else "membership attack"
        raise ValueError(f"Unknown {kind} {name!r}; known: {', '.join(attack_names(family))}.")
    return attack
