"""The label-free estimate inside a monitoring check (mlcycle.monitoring.job): calibrated on the
champion's held-out window, judged against its test ROC-AUC less the allowed drop, shown beside
each matured window's realized ROC-AUC. Simulated scores whose true probabilities are known make
the expected answers: a window from the reference's world under covariate shift is fine and its
interval holds the realized ROC-AUC; a window whose scores collapse to the middle reads as decayed;
without held-out labels or enough of them it is not measurable, never a pass."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from mlcycle.monitoring import job
from mlcycle.project.config import ProjectConfig


def world(n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Scores that are the true probabilities: x ~ N(shift, 1), P(y=1|x) = sigmoid(2x - 3)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(shift, 1.0, n)
    p = 1 / (1 + np.exp(-(2 * x - 3)))
    return p, (rng.random(n) < p).astype(int)


def reference(seed: int = 1) -> job.ChampionReference:
    scores, labels = world(20_000, seed)
    return job.ChampionReference(version="3", stats=None, scores=scores, sample=pd.DataFrame(), numeric=[],
                                 categorical=[], baseline_roc_auc=float(roc_auc_score(labels, scores)),
                                 labels=labels, threshold=0.5)  # type: ignore[arg-type]  # fmt: skip


@pytest.fixture
def cfg() -> ProjectConfig:
    return ProjectConfig.model_validate({"model": {"name": "m"}, "monitoring": {"max_roc_auc_drop": 0.05}})


def test_a_window_like_the_reference_is_fine_and_its_estimate_covers_the_truth(cfg: ProjectConfig) -> None:
    ref = reference()
    scores, labels = world(5_000, seed=2, shift=0.5)  # covariate shift: P(y|x) unchanged
    out = job.label_free_estimate(cfg, ref, scores)
    low, high = out["roc_auc_ci"]
    assert out["state"] == "pass" and not out["alert"]
    assert low <= roc_auc_score(labels, scores) <= high  # the labels that then arrive
    assert out["bound"] == pytest.approx(ref.baseline_roc_auc - 0.05)
    assert out["calibration"]["calibration_rows"] == 20_000
    assert "Expected ROC-AUC" in job._estimate_line({**out, "baseline_roc_auc": ref.baseline_roc_auc})


def test_scores_that_no_longer_separate_read_as_decayed(cfg: ProjectConfig) -> None:
    ref = reference()
    rng = np.random.default_rng(5)
    scores = np.clip(rng.normal(0.5, 0.01, 5_000), 0, 1)  # every answer near the middle: nothing ranks
    out = job.label_free_estimate(cfg, ref, scores)
    assert out["state"] == "fail" and out["alert"] and out["roc_auc_ci"][1] < out["bound"]


def test_without_labels_or_enough_of_them_it_says_not_measurable(cfg: ProjectConfig) -> None:
    ref = reference()
    no_labels = job.ChampionReference(**{**ref.__dict__, "labels": None})
    out = job.label_free_estimate(cfg, no_labels, ref.scores[:100])
    assert out["state"] == "not_measurable" and not out["alert"] and "held-out labels" in out["reasons"][0]
    few = job.ChampionReference(
        **{**ref.__dict__, "scores": ref.scores[:200], "labels": np.r_[np.ones(5), np.zeros(195)]}
    )
    out = job.label_free_estimate(cfg, few, ref.scores[:100])
    assert out["state"] == "not_measurable" and "calibration" in out["reasons"][0]
    tiny = job.label_free_estimate(cfg, ref, np.full(30, 0.01))  # far fewer than 10 expected positives
    assert tiny["state"] == "not_measurable" and not tiny["alert"]
    regression = ProjectConfig.model_validate({"task": "regression", "model": {"name": "m", "flavor": "xgboost"}})
    assert job.label_free_estimate(regression, ref, ref.scores)["state"] == "not_measurable"


def test_matured_windows_get_the_estimate_beside_the_realized_value() -> None:
    ref = reference()
    scores, _ = world(3_000, seed=9)
    start = pd.Timestamp("2026-01-01", tz="UTC")
    answers = pd.DataFrame(
        {"score": scores, "predicted_at": start + pd.to_timedelta(np.arange(3_000) % 2 * 86400, "s")}
    )
    windows = [
        {"start": start.isoformat(), "end": (start + pd.Timedelta(days=1)).isoformat(), "matured": True,
         "roc_auc": 0.8},
        {"start": (start + pd.Timedelta(days=1)).isoformat(), "end": (start + pd.Timedelta(days=2)).isoformat(),
         "matured": False, "roc_auc": None},
    ]  # fmt: skip
    job.estimate_windows(ref, answers, windows)
    first = scores[::2]  # the rows of day one
    assert "estimated_roc_auc" in windows[0] and "estimated_roc_auc" not in windows[1]
    assert (
        windows[0]["estimated_roc_auc_ci"][0] < windows[0]["estimated_roc_auc"] < windows[0]["estimated_roc_auc_ci"][1]
    )
    # The estimate of exactly day one's rows: recomputed here from the same calibration by brute force.
    from mlcycle.monitoring.estimate import calibrate

    p = calibrate(ref.scores, ref.labels).apply(first)
    pairs = p[:, None] * (1 - p)[None, :]
    order = np.sign(first[:, None] - first[None, :])
    np.fill_diagonal(pairs, 0)
    brute = ((order > 0) * pairs + 0.5 * (order == 0) * pairs).sum() / pairs.sum()
    assert windows[0]["estimated_roc_auc"] == pytest.approx(brute, abs=1e-9)


def test_a_window_overlapping_the_held_out_window_is_not_graded_against_its_estimate() -> None:
    """The calibration was fitted on the held-out window's labels: the estimate of answers from that
    span is not put beside their realized value (it would be graded on its own training data)."""
    start = pd.Timestamp("2026-01-01", tz="UTC")
    ref = job.ChampionReference(**{**reference().__dict__,
                                   "held_out_span": ("2025-12-20T00:00:00", "2026-01-01T06:00:00")})  # fmt: skip
    scores, _ = world(2_000, seed=4)
    answers = pd.DataFrame({"score": scores, "predicted_at": start + pd.to_timedelta(np.arange(2_000) % 2, "D")})
    day = pd.Timedelta(days=1)
    windows = [{"start": (start + d * day).isoformat(), "end": (start + (d + 1) * day).isoformat(), "matured": True,
                "roc_auc": 0.8} for d in (0, 1)]  # fmt: skip
    job.estimate_windows(ref, answers, windows)
    assert "estimated_roc_auc" not in windows[0] and "held-out window" in windows[0]["estimate_skipped"]
    assert windows[1]["estimated_roc_auc"] is not None and "estimate_skipped" not in windows[1]
