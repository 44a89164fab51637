"""Monitoring statistics: data drift per feature, prediction drift, decay on matured labels.

The statistics are computed with NumPy / SciPy (Evidently renders the human-readable report on a
sample; it is slow on large windows). The reference side — the champion's training window — is
summarised once (``ReferenceStats``: a bounded sample, decile edges, category frequencies,
missing rates) and cached, so a check over a large current window costs one pass over it.

Verdicts per feature: PSI bands 0.1 (watch) / 0.2 (drift); KS and chi-squared p-values are
reported, but with thousands of rows every tiny shift is "significant", so numeric drift also
needs an effect (KS statistic ≥ ``ks_min_statistic``) before it counts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from mlcycle.canary import psi as _psi
from mlcycle.config import MonitoringSpec


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
    pvalue: float | None  # KS (numeric) or chi-squared (categorical)
    statistic: float | None  # KS statistic, or chi-squared statistic
    wasserstein: float | None
    missing_reference: float
    missing_current: float
    new_categories: tuple[str, ...] = ()
    new_category_share: float = 0.0
    drifted: bool = False
    reasons: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict:
        return asdict(self)


def _categorical_psi(
    ref: dict[str, float], ref_rows: int, cur: pd.Series
) -> tuple[float, float, float, tuple[str, ...], float]:
    counts = cur.value_counts()
    cats = sorted(set(ref) | set(counts.index))
    n = counts.sum()
    k = len(cats)
    # Add-half smoothing on both sides, as for numeric PSI: an unseen category weighs as a large
    # but finite term.
    e = (np.array([ref.get(c, 0.0) for c in cats]) * ref_rows + 0.5) / (ref_rows + 0.5 * k)
    a = (np.array([counts.get(c, 0) for c in cats]) + 0.5) / (n + 0.5 * k)
    value = float(np.sum((a - e) * np.log(a / e)))
    expected_counts = np.array([ref.get(c, 0.0) for c in cats]) * n
    seen = expected_counts > 0
    observed = np.array([counts.get(c, 0) for c in cats], dtype=float)
    if seen.sum() >= 2 and observed[seen].sum() > 0:
        scaled = expected_counts[seen] * observed[seen].sum() / expected_counts[seen].sum()
        chi = stats.chisquare(observed[seen], scaled)
        stat, pvalue = float(chi.statistic), float(chi.pvalue)
    else:
        stat, pvalue = float("nan"), float("nan")
    new = tuple(c for c in cats if c not in ref and counts.get(c, 0) > 0)
    share = float(sum(counts.get(c, 0) for c in new) / n) if n else 0.0
    return value, stat, pvalue, new, share


def feature_drift(reference: ReferenceStats, current: pd.DataFrame, spec: MonitoringSpec) -> list[FeatureDrift]:
    """Drift of every reference feature in the current window."""
    out = []
    for col, ref_values in reference.numeric.items():
        values = pd.to_numeric(current[col], errors="coerce").to_numpy(dtype=float)
        missing = float(np.isnan(values).mean()) if len(values) else 0.0
        cur = values[~np.isnan(values)]
        reasons = []
        if len(cur) and len(ref_values):
            ks = stats.ks_2samp(ref_values, cur)
            value = _psi(ref_values, cur)
            w = float(stats.wasserstein_distance(ref_values, cur))
            if value >= spec.psi_drift:
                reasons.append(f"PSI {value:.3f} >= {spec.psi_drift}")
            if ks.pvalue < spec.ks_pvalue and ks.statistic >= spec.ks_min_statistic:
                reasons.append(f"KS {ks.statistic:.3f} (p={ks.pvalue:.1e})")
            ks_stat, ks_p = float(ks.statistic), float(ks.pvalue)
        else:
            value, w, ks_stat, ks_p = 0.0, None, None, None
        if abs(missing - reference.missing[col]) >= spec.missing_rate_change:
            reasons.append(f"missing {reference.missing[col]:.1%} → {missing:.1%}")
        out.append(FeatureDrift(col, "numeric", value, ks_p, ks_stat, w, reference.missing[col], missing,
                                drifted=bool(reasons), reasons=tuple(reasons)))  # fmt: skip
    for col, ref_freq in reference.categorical.items():
        series = current[col].astype(object)
        missing = float(series.isna().mean()) if len(series) else 0.0
        value, stat, pvalue, new, share = _categorical_psi(ref_freq, reference.rows, series.dropna().astype(str))
        reasons = []
        if value >= spec.psi_drift:
            reasons.append(f"PSI {value:.3f} >= {spec.psi_drift}")
        if new and share >= spec.new_category_share:
            reasons.append(f"new categories {', '.join(new)} ({share:.1%} of rows)")
        if abs(missing - reference.missing[col]) >= spec.missing_rate_change:
            reasons.append(f"missing {reference.missing[col]:.1%} → {missing:.1%}")
        out.append(FeatureDrift(col, "categorical", value, pvalue, stat, None, reference.missing[col], missing,
                                new, share, bool(reasons), tuple(reasons)))  # fmt: skip
    return out


@dataclass(frozen=True)
class PredictionDrift:
    psi: float
    ks_statistic: float
    ks_pvalue: float
    mean_reference: float
    mean_current: float
    mean_change: float  # relative
    alert: bool


def prediction_drift(reference_scores: np.ndarray, current_scores: np.ndarray, spec: MonitoringSpec) -> PredictionDrift:
    ref, cur = np.asarray(reference_scores, float), np.asarray(current_scores, float)
    ks = stats.ks_2samp(ref, cur)
    value = _psi(ref, cur)
    change = (cur.mean() - ref.mean()) / ref.mean() if ref.mean() else float("inf")
    alert = value >= spec.psi_drift or abs(change) > spec.score_mean_change
    return PredictionDrift(value, float(ks.statistic), float(ks.pvalue), float(ref.mean()), float(cur.mean()),
                           float(change), bool(alert))  # fmt: skip


# --- performance decay on delayed labels ------------------------------------------------------------


@dataclass(frozen=True)
class DecayWindow:
    """Quality of the answers given in ``[start, end)``, judged only once their labels have matured.

    Chargebacks arrive within days, the all-clear for a legitimate purchase only when the dispute
    window closes: before that, the labels known for a window are almost all frauds, and an AUC on
    them means nothing. So an immature window is listed (``matured=False``) but not scored."""

    start: pd.Timestamp
    end: pd.Timestamp
    predictions: int
    matured: bool
    positives: int = 0
    roc_auc: float | None = None
    precision: float | None = None
    recall: float | None = None

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


def _utc(moment: datetime | pd.Timestamp) -> pd.Timestamp:
    ts = pd.Timestamp(moment)
    return ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")


def _labelled(rows: pd.DataFrame, transactions: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """``rows`` with ``is_fraud`` where the label had arrived by ``as_of`` (NaN otherwise)."""
    rows = rows[rows["transaction_id"].notna()].astype({"transaction_id": "int64"})
    known = transactions.loc[transactions["label_available_at"] <= as_of, ["transaction_id", "is_fraud"]]
    return rows.merge(known, on="transaction_id", how="left")


def performance_windows(
    predictions: pd.DataFrame,
    transactions: pd.DataFrame,
    as_of: datetime,
    maturity_days: float,
    window_days: int = 1,
    lookback_days: int = 28,
) -> list[DecayWindow]:
    """Per window of prediction time: ROC-AUC, precision and recall on the labels known at ``as_of``.

    ``predictions`` needs ``transaction_id``, ``predicted_at`` (UTC), ``score`` and ``decision``;
    ``transactions`` needs ``transaction_id``, ``is_fraud`` and ``label_available_at``. A label is
    used only if it had arrived by ``as_of``; a window counts as matured when ``as_of`` is at least
    ``maturity_days`` past its end, and then a prediction without a chargeback is legitimate."""
    as_of_ts = _utc(as_of)
    step = pd.Timedelta(days=window_days)
    last_end = as_of_ts.floor("D") + pd.Timedelta(days=1)
    # ``lookback_days`` of matured windows, then the newer ones that still wait for labels.
    first_start = last_end - pd.Timedelta(days=lookback_days + int(np.ceil(maturity_days)) + 1)
    in_range = (predictions["predicted_at"] >= first_start) & (predictions["predicted_at"] < as_of_ts)
    rows = _labelled(predictions[in_range], transactions, as_of_ts)
    out = []
    start = first_start
    while start < last_end:
        end = start + step
        part = rows[(rows["predicted_at"] >= start) & (rows["predicted_at"] < end)]
        matured = end + pd.Timedelta(days=maturity_days) <= as_of_ts
        if not matured or part.empty:
            out.append(DecayWindow(start, end, len(part), matured))
        else:
            labels = part["is_fraud"].fillna(0).to_numpy().astype(bool)
            auc, precision, recall = _quality(labels, part["score"].to_numpy(float), part["decision"].to_numpy(bool))
            out.append(DecayWindow(start, end, len(part), True, int(labels.sum()), auc, precision, recall))
        start = end
    return out


@dataclass(frozen=True)
class DecayVerdict:
    windows: int  # matured windows pooled
    predictions: int
    positives: int
    roc_auc: float | None
    precision: float | None
    recall: float | None
    baseline_roc_auc: float | None  # the champion's test ROC-AUC when it was trained
    alert: bool
    reasons: tuple[str, ...]
    judged: bool  # False: too few matured windows or positives to say anything

    def as_dict(self) -> dict:
        return asdict(self)


def decay_verdict(
    predictions: pd.DataFrame,
    transactions: pd.DataFrame,
    as_of: datetime,
    maturity_days: float,
    spec: MonitoringSpec,
    baseline_roc_auc: float | None = None,
) -> tuple[DecayVerdict, list[DecayWindow]]:
    """Pool the newest ``decay_rolling_windows`` matured windows and judge them against the bounds."""
    windows = performance_windows(predictions, transactions, as_of, maturity_days, spec.decay_window_days,
                                  spec.decay_lookback_days)  # fmt: skip
    matured = [w for w in windows if w.matured and w.predictions][-spec.decay_rolling_windows :]
    if not matured:
        empty = DecayVerdict(0, 0, 0, None, None, None, baseline_roc_auc, False, ("no matured window yet",), False)
        return empty, windows
    lo, hi = matured[0].start, matured[-1].end
    in_range = (predictions["predicted_at"] >= lo) & (predictions["predicted_at"] < hi)
    rows = _labelled(predictions[in_range], transactions, _utc(as_of))
    labels = rows["is_fraud"].fillna(0).to_numpy().astype(bool)
    auc, precision, recall = _quality(labels, rows["score"].to_numpy(float), rows["decision"].to_numpy(bool))
    positives = int(labels.sum())
    reasons: list[str] = []
    judged = positives >= spec.decay_min_positives and auc is not None
    if not judged:
        reasons.append(f"{positives} frauds in {len(matured)} matured windows (< {spec.decay_min_positives})")
    else:
        if auc < spec.min_roc_auc:
            reasons.append(f"ROC-AUC {auc:.3f} < {spec.min_roc_auc}")
        if baseline_roc_auc is not None and baseline_roc_auc - auc > spec.max_roc_auc_drop:
            reasons.append(f"ROC-AUC {auc:.3f} is {baseline_roc_auc - auc:.3f} below the champion's test "
                           f"{baseline_roc_auc:.3f} (> {spec.max_roc_auc_drop})")  # fmt: skip
    alert = judged and bool(reasons)
    verdict = DecayVerdict(len(matured), len(rows), positives, auc, precision, recall, baseline_roc_auc, alert,
                           tuple(reasons), judged)  # fmt: skip
    return verdict, windows


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
