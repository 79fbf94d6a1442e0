"""The calibration harness: every registered membership attack, in every experiment's layout,
reports no risk for a target with no signal, and finds a planted leak at low FPR.

Signals are simulated (:func:`simulate`): each example has a difficulty and a class drawn
with unequal frequencies; each model's true-class margin adds its own noise and, on the
examples it trained on, a boost. A no-signal target gets no boost anywhere (it never saw
its claimed members); a leaky target gets a boost on its members and a large one on a
tenth of them. The attacks are taken from the registry when the tests are collected, so
an attack registered later is covered without touching this file.

The bound tested: :func:`jaxpet.calibration.tpr_null_interval`, the exact no-signal
quantiles of TPR at FPR (negative hypergeometric) with tail probability
:data:`jaxpet.calibration.TAIL` = 1e-4 on each side, on the randomised-tie TPR; the
thresholded TPR may only be lower. AUC: 0.5 within the Mann-Whitney normal band at the same
tail. 20,000 candidates make 0.1% FPR resolvable (16,000 or 10,000 non-members).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import special, stats

from jaxpet import calibration, metrics, splits
from jaxpet.attacks import reference as reference_lib, registry
from jaxpet.attacks.label_only import LabelOnlyAttackConfig
from jaxpet.attacks.lira import Signals
from jaxpet.attacks.registry import LabeledPosteriors
from jaxpet.attacks.shadow import ShadowAttackConfig
from jaxpet.experiments import audit

NUM_CANDIDATES = 20_000
POPULATION = 2_000
CLASS_FREQUENCIES = np.array([0.4, 0.2, 0.12, 0.08, 0.06, 0.05, 0.04, 0.02, 0.02, 0.01])
NUM_QUERIES = 2  # the original and its flip
LABEL_QUERIES = 10
REFERENCE_ATTACKS = registry.attack_names("reference")
SHADOW_ATTACKS = registry.attack_names("shadow")


@dataclasses.dataclass
class World:
    """Every model's logits on the candidates and the population, and label-only queries."""

    logits: np.ndarray  # [K, N, A, C]
    labels: np.ndarray  # [N]
    population_logits: np.ndarray  # [K, Z, A, C]
    population_labels: np.ndarray  # [Z]
    correct: np.ndarray  # bool [K, N, Q]

    def signals(self) -> Signals:
        s = Signals.from_logits(self.logits, self.labels, self.population_logits,
                                self.population_labels)
        return dataclasses.replace(s, correct=self.correct)

    def posteriors(self, k: int, membership) -> LabeledPosteriors:
        return LabeledPosteriors(special.softmax(self.logits[k, :, 0], -1), self.labels,
                                 np.asarray(membership, np.int32), self.correct[k])


def simulate(trained, leak=None, *, seed: int = 0, boost: float = 1.0) -> World:
    """Models whose row k of ``trained`` (bool [K, N]) are the examples they trained on.

    ``leak`` (bool [K, N], optional): where a model leaks far more (a margin boost of 4).
    Queries of one example share its model's margin up to small augmentation noise; a
    label-only query is right when the margin plus larger augmentation noise clears 0.5.
    """
    trained = np.asarray(trained, bool)
    k, n = trained.shape
    rng = np.random.default_rng(seed)
    classes = len(CLASS_FREQUENCIES)

    def margins(shape_n, boosted):
        difficulty = 1.0 + 1.5 * rng.normal(size=shape_n)
        model_noise = 0.5 * rng.normal(size=(k, shape_n))
        return difficulty + model_noise + boosted

    boosted = boost * trained + (0.0 if leak is None else 4.0 * np.asarray(leak, bool))
    m = margins(n, boosted)
    labels = rng.choice(classes, n, p=CLASS_FREQUENCIES)
    population_labels = rng.choice(classes, POPULATION, p=CLASS_FREQUENCIES)
    m_population = margins(POPULATION, 0.0)

    def logits_of(margin, y):
        shape = margin.shape + (NUM_QUERIES, classes)
        out = 0.3 * rng.normal(size=shape)
        true = margin[..., None] + 0.1 * rng.normal(size=margin.shape + (NUM_QUERIES,))
        np.put_along_axis(out, np.broadcast_to(y[None, :, None, None], margin.shape
                                               + (NUM_QUERIES, 1)), true[..., None], -1)
        return out.astype(np.float32)

    correct = m[..., None] + 2.0 * rng.normal(size=(k, n, LABEL_QUERIES)) > 0.5
    return World(logits_of(m, labels), labels, logits_of(m_population, population_labels),
                 population_labels, correct)


