"""Automated canary analysis: is the challenger at least as safe as the champion on live traffic?

Read from the prediction log, per variant and bound to the two versions the canary started with:
error rate, p99 latency, the score distribution (PSI of the challenger's scores against the
champion's), in shadow mode the paired agreement of the two models on the same requests, and — for
requests whose labels have matured — ROC-AUC and precision (classification) or RMSE (regression).
A guard that trips stops the canary; a comparison the data cannot decide is "not measurable yet",
and the config says per check whether that waits, blocks, or is accepted with a warning in the
report — never a silent pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import precision_score, roc_auc_score

from mlcycle.decisions import CheckResult, Verdict, at_least, at_most, interval_check, not_measurable
from mlcycle.project.config import CanarySpec
from mlcycle.serving.prediction_log import SHADOW_SUFFIX
from mlcycle.stats import (
    auc_se,
    mean_ratio_ci,
    psi,
    psi_counts,
    z_for,
)  # defined in mlcycle.stats; importable from here too

Z95 = 1.959964
Task = Literal["classification", "regression"]

# The event id (the prediction log's column naming the scored event, ``table.event_id``) is the
# caller's: labels are joined on it.
LABEL = "label"  # the column attach_labels adds: the label where it has matured, else NaN
MATURES_AT = "label_matures_at"


def attach_labels(
    predictions: pd.DataFrame,
    events: pd.DataFrame,
    as_of: pd.Timestamp | datetime,
    maturity_days: float,
    label: str,
    *,
    key: str | None = "event_id",
    event_time: str = "event_timestamp",
    available_at: str | None = "label_available_at",
) -> pd.DataFrame:
    """Predictions with a ``label`` column where the label has matured by ``as_of``, NaN elsewhere.

    ``events`` holds the labels: its ``key`` column (the event id, also a column of
    ``predictions``), ``label``, ``event_time`` and ``available_at`` (when each label arrived; None:
    each label is known exactly ``maturity_days`` after its event); the defaults are the
    lifecycle's own names (mlcycle.pipeline.labels_frame, the prediction log's ``event_id``). Ids
    are compared as text unless both sides hold integers. ``key`` None (a project without an event
    id): no label can be joined to a prediction, so every row is unlabelled.

    A label judges a prediction only when it is final: the label window (``maturity_days``) has
    passed since the event *and* since the request (a replayed old event is scored with today's
    features; its label says nothing about a canary until a window after the request), and the
    event's own label has arrived (a late positive is not a negative). Labels taken as soon as
    they arrive would be the early positives only — a quality check on them measures the delay,
    not the model. ``label_matures_at`` says when each row's label will count."""
    out = predictions.copy()
    if key is None:
        out[MATURES_AT] = pd.NaT
        out[LABEL] = np.nan
        return out
    for frame, what in ((out, "the prediction log"), (events, "the labels")):
        if key not in frame:
            raise ValueError(f"{what} has no event id column {key!r} (table.event_id) to join labels on")
    known = events[[key, label, event_time]].rename(columns={label: "_label", event_time: "_event_at"})
    window = pd.Timedelta(days=maturity_days)
    if available_at is None:
        known["_available_at"] = pd.to_datetime(known["_event_at"], utc=True) + window
    else:
        known["_available_at"] = events[available_at]
    if not (pd.api.types.is_integer_dtype(out[key].dtype) and pd.api.types.is_integer_dtype(known[key].dtype)):
        out["_key"], known["_key"] = out[key].astype(str), known[key].astype(str)
        out = out.merge(known.drop(columns=[key]), on="_key", how="left").drop(columns=["_key"])
    else:
        out = out.merge(known, on=key, how="left")
    as_of = pd.Timestamp(as_of)
    as_of = as_of.tz_localize("UTC") if as_of.tzinfo is None else as_of
    requested = pd.to_datetime(out["request_unix"], unit="s", utc=True) if "request_unix" in out else None
    logged = pd.to_datetime(out["logged_at"], utc=True) if "logged_at" in out else None
    started = requested if requested is not None else logged
    if started is None:
        raise ValueError("predictions need request_unix or logged_at to know when a label matures")
    if logged is not None:
        started = started.fillna(logged)
    event_at = pd.to_datetime(out["_event_at"], utc=True)
    out[MATURES_AT] = pd.concat([event_at, started], axis=1).max(axis=1) + window
    available = pd.to_datetime(out["_available_at"], utc=True)
    final = (out[MATURES_AT] <= as_of) & (available <= as_of) & out["_label"].notna()
    out[LABEL] = out["_label"].astype(float).where(final)
    return out.drop(columns=["_label", "_event_at", "_available_at"])


