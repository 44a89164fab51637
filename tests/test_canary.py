"""Canary analysis on synthetic prediction logs where the right verdict is known, and its
statistics against independent NumPy / SciPy computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from mlcycle.canary import ab_report, analyze, auc_se, psi
from mlcycle.config import CanarySpec

RNG = np.random.default_rng(7)
SPEC = CanarySpec(min_requests=200, min_labelled=200, min_labelled_positives=30)


def log(n: int, variant: str, *, score_shift: float = 0.0, latency: float = 5.0, error_rate: float = 0.0,
        auc_noise: float = 1.0, labelled: bool = True, shadow: bool = False) -> pd.DataFrame:  # fmt: skip
    y = (RNG.random(n) < 0.1).astype(float)
    score = 1 / (1 + np.exp(-(2.5 * y + RNG.normal(0, auc_noise, n) - 3 + score_shift)))
    return pd.DataFrame(
        {
            "variant": variant,
            "shadow": shadow,
            "score": score,
            "decision": score >= 0.5,
            "latency_ms": RNG.gamma(4, latency / 4, n),
            "error": np.where(RNG.random(n) < error_rate, "boom", None),
            "is_fraud": y if labelled else np.nan,
        }
    )


def verdict(champion: pd.DataFrame, challenger: pd.DataFrame) -> dict[str, bool]:
    return {c.name: c.passed for c in analyze(pd.concat([champion, challenger]), SPEC).checks}


def test_a_challenger_like_the_champion_passes() -> None:
    assert all(verdict(log(2000, "champion"), log(400, "challenger")).values())


def test_each_guard_trips_on_its_own_fault() -> None:
    champion = log(2000, "champion")
    assert not verdict(champion, log(400, "challenger", error_rate=0.05))["error_rate_increase"]
    assert not verdict(champion, log(400, "challenger", latency=30.0))["p99_latency_ms"]
    assert not verdict(champion, log(400, "challenger", score_shift=2.0))["score_psi"]
    assert not verdict(champion, log(1500, "challenger", auc_noise=4.0))["auc_delta_ucb95"]


def test_too_little_data_is_not_judged_as_a_pass() -> None:
    checks = verdict(log(2000, "champion"), log(50, "challenger"))
    assert checks == {"requests_champion": True, "requests_challenger": False}


def test_few_labels_are_not_measurable_and_do_not_fail() -> None:
    champion = log(2000, "champion")
    challenger = log(400, "challenger", auc_noise=4.0)
    challenger.loc[challenger.index[40:], "is_fraud"] = np.nan  # only 40 labels, ~4 positives
    result = {c.name: c for c in analyze(pd.concat([champion, challenger]), SPEC).checks}
    assert result["auc_delta_ucb95"].passed and result["auc_delta_ucb95"].value is None


def test_psi_matches_an_independent_computation() -> None:
    a, b = RNG.beta(0.3, 5, 5000), RNG.beta(0.35, 5, 3000)
    edges = np.quantile(a, np.linspace(0, 1, 11))
    edges[0], edges[-1] = -np.inf, np.inf
    ea = (np.histogram(a, edges)[0] + 0.5) / (len(a) + 5)
    eb = (np.histogram(b, edges)[0] + 0.5) / (len(b) + 5)
    assert psi(a, b) == pytest.approx(float(np.sum((eb - ea) * np.log(eb / ea))))


def test_auc_standard_error_matches_the_bootstrap() -> None:
    y = (RNG.random(3000) < 0.05).astype(int)
    s = y * 1.2 + RNG.normal(0, 1, 3000)
    auc = roc_auc_score(y, s)
    boot = [roc_auc_score(y[i], s[i]) for i in (RNG.integers(0, 3000, 3000) for _ in range(300))]
    assert auc_se(auc, int(y.sum()), int((1 - y).sum())) == pytest.approx(np.std(boot), rel=0.25)


def test_ab_report_interval_and_sample_size() -> None:
    champion = log(5000, "champion")
    challenger = log(5000, "challenger", score_shift=0.5)
    report = ab_report(pd.concat([champion, challenger]), SPEC)
    p1, p2 = champion["decision"].mean(), challenger["decision"].mean()
    assert report.difference == pytest.approx(p2 - p1)
    z = stats.norm.ppf(0.975)
    se = np.sqrt(p1 * (1 - p1) / 5000 + p2 * (1 - p2) / 5000)
    assert (report.ci_low, report.ci_high) == pytest.approx((p2 - p1 - z * se, p2 - p1 + z * se))
    assert (report.n_required_per_arm > 0 and "per arm" in report.line()) or report.decided