def _target_membership(fraction: float, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 9]).random(NUM_CANDIDATES) < fraction


def _check_no_signal(name, labels, scores):
    report = calibration.calibration_report(labels, scores)
    for level, r in report["levels"].items():
        assert r["resolvable"], (name, level)
        assert r["low"] <= r["tpr_randomized"] <= r["high"], (
            f"{name}: TPR {r['tpr_randomized']:.5f} at FPR {level} outside the no-signal band "
            f"[{r['low']:.5f}, {r['high']:.5f}]")
    assert report["auc_calibrated"], (name, report["auc"], report["auc_halfwidth"])


def _check_finds_leak(name, labels, scores, level):
    value = metrics.tpr_at_fpr_randomized(labels, scores, (level,))[str(level)]
    _, high = calibration.tpr_null_interval(level, int(labels.sum()), int((~labels).sum()))
    assert value > high, f"{name}: TPR {value:.4f} at FPR {level} is within chance (<= {high:.4f})"


# --------------------------------------------------------------------------- reference family


def _audit_layout(mode: str, num_references: int, target_keep):
    """The audit's own keep matrix, target first, built by audit.reference_layout."""
    config = audit.Config(references=mode, num_references=num_references)
    pool = np.arange(NUM_CANDIDATES)
    outside = np.arange(NUM_CANDIDATES, 3 * NUM_CANDIDATES)
    layout = audit.reference_layout(config, target_keep, pool, outside)
    return config, np.concatenate([target_keep[None], layout.keep])


def _audit_scores(mode, num_references, fraction, *, leak: bool, seed=0,
                  attack_config=reference_lib.AttackConfig()):
    target_keep = _target_membership(fraction, seed)
    config, keep = _audit_layout(mode, num_references, target_keep)
    trained = keep.copy()
    trained[0] = target_keep if leak else False  # the no-signal target never saw its members
    planted = np.zeros_like(keep)
    if leak:
        planted[0] = target_keep & (np.random.default_rng(seed).random(NUM_CANDIDATES) < 0.1)
    signals = simulate(trained, planted, seed=seed).signals()
    names = audit.attack_names(config, signals)
    scores = reference_lib.attack_scores(signals, keep, 0, list(range(1, len(keep))),
                                         attack_config, attacks=names)
    return target_keep, scores


@pytest.mark.parametrize("mode", ["online", "offline"])
@pytest.mark.parametrize("num_references, fraction", [(2, 0.5), (4, 0.2), (16, 0.5)])
def test_audit_attacks_are_calibrated_on_a_target_with_no_signal(mode, num_references, fraction):
    labels, scores = _audit_scores(mode, num_references, fraction, leak=False)
    expected = {n for n in REFERENCE_ATTACKS if mode == "online" or "offline" in n
                or not registry.get_attack(n).uses_references}
    assert set(scores) == expected  # every registered attack the mode runs
    for name, s in scores.items():
        _check_no_signal(name, labels, s)


# The reference code's conventions: LiRA's plotting code, RMIA's released code, LiRA's FPR rule.
CODE_CONVENTIONS = reference_lib.AttackConfig(lira_convention="code", rmia_convention="code",
                                              fpr_rule="lt")


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_the_reference_codes_conventions_are_calibrated_too(mode):
    labels, scores = _audit_scores(mode, 8, 0.5, leak=False, seed=5,
                                   attack_config=CODE_CONVENTIONS)
    for name, s in scores.items():
        _check_no_signal(name, labels, s)
    labels, scores = _audit_scores(mode, 8, 0.5, leak=True, seed=5,
                                   attack_config=CODE_CONVENTIONS)
    for name, s in scores.items():
        _check_finds_leak(name, labels, s, 0.01)


def _pooled_band(level, counts, tail=calibration.TAIL):
    """(low, high) of the summed member counts X_k (low) and X_{k+1} (high) over independent
    no-signal runs with (members, non-members) ``counts``: exact means and variances of each
    negative hypergeometric, summed, and the normal quantile (a sum of many is near normal)."""
    z = stats.norm.isf(tail)
    low_m = low_v = high_m = high_v = 0.0
    for pos, neg in counts:
        k = int(np.floor(level * neg + 1e-9))
        lo, hi = stats.nhypergeom(pos + neg, pos, k + 1), stats.nhypergeom(pos + neg, pos, k + 2)
        low_m, low_v, high_m, high_v = (low_m + lo.mean(), low_v + lo.var(),
                                        high_m + hi.mean(), high_v + hi.var())
    return low_m - z * np.sqrt(low_v), high_m + z * np.sqrt(high_v)


