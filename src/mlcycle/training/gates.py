"""Evaluation gates: what a candidate model must meet before it gets an alias.

The comparison with the champion is fair only on the same rows: the caller scores the champion on
the candidate's evaluation window and passes that report in.

A gate has three outcomes (mlcycle.decisions): pass, fail, or not measurable — the data cannot tell
the two apart. What "not measurable" means per gate is ``gates.when_unmeasurable`` in the config:
``block`` refuses the model, ``warn`` lets it through with the warning in its model card and run.

Gates depend on the task (the report's ``task``). Classification: ROC-AUC and PR-AUC floors, the
gap in TPR (or FPR) between groups of the protected attribute, no regression in ROC-AUC / PR-AUC
against the champion. Regression: a bound on RMSE, the ratio of mean absolute errors between
groups of the protected attribute, no regression in RMSE against the champion. Both: p99 latency.
``REGISTRY`` lists them, in report order, each with its judge per task: ``run_gates`` runs the
entries of the candidate's task, so a new gate is one entry there, its bound in ``GatesSpec`` and its
policy key in ``GatesSpec.GATES``.

Two outcomes are passes that judged nothing, and say so in their detail (``evidence["applicable"]``
is False): a gate whose bound is not configured (``None``), and the fairness gate of a project that
declares no protected attribute. They are not "not measurable" — no data could decide them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Literal

import numpy as np

from mlcycle.decisions import (
    CheckResult,
    OnUnmeasurable,
    Verdict,
    at_least,
    at_most,
    interval_check,
    not_measurable,
)
from mlcycle.project.config import GatesSpec
from mlcycle.stats import (
    Z95,
    abs_interval,
    auc_se,
    delong_paired,
    log_ratio_interval,
    mse_interval,
    paired_mean_difference_ci,
    proportion_difference_ci,
    z_for,
)
from mlcycle.training.evaluation import EvaluationReport, RegressionMetrics


def not_applicable(name: str, comparison: Literal[">=", "<=", "within"], why: str, **evidence: Any) -> CheckResult:
    """A gate that judged nothing because nothing applies (no bound set, no protected attribute):
    a pass that says so in its detail, never a silent one."""
    return CheckResult(name, None, None, comparison, True, f"not applicable: {why}", {"applicable": False, **evidence})


def fairness_gap(report: EvaluationReport, spec: GatesSpec, protected: str | None) -> CheckResult:
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
    name = f"fairness_{spec.fairness_metric}_gap"
    if protected is None:
        return not_applicable(name, "<=", "no protected attribute declared (table.protected): no groups compared")
    if protected not in report.slices:
        why = f"the evaluation has no slice of the protected attribute {protected!r} (evaluate(..., protected=))"
        return not_measurable(name, spec.max_fairness_gap, "<=", why, spec.on_unmeasurable("fairness"))
    groups = report.slices[protected]
    rates: dict[str, tuple[float, int]] = {}
    skipped = []
    for group, m in groups.items():
        support = m.positives if spec.fairness_metric == "tpr" else m.n - m.positives
        value = m.recall if spec.fairness_metric == "tpr" else m.fpr
        if group == "unknown" or support < spec.fairness_min_support or value is None:
            skipped.append(group)
        else:
            rates[group] = (value, support)
    policy = spec.on_unmeasurable("fairness")
    limit = spec.max_fairness_gap
    if len(rates) < 2:
        detail = f"fewer than two {protected} groups with support >= {spec.fairness_min_support}"
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
        **_pairs_note(len(pairs), z_joint),
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


def _auc_evidence(auc: float | None, positives: int, negatives: int) -> dict[str, Any]:
    """The AUC's 95% Hanley–McNeil interval as evidence, so a refusal can state it beside the value
    (the floor itself is judged on the point estimate, which the note says)."""
    if auc is None or positives < 1 or negatives < 1:
        return {}
    half = Z95 * auc_se(auc, positives, negatives)
    note = "Hanley–McNeil, the floor is judged on the point estimate"
    return {"ci_low": auc - half, "ci_high": auc + half, "confidence": 0.95, "interval_note": note}


def _pairs_note(pairs: int, z_joint: float) -> dict[str, str]:
    """How a pairwise gate's reported interval was built: its lower bound is Bonferroni-adjusted
    over the pairs (so a fail holds for them jointly), its upper bound is not."""
    if pairs < 2:
        return {}
    return {"interval_note": f"lower bound Bonferroni-adjusted for {pairs} pairs (z={z_joint:.2f})"}


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


def _latency_check(candidate: EvaluationReport, spec: GatesSpec) -> CheckResult:
    p99 = candidate.latency_ms.get("p99")
    detail = "" if p99 is not None else "no latency was measured"
    policy = spec.on_unmeasurable("max_p99_latency_ms")
    return _bound_check("max_p99_latency_ms", p99, spec.max_p99_latency_ms, "<=", policy, detail)


def _classification_floors(g: GateInputs) -> tuple[CheckResult, ...]:
    """ROC-AUC floor, judged on the point estimate with the AUC's interval in the detail: with
    hundreds of positives it is narrow next to the floor."""
    o, spec = g.candidate.overall, g.spec
    negatives = o.n - o.positives
    auc_ci = _auc_evidence(o.roc_auc, o.positives, negatives)
    return (_bound_check("min_roc_auc", o.roc_auc, spec.min_roc_auc, ">=", spec.on_unmeasurable("min_roc_auc"),
                         _auc_interval(o.roc_auc, o.positives, negatives), **auc_ci),)  # fmt: skip


def _pr_auc_floor(g: GateInputs) -> tuple[CheckResult, ...]:
    o, spec = g.candidate.overall, g.spec
    return (_bound_check("min_pr_auc", o.pr_auc, spec.min_pr_auc, ">=", spec.on_unmeasurable("min_pr_auc")),)


def _classification_no_regression(g: GateInputs) -> tuple[CheckResult, ...]:
    """The ROC-AUC comparison with the champion is judged on DeLong's paired interval of the
    difference (same rows, so the two models' errors move together: the difference is firmer than
    two separate intervals, and no firmer than its own interval); PR-AUC's comparison stays a point
    estimate, said so in its detail."""
    candidate, champion, spec = g.candidate, g.champion, g.spec
    assert champion is not None
    o = candidate.overall
    checks: list[CheckResult] = []
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
    return tuple(checks)


# --- regression ---------------------------------------------------------------------------------------


def max_rmse(report: EvaluationReport, spec: GatesSpec) -> CheckResult:
    """The candidate's RMSE on the evaluation window against ``max_rmse``, judged on its 95% interval
    (``stats.mse_interval``: delta method on log MSE, Student t). Chosen over a bootstrap because it
    is deterministic (``mlcycle reproduce`` re-runs the gates' inputs and must get the same
    numbers), costs one pass over the errors, and covers close to 95% from a hundred rows on
    (simulation in tests/test_regression.py); heavy-tailed errors make any such interval somewhat
    narrow, which is why it is judged on the whole interval, not the point estimate."""
    name = "max_rmse"
    if spec.max_rmse is None:
        return not_applicable(name, "<=", "no bound configured (gates.max_rmse): the RMSE is reported, not judged")
    o = report.overall
    policy = spec.on_unmeasurable("max_rmse")
    if not isinstance(o, RegressionMetrics) or o.rmse is None or o.sq_error_sd is None or o.n < 2:
        n = getattr(o, "n", 0)
        return not_measurable(name, spec.max_rmse, "<=", f"an RMSE interval needs at least 2 rows, got {n}", policy)
    low, high = mse_interval(o.rmse**2, o.sq_error_sd, o.n)
    return interval_check(
        name, o.rmse, math.sqrt(low), math.sqrt(high), spec.max_rmse, "<=", policy,
        f"RMSE on {o.n:,} rows (interval: delta method on log MSE); MAE {o.mae:.4g}",
        n=o.n, mae=o.mae,
    )  # fmt: skip


def no_regression_rmse(candidate: EvaluationReport, champion: EvaluationReport, spec: GatesSpec) -> CheckResult:
    """Candidate against champion on the same rows: the paired difference of squared errors.

    Each row gives ``d = (candidate − label)² − (champion − label)²``; the mean of ``d`` is the
    difference of the two MSEs, with the paired Student t interval (the rows' own difficulty
    cancels in ``d``). The tolerance ``max_regression_rmse`` is relative to the champion's RMSE:
    "RMSE at most that share above the champion's", i.e. ``MSE_candidate − MSE_champion ≤
    ((1 + r)² − 1) · MSE_champion``. Relative because an RMSE's scale is the label's: one number
    fits every project. The bound takes the champion's MSE on these rows as known: its own sampling
    error moves the bound by ``(1 + r)² − 1`` times that error (4% of it at r = 0.02).

    Pass when the whole interval of the difference is within the bound, fail when it is wholly
    beyond, not measurable (policy ``no_regression``) when it straddles it or the two reports do
    not hold the same rows."""
    name = "no_regression_rmse"
    r = spec.max_regression_rmse
    if r is None:
        return not_applicable(name, "<=", "no tolerance configured (gates.max_regression_rmse)")
    policy = spec.on_unmeasurable("no_regression")
    y, ours, theirs = candidate.labels, candidate.scores, champion.scores
    same = (
        y is not None and ours is not None and theirs is not None and champion.labels is not None
        and len(y) == len(ours) == len(theirs) == len(champion.labels)
        and np.array_equal(np.asarray(champion.labels, float), np.asarray(y, float))
    )  # fmt: skip
    if not same:
        return not_measurable(name, None, "<=", "the champion was not scored on the candidate's rows", policy)
    y = np.asarray(y, float)
    sq_x, sq_c = (np.asarray(ours, float) - y) ** 2, (np.asarray(theirs, float) - y) ** 2
    mse_x, mse_c = float(sq_x.mean()), float(sq_c.mean())
    bound = ((1 + r) ** 2 - 1) * mse_c
    diff, low, high, se = paired_mean_difference_ci(sq_x, sq_c)
    rmse_x, rmse_c = math.sqrt(mse_x), math.sqrt(mse_c)
    change = rmse_x / rmse_c - 1 if rmse_c > 0 else math.inf
    return interval_check(
        name, diff, low, high, bound, "<=", policy,
        f"MSE difference (candidate − champion), paired t on {len(y):,} rows; candidate RMSE {rmse_x:.4g} vs "
        f"champion {rmse_c:.4g} ({change:+.2%}); bound: RMSE at most {r:.1%} above the champion's, "
        f"i.e. a difference <= {bound:.4g}",
        candidate=rmse_x, champion=rmse_c, rmse_change=change, se=se, tolerance=r,
    )  # fmt: skip


def fairness_mae_ratio(report: EvaluationReport, spec: GatesSpec, protected: str | None) -> CheckResult:
    """Largest ratio of mean absolute errors between any two groups of the protected attribute (the
    larger over the smaller), with its interval: how much more error one group bears.

    A ratio, not a gap, because errors have the label's units: ``max_fairness_mae_ratio`` (1.25: no
    group's MAE more than 25% above another's) fits every project. Each pair's interval is the
    delta method on the log ratio of two independent means (``stats.log_ratio_interval``), made
    symmetric in the pair by taking ``|log ratio|``. As in the classification gate, every pair is
    judged: **fail** when some pair's lower bound (Bonferroni-adjusted over the pairs) is above the
    limit, **pass** when every pair's upper bound (95%, unadjusted: an intersection-union test) is
    within it, **not measurable** otherwise or with fewer than two groups of at least
    ``fairness_min_support`` rows (``unknown`` is never a group)."""
    name = "fairness_mae_ratio"
    limit = spec.max_fairness_mae_ratio
    if protected is None:
        return not_applicable(name, "<=", "no protected attribute declared (table.protected): no groups compared")
    if limit is None:
        return not_applicable(name, "<=", "no limit configured (gates.max_fairness_mae_ratio)")
    policy = spec.on_unmeasurable("fairness")
    if protected not in report.slices:
        why = f"the evaluation has no slice of the protected attribute {protected!r} (evaluate(..., protected=))"
        return not_measurable(name, limit, "<=", why, policy)
    errors: dict[str, tuple[float, float, int]] = {}
    skipped = []
    for group, m in report.slices[protected].items():
        usable = isinstance(m, RegressionMetrics) and m.mae is not None and m.abs_error_sd is not None
        if group == "unknown" or m.n < spec.fairness_min_support or not usable:
            skipped.append(group)
        else:
            errors[group] = (m.mae, m.abs_error_sd, m.n)  # type: ignore[union-attr]
    if len(errors) < 2:
        detail = f"fewer than two {protected} groups with at least {spec.fairness_min_support} rows"
        return not_measurable(name, limit, "<=", detail, policy, skipped=skipped)
    pairs = list(combinations(sorted(errors), 2))
    z_joint = z_for(0.95, len(pairs))
    judged = []
    for a, b in pairs:
        (ma, sa, na), (mb, sb, nb) = errors[a], errors[b]
        log_ratio, low_joint, high_joint = log_ratio_interval(ma, sa, na, mb, sb, nb, z_joint)
        _, low, high = log_ratio_interval(ma, sa, na, mb, sb, nb, Z95)
        judged.append((a, b, math.exp(abs(log_ratio)), math.exp(abs_interval(low_joint, high_joint)[0]),
                       math.exp(abs_interval(low, high)[1])))  # fmt: skip
    deciding = max(judged, key=lambda j: j[3])
    if deciding[3] <= limit:
        deciding = max(judged, key=lambda j: j[4])
    a, b, ratio, low, high = deciding
    return interval_check(
        name, ratio, low, high, limit, "<=", policy,
        f"{a} vs {b}, of {len(pairs)} pairs (lower bounds Bonferroni-adjusted, z={z_joint:.2f}); MAE "
        + ", ".join(f"{g}={m:.4g} (n={n})" for g, (m, _, n) in errors.items()),
        pair=[a, b],
        **_pairs_note(len(pairs), z_joint),
        pairs={f"{x} vs {y}": {"ratio": q, "low": lo, "high": hi} for x, y, q, lo, hi in judged},
        groups={g: m for g, (m, _, _) in errors.items()},
        support={g: n for g, (_, _, n) in errors.items()},
        skipped=skipped,
    )  # fmt: skip


# --- the registry -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateInputs:
    """What every gate reads: the candidate's report, the champion's on the same rows (None before
    the first champion), the bounds, and the protected attribute (``table.protected``)."""

    candidate: EvaluationReport
    spec: GatesSpec
    champion: EvaluationReport | None
    protected: str | None


@dataclass(frozen=True)
class Gate:
    """One gate: its name in ``gates.when_unmeasurable`` (``GatesSpec.GATES``), and per task the
    function that judges it. A gate not listed for a task does not run for that task."""

    key: str
    judges: dict[str, Callable[[GateInputs], tuple[CheckResult, ...]]]
    needs_champion: bool = False


def _no_champion(g: GateInputs) -> tuple[CheckResult, ...]:
    comparison = "<=" if g.candidate.task == "regression" else ">="
    return (CheckResult("no_regression_vs_champion", None, None, comparison, True, "no champion yet"),)


# In the order the checks are reported. Adding a gate: its bound in ``GatesSpec``, its name in
# ``GatesSpec.GATES`` (the policy key), and one entry here; a test holds the two lists equal.
REGISTRY: tuple[Gate, ...] = (
    Gate("min_roc_auc", {"classification": _classification_floors}),
    Gate("min_pr_auc", {"classification": _pr_auc_floor}),
    Gate("max_rmse", {"regression": lambda g: (max_rmse(g.candidate, g.spec),)}),
    Gate("fairness", {"classification": lambda g: (fairness_gap(g.candidate, g.spec, g.protected),),
                      "regression": lambda g: (fairness_mae_ratio(g.candidate, g.spec, g.protected),)}),
    Gate("max_p99_latency_ms", {"classification": lambda g: (_latency_check(g.candidate, g.spec),),
                                "regression": lambda g: (_latency_check(g.candidate, g.spec),)}),
    Gate("no_regression", {"classification": _classification_no_regression,
                           "regression": lambda g: (no_regression_rmse(g.candidate, g.champion, g.spec),)},  # type: ignore[arg-type]
         needs_champion=True),
)  # fmt: skip


def run_gates(
    candidate: EvaluationReport,
    spec: GatesSpec,
    champion: EvaluationReport | None = None,
    *,
    protected: str | None = None,
) -> Verdict:
    """Every gate of the candidate's task (``candidate.task``) on its evaluation window, and the
    champion's report scored on the same rows. ``protected`` names the protected attribute
    (``table.protected``), whose slice of the report the fairness gate compares; None: the fairness
    gate is not applicable and says so. A gate that compares with the champion passes, saying so,
    before there is one."""
    inputs = GateInputs(candidate, spec, champion, protected)
    checks: list[CheckResult] = []
    for gate in REGISTRY:
        judge = gate.judges.get(candidate.task)
        if judge is None:
            continue
        checks.extend(_no_champion(inputs) if gate.needs_champion and champion is None else judge(inputs))
    return Verdict("evaluation gates", tuple(checks))
