"""Evaluation gates: what a candidate model must meet before it gets an alias.

The comparison with the champion is fair only on the same rows: the caller scores the champion on
the candidate's evaluation window and passes that report in.
"""

from __future__ import annotations

import math

from mlcycle.config import GatesSpec
from mlcycle.decisions import CheckResult, Verdict, at_least, at_most
from mlcycle.evaluation import EvaluationReport

Z95 = 1.959964


def fairness_gap(report: EvaluationReport, spec: GatesSpec) -> CheckResult:
    """Gap in TPR (or FPR) between the best- and worst-served groups of the protected attribute.

    With tens of positives per group, a recall moves by several points from noise alone, so the
    gate compares the gap's 95% *lower* confidence bound with the limit: it fails when the data
    show a gap larger than allowed, not when two small samples happen to differ. The raw gap and
    its interval are in the evidence. Groups below the support floor are listed as skipped."""
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
    name = f"fairness_{spec.fairness_metric}_gap_lcb95"
    if len(rates) < 2:
        detail = f"fewer than two {spec.fairness_attribute} groups with support >= {spec.fairness_min_support}"
        return CheckResult(name, None, spec.max_fairness_gap, "<=", False, detail, {"skipped": skipped})
    best = max(rates, key=lambda g: rates[g][0])
    worst = min(rates, key=lambda g: rates[g][0])
    if spec.fairness_metric == "fpr":  # for false positives, the worst-served group has the highest rate
        best, worst = worst, best
    (p1, n1), (p2, n2) = rates[best], rates[worst]
    gap = abs(p1 - p2)
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    lcb = max(0.0, gap - Z95 * se)
    return at_most(
        name,
        lcb,
        spec.max_fairness_gap,
        f"gap {gap:.3f} (95% CI {lcb:.3f}–{gap + Z95 * se:.3f}) between {best} and {worst}; "
        + ", ".join(f"{g}={v:.3f} (n={n})" for g, (v, n) in rates.items()),
        gap=gap,
        groups={g: v for g, (v, _) in rates.items()},
        support={g: n for g, (_, n) in rates.items()},
        skipped=skipped,
    )


def run_gates(candidate: EvaluationReport, spec: GatesSpec, champion: EvaluationReport | None = None) -> Verdict:
    o = candidate.overall
    checks = [
        at_least("min_roc_auc", o.roc_auc, spec.min_roc_auc),
        at_least("min_pr_auc", o.pr_auc, spec.min_pr_auc),
        fairness_gap(candidate, spec),
        at_most("max_p99_latency_ms", candidate.latency_ms.get("p99"), spec.max_p99_latency_ms),
    ]
    if champion is None:
        checks.append(CheckResult("no_regression_vs_champion", None, None, ">=", True, "no champion yet"))
    else:
        for metric in ("roc_auc", "pr_auc"):
            ours, theirs = getattr(o, metric), getattr(champion.overall, metric)
            delta = None if ours is None or theirs is None else ours - theirs
            checks.append(
                at_least(
                    f"no_regression_{metric}",
                    delta,
                    -getattr(spec, f"max_regression_{metric}"),
                    f"candidate {ours:.4f} vs champion {theirs:.4f} on the same window"
                    if delta is not None
                    else "not measurable",
                    candidate=ours,
                    champion=theirs,
                )
            )
    return Verdict("evaluation gates", tuple(checks))
