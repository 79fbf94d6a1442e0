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
    assert split.val_source == "out_part"  # the parts fill the pool: the seed's layout
    _check_disjoint(split)


def test_quarter_split_is_deterministic_by_seed():
    a, b, c = (splits.quarter_split(1000, seed=s, part_size=100, val_size=10) for s in (1, 1, 2))
    for name in a.parts():
        np.testing.assert_array_equal(a.parts()[name], b.parts()[name])
    assert not np.array_equal(a.target_in, c.target_in)


@pytest.mark.parametrize("kwargs", [dict(part_size=251), dict(part_size=0)])
def test_quarter_split_rejects_impossible_sizes(kwargs):
    with pytest.raises(ValueError):
        splits.quarter_split(1000, seed=0, **kwargs)


def _check_disjoint(split):
    """Members, validation and evaluated non-members of both roles never overlap."""
    sets = {"target_in": split.target_in, "shadow_in": split.shadow_in,
            "target_val": split.target_val, "shadow_val": split.shadow_val,
            "target_out_eval": split.target_out_eval, "shadow_out_eval": split.shadow_out_eval}
    for name, s in sets.items():
        assert len(np.unique(s)) == len(s), name
    union = np.concatenate(list(sets.values()))
    assert len(np.unique(union)) == len(union)  # pairwise disjoint


# (pool, part, val, source): room for 2 x val outside the parts -> "unused"; else "out_part".
SOURCES = [(1000, 200, 100, "unused"), (1000, 200, 101, "out_part"), (1000, 250, 249, "out_part"),
           (1000, 240, 20, "unused"), (1000, 240, 21, "out_part"), (1000, 50, 300, "unused"),
           (1000, 200, 0, "none")]


@pytest.mark.parametrize("pool, part, val, source", SOURCES)
def test_validation_comes_from_unused_data_when_it_fits(pool, part, val, source):
    split = splits.quarter_split(pool, seed=5, part_size=part, val_size=val)
    assert split.val_source == splits.validation_source(pool, part, val) == source
    assert len(split.target_val) == len(split.shadow_val) == val
    _check_disjoint(split)
    if source == "out_part":  # the seed's layout: validation is the start of each out part
        np.testing.assert_array_equal(split.target_val, split.target_out[:val])
        np.testing.assert_array_equal(split.shadow_val, split.shadow_out[:val])
        assert len(split.target_out_eval) == len(split.shadow_out_eval) == part - val
    else:  # outside the four parts, which are evaluated whole
        inside = np.concatenate(list(split.parts().values()))
        assert not set(split.target_val) & set(inside) and not set(split.shadow_val) & set(inside)
        np.testing.assert_array_equal(split.target_out_eval, split.target_out)
        np.testing.assert_array_equal(split.shadow_out_eval, split.shadow_out)
    # The members and out parts do not depend on where validation comes from.
    other = splits.quarter_split(pool, seed=5, part_size=part, val_size=0)
    for name, part_ in split.parts().items():
        np.testing.assert_array_equal(part_, other.parts()[name])


def test_validation_follows_the_four_parts_in_the_permutation():
    split = splits.quarter_split(1000, seed=2, part_size=100, val_size=30)
    order = np.random.default_rng(2).permutation(1000)
    np.testing.assert_array_equal(split.target_val, order[400:430])
    np.testing.assert_array_equal(split.shadow_val, order[430:460])
    np.testing.assert_array_equal(split.target_out, order[100:200])


@pytest.mark.parametrize("pool, part, val", [(1000, 250, 250), (1000, 240, 240), (1000, 200, 300)])
def test_validation_that_fits_nowhere_is_refused(pool, part, val):
    with pytest.raises(ValueError, match=f"val_size={val} fits neither"):
        splits.quarter_split(pool, seed=0, part_size=part, val_size=val)
    with pytest.raises(ValueError, match="val_size must be >= 0"):
        splits.validation_source(pool, part, -1)


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