def variant_rows(
    predictions: pd.DataFrame, challenger_version: str | None = None, champion_version: str | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows each side is judged on. With versions given, only those versions' rows: a canary is
    bound to the challenger it started with, and rows a replica logged for another version (an
    alias moved, a replica not yet refreshed) are not evidence about it. A request routed to the
    challenger that failed and was answered by the champion still counts against the challenger
    (its error names the challenger's version)."""
    shadow = predictions["shadow"].astype(bool)
    versions = predictions["model_version"].astype(str)
    champion = (predictions["variant"] == "champion") & ~shadow
    if champion_version is not None:
        champion &= versions == str(champion_version)
    challenger = predictions["variant"] == "challenger"
    if challenger_version is not None:
        failed_here = predictions["error"].fillna("").astype(str).str.startswith(f"challenger v{challenger_version}:")
        challenger &= (versions == str(challenger_version)) | failed_here
    return predictions[champion], predictions[challenger]


def _requests_check(name: str, n: int, spec: CanarySpec) -> CheckResult:
    if n >= spec.min_requests:
        return at_least(name, float(n), float(spec.min_requests))
    return not_measurable(name, float(spec.min_requests), ">=", f"{n} of {spec.min_requests} requests", "wait",
                          value=float(n))  # fmt: skip


def analyze(
    predictions: pd.DataFrame,
    spec: CanarySpec,
    *,
    challenger_version: str | None = None,
    champion_version: str | None = None,
    label: str = LABEL,
    looks: int = 1,
    shadow: bool | None = None,
    task: Task = "classification",
) -> Verdict:
    """Compare challenger with champion on the logged requests (the ``label`` column, from
    ``attach_labels``, holds matured labels). Too few requests is "not measurable yet" (wait),
    never a pass or a fail.

    ``looks``: how many times this step may be analysed while it waits for data. Stopping at the
    first look whose interval clears a bound makes each 95% interval wrong more often than 5% (30
    looks at a floor pass ~10% of the time); the intervals are widened for the looks (Bonferroni).

    ``shadow``: the step's mode, so the challenger is judged on the answers of that mode only — its
    shadow answers on a shadow step (and the paired agreement), its routed answers on a canary step
    (a replica logs shadow rows for a second or two after the policy changes; they are not this
    step's evidence). None: whatever the rows hold.

    ``task``: classification judges the ROC-AUC difference on matured labels and, in shadow, the
    kappa of the two models' decisions; regression judges the RMSE ratio (``_rmse_quality``) and
    has no decisions to agree on (the rank correlation of the two models' predictions still guards)."""
    z = z_for(0.95, looks)
    if shadow is not None:
        challenger_side = predictions["variant"] == "challenger"
        predictions = predictions[~challenger_side | (predictions["shadow"].astype(bool) == shadow)]
    champion, challenger = variant_rows(predictions, challenger_version, champion_version)
    n_champ, n_chall = len(champion), len(challenger)
    checks: list[CheckResult] = [
        _requests_check("requests_champion", n_champ, spec),
        _requests_check("requests_challenger", n_chall, spec),
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
        # (bins - 1)(1/n1 + 1/n2) on average (9 × 2/45 = 0.4 with 45 requests a side on deciles).
        # Judge the excess over that noise floor, and show both.
        # The bins are the ones PSI used: tied scores get point-mass bins, more than ten at times.
        raw = psi(ok_c, ok_x)
        floor = (len(psi_counts(ok_c, ok_x)[0]) - 1) * (1 / len(ok_c) + 1 / len(ok_x))
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
    if task == "regression":
        checks.append(_rmse_quality(champion, challenger, spec, label, z))
    else:
        checks.append(_quality(champion, challenger, spec, label, z))
    checks += agreement(predictions, spec, challenger_version, champion_version, z, task)
    return Verdict("canary analysis", tuple(checks))


def _maturing(champion: pd.DataFrame, challenger: pd.DataFrame) -> str:
    pending = pd.concat([champion, challenger]).get(MATURES_AT)
    if pending is not None and pending.notna().any():
        return f"; the labels of these requests mature from {pending.min():%Y-%m-%d %H:%M} UTC"
    return ""


def _rmse_quality(
    champion: pd.DataFrame, challenger: pd.DataFrame, spec: CanarySpec, label: str, z: float = Z95
) -> CheckResult:
    """Regression: the challenger's RMSE relative to the champion's on matured labels, each on its
    own requests (a canary routes different requests to each), judged by its interval against
    ``max_rmse_increase``. The interval is the delta method on the log ratio of the two mean
    squared errors (``stats.mean_ratio_ci``: independent samples), then square roots (RMSE ratio =
    √MSE ratio, a monotone map). Fewer than ``min_labelled`` labelled requests a side: not
    measurable (``rmse_without_matured_labels``); an interval straddling the tolerance: not
    measurable (``rmse_on_unmeasurable``) — never a pass."""
    name, bound = "rmse_increase", spec.max_rmse_increase
    labelled_c = champion.dropna(subset=[label]) if label in champion else champion.iloc[0:0]
    labelled_x = challenger.dropna(subset=[label]) if label in challenger else challenger.iloc[0:0]
    labelled_c, labelled_x = labelled_c[labelled_c["error"].isna()], labelled_x[labelled_x["error"].isna()]
    if min(len(labelled_c), len(labelled_x)) < spec.min_labelled:
        detail = (
            f"online quality cannot be judged yet: {len(labelled_x)}/{len(labelled_c)} requests with matured labels "
            f"(challenger/champion); need {spec.min_labelled} per variant{_maturing(champion, challenger)}"
        )
        return not_measurable(name, bound, "<=", detail, spec.rmse_without_matured_labels,
                              labelled=[len(labelled_x), len(labelled_c)])  # fmt: skip
    sq_c = (labelled_c["score"].to_numpy(float) - labelled_c[label].to_numpy(float)) ** 2
    sq_x = (labelled_x["score"].to_numpy(float) - labelled_x[label].to_numpy(float)) ** 2
    rmse_c, rmse_x = math.sqrt(sq_c.mean()), math.sqrt(sq_x.mean())
    change, low, high = (float(v) for v in mean_ratio_ci(sq_c, sq_x, z))
    if not all(math.isfinite(v) for v in (change, low, high)):
        return not_measurable(name, bound, "<=", f"the champion's RMSE is {rmse_c:.4g}: no ratio to judge",
                              spec.rmse_on_unmeasurable)  # fmt: skip
    root = lambda v: math.sqrt(max(1.0 + v, 0.0)) - 1.0  # noqa: E731  (MSE ratio − 1 → RMSE ratio − 1)
    return interval_check(
        name, root(change), root(low), root(high), bound, "<=", spec.rmse_on_unmeasurable,
        f"challenger RMSE {rmse_x:.4g} vs champion {rmse_c:.4g} on {len(labelled_x)}/{len(labelled_c)} "
        "matured labels (relative change; interval: delta method on the log MSE ratio)",
        rmse_challenger=rmse_x, rmse_champion=rmse_c, labelled=[len(labelled_x), len(labelled_c)],
    )  # fmt: skip


def _quality(
    champion: pd.DataFrame, challenger: pd.DataFrame, spec: CanarySpec, label: str, z: float = Z95
) -> CheckResult:
    """ROC-AUC difference on matured labels, judged by its interval against ``max_auc_drop``: a
    drop the data cannot tell from the tolerance is not measurable (policy ``auc_on_unmeasurable``),
    never a pass — 30 positives a side cannot rule out a drop of 0.1."""
    name, bound = "auc_delta", -spec.max_auc_drop
    labelled_c = champion.dropna(subset=[label]) if label in champion else champion.iloc[0:0]
    labelled_x = challenger.dropna(subset=[label]) if label in challenger else challenger.iloc[0:0]
    pos_c, pos_x = (
        int(labelled_c[label].sum()) if len(labelled_c) else 0,
        int(labelled_x[label].sum()) if len(labelled_x) else 0,
    )
    enough = (
        min(len(labelled_c), len(labelled_x)) >= spec.min_labelled
        and min(pos_c, pos_x) >= spec.min_labelled_positives
        and pos_c < len(labelled_c)
        and pos_x < len(labelled_x)
    )
    if not enough:
        when = _maturing(champion, challenger)
        detail = (
            f"online quality cannot be judged yet: {len(labelled_x)}/{len(labelled_c)} requests with matured labels "
            f"(challenger/champion), {pos_x}/{pos_c} positives; need {spec.min_labelled} with "
            f"{spec.min_labelled_positives} positives per variant{when}"
        )
        return not_measurable(name, bound, ">=", detail, spec.auc_without_matured_labels,
                              labelled=[len(labelled_x), len(labelled_c)], positives=[pos_x, pos_c])  # fmt: skip
    auc_c = roc_auc_score(labelled_c[label], labelled_c["score"])
    auc_x = roc_auc_score(labelled_x[label], labelled_x["score"])
    se = math.hypot(auc_se(auc_c, pos_c, len(labelled_c) - pos_c), auc_se(auc_x, pos_x, len(labelled_x) - pos_x))
    delta = auc_x - auc_c
    prec_c = precision_score(labelled_c[label], labelled_c["decision"].astype(bool), zero_division=0)
    prec_x = precision_score(labelled_x[label], labelled_x["decision"].astype(bool), zero_division=0)
    return interval_check(
        name, delta, delta - z * se, delta + z * se, bound, ">=", spec.auc_on_unmeasurable,
        f"challenger ROC-AUC {auc_x:.4f} vs champion {auc_c:.4f} on {pos_x}/{pos_c} positives; "
        f"precision {prec_x:.3f} vs {prec_c:.3f} (reported)",
        auc_challenger=auc_x, auc_champion=auc_c, precision_challenger=float(prec_x), precision_champion=float(prec_c),
    )  # fmt: skip


def shadow_pairs(
    predictions: pd.DataFrame, challenger_version: str | None = None, champion_version: str | None = None
) -> pd.DataFrame:
    """Champion answers and shadow challenger scores of the same requests, side by side: the
    service logs a shadow answer under the answered request's id plus ``SHADOW_SUFFIX``. Rows with
    an error are left out: they are the error-rate check's business."""
    columns = ["score_champion", "score_challenger", "decision_champion", "decision_challenger"]
    champion, challenger = variant_rows(predictions, challenger_version, champion_version)
    shadow = challenger[challenger["shadow"].astype(bool) & challenger["error"].isna()]
    champion = champion[champion["error"].isna()]
    if shadow.empty or champion.empty or "request_id" not in predictions:
        return pd.DataFrame(columns=columns)
    answered = champion[["request_id", "score", "decision"]].astype({"request_id": str})
    ids = shadow["request_id"].astype(str)
    shadowed = shadow.loc[ids.str.endswith(SHADOW_SUFFIX), ["score", "decision"]].assign(
        request_id=ids[ids.str.endswith(SHADOW_SUFFIX)].str.removesuffix(SHADOW_SUFFIX)
    )
    pairs = answered.merge(shadowed, on="request_id", suffixes=("_champion", "_challenger"))
    return pairs[columns]


def spearman_interval(rho: float, n: int, z: float = Z95) -> tuple[float, float]:
    """95% interval of a Spearman correlation: Fisher's z with Fieller, Hartley & Pearson's (1957)
    variance 1.06 / (n - 3), which is accurate for |rho| below about 0.8."""
    if n <= 3:
        return -1.0, 1.0
    centre, half = math.atanh(max(min(rho, 0.999999), -0.999999)), z * math.sqrt(1.06 / (n - 3))
    return math.tanh(centre - half), math.tanh(centre + half)


def cohen_kappa(a: np.ndarray, b: np.ndarray, z: float = Z95) -> tuple[float, float, float] | None:
    """Cohen's kappa of two raters' yes/no decisions with Cohen's (1960) large-sample interval
    (SE = sqrt(p_o (1 − p_o) / n) / (1 − p_e)); None when chance agreement is total (neither or
    both always say yes). Raw agreement is the wrong measure at rare flags: two models that flag
    2% each, never the same requests, still agree on 96% of them; kappa is about 0."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    n = len(a)
    if n == 0:
        return None
    p_o = float((a == b).mean())
    p_e = float(a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean()))
    if p_e >= 1.0:
        return None
    kappa = (p_o - p_e) / (1 - p_e)
    se = math.sqrt(p_o * (1 - p_o) / n) / (1 - p_e)
    return kappa, kappa - z * se, min(1.0, kappa + z * se)


def agreement(
    predictions: pd.DataFrame,
    spec: CanarySpec,
    challenger_version: str | None = None,
    champion_version: str | None = None,
    z: float = Z95,
    task: Task = "classification",
) -> list[CheckResult]:
    """Paired agreement of the two models in shadow mode (no check without shadow rows): rank
    correlation of their scores and (classification) Cohen's kappa of their decisions, each judged
    by its interval against the configured floor. Distribution checks (PSI) miss a challenger whose
    scores look alike in aggregate but land on different requests; pairs see it. A regression makes
    no decisions: only the rank correlation of the two models' predictions is judged."""
    pairs = shadow_pairs(predictions, challenger_version, champion_version)
    n = len(pairs)
    if n == 0:
        return []
    policy = spec.agreement_on_unmeasurable
    if n < spec.min_requests:
        why = f"{n} paired requests, need {spec.min_requests}"
        waiting = [not_measurable("score_rank_correlation", spec.min_score_rank_correlation, ">=", why, policy)]
        if task == "classification":
            kappa_policy = spec.flag_kappa_on_unmeasurable
            waiting.append(not_measurable("flag_kappa", spec.min_flag_kappa, ">=", why, kappa_policy))
        return waiting
    checks = []
    rho = stats.spearmanr(pairs["score_champion"], pairs["score_challenger"]).statistic
    if np.isfinite(rho):
        low, high = spearman_interval(float(rho), n, z)
        checks.append(interval_check("score_rank_correlation", float(rho), low, high,
                                     spec.min_score_rank_correlation, ">=", policy, f"Spearman on {n} paired requests",
                                     pairs=n))  # fmt: skip
    else:
        checks.append(not_measurable("score_rank_correlation", spec.min_score_rank_correlation, ">=",
                                     f"a constant score on {n} paired requests has no rank order", policy))  # fmt: skip
    if task == "regression":
        return checks
    x, c = pairs["decision_challenger"].astype(bool).to_numpy(), pairs["decision_champion"].astype(bool).to_numpy()
    same = float((x == c).mean())
    detail = (f"same decision on {same:.1%} of {n} paired requests, flagged {x.mean():.1%} by the challenger and "
              f"{c.mean():.1%} by the champion, both {(x & c).sum()}")  # fmt: skip
    kappa = cohen_kappa(x, c, z)
    if kappa is None:
        checks.append(not_measurable("flag_kappa", spec.min_flag_kappa, ">=", f"no contrast in the decisions: {detail}",
                                     spec.flag_kappa_on_unmeasurable, pairs=n))  # fmt: skip
    else:
        checks.append(interval_check("flag_kappa", kappa[0], kappa[1], kappa[2], spec.min_flag_kappa, ">=",
                                     spec.flag_kappa_on_unmeasurable, detail, pairs=n, agreement=same))  # fmt: skip
    return checks


def enough_data(verdict: Verdict) -> bool:
    return all(c.passed for c in verdict.checks if c.name.startswith("requests_"))


@dataclass(frozen=True)
class ABReport:
    """Difference in the flagged rate (challenger − champion) with its confidence interval,
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


def ab_report(
    predictions: pd.DataFrame,
    spec: CanarySpec,
    metric: str = "decision",
    challenger_version: str | None = None,
    champion_version: str | None = None,
) -> ABReport:
    champion, challenger = variant_rows(predictions, challenger_version, champion_version)
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
