"""Label-only attack: the augmentation table, the shifts, the vmapped queries, the fitted
attacks."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpet import attacks
from jaxpet.attacks import label_only, registry


def test_the_ring_table_by_hand():
    """The authors' translations (utils.create_translates): the image, then |dx| + |dy| = d."""
    ring = lambda d, flips: label_only.Queries(max_shift=d, flips=flips).table().tolist()
    assert ring(1, False) == [[0, 0, 0], [0, -1, 0], [0, 0, -1], [0, 0, 1], [0, 1, 0]]
    assert ring(1, True) == [[0, 0, 0], [0, -1, 0], [0, 0, -1], [0, 0, 1], [0, 1, 0],
                             [1, 0, 0], [1, -1, 0], [1, 0, -1], [1, 0, 1], [1, 1, 0]]
    assert ring(2, False) == [[0, 0, 0], [0, -2, 0], [0, -1, -1], [0, -1, 1], [0, 0, -2],
                              [0, 0, 2], [0, 1, -1], [0, 1, 1], [0, 2, 0]]
    assert ring(2, True) == [[0, 0, 0], [0, -2, 0], [0, -1, -1], [0, -1, 1], [0, 0, -2],
                             [0, 0, 2], [0, 1, -1], [0, 1, 1], [0, 2, 0],
                             [1, 0, 0], [1, -2, 0], [1, -1, -1], [1, -1, 1], [1, 0, -2],
                             [1, 0, 2], [1, 1, -1], [1, 1, 1], [1, 2, 0]]
    for d in range(5):  # 4d + 1 queries, as their docstring says
        assert label_only.Queries(max_shift=d).count == 4 * d + 1
    assert label_only.Queries() == label_only.Queries(1, flips=False, shifts="ring")


def test_the_diamond_table_holds_every_radius_up_to_the_shift():
    diamond = label_only.Queries(max_shift=2, shifts="diamond").table()
    assert diamond.shape == (13, 3) and diamond[0].tolist() == [0, 0, 0]  # query 0: the image
    assert sorted(map(tuple, diamond[:, 1:].tolist())) == sorted(
        (dx, dy) for dx in range(-2, 3) for dy in range(-2, 3) if abs(dx) + abs(dy) <= 2)
    assert label_only.Queries(max_shift=2, flips=True, shifts="diamond").count == 26
    np.testing.assert_array_equal(label_only.Queries(1, shifts="diamond").table(),
                                  label_only.Queries(1).table())  # the same for d <= 1
    # Stage keys name `shifts` only where the table differs from the diamond (the old tables).
    assert label_only.Queries(1).key() == {"max_shift": 1, "flips": False}
    assert label_only.Queries(2, shifts="diamond").key() == {"max_shift": 2, "flips": False}
    assert label_only.Queries(2).key()["shifts"] == "ring"
    with pytest.raises(ValueError, match="max_shift"):
        label_only.Queries(max_shift=-1)
    with pytest.raises(ValueError, match="shifts"):
        label_only.Queries(shifts="square")


def test_shifts_are_scipy_shifts_with_the_nearest_edge():
    """The authors shift with scipy.ndimage.shift(mode='nearest'); whole pixels match it."""
    ndimage = pytest.importorskip("scipy.ndimage")
    x = np.random.default_rng(0).random((2, 6, 7, 3)).astype(np.float32)
    for _, dx, dy in label_only.Queries(max_shift=2).table():
        np.testing.assert_allclose(label_only.augment(jnp.asarray(x), 0, dx, dy, max_shift=2),
                                   ndimage.shift(x, (0, dy, dx, 0), mode="nearest"), atol=1e-6)


def test_shifts_move_the_content_and_repeat_the_edge():
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    right = label_only.augment(x, 0, 1, 0, max_shift=1)[0, :, :, 0]
    np.testing.assert_array_equal(right[:, 1:], x[0, :, :-1, 0])  # moved one column right
    np.testing.assert_array_equal(right[:, 0], x[0, :, 0, 0])  # the edge column repeated
    down = label_only.augment(x, 0, 0, 1, max_shift=1)[0, :, :, 0]
    np.testing.assert_array_equal(down[1:], x[0, :-1, :, 0])
    flipped = label_only.augment(x, 1, 0, 0, max_shift=1)[0, :, :, 0]
    np.testing.assert_array_equal(flipped, x[0, :, ::-1, 0])


