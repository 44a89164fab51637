"""Training-set checks and gates on hand-made data, where the right verdict is known."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlcycle.config import GatesSpec, QualitySpec
from mlcycle.evaluation import evaluate
from mlcycle.gates import run_gates
from mlcycle.validation import check_training_set

RNG = np.random.default_rng(0)


def frame(n: int = 5000, rate: float = 0.03) -> pd.DataFrame:
    y = (RNG.random(n) < rate).astype("int8")
    return pd.DataFrame(
        {
            "is_fraud": y,
            "signal": y * 1.0 + RNG.normal(0, 1.2, n),
            "noise": RNG.normal(0, 1, n),
            "request_unix": np.full(n, 1_800_000_000),
            "last_txn_unix": np.full(n, 1_799_990_000),
        }
    )


def verdict(df: pd.DataFrame, **spec) -> dict[str, bool]:
    result = check_training_set(df, ["signal", "noise"], "is_fraud", QualitySpec(**spec))
    return {c.name: c.passed for c in result.checks}


def test_clean_training_set_passes() -> None:
    assert all(verdict(frame()).values())


def test_label_leak_is_caught() -> None:
    df = frame()
    df["noise"] = df["is_fraud"] + RNG.normal(0, 0.01, len(df))
    assert not verdict(df)["max_single_feature_auc"]


def test_feature_clock_after_the_event_is_caught() -> None:
    df = frame()
    df.loc[:9, "last_txn_unix"] = df["request_unix"].iloc[0] + 60
    result = check_training_set(df, ["signal", "noise"], "is_fraud", QualitySpec())
    late = next(c for c in result.checks if c.name == "feature_after_event_rows")
    assert not late.passed and late.value == 10


def test_label_rate_and_null_rate_bounds() -> None:
    assert not verdict(frame(rate=0.5))["label_rate"]
    df = frame()
    df.loc[: len(df) // 2, "signal"] = np.nan
    assert not verdict(df)["null_rate[signal]"]
    assert verdict(df, null_rate_overrides={"signal": 0.6})["null_rate[signal]"]


def scored(auc_noise: float, n: int = 20000) -> pd.DataFrame:
    y = (RNG.random(n) < 0.05).astype(int)
    return pd.DataFrame(
        {
            "is_fraud": y,
            "score": 1 / (1 + np.exp(-(y * 3 + RNG.normal(0, auc_noise, n) - 3))),
            "amount": RNG.lognormal(3, 1, n),
            "age_band": RNG.choice(["18-24", "25-34", "65+"], n),
            "account_age_days": RNG.uniform(0, 900, n),
        }
    )


def test_regression_gate_compares_with_the_champion_on_the_same_rows() -> None:
    df = scored(1.0)
    good = evaluate(df, df["score"].to_numpy(), "is_fraud", 0.5)
    worse = evaluate(df, np.clip(df["score"] + RNG.normal(0, 0.3, len(df)), 0, 1), "is_fraud", 0.5)
    good.latency_ms = worse.latency_ms = {"p99": 1.0}
    spec = GatesSpec(min_roc_auc=0.5, min_pr_auc=0.0)
    assert run_gates(good, spec, champion=good).passed
    rejected = run_gates(worse, spec, champion=good)
    assert {c.name for c in rejected.failed} >= {"no_regression_roc_auc"}
    assert all(c.evidence for c in rejected.failed)  # the values compared are kept


def test_latency_gate_reads_the_measured_p99() -> None:
    df = scored(1.0)
    report = evaluate(df, df["score"].to_numpy(), "is_fraud", 0.5)
    spec = GatesSpec(min_roc_auc=0.5, min_pr_auc=0.0, max_p99_latency_ms=25.0)
    report.latency_ms = {"p50": 1.0, "p99": 24.0}
    assert run_gates(report, spec).passed
    report.latency_ms = {"p50": 1.0, "p99": 40.0}
    assert [c.name for c in run_gates(report, spec).failed] == ["max_p99_latency_ms"]
    report.latency_ms = {}
    assert "max_p99_latency_ms" in [c.name for c in run_gates(report, spec).failed]  # unmeasured fails