@pytest.mark.parametrize("layout", ["audit_online", "audit_offline", "lira"])
def test_no_signal_tpr_at_01_percent_fpr_is_not_hidden_over_several_targets(layout):
    """One target's band at 0.1% FPR starts at 0, so it cannot show an attack that hides risk;
    summed over 4 independent no-signal targets the band's lower end is above 0."""
    counts, found = [], {}
    for seed in range(10, 14):
        if layout == "lira":
            keep = splits.balanced_keep_mask(NUM_CANDIDATES, 8, seed=seed)
            trained = keep.copy()
            trained[0] = False
            result = reference_lib.leave_one_out(simulate(trained, seed=seed).signals(), keep,
                                                 targets=[0], keep_scores_of=0)
            labels, scores = keep[0], result["scores"]
        else:
            labels, scores = _audit_scores(layout.split("_")[1], 8, 0.5, leak=False, seed=seed)
        counts.append((int(labels.sum()), int((~labels).sum())))
        for name, s in scores.items():
            tpr = metrics.tpr_at_fpr_randomized(labels, s, (0.001,))["0.001"]
            found[name] = found.get(name, 0.0) + tpr * labels.sum()
    low, high = _pooled_band(0.001, counts)
    assert low > 0
    for name, hits in found.items():
        assert low <= hits <= high, (name, hits, low, high)


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_audit_attacks_find_a_planted_leak_at_low_fpr(mode):
    labels, scores = _audit_scores(mode, 8, 0.5, leak=True)
    for name, s in scores.items():
        _check_finds_leak(name, labels, s, 0.01)
        if not name.startswith("label_only"):  # a 10-query label vector is too coarse at 0.1%
            _check_finds_leak(name, labels, s, 0.001)


def _old_offline_keep(target_keep, num_references, seed=0):
    """The audit's offline layout before issue 21: references on halves of the non-members."""
    keep = np.zeros((num_references, len(target_keep)), bool)
    outside = np.flatnonzero(~target_keep)
    keep[:, outside] = splits.balanced_keep_mask(len(outside), num_references, seed)
    return np.concatenate([target_keep[None], keep])


def test_the_harness_catches_the_old_offline_layout():
    """Non-members had N/2 OUT references and members N: LiRA offline under-reported."""
    target_keep = _target_membership(0.5, 0)
    keep = _old_offline_keep(target_keep, 8)
    trained = keep.copy()
    trained[0] = False
    signals = simulate(trained).signals()
    scores = reference_lib.attack_scores(signals, keep, 0, list(range(1, 9)),
                                         attacks=["lira_offline"])["lira_offline"]
    assert not calibration.calibration_report(target_keep, scores)["calibrated"]
    # The audit's built-in check sees it too: reference 1 scored as the target.
    check = calibration.pseudo_target_check(signals, keep, target_keep, 1, list(range(2, 9)),
                                            reference_lib.AttackConfig(), ["lira_offline"])
    assert not check["attacks"]["lira_offline"]["calibrated"]


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_the_built_in_check_passes_on_the_audits_layouts(mode):
    target_keep = _target_membership(0.5, 1)
    config, keep = _audit_layout(mode, 8, target_keep)
    signals = simulate(keep, seed=1).signals()  # every model, the target too, has its signal
    names = audit.attack_names(config, signals)
    check = audit.self_check(signals, keep, target_keep, reference_lib.AttackConfig(), names)
    assert set(check["attacks"]) == set(names)
    for name, r in check["attacks"].items():
        assert r["calibrated"], (name, r)


# LiRA experiment: K models on one balanced keep mask, leave-one-out with equalized references.
@pytest.mark.parametrize("num_models, num_references", [(4, None), (16, None), (16, 1), (16, 4)])
def test_lira_experiment_attacks_are_calibrated_on_a_target_with_no_signal(num_models,
                                                                           num_references):
    keep = splits.balanced_keep_mask(NUM_CANDIDATES, num_models, seed=2)
    trained = keep.copy()
    trained[0] = False  # model 0's scores say nothing of its keep row
    signals = simulate(trained, seed=2).signals()
    result = reference_lib.leave_one_out(signals, keep, targets=[0], keep_scores_of=0,
                                         num_references=num_references)
    assert set(result["scores"]) == set(REFERENCE_ATTACKS)
    for name, s in result["scores"].items():
        _check_no_signal(name, keep[0], s)


