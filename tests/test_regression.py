"""The regression task end to end in the library's modules, and generic evaluation slices.

Expected answers come from outside the code under test: scikit-learn's metrics, SciPy's paired
t-test, hand-worked numbers, hand-counted groups and simulation against a known truth.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from mlcycle.data import validation
from mlcycle.decisions import Verdict
from mlcycle.monitoring import drift as monitoring
from mlcycle.project.config import (
    CanarySpec,
    GatesSpec,
    ModelSpec,
    MonitoringSpec,
    QualitySpec,
    SliceSpec,
    XGBoostParams,
)
from mlcycle.registry import model_card
from mlcycle.serving.canary import analyze
from mlcycle.training import fit as training
from mlcycle.training import gates
from mlcycle.training.evaluation import EvaluationReport, evaluate, regression_metrics, slice_columns

REG = {"task": "regression"}


def _report(y: np.ndarray, pred: np.ndarray, groups: np.ndarray | None = None) -> EvaluationReport:
    frame = pd.DataFrame({"y": y} | ({"group": groups} if groups is not None else {}))
    return evaluate(frame, pred, "y", math.nan, task="regression", protected="group" if groups is not None else None)


# --- metrics -----------------------------------------------------------------------------------------


def test_regression_metrics_match_scikit_learn_overall_and_per_slice() -> None:
    rng = np.random.default_rng(0)
    n = 1000
    frame = pd.DataFrame({"y": rng.normal(10, 3, n), "region": rng.choice(["north", "south"], n)})
    pred = frame["y"].to_numpy() + rng.normal(0.5, 1.5, n)
    report = evaluate(frame, pred, "y", 0.5, task="regression", slices=[SliceSpec(column="region")])
    o = report.overall
    assert o.n == n and o.mean_label == pytest.approx(frame["y"].mean())
    assert o.rmse == pytest.approx(math.sqrt(mean_squared_error(frame["y"], pred)))
    assert o.mae == pytest.approx(mean_absolute_error(frame["y"], pred))
    assert o.r2 == pytest.approx(r2_score(frame["y"], pred))
    for region, m in report.slices["region"].items():
        rows = (frame["region"] == region).to_numpy()
        assert m.n == rows.sum()
        assert m.rmse == pytest.approx(math.sqrt(mean_squared_error(frame["y"][rows], pred[rows])))
        assert m.mae == pytest.approx(mean_absolute_error(frame["y"][rows], pred[rows]))
        assert m.r2 == pytest.approx(r2_score(frame["y"][rows], pred[rows]))
    assert math.isnan(report.threshold) and report.task == "regression"
    flat = report.flat_metrics()
    assert flat["test.rmse"] == pytest.approx(o.rmse) and "threshold" not in flat
    assert {k for k in flat if k.startswith("slice.region.north.")} == {
        f"slice.region.north.{k}" for k in ("n", "mean_label", "rmse", "mae", "r2")
    }
    # A constant label has no variance to explain: R² is not reported as a number.
    assert regression_metrics(np.ones(5), np.arange(5.0)).r2 is None


# --- generic slices ------------------------------------------------------------------------------------


def test_generic_slices_on_a_toy_frame_with_hand_counted_groups() -> None:
    """size: [0, 10) small (0, 9.9 → 2), [10, 100) large (10, 50 → 2), 100 and −1 outside the bins
    and NaN → unknown (3); colour: red 2, blue 3, missing 2 → unknown; the protected attribute
    (site) is a slice too, placed first, with its values as groups."""
    frame = pd.DataFrame(
        {
            "size": [0, 9.9, 10, 50, 100, -1, np.nan],
            "colour": ["red", "blue", "blue", None, "red", "blue", None],
            "site": ["a", "a", "b", "b", "b", None, "a"],
        }
    )
    slices = [
        SliceSpec(column="size", name="size_band", bins=[0, 10, 100], labels=["small", "large"]),
        SliceSpec(column="colour"),
    ]
    groups = slice_columns(frame, slices, protected="site")
    assert list(groups.columns) == ["site", "size_band", "colour"]
    count = {c: groups[c].value_counts().to_dict() for c in groups}
    assert count["size_band"] == {"small": 2, "large": 2, "unknown": 3}
    assert count["colour"] == {"blue": 3, "red": 2, "unknown": 2}
    assert count["site"] == {"a": 3, "b": 3, "unknown": 1}
    assert groups["size_band"].tolist() == ["small", "small", "large", "large", "unknown", "unknown", "unknown"]
    # Bins without labels are named by their edges; a protected attribute that is a declared slice
    # is not added twice.
    unnamed = slice_columns(frame, [SliceSpec(column="size", bins=[0, 10, 100])], protected="size")
    assert list(unnamed.columns) == ["size"] and unnamed["size"].iloc[0] == "[0, 10)"
    with pytest.raises(ValueError, match="'weight'"):
        slice_columns(frame, [SliceSpec(column="weight")])
    # Per-slice metrics are computed on those groups.
    frame["y"] = np.arange(7.0)
    report = evaluate(frame, np.arange(7.0) + 1, "y", math.nan, task="regression", slices=slices, protected="site")
    assert {g: m.n for g, m in report.slices["size_band"].items()} == {"large": 2, "small": 2, "unknown": 3}
    assert report.slices["colour"]["red"].mae == pytest.approx(1.0)


# --- max_rmse: interval coverage and outcomes ----------------------------------------------------------


def test_the_rmse_bound_interval_covers_the_true_rmse_about_95_percent_of_the_time() -> None:
    """400 evaluation windows of 200 rows whose errors are N(0, 2²): the true RMSE is 2. The gate's
    95% interval should hold 2 in about 380 of them (binomial sd ~4.4)."""
    rng = np.random.default_rng(2026)
    spec = GatesSpec(max_rmse=2.0)
    covered = 0
    for _ in range(400):
        y = rng.normal(0, 5, 200)
        check = gates.max_rmse(_report(y, y + rng.normal(0, 2, 200)), spec)
        covered += check.evidence["ci_low"] <= 2.0 <= check.evidence["ci_high"]
    assert 0.92 <= covered / 400 <= 0.98, covered


def test_the_rmse_bound_passes_fails_or_is_not_measurable_on_its_interval() -> None:
    rng = np.random.default_rng(3)
    y = rng.normal(0, 5, 2000)
    report = _report(y, y + rng.normal(0, 2, 2000))
    rmse = report.overall.rmse
    assert gates.max_rmse(report, GatesSpec(max_rmse=2.5)).status == "pass"
    assert gates.max_rmse(report, GatesSpec(max_rmse=1.5)).status == "fail"
    straddled = gates.max_rmse(report, GatesSpec(max_rmse=round(rmse, 2)))
    assert straddled.status == "not_measurable" and not straddled.passed  # block by default
    warned = gates.max_rmse(report, GatesSpec(max_rmse=round(rmse, 2), when_unmeasurable={"max_rmse": "warn"}))
    assert warned.status == "not_measurable" and warned.passed
    unset = gates.max_rmse(report, GatesSpec())
    assert unset.passed and unset.evidence["applicable"] is False and "not applicable" in unset.detail


# --- no regression vs the champion: paired squared errors ----------------------------------------------


def test_the_paired_no_regression_interval_by_hand() -> None:
    """Five rows, labels 1..5. Champion errors (1, −1, 1, −1, 0): squared (1, 1, 1, 1, 0), MSE 0.8.
    Candidate errors (2, −1, 1, −2, 1): squared (4, 1, 1, 4, 1), MSE 2.2. Differences d = (3, 0, 0,
    3, 1): mean 1.4; deviations (1.6, −1.4, −1.4, 1.6, −0.4), squares summing to 9.2, variance
    9.2 / 4 = 2.3, sd 1.516575, se 1.516575 / √5 = 0.678233; t(0.975, 4 df) = 2.776445, half-width
    1.883077: interval −0.483077 … 3.283077. Bound for a 2% tolerance: (1.02² − 1) · 0.8 = 0.03232,
    inside the interval: not measurable (five rows cannot tell)."""
    y = np.arange(1.0, 6.0)
    champion = _report(y, y + np.array([1, -1, 1, -1, 0.0]))
    candidate = _report(y, y + np.array([2, -1, 1, -2, 1.0]))
    check = gates.no_regression_rmse(candidate, champion, GatesSpec(max_regression_rmse=0.02))
    assert check.value == pytest.approx(1.4)
    assert (check.evidence["ci_low"], check.evidence["ci_high"]) == pytest.approx((-0.483077, 3.283077), abs=1e-6)
    assert check.bound == pytest.approx(0.03232)
    assert check.status == "not_measurable" and not check.passed
    assert check.evidence["candidate"] == pytest.approx(math.sqrt(2.2))


def test_no_regression_matches_scipy_paired_t_and_judges_both_ways() -> None:
    rng = np.random.default_rng(5)
    n = 3000
    y = rng.normal(50, 10, n)
    shared = rng.normal(0, 3, n)  # what both models get wrong on each row
    champion = _report(y, y + shared + rng.normal(0, 1, n))
    same = _report(y, champion.scores)
    spec = GatesSpec(max_regression_rmse=0.02)
    check = gates.no_regression_rmse(same, champion, spec)
    assert check.status == "pass" and check.value == 0.0  # the same model: a difference of exactly 0
    worse = _report(y, y + shared + rng.normal(0, 2.5, n))
    check = gates.no_regression_rmse(worse, champion, spec)
    sq_x, sq_c = (worse.scores - y) ** 2, (champion.scores - y) ** 2
    oracle = stats.ttest_rel(sq_x, sq_c).confidence_interval(0.95)
    assert (check.evidence["ci_low"], check.evidence["ci_high"]) == pytest.approx((oracle.low, oracle.high))
    assert check.status == "fail"
    # Through the task's entry point: the regression gates run, the classification ones do not.
    verdict = gates.run_gates(worse, spec, champion)
    assert [c.name for c in verdict.checks] == [
        "max_rmse", "fairness_mae_ratio", "max_p99_latency_ms", "no_regression_rmse",
    ]  # fmt: skip
    assert not verdict.passed and [c.name for c in verdict.measured_failures] == ["no_regression_rmse"]
    other_rows = _report(y[:-1], champion.scores[:-1])
    assert gates.no_regression_rmse(worse, other_rows, spec).status == "not_measurable"


# --- fairness: the ratio of mean absolute errors between groups ----------------------------------------


def _grouped(sizes: dict[str, tuple[int, float]], seed: int) -> EvaluationReport:
    """Per group (rows, error sd): errors N(0, sd²), so the group's MAE is sd·√(2/π)."""
    rng = np.random.default_rng(seed)
    groups = np.concatenate([[g] * n for g, (n, _) in sizes.items()])
    errors = np.concatenate([rng.normal(0, sd, n) for n, sd in sizes.values()])
    y = rng.normal(0, 5, len(errors))
    return _report(y, y + errors, groups)


