"""Seeded member/non-member index sets: the seed's four quarters and K-model member sets.

All builders are pure numpy functions of ``(sizes, seed)``, so a split is
reproducible from its config alone. Index arrays are sorted int32 positions
into one pool (e.g. a dataset's train split).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxpet.config import ConfigError

VAL_SOURCES = ("unused", "out_part", "none")


def validation_source(pool_size: int, part_size: int, val_size: int) -> str:
    """Where the two validation sets of ``val_size`` fit: "unused", "out_part" or "none".

    "unused" when the pool holds ``2 * val_size`` examples outside the four parts
    (reduced configurations), so every out part stays whole for evaluation;
    "out_part" (the seed's full configuration, where the parts fill the pool) when
    only the start of each out part can hold them; "none" when ``val_size`` is 0.
    Raises ValueError when neither place can.
    """
    if val_size < 0:
        raise ValueError(f"val_size must be >= 0, got {val_size}.")
    if val_size == 0:
        return "none"
    unused = pool_size - 4 * part_size
    if unused >= 2 * val_size:
        return "unused"
    if val_size < part_size:
        return "out_part"
    raise ValueError(
        f"val_size={val_size} fits neither in the {unused} examples the four parts of "
        f"{part_size} leave unused (needs {2 * val_size}) nor inside an out part of {part_size} "
        f"(needs fewer than {part_size}) — lower val_size or part_size.")


@dataclasses.dataclass(frozen=True)
class QuarterSplit:
    """The seed's Task 1 split: four equal disjoint parts plus a validation set per model.

    ``val_source`` says where ``target_val``/``shadow_val`` come from: "unused"
    — the pool's examples outside the four parts, so ``*_out_eval`` are the
    whole out parts; "out_part" — the first ``val_size`` of each out part (the
    seed's "1000 samples of each model's testing set", when the four parts fill
    the pool), ``*_out_eval`` the rest; "none" — no validation. Either way the
    evaluated non-members never influenced training, not even through early
    stopping.
    """

    target_in: np.ndarray
    target_out: np.ndarray
    shadow_in: np.ndarray
    shadow_out: np.ndarray
    val_size: int
    target_val: np.ndarray
    shadow_val: np.ndarray
    val_source: str

    def __post_init__(self):
        if self.val_source not in VAL_SOURCES:
            raise ValueError(f"val_source must be one of {VAL_SOURCES}, got {self.val_source!r}.")

    @property
    def _eval_start(self) -> int:
        return self.val_size if self.val_source == "out_part" else 0

    @property
    def target_out_eval(self) -> np.ndarray:
        return self.target_out[self._eval_start :]

    @property
    def shadow_out_eval(self) -> np.ndarray:
        return self.shadow_out[self._eval_start :]

    def parts(self) -> dict[str, np.ndarray]:
        return {
            "target_in": self.target_in,
            "target_out": self.target_out,
            "shadow_in": self.shadow_in,
            "shadow_out": self.shadow_out,
        }


def quarter_split(
    pool_size: int, seed: int, *, part_size: int | None = None, val_size: int = 1000
) -> QuarterSplit:
    """Cuts ``range(pool_size)`` into four disjoint random parts of ``part_size`` each.

    ``part_size`` defaults to ``pool_size // 4`` (CIFAR-10: 12,500; MNIST: 15,000);
    a smaller one gives the reduced configurations used on a CPU. The validation
    sets come from one permutation: with room outside the parts (see
    ``validation_source``) the target's is the next ``val_size`` after the four
    parts and the shadow's the ``val_size`` after that; otherwise the start of
    each out part. The four parts are the same in both cases.
    """
    if pool_size < 4:
        raise ValueError(f"pool_size must be at least 4, got {pool_size}.")
    max_part = pool_size // 4
    part_size = max_part if part_size is None else part_size
    if not 1 <= part_size <= max_part:
        raise ValueError(
            f"part_size must be in [1, {max_part}] (a quarter of {pool_size}), got {part_size}."
        )
    source = validation_source(pool_size, part_size, val_size)
    order = np.random.default_rng(seed).permutation(pool_size).astype(np.int32)
    parts = [order[i * part_size : (i + 1) * part_size] for i in range(4)]
    if source == "unused":
        start = 4 * part_size
        target_val = order[start : start + val_size]
        shadow_val = order[start + val_size : start + 2 * val_size]
    else:  # "out_part" (or "none": empty slices)
        target_val, shadow_val = parts[1][:val_size], parts[3][:val_size]
    # Shuffled order inside each out part keeps its validation slice random; sort the
    # in parts so their layout does not depend on the permutation.
    return QuarterSplit(
        target_in=np.sort(parts[0]),
        target_out=parts[1],
        shadow_in=np.sort(parts[2]),
        shadow_out=parts[3],
        val_size=val_size,
        target_val=target_val,
        shadow_val=shadow_val,
        val_source=source,
    )


@dataclasses.dataclass(frozen=True)
class MemberSets:
    """K index sets of possibly different sizes, padded to one [K, max_size] array.

    ``indices[k, :counts[k]]`` are model k's examples; the rest is padding
    (zeros) that the trainer masks out. This is the trainer's input format.
    """

    indices: np.ndarray  # int32 [K, max_size]
    counts: np.ndarray  # int32 [K]

    @property
    def num_models(self) -> int:
        return self.indices.shape[0]

    def member(self, k: int) -> np.ndarray:
        return self.indices[k, : self.counts[k]]

    def mask(self, pool_size: int) -> np.ndarray:
        """Bool [K, pool_size]: example i is in model k's set."""
        out = np.zeros((self.num_models, pool_size), bool)
        for k in range(self.num_models):
            out[k, self.member(k)] = True
        return out

    @classmethod
    def from_lists(cls, sets) -> MemberSets:
        sets = [np.asarray(s, np.int64).ravel() for s in sets]
        if not sets:
            raise ValueError("MemberSets needs at least one index set.")
        counts = np.array([len(s) for s in sets], np.int32)
        if counts.min() < 1:
            raise ValueError(f"Every member set needs at least one example; sizes "
                             f"{counts.tolist()}.")
        if min(s.min() for s in sets) < 0:
            raise ValueError("Member indices must be non-negative.")
        indices = np.zeros((len(sets), counts.max()), np.int32)
        for k, s in enumerate(sets):
            indices[k, : len(s)] = s
        return cls(indices=indices, counts=counts)

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> MemberSets:
        mask = np.asarray(mask, bool)
        if mask.ndim != 2:
            raise ValueError(f"mask must be [K, pool_size], got shape {mask.shape}.")
        return cls.from_lists([np.flatnonzero(row) for row in mask])

    @classmethod
    def replicate(cls, indices, num_models: int) -> MemberSets:
        """The same set for every model (e.g. K seeds of one target)."""
        return cls.from_lists([indices] * num_models)


def random_member_sets(pool, num_models: int, size: int, seed: int) -> MemberSets:
    """K independent uniformly random subsets of ``pool`` (indices), each of ``size``."""
    pool = np.asarray(pool)
    if num_models < 1:
        raise ValueError(f"num_models must be >= 1, got {num_models}.")
    if not 1 <= size <= len(pool):
        raise ValueError(f"size must be in [1, {len(pool)}], got {size}.")
    rng = np.random.default_rng(seed)
    return MemberSets.from_lists(
        [np.sort(rng.choice(pool, size, replace=False)) for _ in range(num_models)]
    )


def offline_reference_sets(available, size: int, num_models: int,
                           seed: int) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Training sets for offline reference models, drawn from ``available`` examples (indices)
    that are none of the target's candidates, so every candidate is OUT for every reference.

    Each reference trains on ``size`` examples, as many as the target did. With at least
    ``2 * size`` available, ``2 * size`` of them are drawn and split by a balanced keep mask
    (each in exactly half of the references: the target's own draw, a random half of a pool);
    with fewer, each reference draws its own ``min(size, available)`` and the returned note
    says how that departs from the target's draw. Returns (indices drawn [R], keep [num_models,
    R], note or None).
    """
    available = np.asarray(available)
    n = len(available)
    if n == 0:
        raise ValueError("Offline references need training examples outside the target's "
                         "candidates; none are left.")
    rng = np.random.default_rng([seed, 3])
    if n >= 2 * size:
        chosen = np.sort(rng.choice(available, 2 * size, replace=False))
        return chosen, balanced_keep_mask(2 * size, num_models, seed), None
    take = min(size, n)
    keep = np.zeros((num_models, n), bool)
    for k in range(num_models):
        keep[k, rng.choice(n, take, replace=False)] = True
    if take == size:
        note = (f"only {n} training examples lie outside the candidates (a balanced draw needs "
                f"{2 * size}): each offline reference trains on {size} examples, as the "
                "target did, but their training sets overlap more than random halves of a "
                "pool would.")
    else:
        note = (f"only {n} training examples lie outside the candidates: each offline "
                f"reference trains on all {n} of them where the target trained on {size}, so "
                "the references are weaker than the target and the offline attacks may "
                "misreport. Give more data, lower --pool_size, or use --references=online.")
    return available, keep, note


def balanced_keep_mask(pool_size: int, num_models: int, seed: int) -> np.ndarray:
    """LiRA's keep mask: bool [K, pool_size], every example in exactly K/2 models.

    For each example an independent random half of the models keeps it, so
    each model's member set is about half the pool (Carlini et al., 2022).
    """
    if num_models < 2 or num_models % 2:
        raise ValueError(
            f"A balanced keep-mask needs an even number of models >= 2, got {num_models}."
        )
    if pool_size < 1:
        raise ValueError(f"pool_size must be positive, got {pool_size}.")
    rng = np.random.default_rng(seed)
    # Rank of a uniform draw per (model, example): the lower half keeps it.
    ranks = np.argsort(rng.random((num_models, pool_size)), axis=0).argsort(axis=0)
    return ranks < num_models // 2


# --- The audit's candidates and reference models ----------------------------------------------

REFERENCE_MODES = ("online", "offline")


def candidate_pool(available, members, size: int | None, rng: np.random.Generator, *,
                   offline: bool = False) -> np.ndarray:
    """The candidates (sorted indices): ``size`` random ``available`` examples (default all of
    them, half with ``offline`` references, which train on the rest); for a target trained
    elsewhere (``members``: its training examples), all its members plus as many non-members
    (or up to ``size`` in all)."""
    available = np.asarray(available)
    n = len(available)
    if size is not None and size > n:
        raise ConfigError(f"--pool_size={size} is larger than the {n} training examples "
                          "available — lower it.")
    if members is None:
        if size is None and offline:
            size = n // 2
        return available if size is None else np.sort(rng.choice(available, size,
                                                                 replace=False))
    size = min(n, 2 * len(members)) if size is None else size
    if size <= len(members):
        raise ConfigError(f"--pool_size={size} leaves no room for non-members beside the "
                          f"target's {len(members)} members — raise it.")
    outside = np.setdiff1d(available, members)
    return np.sort(np.concatenate([members, rng.choice(outside, size - len(members),
                                                       replace=False)]))


@dataclasses.dataclass(frozen=True)
class ReferenceLayout:
    """What the references train on. ``keep`` [N, pool]: their membership of the candidates;
    ``extra``: data indices only they train on (offline); ``train_keep`` [N, pool + extra]:
    their training sets over the candidates followed by ``extra``; ``note``: how the offline
    draw departs from the target's, where the data forces it."""

    keep: np.ndarray
    extra: np.ndarray
    train_keep: np.ndarray
    note: str | None = None