def test_leave_one_out_refuses_two_models_whose_layout_gives_membership_away():
    """With K=2 the one other model is IN exactly where the target is OUT: no equalizing
    can hide that (measured before the refusal: RMIA online AUC 0.38 on a no-signal target)."""
    keep = splits.balanced_keep_mask(200, 2, seed=0)
    with pytest.raises(ValueError, match="at least 4 models"):
        reference_lib.leave_one_out(simulate(keep, seed=4).signals(), keep, targets=[0])


def test_lira_experiment_attacks_find_a_planted_leak():
    keep = splits.balanced_keep_mask(NUM_CANDIDATES, 8, seed=3)
    leak = keep & (np.random.default_rng(3).random(keep.shape) < 0.1)
    signals = simulate(keep, leak, seed=3).signals()
    result = reference_lib.leave_one_out(signals, keep, targets=[0], keep_scores_of=0)
    for name, s in result["scores"].items():
        _check_finds_leak(name, keep[0], s, 0.01)


# --------------------------------------------------------------------------- shadow family


def _shadow_world(fraction, *, leak: bool, seed=0):
    """Shadow (row 0, trained on half of its data, with a signal) and target (row 1)."""
    shadow_keep = np.random.default_rng([seed, 5]).random(NUM_CANDIDATES) < 0.5
    target_keep = _target_membership(fraction, seed)
    trained = np.stack([shadow_keep, target_keep if leak else np.zeros_like(target_keep)])
    planted = np.zeros_like(trained)
    if leak:
        planted[1] = target_keep & (np.random.default_rng(seed).random(NUM_CANDIDATES) < 0.1)
    world = simulate(trained, planted, seed=seed)
    return world.posteriors(0, shadow_keep), world.posteriors(1, target_keep)


# The membership experiment's attack settings, with a short attack-MLP fit (calibration does
# not depend on how well the MLP learned) and each threshold convention.
FAST = dict(epochs=2, batch_size=256)


@pytest.mark.parametrize("fraction", [0.5, 0.2])
@pytest.mark.parametrize("thresholds, criterion, confidence", [
    ("per_class", "balanced_accuracy", "true_class"),  # Song & Mittal's code, the default
    ("global", "accuracy", "max")])  # the earlier convention
def test_membership_experiment_attacks_are_calibrated_on_a_target_with_no_signal(
        fraction, thresholds, criterion, confidence):
    shadow, target = _shadow_world(fraction, leak=False)
    config = ShadowAttackConfig(thresholds=thresholds, threshold_criterion=criterion,
                                confidence=confidence, **FAST)
    for name in SHADOW_ATTACKS:
        attack = registry.get_attack(name, "shadow")
        assert attack.runs_on(shadow) and attack.runs_on(target)
        output = attack.fn(shadow, target, config=config, seed=0)
        _check_no_signal(name, target.membership.astype(bool), output.scores)
        # The report carries both readings of TPR at FPR, the thresholded one never higher.
        for level, value in output.report["tpr_at_fpr"].items():
            assert value <= output.report["tpr_at_fpr_randomized"][level] + 1e-12


def test_the_per_class_label_only_model_is_calibrated_and_finds_a_planted_leak():
    """The authors' attack model (one small net per class, its learning rate picked on the
    shadow), as the membership experiment runs it with --label_only_attack_model=per_class."""
    config = LabelOnlyAttackConfig(attack_model="per_class", batch_size=32)
    attack = registry.get_attack("label_only", "shadow")
    for leak in (False, True):
        shadow, target = _shadow_world(0.3, leak=leak, seed=6)
        scores = attack.fn(shadow, target, config=config, seed=0).scores
        labels = target.membership.astype(bool)
        if leak:
            _check_finds_leak("label_only per_class", labels, scores, 0.01)
        else:
            _check_no_signal("label_only per_class", labels, scores)


def test_membership_experiment_attacks_find_a_planted_leak():
    shadow, target = _shadow_world(0.5, leak=True)
    config = ShadowAttackConfig(**FAST)
    for name in SHADOW_ATTACKS:
        output = registry.get_attack(name).fn(shadow, target, config=config, seed=0)
        _check_finds_leak(name, target.membership.astype(bool), output.scores, 0.01)


# --------------------------------------------------------------------------- the bounds


