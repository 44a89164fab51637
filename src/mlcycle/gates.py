"""Evaluation gates: what a candidate model must meet before it gets an alias.

The comparison with the champion is fair only on the same rows: the caller scores the champion on
the candidate's evaluation window and passes that report in.

A gate has three outcomes (mlcycle.decisions): pass, fail, or not measurable — the data cannot tell
the two apart. What "not measurable" means per gate is ``gates.when_unmeasurable`` in the config:
``block`` refuses the model, ``warn`` lets it through with the warning in its model card and run.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any, Literal

import numpy as np

from mlcycle.config import GatesSpec
from mlcycle.decisions import (
    CheckResult,
    OnUnmeasurable,
    Verdict,
    at_least,
    at_most,
    interval_check,
    not_measurable,
)
from mlcycle.evaluation import EvaluationReport
from mlcycle.stats import Z95, abs_interval, auc_se, delong_paired, proportion_difference_ci, z_for


def fairness_gap(report: EvaluationReport, spec: GatesSpec) -> CheckResult:
    """Largest gap in TPR (or FPR) between any two groups of the protected attribute, with its interval.

    Every pair of groups is judged, not only the best and worst point estimates: a small group with
    an extreme rate would otherwise be compared while two large groups with a certain gap are not.
    Each pair's gap gets a Newcombe score interval (sound for rates near 0 or 1 on tens of positives).

    - **fail** when some pair's gap is above the limit with confidence: its lower bound exceeds
      the limit. Claiming "some pair is too far apart" out of k(k-1)/2 pairs is a multiple comparison,
      so these lower bounds are Bonferroni-adjusted (95% jointly: z = 2.39 for 3 pairs, 2.94 for
      15). Bonferroni because the pairs share groups (their estimates are correlated, which rules
      out Šidák-style independence) and k is small, so its conservatism costs little.
    - **pass** when every pair's gap is below the limit with confidence: each upper bound (95%,
      unadjusted) is within the limit. Requiring *all* pairs to pass is an intersection-union test,
      whose level is that of each single test, so no adjustment is needed there.
    - **not measurable** otherwise (an interval straddles the limit: 0.85 vs 0.50 on 30 positives
      each), and also when fewer than two groups have enough support; ``when_unmeasurable.fairness``
      decides what that means.

    The check reports the deciding pair: the one with the largest lower bound when it fails, else
    the one with the largest upper bound. Its value is that pair's gap; the interval is its
    (adjusted lower, unadjusted upper) bounds. Groups below the support floor are listed as skipped."""
    groups = report.slices.get(spec.fairness_attribute, {})
    rates: dict[str, tuple[float, int]] = {}
    skipped = []
    for group, m in groups.items():
        support = m.positives if spec.fairness_metric == "tpr" else m.n - m.positives
        value = m.recall if spec.fairness_metric == "tpr" else m.fpr
        if group == "unknown" or support < spec.fairness_min_support or value is None:
            skipped.append(group)
        else:
            rates[group] = (value, support)
    name = f"fairness_{spec.fairness_metric}_gap"
    policy = spec.on_unmeasurable("fairness")
    limit = spec.max_fairness_gap
    if len(rates) < 2:
        detail = f"fewer than two {spec.fairness_attribute} groups with support >= {spec.fairness_min_support}"
        return not_measurable(name, limit, "<=", detail, policy, skipped=skipped)
    pairs = list(combinations(sorted(rates), 2))
    z_joint = z_for(0.95, len(pairs))
    judged = []
    for a, b in pairs:
        (pa, na), (pb, nb) = rates[a], rates[b]
        diff, low_joint, high_joint = proportion_difference_ci(pa, na, pb, nb, z_joint)
        _, low, high = proportion_difference_ci(pa, na, pb, nb, Z95)
        judged.append((a, b, abs(diff), abs_interval(low_joint, high_joint)[0], abs_interval(low, high)[1]))
    deciding = max(judged, key=lambda j: j[3])
    if deciding[3] <= limit:
        deciding = max(judged, key=lambda j: j[4])
    a, b, gap, low, high = deciding
    return interval_check(
        name,
        gap,
        low,
        high,
        limit,
        "<=",
        policy,
        f"{a} vs {b}, of {len(pairs)} pairs (lower bounds Bonferroni-adjusted, z={z_joint:.2f}); "
        + ", ".join(f"{g}={v:.3f} (n={n})" for g, (v, n) in rates.items()),
        pair=[a, b],
        pairs={f"{x} vs {y}": {"gap": g, "low": lo, "high": hi} for x, y, g, lo, hi in judged},
        groups={g: v for g, (v, _) in rates.items()},
        support={g: n for g, (_, n) in rates.items()},
        skipped=skipped,
    )


def _auc_interval(auc: float | None, positives: int, negatives: int) -> str:
    if auc is None or positives < 1 or negatives < 1:
        return ""
    half = Z95 * auc_se(auc, positives, negatives)
    return f"95% CI {auc - half:.4f} … {auc + half:.4f} (Hanley–McNeil, {positives} positives)"


def _bound_check(
    name: str,
    value: float | None,
    bound: float,
    comparison: Literal[">=", "<="],
    policy: OnUnmeasurable,
    detail: str = "",
    **evidence: Any,
) -> CheckResult:
    """A point estimate against a bound; a value that could not be computed is not measurable."""
    if value is None:
        why = detail or "the metric could not be computed on the evaluation window"
        return not_measurable(name, bound, comparison, why, policy, **evidence)
    check = at_least if comparison == ">=" else at_most
    return check(name, value, bound, detail, **evidence)


def _paired_roc_auc(candidate: EvaluationReport, champion: EvaluationReport, spec: GatesSpec) -> CheckResult | None:
    """The candidate's ROC-AUC minus the champion's on the same rows, with DeLong's paired 95%
    interval judged against ``-max_regression_roc_auc``: a regression only when the whole interval
    is below it, a pass only when the whole interval is above it, "not measurable" in between (then
    the ``no_regression`` policy decides). None when the two reports do not hold the same rows."""
    y, ours, theirs = candidate.labels, candidate.scores, champion.scores
    if y is None or ours is None or theirs is None or len(ours) != len(theirs) or len(y) != len(ours):
        return None
    if champion.labels is None or not np.array_equal(champion.labels, y):
        return None
    try:
        auc_x, auc_c, se = delong_paired(y, ours, theirs)
    except ValueError:
        return None
    delta = auc_x - auc_c
    return interval_check(
        "no_regression_roc_auc", delta, delta - Z95 * se, delta + Z95 * se, -spec.max_regression_roc_auc, ">=",
        spec.on_unmeasurable("no_regression"),
        f"candidate {auc_x:.4f} vs champion {auc_c:.4f} on the same {len(y):,} rows (DeLong, paired)",
        candidate=auc_x, champion=auc_c, se=se,
    )  # fmt: skip


def run_gates(candidate: EvaluationReport, spec: GatesSpec, champion: EvaluationReport | None = None) -> Verdict:
    """Every gate on the candidate's evaluation window (and the champion's, scored on the same rows).

    ROC-AUC and PR-AUC floors are judged on point estimates with the AUC's interval in the detail:
    with hundreds of positives it is narrow next to the floor. The ROC-AUC comparison with the
    champion is judged on DeLong's paired interval of the difference (same rows, so the two models'
    errors move together: the difference is firmer than two separate intervals, and no firmer than
    its own interval); PR-AUC's comparison stays a point estimate, said so in its detail."""
    o = candidate.overall
    negatives = o.n - o.positives
    checks = [
        _bound_check("min_roc_auc", o.roc_auc, spec.min_roc_auc, ">=", spec.on_unmeasurable("min_roc_auc"),
                     _auc_interval(o.roc_auc, o.positives, negatives)),
        _bound_check("min_pr_auc", o.pr_auc, spec.min_pr_auc, ">=", spec.on_unmeasurable("min_pr_auc")),
        fairness_gap(candidate, spec),
        _bound_check("max_p99_latency_ms", candidate.latency_ms.get("p99"), spec.max_p99_latency_ms, "<=",
                     spec.on_unmeasurable("max_p99_latency_ms"), "" if candidate.latency_ms.get("p99") is not None
                     else "no latency was measured"),
    ]  # fmt: skip
    if champion is None:
        checks.append(CheckResult("no_regression_vs_champion", None, None, ">=", True, "no champion yet"))
        return Verdict("evaluation gates", tuple(checks))
    paired = _paired_roc_auc(candidate, champion, spec)
    for metric in ("roc_auc", "pr_auc"):
        if metric == "roc_auc" and paired is not None:
            checks.append(paired)
            continue
        ours, theirs = getattr(o, metric), getattr(champion.overall, metric)
        delta = None if ours is None or theirs is None else ours - theirs
        detail = "" if delta is None else f"candidate {ours:.4f} vs champion {theirs:.4f} on the same window"
        if delta is not None and metric == "pr_auc":
            detail += " (point estimate: PR-AUC has no closed-form paired interval; ROC-AUC's is judged)"
        checks.append(
            _bound_check(
                f"no_regression_{metric}",
                delta,
                -getattr(spec, f"max_regression_{metric}"),
                ">=",
                spec.on_unmeasurable("no_regression"),
                detail or f"{metric} missing for the candidate ({ours}) or the champion ({theirs})",
                candidate=ours,
                champion=theirs,
            )
        )
    return Verdict("evaluation gates", tuple(checks))
