"""Monitoring statistics: data drift per feature, prediction drift, decay on matured labels.

The statistics are computed with NumPy / SciPy (Evidently renders the human-readable report on a
sample; it is slow on large windows). The reference side — the champion's training window — is
summarised once (``ReferenceStats``: a bounded sample, decile edges, category frequencies,
missing rates) and cached, so a check over a large current window costs one pass over it.

Verdicts per feature: PSI bands 0.1 (watch) / 0.2 (drift); KS (numeric) and two-sample
chi-squared (categorical) p-values, but with thousands of rows every tiny shift is "significant",
so a test counts only with an effect large enough to matter (KS statistic ≥ ``ks_min_statistic``;
total variation distance ≥ ``categorical_min_tvd``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

from mlcycle.decisions import CheckResult, Verdict, interval_check, not_measurable
from mlcycle.project.config import EVENT_ID_FIX, MonitoringSpec
from mlcycle.stats import chi2_two_sample, mean_ratio_ci, psi_from_counts, total_variation
from mlcycle.stats import psi as _psi

Task = Literal["classification", "regression"]


@dataclass
class ReferenceStats:
    """What a drift check needs from the reference window, computed once per champion."""

    numeric: dict[str, np.ndarray]  # sorted sample (non-null) per numeric feature
    categorical: dict[str, dict[str, float]]  # category → share per categorical feature
    missing: dict[str, float]
    rows: int

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path.with_suffix(".npz"), **{f"n__{k}": v for k, v in self.numeric.items()})
        meta = {"categorical": self.categorical, "missing": self.missing, "rows": self.rows}
        path.with_suffix(".json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, path: Path) -> ReferenceStats:
        arrays = np.load(path.with_suffix(".npz"))
        meta = json.loads(path.with_suffix(".json").read_text())
        numeric = {k[3:]: arrays[k] for k in arrays.files}
        return cls(numeric, meta["categorical"], meta["missing"], meta["rows"])


def reference_stats(
    frame: pd.DataFrame, numeric: list[str], categorical: list[str], sample: int = 200_000, seed: int = 0
) -> ReferenceStats:
    rows = frame.sample(min(len(frame), sample), random_state=seed) if len(frame) > sample else frame
    num = {}
    for col in numeric:
        values = pd.to_numeric(rows[col], errors="coerce").to_numpy(dtype=float)
        num[col] = np.sort(values[~np.isnan(values)])
    cat = {col: rows[col].astype(object).dropna().astype(str).value_counts(normalize=True).to_dict()
           for col in categorical}  # fmt: skip
    missing = {col: float(frame[col].isna().mean()) for col in [*numeric, *categorical]}
    return ReferenceStats(num, cat, missing, len(frame))


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    kind: str  # numeric | categorical
    psi: float
    pvalue: float | None  # KS (numeric) or two-sample chi-squared (categorical)
    statistic: float | None  # KS statistic, or chi-squared statistic
    wasserstein: float | None
    missing_reference: float
    missing_current: float
    new_categories: tuple[str, ...] = ()
    new_category_share: float = 0.0
    drifted: bool = False
    reasons: tuple[str, ...] = field(default_factory=tuple)
    tvd: float | None = None  # categorical: total variation distance between the two distributions
    checks: tuple[CheckResult, ...] = ()  # what decided ``drifted``: the drift verdict's checks

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "checks"}


@dataclass(frozen=True)
class CategoricalShift:
    psi: float
    statistic: float  # chi-squared, two-sample (test of homogeneity on the 2 x k table of counts)
    pvalue: float
    tvd: float
    new_categories: tuple[str, ...]
    new_category_share: float


def _categorical_psi(ref: dict[str, float], ref_rows: float, cur: pd.Series) -> CategoricalShift:
    """Shift of a categorical feature: PSI, a two-sample chi-squared test, the total variation distance
    and the categories never seen in the reference.

    ``ref`` holds the reference's shares over ``ref_rows`` non-null rows, turned back into counts:
    the reference is a sample too, and a goodness-of-fit test against its shares (as if they were
    exact) overstates significance when it is small."""
    counts = cur.value_counts()
    cats = sorted(set(ref) | set(counts.index))
    ref_counts = np.array([ref.get(c, 0.0) for c in cats]) * ref_rows
    cur_counts = np.array([counts.get(c, 0) for c in cats], dtype=float)
    n = cur_counts.sum()
    stat, pvalue, _ = chi2_two_sample(ref_counts, cur_counts)
    new = tuple(c for c in cats if c not in ref and counts.get(c, 0) > 0)
    share = float(sum(counts.get(c, 0) for c in new) / n) if n else 0.0
    return CategoricalShift(psi_from_counts(ref_counts, cur_counts), stat, pvalue,
                            total_variation(ref_counts, cur_counts), new, share)  # fmt: skip


def feature_drift(reference: ReferenceStats, current: pd.DataFrame, spec: MonitoringSpec) -> list[FeatureDrift]:
    """Drift of every reference feature in the current window.

    With thousands of rows every tiny shift is "significant", so a test counts only with an effect
    large enough to matter: numeric, a KS p-value below ``ks_pvalue`` and a KS statistic of at least
    ``ks_min_statistic``; categorical, a two-sample chi-squared p-value below ``categorical_pvalue``
    and a total variation distance of at least ``categorical_min_tvd``. PSI at or above
    ``psi_drift`` counts on its own (it is computed per value for features with few distinct values)."""
    out = []
    for col, ref_values in reference.numeric.items():
        values = pd.to_numeric(current[col], errors="coerce").to_numpy(dtype=float)
        missing = float(np.isnan(values).mean()) if len(values) else 0.0
        cur = values[~np.isnan(values)]
        checks = []
        if len(cur) and len(ref_values):
            ks = stats.ks_2samp(ref_values, cur)
            value = _psi(ref_values, cur)
            w = float(stats.wasserstein_distance(ref_values, cur))
            ks_stat, ks_p = float(ks.statistic), float(ks.pvalue)
            checks += [_psi_check(col, value, spec),
                       _test_check(f"{col} KS", ks_stat, spec.ks_min_statistic, ks_p, spec.ks_pvalue,
                                   f"KS {ks_stat:.3f} (p={ks_p:.1e})")]  # fmt: skip
        else:
            value, w, ks_stat, ks_p = 0.0, None, None, None
            checks.append(not_measurable(f"{col} PSI", spec.psi_drift, "<=", f"no value of {col} in the window",
                                         "wait", rows=len(values)))  # fmt: skip
        checks.append(_missing_check(col, reference.missing[col], missing, spec))
        reasons = _reasons(checks)
        out.append(FeatureDrift(col, "numeric", value, ks_p, ks_stat, w, reference.missing[col], missing,
                                drifted=bool(reasons), reasons=reasons, checks=tuple(checks)))  # fmt: skip
    for col, ref_freq in reference.categorical.items():
        series = current[col].astype(object)
        missing = float(series.isna().mean()) if len(series) else 0.0
        # The shares were computed on the non-null rows of a sample of at most ``reference_sample``
        # rows (reference_stats): that is the reference's sample size for the two-sample test.
        ref_rows = min(reference.rows, spec.reference_sample) * (1 - reference.missing[col])
        shift = _categorical_psi(ref_freq, ref_rows, series.dropna().astype(str))
        new = ", ".join(shift.new_categories)
        checks = [
            _psi_check(col, shift.psi, spec),
            _test_check(f"{col} changed category", shift.tvd, spec.categorical_min_tvd, shift.pvalue,
                        spec.categorical_pvalue, f"{shift.tvd:.1%} of rows changed category (χ² p={shift.pvalue:.1e})"),
            CheckResult(f"{col} new categories", shift.new_category_share, spec.new_category_share, "<=",
                        not (shift.new_categories and shift.new_category_share >= spec.new_category_share),
                        f"new categories {new} ({shift.new_category_share:.1%} of rows)" if new else "none",
                        {"new_categories": list(shift.new_categories)}),
            _missing_check(col, reference.missing[col], missing, spec),
        ]  # fmt: skip
        reasons = _reasons(checks)
        out.append(FeatureDrift(col, "categorical", shift.psi, shift.pvalue, shift.statistic, None,
                                reference.missing[col], missing, shift.new_categories, shift.new_category_share,
                                bool(reasons), reasons, shift.tvd, tuple(checks)))  # fmt: skip
    return out


def _psi_check(col: str, value: float, spec: MonitoringSpec) -> CheckResult:
    return CheckResult(f"{col} PSI", value, spec.psi_drift, "<=", value < spec.psi_drift,
                       f"PSI {value:.3f} >= {spec.psi_drift}" if value >= spec.psi_drift else "")  # fmt: skip


def _test_check(name: str, effect: float, min_effect: float, pvalue: float, alpha: float, text: str) -> CheckResult:
    """A significance test that counts only with an effect large enough to matter: the check's value
    is the effect, its bound the smallest that counts; the p-value is evidence beside it."""
    drifted = pvalue < alpha and effect >= min_effect
    return CheckResult(name, effect, min_effect, "<=", not drifted, text if drifted else "",
                       {"pvalue": pvalue, "pvalue_bound": alpha})  # fmt: skip


def _missing_check(col: str, reference: float, current: float, spec: MonitoringSpec) -> CheckResult:
    change, bound = abs(current - reference), spec.missing_rate_change
    detail = f"missing {reference:.1%} → {current:.1%}" if change >= bound else ""
    return CheckResult(f"{col} missing share change", change, bound, "<=", change < bound, detail,
                       {"reference": reference, "current": current})  # fmt: skip


def _reasons(checks: list[CheckResult]) -> tuple[str, ...]:
    return tuple(c.detail for c in checks if c.measurable and not c.passed)


def drift_verdict(features: list[FeatureDrift], rows: int, spec: MonitoringSpec) -> Verdict:
    """Feature drift as one verdict: every feature's checks (PSI, the effect-gated test, new
    categories, missing share). Fewer rows than ``monitoring.min_rows``: every check not measurable
    yet (``wait``), whatever it measured: a window that small moves by noise alone."""
    checks = [c for f in features for c in f.checks]
    if rows < spec.min_rows or not checks:
        why = f"{rows:,} answered predictions in the window, fewer than monitoring.min_rows ({spec.min_rows:,})"
        checks = [not_measurable(c.name, c.bound, c.comparison, why, "wait", value=c.value, **c.evidence)
                  for c in checks] or [not_measurable("feature drift", None, "<=", why, "wait")]  # fmt: skip
    return Verdict("drift", tuple(checks))


@dataclass(frozen=True)
class PredictionDrift:
    psi: float
    ks_statistic: float
    ks_pvalue: float
    mean_reference: float
    mean_current: float
    mean_change: float  # relative
    alert: bool
    mean_change_low: float = float("-inf")  # 95% interval of the relative change
    mean_change_high: float = float("inf")
    reasons: tuple[str, ...] = ()
    checks: tuple[CheckResult, ...] = ()  # the score-drift verdict's: the PSI and the mean's change

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "checks"}

    def verdict(self) -> Verdict:
        return Verdict("score_drift", self.checks)


def prediction_drift(reference_scores: np.ndarray, current_scores: np.ndarray, spec: MonitoringSpec) -> PredictionDrift:
    """Shift of the score distribution: PSI, KS, and the relative change of the mean score.

    The mean change alerts only when its whole 95% interval lies beyond ``score_mean_change``: a
    mean over a few hundred scores, a few percent of them high, moves by more than 10% from
    sampling alone (half the hourly windows of 500 rows would alert on a point estimate)."""
    ref, cur = np.asarray(reference_scores, float), np.asarray(current_scores, float)
    ks = stats.ks_2samp(ref, cur)
    value = _psi(ref, cur)
    change, low, high = mean_ratio_ci(ref, cur)
    change, low, high = float(change), float(low), float(high)
    bound = spec.score_mean_change
    psi_text = f"score PSI {value:.3f} >= {spec.psi_drift}" if value >= spec.psi_drift else ""
    psi_check = CheckResult("score PSI", value, spec.psi_drift, "<=", value < spec.psi_drift, psi_text)
    text = f"mean score {change:+.1%} (95% CI {low:+.1%} … {high:+.1%})"
    evidence = {"estimate": change, "ci_low": low, "ci_high": high, "confidence": 0.95}
    if low > bound or high < -bound:
        mean_check = CheckResult("mean score change", change, (-bound, bound), "within", False,
                                 f"{text} beyond ±{bound:.0%}", evidence)  # fmt: skip
    elif -bound <= low and high <= bound:
        mean_check = CheckResult("mean score change", change, (-bound, bound), "within", True, text, evidence)
    else:
        why = f"{text} straddles ±{bound:.0%}" if np.isfinite(low) and np.isfinite(high) else (
            "the reference's mean score is not positive: no interval for a relative change")  # fmt: skip
        mean_check = not_measurable("mean score change", (-bound, bound), "within", why, "wait", value=change,
                                    **evidence)  # fmt: skip
    checks = (psi_check, mean_check)
    reasons = _reasons(list(checks))
    return PredictionDrift(value, float(ks.statistic), float(ks.pvalue), float(ref.mean()), float(cur.mean()),
                           change, bool(reasons), low, high, reasons, checks)  # fmt: skip


# --- performance decay on delayed labels ------------------------------------------------------------

# The labels frame is normalised at the entry (``label_frame``) to these internal names, whatever
# the project calls its columns (``table.event_id``, ``table.label``, ``table.label_available_at``,
# ``table.timestamp``).
EVENT_ID = "_event_id"
LABEL = "_label"
AVAILABLE_AT = "_label_available_at"
EVENT_AT = "_event_at"


@dataclass(frozen=True)
class LabelColumns:
    """Where the labels frame keeps what decay monitoring reads; the defaults are the lifecycle's
    own names (mlcycle.pipeline.labels_frame). ``event_id`` is also the prediction log's column
    naming the scored event (None: the project declares no event id, and no label joins a
    prediction). ``available_at`` None: each label is taken as known exactly ``maturity_days``
    after its event (``table.label_delay`` without a column)."""

    event_id: str | None = "event_id"
    label: str = "label"
    available_at: str | None = "label_available_at"
    timestamp: str = "event_timestamp"

    def check(self, predictions: pd.DataFrame) -> None:
        if self.event_id is not None and self.event_id not in predictions:
            raise ValueError(f"the predictions have no event id column {self.event_id!r} (table.event_id)")


LIFECYCLE_COLUMNS = LabelColumns()


def label_frame(labels: pd.DataFrame, columns: LabelColumns, maturity_days: float) -> pd.DataFrame:
    """The labels with the internal column names: event id, label, arrival time and event time."""
    missing = [c for c in (columns.event_id, columns.label, columns.available_at) if c and c not in labels]
    if columns.available_at is None and columns.timestamp not in labels:
        missing.append(columns.timestamp)
    if missing:
        raise ValueError(f"the labels frame has no column {', '.join(missing)} (names from table.*)")
    out = pd.DataFrame({EVENT_ID: labels[columns.event_id], LABEL: labels[columns.label]}, index=labels.index)
    if columns.timestamp in labels:
        out[EVENT_AT] = pd.to_datetime(labels[columns.timestamp], utc=True)
    if columns.available_at is None:
        out[AVAILABLE_AT] = out[EVENT_AT] + pd.Timedelta(days=maturity_days)
    else:
        out[AVAILABLE_AT] = pd.to_datetime(labels[columns.available_at], utc=True)
    return out


@dataclass(frozen=True)
class DecayWindow:
    """Quality of the answers given in ``[start, end)``, judged only once their labels have matured.

    Labels arrive late, and unevenly: a positive is often reported within days, the all-clear for a
    negative only when the label window closes. Before that, the labels known for a window are
    enriched in positives, and a metric on them means nothing. So an immature window is listed
    (``matured=False``) but not scored. In a matured window a row counts only if its own label has
    arrived: a label that comes after the window is a late one, not a negative (``unlabelled``
    counts those rows). Classification windows report ROC-AUC, precision and recall; regression
    windows RMSE and MAE."""

    start: pd.Timestamp
    end: pd.Timestamp
    predictions: int
    matured: bool
    positives: int = 0
    roc_auc: float | None = None
    precision: float | None = None
    recall: float | None = None
    unlabelled: int = 0
    rmse: float | None = None
    mae: float | None = None

    def as_dict(self) -> dict:
        out = asdict(self)
        out["start"], out["end"] = self.start.isoformat(), self.end.isoformat()
        return out


def _quality(labels: np.ndarray, scores: np.ndarray, decisions: np.ndarray) -> tuple[float | None, float, float]:
    from sklearn.metrics import roc_auc_score

    auc = float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else None
    flagged = decisions.sum()
    precision = float((labels & decisions).sum() / flagged) if flagged else 0.0
    recall = float((labels & decisions).sum() / labels.sum()) if labels.sum() else 0.0
    return auc, precision, recall


def _errors(rows: pd.DataFrame) -> np.ndarray:
    """Regression errors (prediction − label) of rows whose label has arrived."""
    return rows["score"].to_numpy(float) - rows[LABEL].to_numpy(float)


def _utc(moment: datetime | pd.Timestamp) -> pd.Timestamp:
    ts = pd.Timestamp(moment)
    return ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")


def _same_ids(rows: pd.Series, labels: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Event ids of both sides in one type: integers when the labels' are (a log may hold them as
    floats), else text."""
    if pd.api.types.is_integer_dtype(labels.dtype):
        return pd.to_numeric(rows, errors="coerce").astype("Int64"), labels.astype("Int64")
    return rows.astype(str), labels.astype(str)


