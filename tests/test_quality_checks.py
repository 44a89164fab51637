"""Training-set checks and gates on hand-made data, where the right verdict is known."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from statsmodels.stats.proportion import confint_proportions_2indep
from tests.conftest import REPO_ROOT

from mlcycle.data.validation import check_training_set
from mlcycle.decisions import CheckResult, Verdict
from mlcycle.project.config import GatesSpec, QualitySpec
from mlcycle.registry import model_card
from mlcycle.training.evaluation import EvaluationReport, Metrics, evaluate
from mlcycle.training.gates import run_gates

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


def test_leak_strength_is_sklearns_auc_on_the_known_values_either_way_round() -> None:
    """An inverted leak (high value ⇒ negative) is as strong as a direct one; missing values and
    text are left out of a feature's AUC, and a constant feature is not scored."""
    from sklearn.metrics import roc_auc_score

    df = frame(4000, 0.1)
    df["inverted"] = np.round(-df["signal"], 1)  # rounded: ties
    df.loc[df.index[::7], "inverted"] = np.nan
    df["text"] = df["signal"].round(2).astype(str).astype(object)
    df.loc[df.index[::5], "text"] = "n/a"
    df["constant"] = 3.0
    result = check_training_set(df, ["inverted", "text", "constant"], "is_fraud", QualitySpec())
    leak = next(c for c in result.checks if c.name == "max_single_feature_auc")
    known = df["inverted"].notna()
    inverted = roc_auc_score(df["is_fraud"][known], df["inverted"][known])
    text = pd.to_numeric(df["text"], errors="coerce")
    direct = roc_auc_score(df["is_fraud"][text.notna()], text[text.notna()])
    assert inverted < 0.5 < direct
    assert leak.evidence["by_feature"] == {"inverted": round(1 - inverted, 4), "text": round(direct, 4)}
    assert leak.value == pytest.approx(max(1 - inverted, direct))


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


# --- fairness: every pair of groups, three outcomes ------------------------------------------------


def groups_report(groups: dict[str, tuple[float, int]]) -> EvaluationReport:
    """A report whose ``age_band`` slices have the given (TPR, positives); overall metrics pass."""

    def m(n: int, positives: int, recall: float | None) -> Metrics:
        return Metrics(n, positives, 0.95, 0.8, 0.99, 0.5, recall, 0.6, 0.01, 0.01)

    slices = {g: m(positives * 20, positives, tpr) for g, (tpr, positives) in groups.items()}
    return EvaluationReport(0.5, m(100_000, 2_000, 0.7), {"age_band": slices}, {"p99": 1.0})


def fairness(groups: dict[str, tuple[float, int]], **spec) -> CheckResult:
    verdict = run_gates(groups_report(groups), GatesSpec(**spec), protected="age_band")
    return next(c for c in verdict.checks if c.name.startswith("fairness"))


def test_fairness_judges_every_pair_of_three_groups() -> None:
    """Issue 10 item 2: A=0.80 (n=30), B=0.78 (n=5000), C=0.55 (n=5000) passed a 0.15 limit because
    only best (A) vs worst (C) was bounded. B−C: 0.23, and its 95% Newcombe interval, Bonferroni-
    adjusted for 3 pairs, starts at 0.208 (statsmodels confint_proportions_2indep, alpha 0.05/3)."""
    check = fairness({"A": (0.80, 30), "B": (0.78, 5000), "C": (0.55, 5000)})
    assert check.status == "fail"
    assert check.evidence["pair"] == ["B", "C"]
    assert check.value == pytest.approx(0.23)
    assert check.evidence["ci_low"] == pytest.approx(0.2079, abs=1e-4)


def test_fairness_gap_the_data_cannot_bound_is_not_measurable_never_a_silent_pass() -> None:
    """Issue 10 item 8: 0.85 vs 0.50 TPR on 30 positives each: the gap's interval (0.11 … 0.54)
    straddles 0.15, so the gate cannot pass it; the config says whether that blocks or warns."""
    groups = {"A": (0.85, 30), "B": (0.50, 30)}
    warned = run_gates(groups_report(groups), GatesSpec(when_unmeasurable={"fairness": "warn"}), protected="age_band")
    check = next(c for c in warned.checks if c.name.startswith("fairness"))
    assert check.status == "not_measurable" and check.mark == "WARN"
    assert warned.passed and [c.name for c in warned.warnings] == [check.name]
    blocked = run_gates(groups_report(groups), GatesSpec(when_unmeasurable={"fairness": "block"}), protected="age_band")
    assert not blocked.passed and blocked.state == "not_measurable"
    assert [c.name for c in blocked.undecided] == [check.name] and not blocked.measured_failures
    (why,) = blocked.reasons  # a refusal for want of evidence says so, with what was measured
    assert why.startswith("N/M fairness_tpr_gap: measured 0.35 for A vs B (95% CI") and "not measurable" in why


