"""Seeded member/non-member index sets: the seed's four quarters and K-model member sets.

All builders are pure numpy functions of ``(sizes, seed)``, so a split is
reproducible from its config alone. Index arrays are sorted int32 positions
into one pool (e.g. a dataset's train split).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class QuarterSplit:
    """The seed's Task 1 split: four equal disjoint parts and a validation slice of each out part.

    ``target_val``/``shadow_val`` are the first ``val_size`` examples of
    ``target_out``/``shadow_out`` (the seed's "1000 samples of each model's
    testing set"); ``*_out_eval`` are the rest of each out part, which never
    influenced training, not even through early stopping.
    """

    target_in: np.ndarray
    target_out: np.ndarray
    shadow_in: np.ndarray
    shadow_out: np.ndarray
    val_size: int

    @property
    def target_val(self) -> np.ndarray:
        return self.target_out[: self.val_size]

    @property
    def shadow_val(self) -> np.ndarray:
        return self.shadow_out[: self.val_size]

    @property
    def target_out_eval(self) -> np.ndarray:
        return self.target_out[self.val_size :]

    @property
    def shadow_out_eval(self) -> np.ndarray:
        return self.shadow_out[self.val_size :]

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
    a smaller one gives the reduced configurations used on a CPU.
    """
    if pool_size < 4:
        raise ValueError(f"pool_size must be at least 4, got {pool_size}.")
    max_part = pool_size // 4
    part_size = max_part if part_size is None else part_size
    if not 1 <= part_size <= max_part:
        raise ValueError(
            f"part_size must be in [1, {max_part}] (a quarter of {pool_size}), got {part_size}."
        )
    if not 0 <= val_size < part_size:
        raise ValueError(
            f"val_size must be in [0, {part_size}) so the out part keeps examples, got {val_size}."
        )
    order = np.random.default_rng(seed).permutation(pool_size)
    parts = [order[i * part_size : (i + 1) * part_size] for i in range(4)]
    # Shuffled order inside each part keeps the validation slice random; sort the
    # in parts so their layout does not depend on the permutation.
    return QuarterSplit(
        target_in=np.sort(parts[0]).astype(np.int32),
        target_out=parts[1].astype(np.int32),
        shadow_in=np.sort(parts[2]).astype(np.int32),
        shadow_out=parts[3].astype(np.int32),
        val_size=val_size,
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
    def from_lists(cls, sets) -> "MemberSets":
        sets = [np.asarray(s, np.int64).ravel() for s in sets]
        if not sets:
            raise ValueError("MemberSets needs at least one index set.")
        counts = np.array([len(s) for s in sets], np.int32)
        if counts.min() < 1:
            raise ValueError(f"Every member set needs at least one example; sizes {counts.tolist()}.")
        if min(s.min() for s in sets) < 0:
            raise ValueError("Member indices must be non-negative.")
        indices = np.zeros((len(sets), counts.max()), np.int32)
        for k, s in enumerate(sets):
            indices[k, : len(s)] = s
        return cls(indices=indices, counts=counts)

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> "MemberSets":
        mask = np.asarray(mask, bool)
        if mask.ndim != 2:
            raise ValueError(f"mask must be [K, pool_size], got shape {mask.shape}.")
        return cls.from_lists([np.flatnonzero(row) for row in mask])

    @classmethod
    def replicate(cls, indices, num_models: int) -> "MemberSets":
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
