"""Metrics agree with scikit-learn on random inputs (with ties); SSIM with a windowed oracle."""

import numpy as np
import pytest
from sklearn import metrics as skm

from jaxpet import metrics


def _random_case(seed, n=500, tied=False):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = rng.normal(size=n) + 0.7 * labels
    if tied:
        scores = np.round(scores * 2) / 2  # many ties
    return labels, scores


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("tied", [False, True])
def test_roc_and_auc_match_sklearn(seed, tied):
    labels, scores = _random_case(seed, tied=tied)
    fpr, tpr, thresholds = metrics.roc_curve(labels, scores)
    sk_fpr, sk_tpr, sk_thr = skm.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thresholds[1:], sk_thr[1:])
    np.testing.assert_allclose(metrics.roc_auc(labels, scores), skm.roc_auc_score(labels, scores))


@pytest.mark.parametrize("seed", range(3))
def test_tpr_at_fpr_matches_sklearn_curve(seed):
    labels, scores = _random_case(seed, n=3000)
    sk_fpr, sk_tpr, _ = skm.roc_curve(labels, scores)
    got = metrics.tpr_at_fpr(labels, scores, (0.1, 0.01, 0.001, 0.0))
    for level in (0.1, 0.01, 0.001, 0.0):
        assert got[str(level)] == pytest.approx(sk_tpr[sk_fpr <= level].max())


def test_tpr_at_zero_fpr_of_a_perfect_and_a_useless_attack():
    labels = np.r_[np.ones(100), np.zeros(100)]
    assert metrics.tpr_at_fpr(labels, labels, (0.0,))["0.0"] == 1.0
    assert metrics.tpr_at_fpr(labels, np.zeros(200), (0.0,))["0.0"] == 0.0


@pytest.mark.parametrize("seed", range(3))
def test_binary_and_per_class_reports_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels, predictions = rng.integers(0, 2, 400), rng.integers(0, 2, 400)
    report = metrics.binary_report(labels, predictions)
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(labels, predictions))
    assert report["precision"] == pytest.approx(skm.precision_score(labels, predictions))
    assert report["recall"] == pytest.approx(skm.recall_score(labels, predictions))
    assert report["f1"] == pytest.approx(skm.f1_score(labels, predictions))
    y, p = rng.integers(0, 5, 400), rng.integers(0, 4, 400)  # class 4 never predicted
    per_class = metrics.per_class_report(y, p, num_classes=5)
    sk = skm.precision_recall_fscore_support(y, p, labels=range(5), zero_division=0)
    for ours, theirs in zip((per_class[k] for k in ("precision", "recall", "f1", "support")), sk,
                           strict=True):
        np.testing.assert_allclose(ours, theirs)
    np.testing.assert_array_equal(metrics.confusion_matrix(y, p, 5),
                                  skm.confusion_matrix(y, p, labels=range(5)))


def test_best_threshold_maximises_accuracy():
    labels, scores = _random_case(5)
    threshold = metrics.best_threshold(labels, scores)
    best = np.mean((scores >= threshold) == labels)
    for t in np.unique(scores):
        assert np.mean((scores >= t) == labels) <= best + 1e-12


def test_bad_metric_inputs():
    with pytest.raises(ValueError, match="both members"):
        metrics.roc_auc(np.ones(5), np.arange(5))
    with pytest.raises(ValueError, match="NaN"):
        metrics.roc_auc([0, 1], [0.0, np.nan])
    with pytest.raises(ValueError, match="differ"):
        metrics.roc_auc([0, 1], [0.0])


def _ssim_reference(a, b, win=11, sigma=1.5, data_range=1.0):
    """SSIM computed window by window with an explicit 2-D gaussian weight."""
    r = np.arange(win) - (win - 1) / 2
    g = np.exp(-0.5 * (r / sigma) ** 2)
    w2 = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for i in range(a.shape[0] - win + 1):
        for j in range(a.shape[1] - win + 1):
            pa, pb = a[i:i + win, j:j + win], b[i:i + win, j:j + win]
            ma, mb = (w2 * pa).sum(), (w2 * pb).sum()
            va, vb = (w2 * (pa - ma) ** 2).sum(), (w2 * (pb - mb) ** 2).sum()
            cov = (w2 * (pa - ma) * (pb - mb)).sum()
            values.append((2 * ma * mb + c1) * (2 * cov + c2)
                          / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_and_mse():
    rng = np.random.default_rng(0)
    a = rng.random((13, 14))
    b = np.clip(a + 0.2 * rng.normal(size=a.shape), 0, 1)
    assert metrics.ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert metrics.ssim(a, b) == pytest.approx(_ssim_reference(a, b), abs=1e-10)
    assert metrics.ssim(a, b) == pytest.approx(metrics.ssim(b, a), abs=1e-12)
    assert metrics.ssim(a, b) < 0.9
    batch = np.stack([a, b])[..., None]  # [N, H, W, C] gives one value per image
    np.testing.assert_allclose(metrics.ssim(batch, np.stack([a, a])[..., None]),
                               [1.0, metrics.ssim(b, a)], atol=1e-12)
    assert metrics.mse(batch, batch).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError):
        metrics.ssim(a, b[:, :-1])
    with pytest.raises(ValueError):
        metrics.ssim(a[:8], b[:8])


