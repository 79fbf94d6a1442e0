"""Is a membership attack calibrated? Exact no-signal bounds on TPR at a fixed FPR, and the check.

On a target with no membership signal (it never saw its claimed members, or its
scores are drawn alike for members and non-members) an honest attack ranks the
candidates in a random order. Its TPR at FPR ``alpha`` is then the share of members
ranked above the (k+1)-th non-member, k = floor(alpha * non-members): a negative
hypergeometric count, whose quantiles :func:`tpr_null_interval` gives exactly (no
normal approximation, which fails at 0.1% FPR on a few thousand candidates). The
AUC is the Mann-Whitney statistic, within :func:`auc_null_halfwidth` of 0.5.

:func:`calibration_report` checks one attack's scores against both; the audit runs
it on a reference model scored as if it were the target (:func:`pseudo_target_check`),
and the test harness ``tests/test_calibration.py`` on simulated no-signal targets.
Every bound is two-sided with tail probability :data:`TAIL` on each side.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from jaxpet import metrics, report
from jaxpet.attacks import reference

# Tail probability of each side of every no-signal bound: a calibrated attack falls outside
# one bound with probability at most 2 * TAIL.
TAIL = 1e-4
# The FPR levels checked (LiRA's low-FPR regime).
LEVELS = (0.01, 0.001)


def tpr_null_interval(level: float, num_members: int, num_non_members: int,
                      tail: float = TAIL) -> tuple[float, float]:
    """(low, high): where TPR at FPR ``level`` lies on a no-signal target but with probability
    ``tail`` on each side, for ``tpr_at_fpr`` (rule "le") and ``tpr_at_fpr_randomized`` alike.

    With k = floor(level * non-members), the thresholded TPR is X_k / members, X_k the members
    ranked above the (k+1)-th non-member; the randomised one lies between X_k and X_{k+1}.
    ``low`` is the ``tail`` quantile of X_k, ``high`` the 1 - ``tail`` quantile of X_{k+1}.
    """
    if num_members < 1 or num_non_members < 1:
        raise ValueError(f"A no-signal bound needs members and non-members, got "
                         f"{num_members} and {num_non_members}.")
    if not 0 <= level <= 1:
        raise ValueError(f"FPR level must be in [0, 1], got {level}.")
    total = num_members + num_non_members
    k = min(int(np.floor(level * num_non_members + 1e-9)), num_non_members - 1)
    low = stats.nhypergeom(total, num_members, k + 1).ppf(tail)
    high = stats.nhypergeom(total, num_members, min(k + 2, num_non_members)).isf(tail)
    return float(low) / num_members, float(min(high, num_members)) / num_members


def auc_null_halfwidth(num_members: int, num_non_members: int, tail: float = TAIL) -> float:
    """Half-width around 0.5 of the AUC on a no-signal target (Mann-Whitney U, normal limit;
    ties only narrow it)."""
    var = (num_members + num_non_members + 1) / (12.0 * num_members * num_non_members)
    return float(stats.norm.isf(tail) * np.sqrt(var))


def calibration_report(labels, scores, levels: Sequence[float] = LEVELS,
                       tail: float = TAIL) -> dict:
    """One attack's scores on a no-signal target checked against the exact bounds.

    Per level: the thresholded and the randomised TPR, the interval, whether the level is
    resolvable (at least one non-member allowed), and ``calibrated`` (the randomised TPR
    inside the interval; the thresholded one is never above it). ``calibrated`` overall: every
    resolvable level and the AUC are within their bounds.
    """
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    thresholded = metrics.tpr_at_fpr(labels, scores, levels)
    randomized = metrics.tpr_at_fpr_randomized(labels, scores, levels)
    out_levels = {}
    for level in levels:
        low, high = tpr_null_interval(level, n_pos, n_neg, tail)
        value = randomized[str(level)]
        out_levels[str(level)] = {
            "tpr": thresholded[str(level)], "tpr_randomized": value, "low": low, "high": high,
            "resolvable": bool(level * n_neg >= 1), "calibrated": bool(low <= value <= high)}
    auc = metrics.roc_auc(labels, scores)
    width = auc_null_halfwidth(n_pos, n_neg, tail)
    auc_ok = bool(abs(auc - 0.5) <= width)
    checked = [v["calibrated"] for v in out_levels.values() if v["resolvable"]]
    return {"members": n_pos, "non_members": n_neg, "auc": auc, "auc_halfwidth": width,
            "auc_calibrated": auc_ok, "levels": out_levels,
            "calibrated": bool(auc_ok and all(checked))}


def pseudo_target_check(signals, keep, claimed, pseudo_target: int, references: Sequence[int],
                        config, attacks: Sequence[str], levels: Sequence[float] = LEVELS) -> dict:
    """Scores reference model ``pseudo_target`` as if it were the target and checks calibration.

    ``keep`` [K, N] is every model's membership of the candidates, ``claimed`` [N] the
    membership being tested (the real target's). Only the candidates the pseudo-target never
    trained on are scored, so it has no signal about ``claimed``; the references and their
    layout are the run's own (built around ``claimed``), so a layout that depends on the
    target's membership shows up here as a miscalibrated attack.
    """
    keep = np.asarray(keep, bool)
    claimed = np.asarray(claimed, bool)
    unseen = ~keep[pseudo_target]
    labels = claimed[unseen]
    if labels.all() or not labels.any():
        raise ValueError("The pseudo-target's unseen candidates hold only members or only "
                         "non-members of the target; no calibration check is possible.")
    out = {}
    for name in attacks:  # one at a time: an attack these references cannot feed is named
        try:
            scores = reference.attack_scores(signals, keep, pseudo_target, list(references),
                                             config, attacks=[name])[name]
        except ValueError as e:  # e.g. an online attack without IN and OUT references
            out[name] = {"skipped": str(e)}
            continue
        out[name] = calibration_report(labels, scores[unseen], levels)
    return {"pseudo_target": int(pseudo_target), "references": len(references),
            "candidates": int(unseen.sum()), "attacks": out}


def markdown(check: dict | None) -> str:
    """A summary section from :func:`pseudo_target_check`'s result: each attack's figures with
    their bands, and the verdict in words."""
    if not check:
        return ""
    head = "## Calibration on your model and data\n\n"
    if "skipped" in check:
        return f"{head}Not checked: {check['skipped']}.\n\n"
    rows, failed, skipped = [], [], []
    for name, r in check["attacks"].items():
        if "skipped" in r:
            rows.append([name, "-", "-", "-", f"not checked: {r['skipped']}"])
            skipped.append(name)
            continue
        cells = []
        for level in LEVELS:
            v = r["levels"][str(level)]
            cells.append(f"{report.pct(v['tpr_randomized'])} "
                         f"[{report.pct(v['low'])}, {report.pct(v['high'])}]"
                         + ("" if v["resolvable"] else " (not resolvable)"))
        rows.append([name, f"{r['auc']:.4f} ± {r['auc_halfwidth']:.4f}", *cells,
                     "yes" if r["calibrated"] else "**no**"])
        if not r["calibrated"]:
            failed.append(name)
    table = report.markdown_table(["attack", "AUC (no-signal band)", "TPR@1%FPR (%) [band]",
                                   "TPR@0.1%FPR (%) [band]", "calibrated"], rows)
    checked = [r for r in check["attacks"].values() if "skipped" not in r]
    limit = ""
    if checked:
        first = checked[0]
        unresolved = [f"{100 * level:g}%" for level in LEVELS
                      if not first["levels"][str(level)]["resolvable"]]
        blind = [f"{100 * level:g}%" for level in LEVELS
                 if first["levels"][str(level)]["resolvable"]
                 and first["levels"][str(level)]["low"] == 0]
        if unresolved:
            limit += (f" TPR at {' and '.join(unresolved)} FPR cannot be checked with "
                      f"{first['non_members']} non-members (it needs 1/level of them).")
        if blind:
            limit += (f" At {' and '.join(blind)} FPR the band starts at 0: with this many "
                      "candidates the check shows an attack that overstates the risk, not one "
                      "that hides it (a larger pool narrows the band).")
    verdict = ("Every checked attack is calibrated here: on a model with no signal it reports "
               "no risk." + limit if not failed else
               f"**Not calibrated: {', '.join(failed)}.** On a model that never saw these "
               "candidates they report a TPR or AUC outside the no-signal band, so their "
               "figures above can overstate or hide this model's risk; do not rely on them.")
    return (f"{head}Reference model {check['pseudo_target']} scored as if it were the target by "
            f"the other {check['references']}, on the {check['candidates']} candidates it never "
            "trained on, with the target's members as the claimed members. It has no signal "
            "about the claim and is scored as the target is, so an attack that reports risk "
            "here reports risk that is not there, and a reference layout that depended on the "
            "target's membership would show here as a miscalibrated attack. Each band holds a "
            "calibrated attack's figure with "
            f"probability {1 - 2 * TAIL:.4f} (exact no-signal quantiles, "
            "jaxpet.calibration); ties broken at random.\n\n"
            f"{table}\n{verdict}\n\n")