def test_fairness_passes_only_when_every_gap_is_confidently_within_the_limit() -> None:
    check = fairness({"A": (0.70, 5000), "B": (0.72, 5000), "C": (0.71, 4000)})
    assert check.status == "pass"
    assert check.evidence["ci_high"] < 0.15
    # A small fourth group makes one pair's upper bound cross the limit: no longer a pass.
    assert fairness({"A": (0.70, 5000), "B": (0.72, 5000), "C": (0.71, 4000), "D": (0.70, 30)}).status == (
        "not_measurable"
    )


def test_fairness_lower_bounds_are_adjusted_for_the_number_of_pairs() -> None:
    """0.75 vs 0.52 on 400 positives each: the 95% interval of the gap starts at 0.164 (> 0.15: a fail
    with two groups), but at 0.131 when adjusted for the 15 pairs of six groups (statsmodels newcomb,
    alpha 0.05 and 0.05/15). With four more groups in between, the gap is not shown above the limit."""
    two = {"X": (0.75, 400), "Y": (0.52, 400)}
    assert fairness(two).status == "fail"
    six = {**two, **{f"M{i}": (0.64, 400) for i in range(4)}}
    check = fairness(six)
    assert check.status == "not_measurable"
    assert len(check.evidence["pairs"]) == 15
    assert check.evidence["pairs"]["X vs Y"]["low"] == pytest.approx(0.1306, abs=1e-4)


def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+\.\d+", text)]


def refused_candidate() -> Verdict:
    """Refused three ways: ROC-AUC 0.95 under a 0.97 floor, PR-AUC 0.8 under 0.9, and a TPR gap of
    0.23 (X 0.75 vs Y 0.52 on 400 positives each) above 0.15."""
    spec = GatesSpec(min_roc_auc=0.97, min_pr_auc=0.9, max_fairness_gap=0.15)
    return run_gates(groups_report({"X": (0.75, 400), "Y": (0.52, 400)}), spec, protected="age_band")


def test_a_refusal_states_each_failed_gates_value_interval_and_bound() -> None:
    """Issue 22: a refused candidate said which gates failed, not by how much or how sure.

    Expected numbers, from elsewhere than mlcycle: the gap's 95% interval is statsmodels' Newcombe
    interval of 300/400 − 208/400 (0.1640 … 0.2931). The ROC-AUC's is Hanley & McNeil's, worked by
    hand for A = 0.95 on 2,000 positives and 98,000 negatives: Q1 = A/(2−A) = 0.904762, Q2 =
    2A²/(1+A) = 0.925641, var = (0.0475 + 1999·0.002262 + 97999·0.023141)/(2000·98000) = 1.1594e-5,
    SE = 0.003405, 0.95 ± 1.96·SE = 0.9433 … 0.9567. PR-AUC has no interval, and says so."""
    verdict = refused_candidate()
    assert [c.name for c in verdict.failed] == ["min_roc_auc", "min_pr_auc", "fairness_tpr_gap"]
    roc, pr, gap = verdict.reasons
    low, high = confint_proportions_2indep(300, 400, 208, 400, method="newcomb", compare="diff", alpha=0.05)

    assert "fairness_tpr_gap" in gap and "X vs Y" in gap and "95% CI" in gap and "<= 0.15" in gap
    assert _numbers(gap) == pytest.approx([0.23, low, high, 0.15], abs=5e-5)
    assert "min_roc_auc" in roc and "95% CI" in roc and ">= 0.97" in roc
    assert _numbers(roc) == pytest.approx([0.95, 0.9433, 0.9567, 0.97], abs=5e-5)
    assert "min_pr_auc" in pr and "no interval" in pr and ">= 0.9" in pr
    assert _numbers(pr) == pytest.approx([0.8, 0.9])
    # The same, in the markdown the training flow publishes as its Prefect artifact.
    table = verdict.markdown()
    assert all(reason in table for reason in verdict.reasons)
    gap_row = next(row for row in table.splitlines() if row.startswith("| fairness_tpr_gap |"))
    assert _numbers(gap_row.split("|")[3]) == pytest.approx([low, high], abs=5e-5)  # the interval column