def test_correlation_is_blind_to_brightness_and_contrast():
    rng = np.random.default_rng(0)
    a = rng.random((3, 6, 5, 1))
    corr = metrics.correlation(a, np.concatenate([0.2 + 0.1 * a[:1], -a[1:2]]))
    assert corr.shape == (3, 2)
    np.testing.assert_allclose([corr[0, 0], corr[1, 1]], [1.0, -1.0], atol=1e-12)
    expected = np.corrcoef(a[2].ravel(), a[0].ravel())[0, 1]
    np.testing.assert_allclose(corr[2, 0], expected, atol=1e-12)


def test_tpr_at_fpr_strict_and_inclusive_rules_differ_exactly_at_the_boundary():
    # 4 non-members, 4 members. Thresholds from the top: the 1st non-member ranks 3rd, so
    # the ROC passes (0, 0.5) -> (0.25, 0.5) -> (0.25, 1.0): FPR 0.25 is reached exactly.
    scores = [9, 8, 7, 6, 5, 1, 1, 1]
    labels = [1, 1, 0, 1, 1, 0, 0, 0]
    inclusive = metrics.tpr_at_fpr(labels, scores, (0.25, 0.3, 0.0), rule="le")
    strict = metrics.tpr_at_fpr(labels, scores, (0.25, 0.3, 0.0), rule="lt")
    assert inclusive == {"0.25": 1.0, "0.3": 1.0, "0.0": 0.5}
    assert strict == {"0.25": 0.5, "0.3": 1.0, "0.0": 0.0}  # < 0.25 stops at (0, 0.5)
    with pytest.raises(ValueError, match="FPR rule"):
        metrics.tpr_at_fpr(labels, scores, rule="<")


def test_best_threshold_accuracy_and_balanced_accuracy_differ_when_imbalanced():
    # 2 members (0.9, 0.5) and 6 non-members. Cut >= 0.9: 1 + 6 of 8 right (87.5%), balanced
    # 0.5 * (1/2 + 6/6) = 0.75. Cut >= 0.5: 2 + 4 right (75%), balanced 0.5 * (2/2 + 4/6) =
    # 0.833, the best (Song & Mittal's criterion). No other cut (nor "nobody", 75%) beats them.
    scores = np.array([0.9, 0.5, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1])
    labels = np.array([1, 1, 0, 0, 0, 0, 0, 0])
    assert metrics.best_threshold(labels, scores) == 0.9
    assert metrics.best_threshold(labels, scores, criterion="accuracy") == 0.9
    assert metrics.best_threshold(labels, scores, criterion="balanced_accuracy") == 0.5
    with pytest.raises(ValueError, match="criterion"):
        metrics.best_threshold(labels, scores, criterion="f1")


def test_best_threshold_ties_go_to_the_highest_cut():
    # Balanced: cuts 0.8 and 0.4 both give 0.75, in any order of the data (Song & Mittal's
    # loop keeps whichever comes first); the highest wins. Accuracy: 0.95 above the members
    # and "nobody" (just above 0.95) both get 6 of 8 right; "nobody" is the higher cut.
    labels = np.array([1, 1, 0, 0])
    for order in ([0, 1, 2, 3], [1, 0, 3, 2], [3, 2, 1, 0]):
        scores = np.array([0.8, 0.4, 0.6, 0.2])[order]
        assert metrics.best_threshold(labels[order], scores, criterion="balanced_accuracy") == 0.8
    scores = np.array([0.9, 0.5, 0.95, 0.7, 0.6, 0.4, 0.3, 0.2])
    labels = np.array([1, 1, 0, 0, 0, 0, 0, 0])
    assert metrics.best_threshold(labels, scores) == np.nextafter(0.95, np.inf)
    assert metrics.best_threshold(labels, scores, criterion="balanced_accuracy") == 0.5
    # Balanced accuracy tries only the observed values (as Song & Mittal): when nothing beats
    # 0.5 it returns the lowest score (everyone a member), not a cut above the top.
    assert metrics.best_threshold([1, 0], [0.0, 1.0], criterion="balanced_accuracy") == 0.0
    assert metrics.best_threshold([1, 0], [0.0, 1.0]) == np.nextafter(1.0, np.inf)


def _brute_force_threshold(labels, scores, criterion):
    """Every candidate cut scored in exact integer counts; the highest best one."""
    labels = np.asarray(labels, bool)
    positives, negatives = labels.sum(), (~labels).sum()
    candidates = list(np.unique(scores))
    if criterion == "accuracy":
        candidates.append(np.nextafter(scores.max(), np.inf))
    best, best_value = None, None
    for cut in candidates:
        tp = int(np.sum(scores[labels] >= cut))
        tn = int(np.sum(scores[~labels] < cut))
        value = tp + tn if criterion == "accuracy" else tp * negatives + tn * positives
        if best_value is None or value >= best_value:  # ascending: ties go to the higher cut
            best, best_value = cut, value
    return float(best)


@pytest.mark.parametrize("criterion", ["accuracy", "balanced_accuracy"])
@pytest.mark.parametrize("seed", range(6))
def test_best_threshold_matches_brute_force(seed, criterion):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 200))
    labels = rng.random(n) < rng.uniform(0.1, 0.9)  # imbalanced
    labels[:2] = [True, False]
    scores = rng.normal(size=n) + labels
    if seed % 2:
        scores = np.round(scores * 2) / 2  # many ties
    assert metrics.best_threshold(labels, scores, criterion=criterion) == \
        _brute_force_threshold(labels, scores, criterion)