class _LeftRight(nn.Module):
    """Class 0 when the left half is brighter, times a learned sign (-1 flips every answer)."""

    @nn.compact
    def __call__(self, x, train=False):
        sign = self.param("sign", nn.initializers.ones, ())
        half = x.shape[2] // 2
        left, right = x[:, :, :half].mean((1, 2, 3)), x[:, :, half:].mean((1, 2, 3))
        return sign * jnp.stack([left, right], -1)


def test_queries_of_every_model_on_every_augmentation_by_hand():
    images = np.zeros((3, 6, 6, 1), np.float32)
    images[:, :, :3] = 1.0  # bright left half: class 0
    labels = np.zeros(3, np.int32)
    variables = {"params": {"sign": jnp.asarray([1.0, -1.0])}}  # K = 2 models
    correct = label_only.query_correct(_LeftRight(), variables, images, labels,
                                       label_only.Queries(max_shift=1, flips=True), batch_size=2)
    assert correct.shape == (2, 3, 10)
    # Model 0: right on the 5 unflipped queries, wrong on the 5 flipped ones; model 1 the reverse.
    np.testing.assert_array_equal(correct[0], np.tile([True] * 5 + [False] * 5, (3, 1)))
    np.testing.assert_array_equal(correct[1], ~correct[0])


def test_threshold_variant_fits_the_fraction_correct_on_the_shadow():
    shadow = np.array([[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 1, 0], [0, 0, 1, 0]], bool)
    membership = np.array([1, 1, 0, 0])  # fractions 1, 0.75 (members) and 0.5, 0.25
    target = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
    out = label_only.threshold_attack(shadow, membership, target, np.array([1, 0, 0, 1]))
    assert out.report["threshold"] == 0.75
    np.testing.assert_array_equal(out.predictions, [True, False, False, True])
    assert out.report["accuracy"] == 1.0


def test_attacks_that_need_queries_are_skipped_without_them():
    observed = attacks.LabeledPosteriors(np.full((2, 2), 0.5), np.zeros(2, int), np.array([1, 0]))
    assert not registry.get_attack("label_only").runs_on(observed)
    assert registry.get_attack("loss").runs_on(observed)
    with pytest.raises(ValueError, match="label-only queries"):
        registry.get_attack("label_only_threshold").fn(observed, observed)


def _planted(n: int, seed: int):
    """Queries whose membership signal flips with the class: a class-0 member is right on
    query 1 and a class-1 member wrong on it (non-members the reverse), class 2 reads query 2;
    10% noise. The fraction correct carries nothing, one pooled rule little."""
    rng = np.random.default_rng(seed)
    labels, membership = rng.integers(0, 3, n), rng.integers(0, 2, n)
    correct = rng.random((n, 5)) < 0.5
    signal = np.where(labels == 1, 1 - membership, membership).astype(bool)
    query = np.where(labels == 2, 2, 1)
    correct[np.arange(n), query] = np.where(rng.random(n) < 0.9, signal, ~signal)
    correct[:, 0] = True
    return attacks.LabeledPosteriors(np.full((n, 3), 1 / 3), labels, membership, correct=correct)


@pytest.fixture(scope="module")
def planted():
    return _planted(600, seed=0), _planted(400, seed=1)


PER_CLASS = label_only.LabelOnlyAttackConfig(attack_model="per_class")


def test_the_per_class_model_beats_chance_on_a_planted_signal(planted):
    shadow, target = planted
    out = registry.get_attack("label_only").fn(shadow, target, config=PER_CLASS)
    assert out.report["auc"] > 0.85 and out.report["accuracy"] > 0.8
    assert out.report["learning_rate"] in label_only.LabelOnlyAttackConfig().learning_rates
    assert out.info["train_acc"] > 0.8
    # The class-blind threshold cannot see it.
    assert registry.get_attack("label_only_threshold").fn(shadow, target).report["auc"] < 0.6


