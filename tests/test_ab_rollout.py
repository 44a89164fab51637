"""The A/B rollout's sequential test with its looks recorded between analyses (mlcycle.monitoring.ab).

Oracles: the published Lan–DeMets O'Brien–Fleming-type bounds (Jennison & Turnbull 2000, table 7.6)
for looks at equal fifths of the plan, which a look's bound must equal whatever process takes it;
z statistics recomputed here by hand from the arms' counts.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlcycle.monitoring import ab

PUBLISHED = [4.877, 3.357, 2.680, 2.290, 2.031]  # five equal looks, two-sided α = 0.05


def _counts(path: Path, key: str) -> list[list[int]]:
    return [[int(look["n_champion"]), int(look["n_challenger"])] for look in ab.load(path, key).looks]


def _welch_z(a: np.ndarray, b: np.ndarray) -> float:
    return (b.mean() - a.mean()) / math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))


def test_each_analysis_is_a_look_recorded_for_the_next_and_an_idle_one_spends_nothing(tmp_path: Path) -> None:
    path, key = tmp_path / "ab-looks.json", "m|t|v1|v2|flag_rate"
    rng = np.random.default_rng(4)
    champion, challenger = (rng.random(500) < 0.10).astype(float), (rng.random(500) < 0.10).astype(float)
    for k in (1, 2, 3):
        n = 100 * k
        result = ab.look(path, key, champion[:n], challenger[:n], metric="flag_rate", planned_per_arm=500, alpha=0.05)
        # A fresh reading of the file each time, as a new `mlcycle rollout status` process would.
        assert _counts(path, key) == [[100 * i, 100 * i] for i in range(1, k + 1)]
        assert [look.bound for look in result.looks] == pytest.approx(PUBLISHED[:k], abs=2e-3)
        assert result.looks[-1].z == pytest.approx(_welch_z(champion[:n], challenger[:n]))
    again = ab.look(path, key, champion[:300], challenger[:300], metric="flag_rate", planned_per_arm=500, alpha=0.05)
    assert len(again.looks) == 3 and _counts(path, key) == [[100, 100], [200, 200], [300, 300]]
    # Another A/B (a new traffic change) starts its own record.
    other = ab.look(path, "m|t2|v1|v2|flag_rate", champion[:50], challenger[:50], metric="flag_rate",
                    planned_per_arm=500, alpha=0.05)  # fmt: skip
    assert len(other.looks) == 1 and _counts(path, key)[-1] == [300, 300]


def test_after_a_stop_later_analyses_report_it_and_take_no_look(tmp_path: Path) -> None:
    """5% → 40% flagged, looks every 100 of a 500 plan: the first look's z is
    0.35 / √((0.05·0.95 + 0.40·0.60)·(100/99) / 100) = 6.49, above 4.877, so the test stops there;
    more data later changes nothing."""
    path, key = tmp_path / "ab-looks.json", "m|t|v1|v2|flag_rate"
    champion = (np.arange(1000) % 20 == 0).astype(float)  # exactly 5%
    challenger = (np.arange(1000) % 10 < 4).astype(float)  # exactly 40%
    assert _welch_z(champion[:100], challenger[:100]) == pytest.approx(6.49, abs=0.01)
    first = ab.look(path, key, champion[:100], challenger[:100], metric="flag_rate", planned_per_arm=500, alpha=0.05)
    assert first.decision == "challenger_higher" and first.stopped_at == 1
    later = ab.look(path, key, champion, challenger, metric="flag_rate", planned_per_arm=500, alpha=0.05)
    assert later.decision == "challenger_higher" and _counts(path, key) == [[100, 100]]
    # Rows of the first look that change afterwards (a late outcome, a forgotten row) re-run nothing:
    # the look stays as it was taken, and so does the stop.
    changed = champion.copy()
    changed[:40] = 1.0
    after = ab.look(path, key, changed, challenger, metric="flag_rate", planned_per_arm=500, alpha=0.05)
    assert after.decision == "challenger_higher" and after.looks[0].z == pytest.approx(first.looks[0].z)


def test_arm_values_are_each_arms_decisions_in_arrival_order() -> None:
    at = pd.Timestamp("2026-12-01", tz="UTC")
    rows = pd.DataFrame({
        "request_id": ["c2", "c1", "x1", "s1", "old"],
        "logged_at": [at + pd.Timedelta(seconds=s) for s in (2, 1, 1, 1, 1)],
        "variant": ["champion", "champion", "challenger", "champion", "champion"],
        "model_version": ["1", "1", "2", "1", "0"],
        "shadow": [False, False, False, True, False],
        "decision": [True, False, True, True, True],
        "error": [None] * 5,
    })  # fmt: skip
    champion, challenger = ab.arm_values(rows, "1", "2")
    assert champion.tolist() == [0.0, 1.0] and challenger.tolist() == [1.0]  # c1 then c2; no shadow, no v0


def test_an_arm_without_values_yet_is_no_look(tmp_path) -> None:
    """Right after the split starts (no challenger answer yet), or before any outcome matured, there
    is no information: no look is taken or recorded, and the first real look is still look 1."""
    path, key = tmp_path / "ab-looks.json", "m|t|v1|v2|flag_rate"
    empty = ab.look(path, key, np.ones(40), np.array([]), metric="flag_rate", planned_per_arm=500, alpha=0.05)
    assert empty.decision == "continue" and empty.looks == () and ab.load(path, key) is None
    first = ab.look(path, key, np.ones(100), np.zeros(100), metric="flag_rate", planned_per_arm=500, alpha=0.05)
    assert len(first.looks) == 1 and first.looks[0].bound == pytest.approx(PUBLISHED[0], abs=2e-3)