def reference_layout(mode: str, target_keep: np.ndarray, pool: np.ndarray,
                     outside: np.ndarray, num_references: int, seed: int) -> ReferenceLayout:
    """Online: each reference on a balanced half of the pool, so every candidate is IN for
    exactly half of them whatever the target's membership (``target_keep``). Offline: each on
    as many examples as the target, drawn from ``outside`` (training examples that are not
    candidates), so every candidate is OUT for all N of them (:func:`offline_reference_sets`).
    Either way, no candidate's reference counts depend on its membership of the target, which
    is what keeps the attacks calibrated (``tests/test_calibration.py``)."""
    if mode not in REFERENCE_MODES:
        raise ValueError(f"mode must be one of {REFERENCE_MODES}, got {mode!r}.")
    n, size = len(pool), int(target_keep.sum())
    if mode == "online":
        keep = balanced_keep_mask(n, num_references, seed)
        return ReferenceLayout(keep, pool[:0], keep)
    if len(outside) == 0:
        raise ConfigError(
            "--references=offline trains the references outside the candidates, and the "
            "candidates take every training example — lower --pool_size (with --target=train "
            "offline, half of the training part is candidates by default; with "
            "--target=checkpoint the candidates are its members and as many non-members, so "
            "give a data set with examples beyond those).")
    extra, extra_keep, note = offline_reference_sets(outside, size, num_references, seed)
    keep = np.zeros((num_references, n), bool)
    return ReferenceLayout(keep, extra, np.concatenate([keep, extra_keep], 1), note)