def _labelled(rows: pd.DataFrame, labels: pd.DataFrame, as_of: pd.Timestamp, event_id: str) -> pd.DataFrame:
    """``rows`` (predictions) with the label where the row's own label had arrived by ``as_of`` (NaN
    otherwise) and the event time (the age of a row decides how likely a late label still is).
    ``labels`` is a ``label_frame``; ``event_id`` names the prediction log's event id column."""
    rows = rows[rows[event_id].notna()]
    left, right = _same_ids(rows[event_id], labels[EVENT_ID])
    rows = rows.drop(columns=[c for c in (LABEL, AVAILABLE_AT, EVENT_AT, EVENT_ID) if c in rows]).assign(
        **{EVENT_ID: left.to_numpy()}
    )
    cols = [EVENT_ID, LABEL, AVAILABLE_AT] + ([EVENT_AT] if EVENT_AT in labels else [])
    out = rows.merge(labels[cols].assign(**{EVENT_ID: right.to_numpy()}), on=EVENT_ID, how="left")
    out[LABEL] = out[LABEL].astype(float).where(out[AVAILABLE_AT] <= as_of)
    return out.drop(columns=[AVAILABLE_AT])


def _judged(part: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The rows of a matured window whose label has arrived, and how many have not."""
    known = part[LABEL].notna()
    return part[known], int((~known).sum())


@dataclass(frozen=True)
class LateLabels:
    """How many positive labels of the judged rows are probably still on their way (classification).

    Estimated from the delays of positives on events older than ``horizon_days`` (all of whose
    labels have had time to arrive): each known positive of age ``a`` stands for
    ``1 / (1 - S(a))`` positives, where ``S(a)`` is the share of delays longer than ``a``."""

    expected_missing: float
    share: float  # of all positives among the judged rows (known + expected missing)
    basis: int  # positives the delay distribution was estimated from
    horizon_days: float

    def line(self) -> str:
        return (
            f"about {self.share:.1%} of the positive labels of these rows have probably not arrived yet "
            f"(~{self.expected_missing:.1f} rows; delay distribution from {self.basis} positives on events "
            f"older than {self.horizon_days:g} days)"
        )


LATE_LABELS_REGRESSION = {
    "estimated": False,
    "line": "not estimated: the late-label estimate counts positives still on their way, which a regression "
    "label does not have (rows whose label has not arrived are left out and counted as unlabelled)",
}


def late_labels(
    known_positive_ages_days: np.ndarray,
    labels: pd.DataFrame,
    as_of: pd.Timestamp,
    horizon_days: float,
    min_basis: int = 30,
) -> LateLabels | None:
    """Expected positives still missing among rows whose known positives have the given ages
    (days between event and ``as_of``); None when too few old positives show the delay distribution.
    ``labels`` is a ``label_frame`` (with event times). Classification only: it counts positives."""
    age = (as_of - labels[EVENT_AT]).dt.total_seconds() / 86400
    delay = (labels[AVAILABLE_AT] - labels[EVENT_AT]).dt.total_seconds() / 86400
    old = (labels[LABEL].astype(bool) & (age >= horizon_days) & (delay <= horizon_days)).to_numpy()
    delays = np.sort(delay.to_numpy()[old])
    if len(delays) < min_basis:
        return None
    ages = np.asarray(known_positive_ages_days, float)
    survival = 1.0 - np.searchsorted(delays, ages, side="right") / len(delays)  # S(a) = P(delay > a)
    survival = np.minimum(survival, 1.0 - 1.0 / len(delays))  # an observed positive has arrived
    missing = float(np.sum(survival / (1.0 - survival)))
    total = len(ages) + missing
    return LateLabels(missing, missing / total if total else 0.0, len(delays), horizon_days)


def performance_windows(
    predictions: pd.DataFrame,
    labels: pd.DataFrame,
    as_of: datetime,
    maturity_days: float,
    window_days: int = 1,
    lookback_days: int = 28,
    min_label_coverage: float = 0.98,
    *,
    columns: LabelColumns = LIFECYCLE_COLUMNS,
    task: Task = "classification",
) -> list[DecayWindow]:
    """Per window of prediction time: ROC-AUC, precision and recall (classification) or RMSE and MAE
    (regression) on the labels known at ``as_of``.

    ``predictions`` needs the event id column (``columns.event_id``), ``predicted_at`` (UTC),
    ``score`` and, for classification, ``decision``; ``labels`` the columns ``columns`` names. A
    window counts as matured when ``as_of`` is at least ``maturity_days`` past its end and at least
    ``min_label_coverage`` of its rows have their label; then each row is judged on its own label and
    left out (``unlabelled``) if it has none. The coverage floor matters when negatives are confirmed
    a little after the window: until they are, the labelled rows are enriched in positives."""
    if columns.event_id is None:
        return []  # no event id: no label joins a prediction (decay_verdict says so)
    columns.check(predictions)
    return _windows(predictions, label_frame(labels, columns, maturity_days), as_of, maturity_days, window_days,
                    lookback_days, min_label_coverage, columns.event_id, task)  # fmt: skip


def _windows(
    predictions: pd.DataFrame,
    labels: pd.DataFrame,
    as_of: datetime,
    maturity_days: float,
    window_days: int,
    lookback_days: int,
    min_label_coverage: float,
    event_id: str,
    task: Task,
) -> list[DecayWindow]:
    as_of_ts = _utc(as_of)
    step = pd.Timedelta(days=window_days)
    last_end = as_of_ts.floor("D") + pd.Timedelta(days=1)
    # ``lookback_days`` of matured windows, then the newer ones that still wait for labels.
    first_start = last_end - pd.Timedelta(days=lookback_days + int(np.ceil(maturity_days)) + 1)
    in_range = (predictions["predicted_at"] >= first_start) & (predictions["predicted_at"] < as_of_ts)
    rows = _labelled(predictions[in_range], labels, as_of_ts, event_id)
    out = []
    start = first_start
    while start < last_end:
        end = start + step
        part = rows[(rows["predicted_at"] >= start) & (rows["predicted_at"] < end)]
        matured = end + pd.Timedelta(days=maturity_days) <= as_of_ts
        known, unlabelled = _judged(part)
        if matured and len(part) and len(known) < min_label_coverage * len(part):
            matured = False  # labels still arriving: judging now would judge an enriched sample
        if not matured or part.empty:
            out.append(DecayWindow(start, end, len(part), matured, unlabelled=unlabelled))
        elif task == "regression":
            err = _errors(known)
            rmse = float(np.sqrt(np.mean(err**2))) if len(err) else None
            mae = float(np.mean(np.abs(err))) if len(err) else None
            out.append(DecayWindow(start, end, len(part), True, unlabelled=unlabelled, rmse=rmse, mae=mae))
        else:
            y = known[LABEL].to_numpy().astype(bool)
            auc, precision, recall = _quality(y, known["score"].to_numpy(float), known["decision"].to_numpy(bool))
            out.append(DecayWindow(start, end, len(part), True, int(y.sum()), auc, precision, recall, unlabelled))
        start = end
    return out


@dataclass(frozen=True)
class DecayVerdict:
    windows: int  # matured windows pooled
    predictions: int  # rows judged (their label has arrived)
    positives: int
    roc_auc: float | None
    precision: float | None
    recall: float | None
    baseline_roc_auc: float | None  # the champion's test ROC-AUC when it was trained
    alert: bool
    reasons: tuple[str, ...]
    judged: bool  # False: too few positives, or an interval that cannot tell decay from noise
    roc_auc_ci: tuple[float, float] | None = None  # 95%, Hanley & McNeil
    unlabelled: int = 0  # matured rows whose own label has not arrived (left out)
    late_labels: dict | None = None  # LateLabels.as_dict(): positives probably still on their way
    state: str = "not_measurable"  # "ok" | "decayed" | "not_measurable"
    task: str = "classification"
    rmse: float | None = None  # regression: pooled RMSE, its 95% interval, MAE
    rmse_ci: tuple[float, float] | None = None
    mae: float | None = None
    baseline_rmse: float | None = None  # the champion's test RMSE when it was trained
    checks: tuple[CheckResult, ...] = ()  # what decided ``state``: the decay verdict's checks

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "checks"}

    def verdict(self) -> Verdict:
        """The decay verdict: ``state`` "decayed" is its "fail", "ok" its "pass"."""
        return Verdict("decay", self.checks)


def _unjudged(name: str, reason: str, bound: float | None = None) -> tuple[CheckResult, ...]:
    return (not_measurable(name, bound, ">=" if name.endswith("ROC-AUC") else "<=", reason, "wait"),)


def decay_verdict(
    predictions: pd.DataFrame,
    labels: pd.DataFrame,
    as_of: datetime,
    maturity_days: float,
    spec: MonitoringSpec,
    baseline_roc_auc: float | None = None,
    *,
    columns: LabelColumns = LIFECYCLE_COLUMNS,
    task: Task = "classification",
    baseline_rmse: float | None = None,
) -> tuple[DecayVerdict, list[DecayWindow]]:
    """Pool the newest ``decay_rolling_windows`` matured windows and judge them on an interval:
    decayed only when the whole interval is beyond a bound, fine when it is wholly within, and "not
    measurable yet" when it straddles one (an alert there would be a retraining on noise; a silence
    there would be a pass by default).

    Classification: the pooled ROC-AUC's 95% interval (Hanley & McNeil) against the floor
    ``min_roc_auc`` and the champion's test ROC-AUC minus ``max_roc_auc_drop``; needs
    ``decay_min_positives`` positives. Regression: the pooled RMSE's 95% interval (delta method on
    log MSE) against the champion's test RMSE (``baseline_rmse``) times ``1 + max_rmse_increase``;
    needs ``decay_min_labelled`` labelled rows and the champion's test RMSE. The late-label estimate
    is classification's (it counts positives still on their way); regression says so. Without an
    event id (``columns.event_id`` None) no label can be joined to a prediction: not measurable."""
    if columns.event_id is None:
        why = (
            "not measurable: no event id declared (table.event_id), so no label can be joined to the prediction "
            f"logged for its event; to measure it, {EVENT_ID_FIX}"
        )
        return DecayVerdict(0, 0, 0, None, None, None, baseline_roc_auc, False, (why,), False, task=task,
                            baseline_rmse=baseline_rmse, checks=_unjudged(_metric(task), why)), []  # fmt: skip
    windows = performance_windows(predictions, labels, as_of, maturity_days, spec.decay_window_days,
                                  spec.decay_lookback_days, spec.min_label_coverage, columns=columns,
                                  task=task)  # fmt: skip
    matured = [w for w in windows if w.matured and w.predictions][-spec.decay_rolling_windows :]
    if not matured:
        empty = DecayVerdict(0, 0, 0, None, None, None, baseline_roc_auc, False, ("no matured window yet",), False,
                             task=task, baseline_rmse=baseline_rmse,
                             checks=_unjudged(_metric(task), "no matured window yet"))  # fmt: skip
        return empty, windows
    as_of_ts = _utc(as_of)
    normal = label_frame(labels, columns, maturity_days)
    lo, hi = matured[0].start, matured[-1].end
    in_range = (predictions["predicted_at"] >= lo) & (predictions["predicted_at"] < hi)
    rows, unlabelled = _judged(_labelled(predictions[in_range], normal, as_of_ts, columns.event_id))
    if task == "regression":
        return _regression_decay(rows, unlabelled, len(matured), spec, baseline_rmse), windows
    return _classification_decay(rows, unlabelled, len(matured), normal, as_of_ts, maturity_days, spec,
                                 baseline_roc_auc), windows  # fmt: skip


def _metric(task: Task) -> str:
    return "matured RMSE" if task == "regression" else "matured ROC-AUC"


def _classification_decay(
    rows: pd.DataFrame,
    unlabelled: int,
    pooled: int,
    labels: pd.DataFrame,
    as_of_ts: pd.Timestamp,
    maturity_days: float,
    spec: MonitoringSpec,
    baseline_roc_auc: float | None,
) -> DecayVerdict:
    from mlcycle.stats import Z95, auc_se

    y = rows[LABEL].to_numpy().astype(bool)
    auc, precision, recall = _quality(y, rows["score"].to_numpy(float), rows["decision"].to_numpy(bool))
    positives = int(y.sum())
    late = None
    if EVENT_AT in rows and positives:
        ages = (as_of_ts - rows.loc[y, EVENT_AT]).dt.total_seconds().to_numpy() / 86400
        found = late_labels(ages, labels, as_of_ts, 2 * maturity_days, spec.decay_min_positives)
        late = asdict(found) | {"line": found.line()} if found else None
    reasons: list[str] = []
    ci: tuple[float, float] | None = None
    evidence = {"windows": pooled, "predictions": len(rows), "positives": positives}
    if positives < spec.decay_min_positives or auc is None:
        why = f"{positives} positives in {pooled} matured windows (< {spec.decay_min_positives})"
        checks: tuple[CheckResult, ...] = (not_measurable("matured ROC-AUC", spec.min_roc_auc, ">=", why, "wait",
                                                          value=auc, **evidence),)  # fmt: skip
        reasons.append(f"not measurable yet: {why}")
    else:
        se = auc_se(auc, positives, len(y) - positives)
        ci = (auc - Z95 * se, min(1.0, auc + Z95 * se))
        text = f"ROC-AUC {auc:.3f} (95% CI {ci[0]:.3f}–{ci[1]:.3f}, {positives} positives)"
        bounds = [("matured ROC-AUC floor", spec.min_roc_auc, f"the floor {spec.min_roc_auc}")]
        if baseline_roc_auc is not None:
            bounds.append(("matured ROC-AUC drop", baseline_roc_auc - spec.max_roc_auc_drop,
                           f"the champion's test {baseline_roc_auc:.3f} minus {spec.max_roc_auc_drop}"))  # fmt: skip
        # Decayed only when the whole Hanley–McNeil interval is below a bound; straddling: not yet.
        checks = tuple(interval_check(name, auc, ci[0], ci[1], bound, ">=", "wait", f"against {what}", **evidence)
                       for name, bound, what in bounds)  # fmt: skip
        below = [what for (_, _, what), c in zip(bounds, checks, strict=True) if c.measurable and not c.passed]
        straddled = [what for (_, _, what), c in zip(bounds, checks, strict=True) if not c.measurable]
        reasons += [f"{text} is below {what}" for what in below] or [
            f"not measurable yet: {text} straddles {what}" for what in straddled]  # fmt: skip
    state = {"fail": "decayed", "pass": "ok"}.get(Verdict("decay", checks).state, "not_measurable")
    return DecayVerdict(pooled, len(rows), positives, auc, precision, recall, baseline_roc_auc, state == "decayed",
                        tuple(reasons), state != "not_measurable", ci, unlabelled, late, state,
                        checks=checks)  # fmt: skip


def _regression_decay(
    rows: pd.DataFrame, unlabelled: int, pooled: int, spec: MonitoringSpec, baseline_rmse: float | None
) -> DecayVerdict:
    from mlcycle.stats import rmse_interval

    err = _errors(rows)
    n = len(err)
    rmse, low, high = rmse_interval(err) if n else (None, 0.0, float("inf"))
    mae = float(np.mean(np.abs(err))) if n else None
    reasons: list[str] = []
    ci: tuple[float, float] | None = None
    name, evidence = "matured RMSE", {"windows": pooled, "labelled": n}
    if n < spec.decay_min_labelled:
        why = f"{n} labelled rows in {pooled} matured windows (< {spec.decay_min_labelled})"
        check = not_measurable(name, None, "<=", why, "wait", value=rmse, **evidence)
        reasons.append(f"not measurable yet: {why}")
    elif baseline_rmse is None:
        why = "not measurable: no test RMSE of the champion to compare with (the run records test.rmse)"
        check = not_measurable(name, None, "<=", why, "wait", value=rmse, **evidence)
        reasons.append(why)
        ci = (low, high)
    else:
        ci = (low, high)
        bound = baseline_rmse * (1 + spec.max_rmse_increase)
        text = f"RMSE {rmse:.4g} (95% CI {low:.4g}–{high:.4g}, {n} labelled rows)"
        what = f"the champion's test RMSE {baseline_rmse:.4g} plus {spec.max_rmse_increase:.0%} ({bound:.4g})"
        check = interval_check(name, rmse, low, high, bound, "<=", "wait", f"against {what}", **evidence)
        if check.measurable and not check.passed:
            reasons.append(f"{text} is above {what}")
        elif not check.measurable:
            reasons.append(f"not measurable yet: {text} straddles {what}")
    state = {"fail": "decayed", "pass": "ok"}.get(Verdict("decay", (check,)).state, "not_measurable")
    return DecayVerdict(pooled, n, 0, None, None, None, None, state == "decayed", tuple(reasons),
                        state != "not_measurable", None, unlabelled, dict(LATE_LABELS_REGRESSION), state,
                        "regression", rmse, ci, mae, baseline_rmse, (check,))  # fmt: skip


# --- broken upstream ----------------------------------------------------------------------------------


def upstream_anomalies(reference: ReferenceStats, current: pd.DataFrame, spec: MonitoringSpec) -> list[str]:
    """Signs that the data is broken rather than the world changed: retraining on it would teach the
    model the bug. A feature that was mostly present and is now (almost) all null; a numeric
    feature that varied and is now constant; a categorical feature whose values are mostly
    categories never seen before (a renamed code list, a changed encoding)."""
    found = []
    for col, ref_values in reference.numeric.items():
        if col not in current:
            found.append(f"{col}: missing from the current data")
            continue
        values = pd.to_numeric(current[col], errors="coerce").to_numpy(dtype=float)
        if not len(values):
            continue
        missing = float(np.isnan(values).mean())
        if missing >= spec.upstream_null_share and reference.missing[col] < 0.5:
            found.append(f"{col}: {missing:.0%} null (reference {reference.missing[col]:.1%})")
            continue
        present = values[~np.isnan(values)]
        if len(present) >= 50 and np.ptp(present) == 0 and len(ref_values) and np.ptp(ref_values) > 0:
            found.append(f"{col}: constant {present[0]:g} (varied in the reference)")
    for col, ref_freq in reference.categorical.items():
        if col not in current:
            found.append(f"{col}: missing from the current data")
            continue
        series = current[col].astype(object)
        if not len(series):
            continue
        missing = float(series.isna().mean())
        if missing >= spec.upstream_null_share and reference.missing[col] < 0.5:
            found.append(f"{col}: {missing:.0%} null (reference {reference.missing[col]:.1%})")
            continue
        present = series.dropna().astype(str)
        if len(present):
            known = float(present.isin(list(ref_freq)).mean())
            if known < spec.upstream_min_known_category_share:
                examples = ", ".join(sorted(set(present[~present.isin(list(ref_freq))]))[:3])
                found.append(f"{col}: only {known:.0%} of values in known categories (new: {examples})")
    return found
