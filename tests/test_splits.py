"""Split builders: disjointness, sizes, balance, determinism."""

import numpy as np
import pytest

from jaxpet import splits


def test_quarter_split_is_disjoint_and_sized():
    split = splits.quarter_split(50_000, seed=0)
    parts = split.parts()
    assert all(len(p) == 12_500 for p in parts.values())
    union = np.concatenate(list(parts.values()))
    assert len(np.unique(union)) == 50_000  # four disjoint quarters cover the pool
    assert len(split.target_val) == 1000 and len(split.shadow_val) == 1000
    assert len(split.target_out_eval) == 11_500
    assert not set(split.target_val) & set(split.target_out_eval)
    assert set(split.target_val) <= set(split.target_out)
    assert not set(split.target_in) & set(split.shadow_out)


def test_quarter_split_is_deterministic_by_seed():
    a, b, c = (splits.quarter_split(1000, seed=s, part_size=100, val_size=10) for s in (1, 1, 2))
    for name in a.parts():
        np.testing.assert_array_equal(a.parts()[name], b.parts()[name])
    assert not np.array_equal(a.target_in, c.target_in)


@pytest.mark.parametrize("kwargs", [dict(part_size=251), dict(part_size=0), dict(part_size=50, val_size=50)])
def test_quarter_split_rejects_impossible_sizes(kwargs):
    with pytest.raises(ValueError):
        splits.quarter_split(1000, seed=0, **kwargs)


def test_balanced_keep_mask_puts_every_example_in_half_the_models():
    mask = splits.balanced_keep_mask(1000, 16, seed=3)
    assert mask.shape == (16, 1000)
    np.testing.assert_array_equal(mask.sum(0), 8)
    assert 400 < mask.sum(1).min() and mask.sum(1).max() < 600  # each model about half
    np.testing.assert_array_equal(mask, splits.balanced_keep_mask(1000, 16, seed=3))
    assert not np.array_equal(mask, splits.balanced_keep_mask(1000, 16, seed=4))
    with pytest.raises(ValueError, match="even"):
        splits.balanced_keep_mask(10, 3, seed=0)


def test_member_sets_round_trip_and_padding():
    sets = splits.MemberSets.from_lists([[3, 1, 2], [5], [0, 9]])
    assert sets.indices.shape == (3, 3)
    np.testing.assert_array_equal(sets.counts, [3, 1, 2])
    np.testing.assert_array_equal(sets.member(0), [3, 1, 2])
    mask = sets.mask(10)
    np.testing.assert_array_equal(mask.sum(1), [3, 1, 2])
    again = splits.MemberSets.from_mask(mask)
    np.testing.assert_array_equal(np.sort(again.member(0)), [1, 2, 3])
    with pytest.raises(ValueError):
        splits.MemberSets.from_lists([[1], []])


def test_random_member_sets_sizes_and_pool():
    pool = np.arange(100, 200)
    sets = splits.random_member_sets(pool, 4, 30, seed=0)
    for k in range(4):
        member = sets.member(k)
        assert len(member) == 30 and len(np.unique(member)) == 30
        assert set(member) <= set(pool)
    assert not np.array_equal(sets.member(0), sets.member(1))