def test_the_per_class_model_is_fitted_on_the_shadow_alone(planted):
    """The learning rate is picked on the shadow: permuting the target's membership (and
    so anything derived from it) leaves the fitted nets, the rate and the scores unchanged."""
    shadow, target = planted
    out = label_only.label_only(shadow, target, config=PER_CLASS)
    permuted = dataclasses.replace(
        target, membership=np.random.default_rng(3).permutation(target.membership))
    again = label_only.label_only(shadow, permuted, config=PER_CLASS)
    assert again.info["learning_rate"] == out.info["learning_rate"]
    assert again.info["selection"] == out.info["selection"]
    for a, b in zip(jax.tree.leaves(out.info["model"].params),
                    jax.tree.leaves(again.info["model"].params), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(again.scores, out.scores)
    assert again.report["auc"] != out.report["auc"]  # only the report reads the membership
    # The picked rate is the held-out winner; the shadow's membership does reach the fit.
    selection = out.info["selection"]
    assert selection[out.info["learning_rate"]]["accuracy"] == max(
        s["accuracy"] for s in selection.values())
    shuffled = dataclasses.replace(
        shadow, membership=np.random.default_rng(4).permutation(shadow.membership))
    assert label_only.label_only(shuffled, target, config=PER_CLASS).info["selection"] != \
        selection


def test_a_class_the_shadow_never_showed_scores_the_base_rate(planted):
    shadow, _ = planted
    model = label_only.fit_per_class(shadow.correct, shadow.labels, shadow.membership)
    scores = model.scores(shadow.correct[:4], np.array([0, 1, 3, 7]))
    assert scores[2] == scores[3] == pytest.approx(shadow.membership.mean())
    assert model.seen.tolist() == [True, True, True]


def test_the_pooled_mlp_is_the_default_and_per_class_selectable(planted, monkeypatch):
    shadow, target = planted
    calls = []
    monkeypatch.setattr(label_only, "mlp_attack", lambda *a, **k: calls.append(k) or "pooled")
    assert label_only.label_only(shadow, target, seed=5) == "pooled"
    options = label_only.LabelOnlyAttackConfig(pooled_epochs=2)
    assert label_only.label_only(shadow, target, config=options) == "pooled"
    # Another experiment's config (ShadowAttackConfig) sets the pooled MLP's epochs.
    label_only.label_only(shadow, target, config=attacks.ShadowAttackConfig(epochs=7))
    assert calls == [{"epochs": 30, "seed": 5}, {"epochs": 2, "seed": 0},
                     {"epochs": 7, "seed": 0}]
    assert "learning_rate" in label_only.label_only(shadow, target, config=PER_CLASS).report
    with pytest.raises(ValueError, match="attack_model"):
        label_only.LabelOnlyAttackConfig(attack_model="per_example")
    with pytest.raises(ValueError, match="holdout"):
        label_only.LabelOnlyAttackConfig(holdout=1.0)


def test_the_membership_label_only_settings_and_their_stage_keys():
    import types

    from jaxpet.config import ConfigError
    from jaxpet.experiments import membership

    data = types.SimpleNamespace(digest="data", train=range(800))
    config = membership.Config(dataset="mnist", train_size=100, val_size=20)
    assert config.label_only_queries == label_only.Queries(1, flips=False, shifts="ring")
    assert config.label_only_attack == label_only.LabelOnlyAttackConfig(
        attack_model="pooled_mlp", pooled_epochs=50)
    # The default keys are those from before the new settings: saved stages stay valid.
    key = config.training_key(data)
    assert key["label_only_queries"] == {"max_shift": 1, "flips": False}
    assert not any(k.startswith("label_only_") and k != "label_only_shift"
                   and k != "label_only_queries" for k in key)
    cifar = membership.Config(train_size=100, val_size=20)
    assert cifar.label_only_queries == label_only.Queries(1, flips=True)  # flips keep objects
    assert cifar.training_key(data)["label_only_queries"] == {"max_shift": 1, "flips": True}
    cifar = membership.Config(label_only_shift=2, label_only_translations="diamond",
                              label_only_flips=True, label_only_attack_model="pooled_mlp")
    assert cifar.label_only_queries.count == 26 and cifar.label_only_attack.attack_model == \
        "pooled_mlp"
    with pytest.raises(ConfigError, match="label_only_flips=True has no effect"):
        membership.Config(dataset="mnist", label_only_flips=True)  # a flip changes a digit
