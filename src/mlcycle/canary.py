"""Automated canary analysis: is the challenger at least as safe as the champion on live traffic?

Read from the prediction log, per variant: error rate, p99 latency, the score distribution (PSI
of the challenger's scores against the champion's), and — for requests whose labels have matured
— ROC-AUC and precision. A guard that trips stops the canary; a comparison without enough data is
reported as "not measurable yet" instead of passing or failing on noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import precision_score, roc_auc_score

from mlcycle.config import CanarySpec
from mlcycle.decisions import CheckResult, Verdict, at_least, at_most

PSI_BINS = 10
Z95 = 1.959964


def auc_se(auc: float, positives: int, negatives: int) -> float:
    """Standard error of a ROC-AUC (Hanley & McNeil, 1982)."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)) / (
        positives * negatives
    )
    return math.sqrt(max(var, 0.0))


def psi(expected: np.ndarray, actual: np.ndarray, bins: int = PSI_BINS) -> float:
    """Population stability index of ``actual`` against ``expected``, on the expected's deciles."""
    expected, actual = np.asarray(expected, float), np.asarray(actual, float)
    edges = np.unique(np.quantile(expected, np.linspace(0, 1, bins + 1)))
    if len(edges) < 3:
        return 0.0
    edges[0], edges[-1] = -np.inf, np.inf
    k = len(edges) - 1
    # Add-half smoothing: an empty bin in a small sample must not weigh as log(0).
    e = (np.histogram(expected, edges)[0] + 0.5) / (len(expected) + 0.5 * k)
    a = (np.histogram(actual, edges)[0] + 0.5) / (len(actual) + 0.5 * k)
    return float(np.sum((a - e) * np.log(a / e)))