def test_fairness_mae_ratio_fails_passes_or_is_not_measurable() -> None:
    spec = GatesSpec(max_fairness_mae_ratio=1.25)
    # One group bears twice the error: the ratio's Bonferroni lower bound is far above 1.25.
    failing = _grouped({"a": (2000, 1.0), "b": (2000, 2.0), "c": (2000, 1.0)}, seed=1)
    check = gates.fairness_mae_ratio(failing, spec, "group")
    frame = pd.DataFrame({"err": np.abs(failing.scores - failing.labels), "group": np.repeat(["a", "b", "c"], 2000)})
    mae = frame.groupby("group")["err"].mean()
    assert check.status == "fail" and check.evidence["pair"] in (["a", "b"], ["b", "c"])
    a, b = check.evidence["pair"]
    assert check.value == pytest.approx(max(mae[a], mae[b]) / min(mae[a], mae[b]))
    assert check.evidence["ci_low"] > 1.25 and len(check.evidence["pairs"]) == 3
    # Equal errors on thousands of rows: every pair's upper bound is within the limit.
    passing = gates.fairness_mae_ratio(_grouped({"a": (5000, 1.0), "b": (5000, 1.0)}, seed=2), spec, "group")
    assert passing.status == "pass" and passing.evidence["ci_high"] < 1.25
    # 40 rows a group: a ratio near 1.2 cannot be told from 1.25 either way.
    small = _grouped({"a": (40, 1.0), "b": (40, 1.2)}, seed=3)
    unsure = gates.fairness_mae_ratio(small, spec, "group")
    assert unsure.status == "not_measurable", unsure.detail
    assert unsure.evidence["ci_low"] < 1.25 < unsure.evidence["ci_high"]
    assert unsure.passed  # fairness warns by default …
    blocked = GatesSpec(max_fairness_mae_ratio=1.25, when_unmeasurable={"fairness": "block"})
    assert not gates.fairness_mae_ratio(small, blocked, "group").passed  # … or blocks, by config
    # Too few rows per group: not measurable, the groups listed as skipped.
    tiny = gates.fairness_mae_ratio(_grouped({"a": (10, 1.0), "b": (10, 1.0)}, seed=4), spec, "group")
    assert tiny.status == "not_measurable" and tiny.evidence["skipped"] == ["a", "b"]
    # No protected attribute declared: not applicable, a pass that says so (never blocks a project).
    none = gates.fairness_mae_ratio(failing, spec, None)
    assert none.passed and none.evidence["applicable"] is False and "no protected attribute" in none.detail


