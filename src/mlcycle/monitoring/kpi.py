"""Business KPIs: what the predictions cost or earn, from an outcome table joined by event id.

Pure: frames in, verdicts out (``mlcycle.monitoring.job`` reads the tables). Each prediction gets
its value from its own outcome — a ``cost`` KPI adds the configured weights of what happened to it
(a missed positive, a false alarm, a review of every flag), a ``rate`` KPI counts one event, a
``mean`` KPI averages an outcome column — and the window's KPI is their mean (per ``per``
predictions) or sum, with an interval (skewness-corrected: costs are mostly zero with a long tail).
Only matured outcomes count, by the rule labels follow (``table.label_delay``): the judged window
ends ``label_delay`` before ``as_of``, and a prediction counts once its own outcome has arrived.
The verdict (kind ``kpi``) is judged on the interval: a breach only when the whole interval is
beyond the bound, "not measurable yet" when it straddles it or fewer than ``kpis.min_outcomes``
outcomes have matured — never a silent pass.

The same per-prediction values compare two arms of an A/B test with a group-sequential test
(``sequential_ab``): looks at accumulating data, an O'Brien–Fleming-type alpha-spending function
(``mlcycle.stats.group_sequential_bounds``), a stop as soon as a look crosses its bound.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import pandas as pd

from mlcycle.data.labels import encode_labels
from mlcycle.decisions import CheckResult, Verdict, interval_check, not_measurable
from mlcycle.project.config import KpiMetricSpec, KpisSpec, KpiWeight
from mlcycle.stats import group_sequential_bounds, sequential_z, skewed_mean_interval, wilson_interval, z_for

KPI_EVENT = "mlcycle.kpi.breached"
KIND = "kpi"
# The outcome frame's own names (``outcome_frame``): whatever the outcome table calls them.
EVENT_ID = "event_id"
POSITIVE = "_outcome_positive"
AVAILABLE_AT = "_outcome_available_at"
FLAG = "decision"  # the prediction log's decision: the prediction flagged the event


class KpiJoinError(ValueError):
    """The outcome table cannot be joined to the predictions as configured; the message names the fix."""


def outcome_frame(
    table: pd.DataFrame,
    *,
    event_id: str,
    outcome: str,
    available_at: str | None,
    timestamp: str | None,
    maturity_days: float,
    positive_label: Any = 1,
    columns: list[str] | tuple[str, ...] = (),
    source: str = "the outcome table",
    is_label: bool = False,
) -> pd.DataFrame:
    """The outcome table in the names this module reads: ``event_id``, whether the outcome is positive
    (0/1: the project's label as training encodes it when ``is_label``, else a 0/1 or boolean column
    as it is and any other compared with ``positive_label``), when it became known (its
    ``available_at`` column, or ``timestamp`` plus the maturity delay) and the weight ``columns`` the
    KPIs read. One row per event, or a ``KpiJoinError`` naming the fix."""
    if event_id not in table.columns:
        raise KpiJoinError(
            f"{source} has no column {event_id!r} to join predictions on: set kpis.outcomes.event_id to the "
            f"column holding the event id that requests carry (table.event_id); it has "
            f"{', '.join(map(str, table.columns[:20]))}"
        )
    wanted = {"kpis.outcomes.outcome": outcome, **{f"a KPI's weight or column ({c})": c for c in columns}}
    wanted["kpis.outcomes.available_at" if available_at else "kpis.outcomes.timestamp"] = available_at or timestamp
    absent = [f"{c!r} ({what})" for what, c in wanted.items() if c is None or c not in table.columns]
    if absent:
        raise KpiJoinError(f"{source} has no column {', '.join(absent)}: fix the name under kpis: in the config")
    ids = table[event_id]
    duplicated = ids[ids.duplicated(keep=False) & ids.notna()]
    if len(duplicated):
        examples, count = ", ".join(map(str, pd.unique(duplicated)[:5])), duplicated.nunique()
        ids_appear = "event id appears" if count == 1 else "event ids appear"
        raise KpiJoinError(
            f"{source}: {count:,} {ids_appear} more than once in {event_id!r} (e.g. {examples}); "
            "an outcome joins its prediction only if it is one row per event: deduplicate the table (keep each "
            "event's final outcome) or set kpis.outcomes.event_id to a column that is unique"
        )
    known = ids.notna()
    values = table.loc[known, outcome]
    if is_label:  # the table's own label: read exactly as training reads it (positive_label is 1)
        positive = encode_labels(values, "classification", positive_label).astype(float)
    elif pd.api.types.is_bool_dtype(values.dtype) or set(pd.unique(values.dropna())) <= {0, 1}:
        positive = values.astype(float)  # another outcome column: a 0/1 or boolean one is used as it is
    else:
        positive = (values == positive_label).astype(float).where(values.notna())
    if available_at:
        arrived = pd.to_datetime(table.loc[known, available_at], utc=True)
    else:
        arrived = pd.to_datetime(table.loc[known, timestamp], utc=True) + pd.Timedelta(days=maturity_days)
    out = pd.DataFrame({EVENT_ID: ids[known].to_numpy(), POSITIVE: positive.to_numpy(), AVAILABLE_AT: arrived})
    for c in columns:
        out[c] = pd.to_numeric(table.loc[known, c], errors="coerce").to_numpy()
    return out.reset_index(drop=True)


def weight_columns(spec: KpisSpec) -> list[str]:
    """The outcome-table columns the KPIs read (weights named by column, a mean KPI's column)."""
    cols: list[str] = []
    for m in spec.metrics.values():
        cols += m.weights.columns() if m.kind == "cost" else ([m.column] if m.kind == "mean" and m.column else [])
    return list(dict.fromkeys(cols))


def _same_ids(rows: pd.Series, outcomes: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Event ids of both sides in one type: integers when the outcomes' are, else text."""
    if pd.api.types.is_integer_dtype(outcomes.dtype):
        return pd.to_numeric(rows, errors="coerce").astype("Int64"), outcomes.astype("Int64")
    return rows.astype(str), outcomes.astype(str)


def join_outcomes(predictions: pd.DataFrame, outcomes: pd.DataFrame, as_of: datetime | pd.Timestamp,
                  event_id: str = EVENT_ID) -> tuple[pd.DataFrame, int]:  # fmt: skip
    """The predictions whose own outcome had arrived by ``as_of``, with it; and how many had not (a
    matured prediction without its outcome is left out, not counted as a zero)."""
    if event_id not in predictions.columns:
        raise KpiJoinError(f"the predictions have no event id column {event_id!r}: set table.event_id and have "
                           "requests carry it")  # fmt: skip
    rows = predictions[predictions[event_id].notna()]
    left, right = _same_ids(rows[event_id], outcomes[EVENT_ID])
    rows = rows.drop(columns=[c for c in outcomes.columns if c in rows.columns and c != event_id])
    rows = rows.assign(_kpi_id=left.to_numpy())
    joined = rows.merge(outcomes.assign(_kpi_id=right.to_numpy()).drop(columns=[EVENT_ID]), on="_kpi_id", how="left")
    arrived = joined[AVAILABLE_AT].notna() & (joined[AVAILABLE_AT] <= _utc(as_of)) & joined[POSITIVE].notna()
    missing = len(predictions) - len(rows) + int((~arrived).sum())
    return joined[arrived].drop(columns=["_kpi_id"]).reset_index(drop=True), missing


def _weight(rows: pd.DataFrame, w: KpiWeight) -> np.ndarray:
    if isinstance(w, str):
        return rows[w].to_numpy(float)
    return np.full(len(rows), float(w))


def per_prediction(rows: pd.DataFrame, metric: KpiMetricSpec) -> np.ndarray:
    """Each joined prediction's value under ``metric``: for a cost KPI
    ``review·flag + miss·(positive ∧ ¬flag) + false_alarm·(¬positive ∧ flag) + hit·(positive ∧ flag)``."""
    flag = rows[FLAG].fillna(False).astype(bool).to_numpy()
    positive = rows[POSITIVE].to_numpy(float) > 0
    events = {"flag": flag, "miss": positive & ~flag, "false_alarm": ~positive & flag, "hit": positive & flag,
              "positive": positive}  # fmt: skip
    if metric.kind == "rate":
        return events[metric.event or "flag"].astype(float)
    if metric.kind == "mean":
        return rows[metric.column].to_numpy(float)
    w = metric.weights
    total = np.zeros(len(rows))
    for mask, weight in ((flag, w.review), (events["miss"], w.miss), (events["false_alarm"], w.false_alarm),
                         (events["hit"], w.hit)):  # fmt: skip
        if weight != 0:
            total += np.where(mask, np.nan_to_num(_weight(rows, weight)), 0.0)
    return total


def mean_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of per-prediction values with a skewness-corrected interval (``stats.skewed_mean_interval``:
    costs are mostly zero with a long right tail): ``(mean, low, high)``."""
    return skewed_mean_interval(values, confidence)


def possible_values(metric: KpiMetricSpec) -> list[float] | None:
    """Every value one prediction can take under a cost KPI with fixed weights (nothing happened, a
    miss, a false alarm, a hit, each with its review); None when a weight is a column (unbounded)."""
    if metric.kind != "cost" or metric.weights.columns():
        return None
    w = metric.weights
    return [0.0, float(w.miss), float(w.review) + float(w.false_alarm), float(w.review) + float(w.hit)]


def kpi_interval(
    values: np.ndarray, metric: KpiMetricSpec, confidence: float, scale: float
) -> tuple[float, float, float]:
    """The KPI and its interval, scaled (``per`` predictions, or the window's total). A rate's interval
    is Wilson's (it stays within [0, 1] and does not collapse at 0 events); the others are t intervals.

    A sample whose values are all equal (a quiet window: no miss, no alarm) has no spread, and a t
    interval would be zero-width — certainty from silence. For a cost with fixed weights the values
    it could have taken are known, so the interval admits an unseen share of other values up to the
    Clopper–Pearson bound for 0 of n (``1 − ((1 − c)/2)^(1/n)``), each as far as the weights reach;
    otherwise (a weight per row, a mean of a column) there is no interval: NaN, "not measurable"."""
    n = len(values)
    if metric.kind == "rate":
        p = float(np.mean(values)) if n else float("nan")
        low, high = wilson_interval(p, n, z_for(confidence))
        return p * scale, low * scale, high * scale
    finite = np.asarray(values, float)
    finite = finite[np.isfinite(finite)]
    if len(finite) >= 3 and float(finite.min()) == float(finite.max()):
        mean = float(finite[0])
        reach = possible_values(metric)
        if reach is None:
            return mean * scale, float("nan"), float("nan")
        unseen = 1 - ((1 - confidence) / 2) ** (1 / len(finite))
        low, high = mean - unseen * (mean - min(reach)), mean + unseen * (max(reach) - mean)
        return mean * scale, min(low * scale, high * scale), max(low * scale, high * scale)
    mean, low, high = mean_interval(values, confidence)
    return mean * scale, low * scale, high * scale


@dataclass
class KpiReport:
    """The KPIs of one matured window: what ``summary.json`` keeps under ``kpis``."""

    window_start: str
    window_end: str
    predictions: int  # in the window
    outcomes: int  # of them, with a matured outcome (the judged rows)
    unlabelled: int  # in the window, without their outcome yet: left out
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)

    @property
    def breached(self) -> list[str]:
        return [name for name, v in self.verdicts.items() if v.state == "fail"]

    def as_dict(self) -> dict[str, Any]:
        metrics = []
        for name, v in self.verdicts.items():
            c = v.checks[0]
            metrics.append({
                "name": name, "value": c.value, "interval": list(c.interval) if c.interval else None,
                "bound": c.bound, "comparison": c.comparison, "state": v.state, "detail": c.detail,
                "unit": self.units.get(name, ""), "description": self.descriptions.get(name, ""),
            })  # fmt: skip
        out = {k: v for k, v in asdict(self).items() if k not in ("verdicts", "descriptions", "units")}
        return {**out, "metrics": metrics, "breached": self.breached,
                "verdicts": [v.to_dict() for v in self.verdicts.values()]}  # fmt: skip


def _unit(metric: KpiMetricSpec) -> str:
    if metric.aggregation == "sum":
        return "window total"
    return "per prediction" if metric.per == 1 else f"per {metric.per:,.0f} predictions"


def kpi_check(name: str, values: np.ndarray, metric: KpiMetricSpec, spec: KpisSpec, scale: float,
              context: str = "") -> CheckResult:  # fmt: skip
    """One KPI judged on its interval against its bound; not measurable (policy ``wait``: nothing is
    decided) with fewer than ``spec.min_outcomes`` matured outcomes or an interval straddling the bound."""
    n = len(values)
    comparison = metric.comparison
    evidence = {"outcomes": n, "unit": _unit(metric), "kind": metric.kind}
    if n < spec.min_outcomes:
        value = kpi_interval(values, metric, spec.confidence, scale)[0] if n else None
        why = (f"{n:,} matured outcomes{context}, fewer than kpis.min_outcomes ({spec.min_outcomes:,}): wait for "
               "more outcomes to mature, or widen kpis.window_days")  # fmt: skip
        return not_measurable(name, metric.bound, comparison, why, "wait", value=value, **evidence)
    value, low, high = kpi_interval(values, metric, spec.confidence, scale)
    if not (math.isfinite(low) and math.isfinite(high)):
        why = (f"all {n:,} matured outcomes{context} have the same value and the KPI's values are not bounded (a "
               "weight per row or a mean of a column): no interval yet; wait for outcomes that differ"
               if n >= 3 else f"{n:,} matured outcomes{context}: an interval needs 3")  # fmt: skip
        return not_measurable(name, metric.bound, comparison, why, "wait", value=value, **evidence)
    return interval_check(name, value, low, high, metric.bound, comparison, "wait",
                          f"{_unit(metric)}, {n:,} matured outcomes{context}", confidence=spec.confidence,
                          **evidence)  # fmt: skip


def evaluate(
    predictions: pd.DataFrame,
    outcomes: pd.DataFrame,
    spec: KpisSpec,
    as_of: datetime | pd.Timestamp,
    maturity_days: float,
    *,
    sampled: float = 1.0,
    event_id: str = EVENT_ID,
) -> KpiReport:
    """Every configured KPI on the newest matured window: predictions (``predicted_at``, the event id
    column, ``decision``) made in ``[as_of − maturity − window_days, as_of − maturity)``, joined to their
    outcomes (an ``outcome_frame``) that had arrived by ``as_of``. ``sampled``: the log's capture rate
    (a window total is scaled back up by it)."""
    end = _utc(as_of) - pd.Timedelta(days=maturity_days)
    start = end - pd.Timedelta(days=spec.window_days)
    times = predictions["predicted_at"] if len(predictions) else pd.Series(dtype="datetime64[ns, UTC]")
    window = predictions[(times >= start) & (times < end)] if len(predictions) else predictions
    rows, unlabelled = join_outcomes(window, outcomes, as_of, event_id) if len(window) else (window, 0)
    context = f" in {start:%Y-%m-%d %H:%M} → {end:%Y-%m-%d %H:%M}"
    # A window total counts every prediction of the window: those whose outcome has not arrived (or
    # that carry no event id) are taken at the judged predictions' mean, and the detail says so.
    extrapolated = (f", the total over all {len(window):,} predictions of the window at the judged mean"
                    if unlabelled and len(rows) else "")  # fmt: skip
    report = KpiReport(start.isoformat(timespec="seconds"), end.isoformat(timespec="seconds"), len(window),
                       len(rows), unlabelled)  # fmt: skip
    for name, metric in spec.metrics.items():
        values = per_prediction(rows, metric) if len(rows) else np.array([])
        total = metric.aggregation != "mean"
        scale = len(window) / max(sampled, 1e-12) if total else metric.per
        check = kpi_check(name, values, metric, spec, scale, context + (extrapolated if total else ""))
        report.verdicts[name] = Verdict(KIND, (check,))
        report.descriptions[name] = metric.description
        report.units[name] = _unit(metric)
    return report


def markdown(kpis: dict[str, Any]) -> list[str]:
    """The summary's KPI section from ``KpiReport.as_dict()``: one row per KPI."""
    if not kpis or not kpis.get("metrics"):
        return []
    lines = [f"Matured window {kpis['window_start']} → {kpis['window_end']}: {kpis['predictions']:,} predictions, "
             f"{kpis['outcomes']:,} with their outcome" + (f" ({kpis['unlabelled']:,} still without it, left out)"
                                                          if kpis.get("unlabelled") else "") + ".",
             "", "| KPI | value | interval | bound | verdict |", "|---|---|---|---|---|"]  # fmt: skip
    marks = {"pass": "pass", "fail": "**BREACHED**", "not_measurable": "**not measurable yet**"}
    for m in kpis["metrics"]:
        value = "n/a" if m["value"] is None else f"{_num(m['value'])} {m['unit']}"
        ci = m.get("interval")
        interval = "—" if not ci or None in ci or not all(map(math.isfinite, ci)) else f"{_num(ci[0])} … {_num(ci[1])}"
        detail = str(m["detail"]).removeprefix("not measurable yet: ")
        verdict = marks.get(m["state"], m["state"]) + ("" if m["state"] == "pass" else f": {detail}")
        lines.append(f"| {m['name']} | {value} | {interval} | {m['comparison']} {_num(m['bound'])} | {verdict} |")
    return lines


def _num(x: float) -> str:
    """A KPI figure as people read money and counts: 41,667 and 2,500, not 4.167e+04; small ones to 4 digits."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.4g}"


# --- A/B: a group-sequential comparison of two arms ---------------------------------------------------


@lru_cache(maxsize=256)
def _bounds(fractions: tuple[float, ...], alpha: float) -> tuple[float, ...]:
    return tuple(group_sequential_bounds(fractions, alpha))


@dataclass(frozen=True)
class SequentialLook:
    n_champion: int
    n_challenger: int
    fraction: float  # of the planned information
    difference: float  # mean(challenger) − mean(champion), per prediction
    se: float
    z: float
    bound: float  # |z| at or above it stops


@dataclass(frozen=True)
class SequentialResult:
    """The looks so far and what they decided: ``challenger_higher`` / ``challenger_lower`` (a look
    crossed its bound), ``no_difference`` (the planned information reached without a crossing) or
    ``continue``."""

    looks: tuple[SequentialLook, ...]
    alpha: float
    decision: Literal["challenger_higher", "challenger_lower", "no_difference", "continue"]

    @property
    def stopped_at(self) -> int | None:
        """The look (1-based) that decided, None while the test continues."""
        return None if self.decision == "continue" else len(self.looks)

    def line(self) -> str:
        last = self.looks[-1] if self.looks else None
        if last is None:
            return "sequential test: no look yet"
        return (f"sequential test, look {len(self.looks)} at {last.fraction:.0%} of the planned information: "
                f"difference {last.difference:+.4g} per prediction, z {last.z:+.2f} against ±{last.bound:.2f} "
                f"(O'Brien–Fleming-type spending, α = {self.alpha:g}): {self.decision.replace('_', ' ')}")  # fmt: skip


def sequential_ab(
    champion: np.ndarray,
    challenger: np.ndarray,
    looks: list[tuple[int, int]] | list[int],
    planned_per_arm: int,
    alpha: float = 0.05,
) -> SequentialResult:
    """Group-sequential two-sided test of ``mean(challenger) = mean(champion)`` on per-prediction values
    (a KPI's ``per_prediction`` values, or the 0/1 flag for the flag rate), each arm in arrival order.

    ``looks``: the per-arm row counts at each analysis so far (``(n_champion, n_challenger)``, or one count
    for both), increasing. Each look's information fraction is ``min(n_champion, n_challenger) /
    planned_per_arm`` (capped at 1; the look that reaches the plan spends what is left of ``alpha``), its
    bound from the O'Brien–Fleming-type spending function for the looks actually taken, and the test stops
    at the first look whose Welch z reaches its bound. The false-positive rate over all looks is at most
    ``alpha``; a single look at the plan is the fixed-sample z-test."""
    a, b = np.asarray(champion, float), np.asarray(challenger, float)
    taken: list[SequentialLook] = []
    for look in looks:
        n_a, n_b = (look, look) if isinstance(look, int | np.integer) else look
        n_a, n_b = min(int(n_a), len(a)), min(int(n_b), len(b))
        step = next_look(a[:n_a], b[:n_b], [t.fraction for t in taken], planned_per_arm, alpha)
        if step is None:
            continue  # no new information since the last look: not a look
        taken.append(step)
        decision = look_decision(step)
        if decision != "continue":
            return SequentialResult(tuple(taken), alpha, decision)
    return SequentialResult(tuple(taken), alpha, "continue")


def next_look(
    champion: np.ndarray, challenger: np.ndarray, fractions: list[float], planned_per_arm: int, alpha: float
) -> SequentialLook | None:
    """The look taken on both arms' values so far after looks at ``fractions``, or None when the arms
    hold no new information (a look then would spend α for nothing). Its bound comes from the spending
    function over the looks actually taken, so a recorded test and a replayed one agree."""
    n_a, n_b = len(champion), len(challenger)
    fraction = min(min(n_a, n_b) / planned_per_arm, 1.0)
    if fraction <= (fractions[-1] if fractions else 0.0):
        return None  # no new information (an arm still empty): spending α on it would be a look for nothing
    bound = _bounds(tuple(round(f, 9) for f in [*fractions, fraction]), alpha)[-1]
    diff, se, z = sequential_z(np.asarray(champion, float), np.asarray(challenger, float))
    return SequentialLook(n_a, n_b, fraction, diff, se, z, bound)


def look_decision(
    look: SequentialLook,
) -> Literal["challenger_higher", "challenger_lower", "no_difference", "continue"]:
    """The stop rule: a z at or past its bound decides the direction; the look that reaches the plan
    without a crossing decides no difference."""
    if math.isfinite(look.z) and abs(look.z) >= look.bound:
        return "challenger_higher" if look.z > 0 else "challenger_lower"
    return "no_difference" if look.fraction >= 1.0 else "continue"


def _utc(moment: datetime | pd.Timestamp) -> pd.Timestamp:
    ts = pd.Timestamp(moment)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