def attach_labels(predictions: pd.DataFrame, transactions: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """Predictions with the label of their transaction where it has arrived by ``as_of``."""
    known = transactions.loc[transactions["label_available_at"] <= as_of, ["transaction_id", "is_fraud"]]
    out = predictions.merge(known, on="transaction_id", how="left")
    return out


def _variant_rows(predictions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    champion = predictions[(predictions["variant"] == "champion") & ~predictions["shadow"].astype(bool)]
    challenger = predictions[predictions["variant"] == "challenger"]
    return champion, challenger


def analyze(predictions: pd.DataFrame, spec: CanarySpec) -> Verdict:
    """Compare challenger with champion on the logged requests (``is_fraud`` column if labels known)."""
    champion, challenger = _variant_rows(predictions)
    n_champ, n_chall = len(champion), len(challenger)
    checks: list[CheckResult] = [
        at_least("requests_champion", float(n_champ), float(spec.min_requests)),
        at_least("requests_challenger", float(n_chall), float(spec.min_requests)),
    ]
    if n_champ < spec.min_requests or n_chall < spec.min_requests:
        return Verdict("canary analysis", tuple(checks))

    err_c = champion["error"].notna().mean()
    err_x = challenger["error"].notna().mean()
    checks.append(
        at_most(
            "error_rate_increase",
            float(err_x - err_c),
            spec.max_error_rate_increase,
            f"challenger {err_x:.2%} vs champion {err_c:.2%}",
        )
    )
    p99_c = float(np.percentile(champion["latency_ms"], 99))
    p99_x = float(np.percentile(challenger["latency_ms"], 99))
    bound = spec.max_p99_latency_ratio * p99_c + spec.p99_latency_slack_ms
    checks.append(at_most("p99_latency_ms", p99_x, bound, f"champion p99 {p99_c:.2f} ms"))
    ok_c = champion.loc[champion["error"].isna(), "score"].to_numpy()
    ok_x = challenger.loc[challenger["error"].isna(), "score"].to_numpy()
    if len(ok_c) and len(ok_x):
        # PSI is biased upward on small samples: two draws from one distribution score about
        # (bins - 1)(1/n1 + 1/n2) on average (0.2 with 45 requests a side on deciles). Judge the
        # excess over that noise floor, and show both.
        raw = psi(ok_c, ok_x)
        floor = (PSI_BINS - 1) * (1 / len(ok_c) + 1 / len(ok_x))
        checks.append(
            at_most(
                "score_psi",
                max(0.0, raw - floor),
                spec.max_score_psi,
                f"raw PSI {raw:.3f} minus sampling noise {floor:.3f} ({len(ok_x)} vs {len(ok_c)} scores)",
                raw=raw,
                noise_floor=floor,
            )
        )
    else:
        checks.append(at_most("score_psi", None, spec.max_score_psi, "no successful challenger scores"))

    if "is_fraud" in predictions:
        lab_c = champion.dropna(subset=["is_fraud"])
        lab_x = challenger.dropna(subset=["is_fraud"])
        pos_c, pos_x = int(lab_c["is_fraud"].sum()), int(lab_x["is_fraud"].sum())
        measurable = (
            min(len(lab_c), len(lab_x)) >= spec.min_labelled
            and min(pos_c, pos_x) >= spec.min_labelled_positives
            and pos_c < len(lab_c)
            and pos_x < len(lab_x)
        )
        if measurable:
            auc_c = roc_auc_score(lab_c["is_fraud"], lab_c["score"])
            auc_x = roc_auc_score(lab_x["is_fraud"], lab_x["score"])
            se = math.hypot(auc_se(auc_c, pos_c, len(lab_c) - pos_c), auc_se(auc_x, pos_x, len(lab_x) - pos_x))
            delta = auc_x - auc_c
            # Fail only when the challenger is worse beyond the allowed drop with 95% confidence.
            checks.append(
                at_least(
                    "auc_delta_ucb95",
                    delta + Z95 * se,
                    -spec.max_auc_drop,
                    f"challenger {auc_x:.4f} vs champion {auc_c:.4f}: delta {delta:+.4f} "
                    f"(95% CI {delta - Z95 * se:+.4f} … {delta + Z95 * se:+.4f}) on {pos_x}/{pos_c} positives",
                    delta=delta,
                )
            )
            prec_c = precision_score(lab_c["is_fraud"], lab_c["decision"].astype(bool), zero_division=0)
            prec_x = precision_score(lab_x["is_fraud"], lab_x["decision"].astype(bool), zero_division=0)
            checks.append(
                CheckResult(
                    "precision",
                    float(prec_x),
                    float(prec_c),
                    ">=",
                    True,
                    f"challenger {prec_x:.3f} vs champion {prec_c:.3f} (reported)",
                )
            )
        else:
            checks.append(
                CheckResult(
                    "auc_delta_ucb95",
                    None,
                    -spec.max_auc_drop,
                    ">=",
                    True,
                    f"not measurable yet: {len(lab_x)}/{len(lab_c)} matured labels, {pos_x}/{pos_c} positives",
                )
            )
    return Verdict("canary analysis", tuple(checks))


def enough_data(verdict: Verdict) -> bool:
    return all(c.passed for c in verdict.checks if c.name.startswith("requests_"))


@dataclass(frozen=True)
class ABReport:
    """Difference in the flagged-fraud rate (challenger − champion) with its confidence interval,
    and the per-arm sample size needed to detect the configured minimum effect."""

    rate_champion: float
    rate_challenger: float
    difference: float
    ci_low: float
    ci_high: float
    n_champion: int
    n_challenger: int
    n_required_per_arm: int

    @property
    def decided(self) -> bool:
        return min(self.n_champion, self.n_challenger) >= self.n_required_per_arm

    def line(self) -> str:
        state = "enough data" if self.decided else f"need {self.n_required_per_arm:,} per arm"
        return (
            f"flagged rate: challenger {self.rate_challenger:.3%} vs champion {self.rate_champion:.3%}, "
            f"difference {self.difference:+.3%} (95% CI {self.ci_low:+.3%} … {self.ci_high:+.3%}); "
            f"n = {self.n_challenger:,} / {self.n_champion:,}; {state}"
        )


def ab_report(predictions: pd.DataFrame, spec: CanarySpec, metric: str = "decision") -> ABReport:
    champion, challenger = _variant_rows(predictions)
    x_c, x_x = champion[metric].astype(float), challenger[metric].astype(float)
    p_c, p_x = (x_c.mean() if len(x_c) else 0.0), (x_x.mean() if len(x_x) else 0.0)
    z = stats.norm.ppf(1 - spec.ab_alpha / 2)
    se = math.sqrt(p_c * (1 - p_c) / max(len(x_c), 1) + p_x * (1 - p_x) / max(len(x_x), 1))
    # Two-proportion sample size for the minimum detectable effect around the champion's rate.
    p1 = min(max(p_c, 1e-4), 1 - 1e-4)
    p2 = min(p1 + spec.ab_minimum_detectable_effect, 1 - 1e-4)
    z_b = stats.norm.ppf(spec.ab_power)
    pooled = (p1 + p2) / 2
    spread = z * math.sqrt(2 * pooled * (1 - pooled)) + z_b * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    n = spread**2 / (p2 - p1) ** 2
    diff = p_x - p_c
    return ABReport(p_c, p_x, diff, diff - z * se, diff + z * se, len(x_c), len(x_x), math.ceil(n))