def test_mlcycle_train_prints_why_the_gates_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI shows each refusing gate's value, interval and bound, as the flow returned them."""
    from typer.testing import CliRunner

    import mlcycle.flows
    from mlcycle.cli.app import app

    verdict = refused_candidate()
    result = {"run_id": "r1", "passed": False, "version": None, "alias": None, "task": "classification",
              "failed": [c.name for c in verdict.failed], "reasons": list(verdict.reasons),
              "model_card": None}  # fmt: skip
    monkeypatch.setattr(mlcycle.flows, "load_flow", lambda root, module, name: lambda **_: result)
    shown = CliRunner().invoke(app, ["train", "--config", str(REPO_ROOT / "mlcycle.yaml")])
    assert shown.exit_code == 1, shown.output
    output = " ".join(shown.output.split())  # the console wraps long lines
    low, high = confint_proportions_2indep(300, 400, 208, 400, method="newcomb", compare="diff", alpha=0.05)
    assert f"measured 0.23 for X vs Y (95% CI {low:.4g} … {high:.4g}), bound <= 0.15" in output
    assert "min_roc_auc: measured 0.95 (95% CI 0.9433 … 0.9567" in output
    assert "min_pr_auc: measured 0.8 (no interval" in output


def test_fairness_with_too_few_supported_groups_follows_the_policy() -> None:
    check = fairness({"A": (0.8, 10), "B": (0.5, 10)}, when_unmeasurable={"fairness": "block"})
    assert check.status == "not_measurable" and not check.passed
    assert check.evidence["skipped"] == ["A", "B"]


def test_unknown_gate_in_the_policy_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="fairnes"):
        GatesSpec(when_unmeasurable={"fairnes": "warn"})
    assert GatesSpec(when_unmeasurable={"min_roc_auc": "warn"}).on_unmeasurable("fairness") == "warn"  # default kept


def test_model_card_states_warnings_and_only_the_alias_given_at_registration() -> None:
    """Warned gates are listed in the card; the card, written once, no longer claims current aliases
    (v2's card said "Aliases: challenger" after v2 became champion)."""
    report = groups_report({"A": (0.85, 30), "B": (0.50, 30)})
    gates = run_gates(report, GatesSpec(), protected="age_band")
    assert [c.name for c in gates.warnings] == ["fairness_tpr_gap"]
    card = model_card.CardInput(
        "m", "2", "run", "svc", ["x"], {}, "hash", "commit", "lock", {}, report, None, gates, Verdict("q", ()),
        aliases=["challenger"], registered_at=datetime(2026, 1, 2, 3, 4, tzinfo=UTC),
    )  # fmt: skip
    text = model_card.render_markdown(card)
    assert "gates **passed with warnings** (fairness_tpr_gap)" in text
    warnings = text.split("## Warnings", 1)[1].split("##", 1)[0]
    assert "fairness_tpr_gap" in warnings and "straddles the bound 0.15" in warnings
    assert "Aliases: challenger" not in text
    assert "Registered with `challenger` on 2026-01-02 03:04 UTC" in text
    assert "current ones are in the MLflow registry" in text


def _paired_reports(seed: int, noise_champion: float, noise_candidate: float) -> tuple[EvaluationReport, ...]:
    """Champion and candidate scored on the same 20,000 rows (2% positives), each the same signal
    plus its own noise: more noise, lower ROC-AUC."""
    rng = np.random.default_rng(seed)
    n = 20_000
    frame = pd.DataFrame({"label": (rng.random(n) < 0.02).astype(int), "amount": 50.0})
    signal = np.where(frame["label"] == 1, 2.0, 0.0) + rng.normal(0, 1, n)
    scores = [1 / (1 + np.exp(-(signal + rng.normal(0, s, n)))) for s in (noise_champion, noise_candidate)]
    return tuple(evaluate(frame, s, "label", 0.5) for s in scores)