def test_classification_fairness_without_a_protected_attribute_is_not_applicable() -> None:
    rng = np.random.default_rng(6)
    y = (rng.random(2000) < 0.1).astype(int)
    report = evaluate(pd.DataFrame({"y": y}), np.clip(y * 0.6 + rng.random(2000) * 0.5, 0, 1), "y", 0.5)
    report.latency_ms = {"p99": 1.0}
    check = {c.name: c for c in gates.run_gates(report, GatesSpec(min_roc_auc=0.5, min_pr_auc=0.0)).checks}
    fairness = check["fairness_tpr_gap"]
    assert fairness.passed and fairness.evidence["applicable"] is False and "no protected attribute" in fairness.detail


# --- training ----------------------------------------------------------------------------------------------


def _signal_frame(n: int = 4000, seed: int = 0) -> pd.DataFrame:
    """y = 3·x1 + 2·sin(2·x2) + x3² + N(0, 0.3²), rows in time order; a linear model misses the
    curved terms."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, (n, 3))
    y = 3 * x[:, 0] + 2 * np.sin(2 * x[:, 1]) + x[:, 2] ** 2 + rng.normal(0, 0.3, n)
    times = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(np.arange(n), unit="min")
    return pd.DataFrame({"event_timestamp": times, "x1": x[:, 0], "x2": x[:, 1], "x3": x[:, 2], "target": y,
                         "region": rng.choice(["east", "west"], n)})  # fmt: skip


XGB = ModelSpec(xgboost=XGBoostParams(learning_rate=0.1, num_boost_round=400, early_stopping_rounds=20))
HGB = ModelSpec(flavor="sklearn", estimator="sklearn.ensemble.HistGradientBoostingRegressor", params={"max_iter": 200})


@pytest.mark.parametrize("spec", [XGB, HGB], ids=["xgboost", "sklearn-hgb"])
def test_train_candidate_recovers_a_known_signal(spec: ModelSpec) -> None:
    frame = _signal_frame()
    candidate = training.train_candidate(frame, ["x1", "x2", "x3"], spec, label="target", task="regression",
                                         protected="region")  # fmt: skip
    test = candidate.split.test
    pred = candidate.model.predict(test)
    assert candidate.report.overall.r2 == pytest.approx(r2_score(test["target"], pred))
    assert candidate.report.overall.r2 > 0.95, candidate.report.overall
    assert candidate.baseline_report.overall.r2 < candidate.report.overall.r2 - 0.05  # the ridge baseline
    assert math.isnan(candidate.model.threshold) and math.isnan(candidate.report.threshold)
    assert set(candidate.report.slices["region"]) == {"east", "west"}
    if spec.flavor == "xgboost":
        params = candidate.model.params
        assert params["objective"] == "reg:squarederror" and "scale_pos_weight" not in params
        assert list(candidate.model.history) == ["rmse"]
        assert candidate.model.best_iteration < 399  # stopped early on the validation RMSE


def test_a_model_spec_is_checked_against_the_task() -> None:
    from mlcycle.flavors import TaskMismatchError

    regressor = ModelSpec(flavor="sklearn", estimator="sklearn.linear_model.Ridge")
    regressor.check_task("regression")
    with pytest.raises(TaskMismatchError, match="not a classifier"):
        regressor.check_task("classification")


def test_regression_label_checks_on_the_training_set() -> None:
    frame = _signal_frame(2000)
    names = lambda checks: {c.name: c.passed for c in checks}  # noqa: E731
    spec = QualitySpec()
    assert all(names(validation.regression_label_checks(frame, ["x1", "x2", "x3"], "target", spec)).values())
    leaky = frame.assign(x3=frame["target"] * 2 + 1)
    assert not names(validation.regression_label_checks(leaky, ["x1", "x2", "x3"], "target", spec))[
        "max_single_feature_spearman"
    ]
    constant = frame.assign(target=4.0)
    assert not names(validation.regression_label_checks(constant, ["x1"], "target", spec))["label_distinct_values"]
    holes = frame.assign(target=frame["target"].where(frame.index % 10 > 0))
    check = {c.name: c for c in validation.regression_label_checks(holes, ["x1"], "target", spec)}["label_numeric"]
    assert not check.passed and check.value == 200


# --- canary, monitoring, model card ------------------------------------------------------------------------


def _canary_log(n: int, variant: str, error_sd: float, rng: np.random.Generator, labelled: bool = True) -> pd.DataFrame:
    y = rng.normal(100, 20, n)
    pred = y + rng.normal(0, error_sd, n)
    return pd.DataFrame({"variant": variant, "model_version": "1" if variant == "champion" else "2", "shadow": False,
                         "score": pred, "decision": False, "latency_ms": rng.gamma(4, 1.0, n), "error": None,
                         "label": y if labelled else np.nan})  # fmt: skip


def test_canary_regression_guard_on_matured_labels() -> None:
    rng = np.random.default_rng(8)
    spec = CanarySpec(min_requests=200, min_labelled=200, max_rmse_increase=0.1)

    def guard(champion: pd.DataFrame, challenger: pd.DataFrame, s: CanarySpec = spec):
        verdict = analyze(pd.concat([champion, challenger]), s, task="regression")
        return {c.name: c for c in verdict.checks}

    checks = guard(_canary_log(4000, "champion", 5.0, rng), _canary_log(4000, "challenger", 5.0, rng))
    assert "auc_delta" not in checks and checks["rmse_increase"].status == "pass"
    worse = guard(_canary_log(4000, "champion", 5.0, rng), _canary_log(4000, "challenger", 7.0, rng))
    assert worse["rmse_increase"].status == "fail"  # 40% above the champion's RMSE
    evidence = worse["rmse_increase"].evidence
    assert worse["rmse_increase"].value == pytest.approx(evidence["rmse_challenger"] / evidence["rmse_champion"] - 1)
    unlabelled = guard(_canary_log(400, "champion", 5.0, rng, False), _canary_log(400, "challenger", 5.0, rng, False))
    assert unlabelled["rmse_increase"].status == "not_measurable" and not unlabelled["rmse_increase"].passed
    warn = spec.model_copy(update={"rmse_without_matured_labels": "warn"})
    accepted = guard(_canary_log(400, "champion", 5.0, rng, False), _canary_log(400, "challenger", 5.0, rng, False),
                     warn)["rmse_increase"]  # fmt: skip
    assert accepted.status == "not_measurable" and accepted.passed


AS_OF = pd.Timestamp("2026-06-30 12:00", tz="UTC")


def _decay_world(n: int, error_sd: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """60 days of predictions; each label arrives 5 days after its event (no column: a fixed delay)."""
    rng = np.random.default_rng(seed)
    at = AS_OF - pd.Timedelta(days=60) + pd.to_timedelta(rng.uniform(0, 60 * 86400, n), unit="s")
    y = rng.normal(20, 4, n)
    ids = np.arange(n)
    predictions = pd.DataFrame({"row": ids.astype(str), "predicted_at": at, "score": y + rng.normal(0, error_sd, n)})
    labels = pd.DataFrame({"row": ids, "when": at, "value": y})
    return predictions, labels


def test_decay_monitoring_speaks_rmse_for_regression() -> None:
    columns = monitoring.LabelColumns(event_id="row", label="value", available_at=None, timestamp="when")
    spec = MonitoringSpec(max_rmse_increase=0.1, decay_rolling_windows=7, decay_min_labelled=100)
    predictions, labels = _decay_world(30_000, 2.0, seed=9)
    windows = monitoring.performance_windows(predictions, labels, AS_OF, 5.0, columns=columns, task="regression")
    matured = [w for w in windows if w.matured and w.predictions]
    w = matured[-1]
    rows = predictions[(predictions["predicted_at"] >= w.start) & (predictions["predicted_at"] < w.end)]
    truth = labels.set_index("row").loc[rows["row"].astype(int), "value"].to_numpy()
    assert w.rmse == pytest.approx(math.sqrt(mean_squared_error(truth, rows["score"])))
    assert w.mae == pytest.approx(mean_absolute_error(truth, rows["score"])) and w.roc_auc is None
    ok, _ = monitoring.decay_verdict(predictions, labels, AS_OF, 5.0, spec, columns=columns, task="regression",
                                     baseline_rmse=2.0)  # fmt: skip
    assert ok.state == "ok" and not ok.alert and ok.rmse_ci[0] < 2.0 < ok.rmse_ci[1]
    assert ok.late_labels["estimated"] is False and "not estimated" in ok.late_labels["line"]
    worse, _ = _decay_world(30_000, 3.0, seed=9)
    decayed, _ = monitoring.decay_verdict(worse, labels, AS_OF, 5.0, spec, columns=columns, task="regression",
                                          baseline_rmse=2.0)  # fmt: skip
    assert decayed.state == "decayed" and decayed.alert and decayed.rmse_ci[0] > 2.2
    few = predictions.iloc[:300]
    unsure, _ = monitoring.decay_verdict(few, labels, AS_OF, 5.0, spec, columns=columns, task="regression",
                                         baseline_rmse=2.0)  # fmt: skip
    assert unsure.state == "not_measurable" and not unsure.alert and "labelled rows" in unsure.reasons[0]
    no_baseline, _ = monitoring.decay_verdict(predictions, labels, AS_OF, 5.0, spec, columns=columns,
                                              task="regression")  # fmt: skip
    assert no_baseline.state == "not_measurable"


def test_the_model_card_of_a_regressor_speaks_rmse_and_mae() -> None:
    rng = np.random.default_rng(10)
    y = rng.normal(0, 5, 500)
    report = _report(y, y + rng.normal(0, 1, 500), rng.choice(["p", "q"], 500))
    report.latency_ms = {"p50": 0.1, "p99": 0.5}
    verdict = gates.run_gates(report, GatesSpec(), protected="group")
    card = model_card.CardInput("m", "1", "run", "svc", ["x"], {}, "hash", "commit", "lock", {}, report, report,
                                verdict, Verdict("q", ()))  # fmt: skip
    text = model_card.render_markdown(card)
    assert "| rmse |" in text and "| mae |" in text and "| RMSE | MAE | R² |" in text
    assert "linear (ridge) baseline" in text and "no decision threshold" in text
    assert "ROC-AUC" not in text and "Decision threshold" not in text