@pytest.mark.parametrize("distinct", [None, 12])  # continuous scores, and 12 tied values
def test_tpr_null_interval_holds_the_simulated_no_signal_tpr(distinct):
    """Monte Carlo: random scores, 300 members and 700 non-members, tail 2.5% each side."""
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(300, bool), np.zeros(700, bool)]
    draw = (lambda: rng.random(1000)) if distinct is None else (
        lambda: rng.integers(0, distinct, 1000).astype(float))
    for level in (0.01, 0.1):
        low, high = calibration.tpr_null_interval(level, 300, 700, tail=0.025)
        draws = [metrics.tpr_at_fpr_randomized(labels, draw(), (level,))[str(level)]
                 for _ in range(2000)]
        outside = np.mean((np.array(draws) < low) | (np.array(draws) > high))
        assert outside < 0.05 + 0.015, (level, outside)  # two tails of at most 2.5% each
        assert low < level < high


def test_randomized_tpr_is_the_interpolated_roc_and_equals_thresholded_without_ties():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    labels = rng.random(3000) < 0.4
    tied = rng.integers(0, 6, 3000).astype(float) + 0.3 * labels
    fpr, tpr, _ = sklearn_metrics.roc_curve(labels, tied, drop_intermediate=False)
    for level in (0.01, 0.05, 0.3):
        expected = np.interp(level, fpr, tpr)  # strictly increasing fpr here: no vertical runs
        assert metrics.tpr_at_fpr_randomized(labels, tied, (level,))[str(level)] == \
            pytest.approx(expected)
    continuous = rng.normal(size=3000) + labels
    assert metrics.tpr_at_fpr_randomized(labels, continuous, (0.01, 0.001, 0.0)) == \
        metrics.tpr_at_fpr(labels, continuous, (0.01, 0.001, 0.0))


def test_a_tied_score_falls_to_zero_thresholded_but_not_randomized():
    labels = np.r_[np.ones(500, bool), np.zeros(500, bool)]
    scores = np.r_[np.ones(300), np.zeros(200), np.ones(100), np.zeros(400)]
    assert metrics.tpr_at_fpr(labels, scores, (0.01,))["0.01"] == 0.0
    # The top block: 300 members, 100 non-members; FPR 1% takes 5 of its 100 non-members.
    assert metrics.tpr_at_fpr_randomized(labels, scores, (0.01,))["0.01"] == \
        pytest.approx(0.6 * 0.05)


def test_a_figure_that_would_mean_nothing_is_reported_not_available():
    """Two models, each the other's only reference (complementary halves): every member of the
    target lacks an IN reference and every non-member an OUT one. The online attacks' scores
    would be their fallbacks, split by membership (RMIA online's AUC was 0.008 on a model
    with no signal), and so would the offline ones' (the non-members lack an OUT reference):
    they are not available, with the reason; the attacks that pool or ignore the references
    still run, calibrated."""
    keep = np.zeros((2, NUM_CANDIDATES), bool)
    keep[0, : NUM_CANDIDATES // 2] = True
    keep[1] = ~keep[0]
    trained = keep.copy()
    trained[0] = False  # no signal in the target
    signals = simulate(trained, seed=3).signals()
    scores = reference_lib.attack_scores(signals, keep, 0, [1])
    comparing = {a.name for a in registry.list_attacks("reference") if a.compares}
    assert {"lira_online", "rmia_online", "lira_offline", "rmia_offline"} <= comparing
    assert set(scores) == set(REFERENCE_ATTACKS) - comparing == {"global_loss", "label_only_ref"}
    missing = reference_lib.not_available(sorted(comparing), keep[[1]], None, keep[0])
    assert set(missing) == comparing
    assert "no IN reference follows the target's membership" in missing["rmia_online"]
    assert "no OUT reference" in missing["lira_offline"]
    with pytest.raises(ValueError, match="rmia_online is not available here"):
        reference_lib.attack_scores(signals, keep, 0, [1], attacks=["rmia_online"])
    _check_no_signal("global_loss", keep[0], scores["global_loss"])


def test_a_random_subset_of_references_keeps_every_attack():
    """One reference drawn at random (the sweep's first point): which examples lack a side is
    unrelated to the target's membership, so no attack is withheld."""
    keep = splits.balanced_keep_mask(NUM_CANDIDATES, 16, seed=4)
    assert reference_lib.not_available(REFERENCE_ATTACKS, keep[[5]], None, keep[0]) == {}
