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
