"""A canary's arms compared on label-free estimates (mlcycle.monitoring.canary_estimate).

Simulated worlds whose labels are drawn and kept by the test: each arm's true ROC-AUC on its own
requests comes from scikit-learn on those labels, never from the code under test. A challenger whose
scores carry no information is caught before any label matures; an equally good one is not failed,
and the interval of the difference covers the true difference.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from mlcycle.monitoring import canary_estimate
from mlcycle.project.config import CanarySpec

SPEC = CanarySpec()


def _world(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """True probabilities (about 6% positive on average) and labels drawn from them."""
    p = rng.beta(0.5, 8, n)
    return p, rng.random(n) < p


def _arms(champion_scores: np.ndarray, challenger_scores: np.ndarray) -> pd.DataFrame:
    def rows(variant: str, version: str, scores: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame({"variant": variant, "model_version": version, "shadow": False, "error": None,
                             "score": scores})  # fmt: skip

    return pd.concat([rows("champion", "1", champion_scores), rows("challenger", "2", challenger_scores)])


def test_an_uninformative_challenger_is_caught_without_labels_and_a_good_one_is_not() -> None:
    rng = np.random.default_rng(21)
    p_ref, y_ref = _world(rng, 20_000)  # both versions' held-out windows: the champion's scores are p itself
    champion_ref = SimpleNamespace(scores=p_ref, labels=y_ref.astype(int), threshold=0.3)
    noise_ref = rng.random(20_000)
    noise = SimpleNamespace(scores=noise_ref, labels=y_ref.astype(int), threshold=0.5)
    p_c, y_c = _world(rng, 6_000)
    p_x, y_x = _world(rng, 6_000)
    random_x = rng.random(6_000)

    bad = canary_estimate.compare({"1": champion_ref, "2": noise}, _arms(p_c, random_x), SPEC,
                                  champion_version="1", challenger_version="2")  # fmt: skip
    [check] = bad.checks
    truth = roc_auc_score(y_x, random_x) - roc_auc_score(y_c, p_c)  # about 0.5 − 0.8
    assert truth < -0.2 and bad.state == "fail" and check.interval[1] < -SPEC.max_auc_drop
    assert check.interval[0] <= truth <= check.interval[1]

    same_ref = SimpleNamespace(scores=p_ref, labels=y_ref.astype(int), threshold=0.3)
    good = canary_estimate.compare({"1": champion_ref, "2": same_ref}, _arms(p_c, p_x), SPEC,
                                   champion_version="1", challenger_version="2")  # fmt: skip
    [check] = good.checks
    truth = roc_auc_score(y_x, p_x) - roc_auc_score(y_c, p_c)
    assert good.state != "fail" and check.interval[0] <= truth <= check.interval[1]
    assert "blind to concept drift" in check.detail


def test_an_arm_too_small_to_estimate_is_not_measurable_never_a_pass() -> None:
    rng = np.random.default_rng(5)
    p_ref, y_ref = _world(rng, 20_000)
    ref = SimpleNamespace(scores=p_ref, labels=y_ref.astype(int), threshold=0.3)
    verdict = canary_estimate.compare({"1": ref, "2": ref}, _arms(rng.beta(0.5, 8, 40), rng.beta(0.5, 8, 40)), SPEC,
                                      champion_version="1", challenger_version="2")  # fmt: skip
    [check] = verdict.checks
    assert check.status == "not_measurable" and check.policy == SPEC.estimate_on_unmeasurable
    no_labels = SimpleNamespace(scores=p_ref, labels=None, threshold=0.3)
    verdict = canary_estimate.compare({"1": ref, "2": no_labels}, _arms(p_ref[:500], p_ref[:500]), SPEC,
                                      champion_version="1", challenger_version="2")  # fmt: skip
    assert verdict.checks[0].status == "not_measurable" and "v2" in verdict.checks[0].detail