def test_no_regression_is_judged_on_the_paired_delong_interval() -> None:
    from sklearn.metrics import roc_auc_score

    spec = GatesSpec(max_regression_roc_auc=0.005, max_fairness_gap=1.0, fairness_min_support=1)
    champion, same = _paired_reports(1, 0.3, 0.3)
    same = evaluate(pd.DataFrame({"label": champion.labels, "amount": 50.0}), champion.scores, "label", 0.5)
    check = {c.name: c for c in run_gates(same, spec, champion).checks}["no_regression_roc_auc"]
    assert check.status == "pass" and check.value == 0.0  # the same model: a difference of exactly 0
    champion, worse = _paired_reports(2, 0.3, 3.0)
    check = {c.name: c for c in run_gates(worse, spec, champion).checks}["no_regression_roc_auc"]
    drop = roc_auc_score(worse.labels, worse.scores) - roc_auc_score(champion.labels, champion.scores)
    assert drop < -0.05 and check.value == pytest.approx(drop)  # the difference is sklearn's
    assert check.status == "fail" and check.evidence["ci_high"] < -0.005
    # A small drop whose interval reaches both sides of −0.005: the data cannot tell, the policy decides.
    champion, close = _paired_reports(3, 0.3, 0.45)
    check = {c.name: c for c in run_gates(close, spec, champion).checks}["no_regression_roc_auc"]
    assert check.evidence["ci_low"] < -0.005 < check.evidence["ci_high"], check.detail
    assert check.status == "not_measurable" and not check.passed  # block by default
    warn = spec.model_copy(update={"when_unmeasurable": {**spec.when_unmeasurable, "no_regression": "warn"}})
    assert {c.name: c for c in run_gates(close, warn, champion).checks}["no_regression_roc_auc"].passed


def test_classification_metrics_match_scikit_learn_overall_and_per_slice() -> None:
    """One ranking shared by every slice gives what scikit-learn gives on each slice's own rows,
    on a frame whose index is shuffled (positions, not labels, select the rows) and scores with ties."""
    from sklearn.metrics import average_precision_score, brier_score_loss, precision_score, recall_score, roc_auc_score

    from mlcycle.project.config import SliceSpec

    rng = np.random.default_rng(11)
    n = 3000
    y = (rng.random(n) < 0.08).astype(int)
    scores = np.round(np.clip(0.3 * y + rng.normal(0.3, 0.2, n), 0, 1), 2)  # two decimals: ties
    df = pd.DataFrame(
        {"label": y, "region": rng.choice(["north", "south", "east"], n), "age": rng.uniform(15, 90, n)},
        index=rng.permutation(n) + 1000,
    )
    slices = [SliceSpec(column="age", name="age_band", bins=[0, 30, 60, 200], labels=["young", "mid", "old"])]
    report = evaluate(df, scores, "label", 0.45, slices=slices, protected="region")
    groups = {
        "region": df["region"].to_numpy(),
        "age_band": pd.cut(df["age"], [0, 30, 60, 200], labels=["young", "mid", "old"], right=False)
        .astype(str)
        .to_numpy(),
    }
    assert list(report.slices) == ["region", "age_band"]
    for attribute, values in groups.items():
        assert list(report.slices[attribute]) == sorted(set(values))
        for group, m in report.slices[attribute].items():
            rows = values == group
            yg, sg = y[rows], scores[rows]
            assert (m.n, m.positives) == (rows.sum(), yg.sum())
            assert m.roc_auc == pytest.approx(roc_auc_score(yg, sg), abs=1e-12)
            assert m.pr_auc == pytest.approx(average_precision_score(yg, sg), abs=1e-12)
            assert m.precision == pytest.approx(precision_score(yg, sg >= 0.45))
            assert m.recall == pytest.approx(recall_score(yg, sg >= 0.45))
            assert m.brier == pytest.approx(brier_score_loss(yg, sg))
    o = report.overall
    assert o.roc_auc == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    assert o.pr_auc == pytest.approx(average_precision_score(y, scores), abs=1e-12)
    # The report keeps the rows' labels and scores in their own order (paired tests rely on it).
    assert np.array_equal(report.labels, y) and np.array_equal(report.scores, scores)


def test_every_gate_has_one_registry_entry_and_one_policy_key() -> None:
    """Adding a gate is its bound in GatesSpec, its policy key in GatesSpec.GATES and one registry
    entry: the two lists must name the same gates, or a policy would govern nothing (or a gate none)."""
    from mlcycle.training.gates import REGISTRY

    assert sorted(g.key for g in REGISTRY) == sorted(GatesSpec.GATES)
    assert len({g.key for g in REGISTRY}) == len(REGISTRY)
