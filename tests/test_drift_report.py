"""The Evidently report, through the real Evidently 0.7: it names the columns that were shifted on
purpose (and only those), writes an HTML that opens offline and a JSON that parses, survives the
frames a broken upstream produces, and runs on a bounded sample of each side."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlcycle.monitoring.report import DriftReportFiles, evidently_report, external_resources

NUMERIC = ["amount", "age_days", "velocity"]
CATEGORICAL = ["channel", "country"]
ROWS = 3000

# A script or stylesheet fetched from the network: <script src="https://…">, <link href="//…">.
EXTERNAL = re.compile(r"<(script|link)\b[^>]*\b(src|href)\s*=\s*[\"']?\s*(https?:)?//", re.IGNORECASE)


def windows(seed: int = 0, rows: int = ROWS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reference and current from the same generator, except ``amount`` (mean shifted by one
    standard deviation) and ``channel`` (mixture reversed) in ``current``."""
    rng = np.random.default_rng(seed)

    def frame(shifted: bool) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "amount": rng.normal(50.0 + (20.0 if shifted else 0.0), 20.0, rows),
                "age_days": rng.exponential(300.0, rows),
                "velocity": rng.poisson(3.0, rows).astype(float),
                "channel": rng.choice(["web", "app", "pos"], rows, p=[0.1, 0.3, 0.6] if shifted else [0.6, 0.3, 0.1]),
                "country": rng.choice(["DE", "FR", "NL", "US"], rows),
                "score": rng.beta(1.0, 20.0, rows),
            }
        )

    return frame(False), frame(True)


@pytest.fixture(scope="module")
def shifted_report(tmp_path_factory: pytest.TempPathFactory) -> DriftReportFiles:
    reference, current = windows()
    out = tmp_path_factory.mktemp("drift_report")
    return evidently_report(reference, current, NUMERIC, CATEGORICAL, out, score="score", title="fraud v3: drift")


def test_flags_exactly_the_shifted_columns(shifted_report: DriftReportFiles) -> None:
    assert set(shifted_report.drifted_columns) == {"amount", "channel"}
    assert shifted_report.skipped_columns == ()
    assert (shifted_report.rows_reference, shifted_report.rows_current) == (ROWS, ROWS)
    assert not shifted_report.sampled


def test_writes_a_parsable_json_with_evidentlys_own_verdicts(shifted_report: DriftReportFiles) -> None:
    assert shifted_report.json.name == "drift_report.json"
    payload = json.loads(shifted_report.json.read_text())
    drift_tests = {
        t["metric_config"]["params"]["column"]: t["status"]
        for t in payload["tests"]
        if t["metric_config"]["params"]["type"] == "evidently:metric_v2:ValueDrift"
    }
    # Every feature and the score got a drift test; the failed ones are exactly the returned columns.
    assert set(drift_tests) == {*NUMERIC, *CATEGORICAL, "score"}
    assert {c for c, status in drift_tests.items() if status == "FAIL"} == set(shifted_report.drifted_columns)
    assert payload["mlcycle"]["rows_reference"] == ROWS
    assert payload["mlcycle"]["drifted_columns"] == list(shifted_report.drifted_columns)


def test_html_opens_offline(shifted_report: DriftReportFiles) -> None:
    assert shifted_report.html.name == "drift_report.html"
    page = shifted_report.html.read_text(encoding="utf-8")
    assert "<script" in page  # Evidently's JavaScript is inlined...
    assert EXTERNAL.search(page) is None  # ...not fetched
    assert external_resources(page) == []
    assert "<title>fraud v3: drift</title>" in page


def test_broken_upstream_frames_do_not_crash(tmp_path: Path) -> None:
    reference, current = windows(seed=1)
    reference["channel"] = reference["channel"].astype("category")
    current["channel"] = pd.Categorical(  # the whole code list replaced
        np.random.default_rng(2).choice(["WEB", "APP", "POS", "KIOSK"], len(current))
    )
    current["velocity"] = np.nan  # a feature that stopped arriving
    reference["country"] = pd.Categorical([None] * len(reference), categories=["DE", "FR"])  # never filled

    files = evidently_report(reference, current, NUMERIC, CATEGORICAL, tmp_path, score="score")

    assert set(files.skipped_columns) == {"velocity", "country"}
    assert "channel" in files.drifted_columns
    assert not set(files.drifted_columns) & {"velocity", "country"}
    payload = json.loads(files.json.read_text())
    assert payload["mlcycle"]["skipped_columns"] == list(files.skipped_columns)
    assert "velocity, country" in files.html.read_text(encoding="utf-8")  # the reader is told


def test_categories_compare_as_strings(tmp_path: Path) -> None:
    """A code list read as integers on one side and as strings on the other is the same list."""
    reference, current = windows(seed=3)
    codes = {"web": 1, "app": 2, "pos": 3}
    reference["channel"] = reference["channel"].map(codes)
    current["channel"] = reference["channel"].sample(frac=1.0, random_state=0).astype(str).to_numpy()

    files = evidently_report(reference, current, NUMERIC, CATEGORICAL, tmp_path)

    assert "channel" not in files.drifted_columns


def test_samples_each_side_to_max_rows(tmp_path: Path) -> None:
    reference, current = windows(seed=4)
    current = pd.concat([current, current.iloc[:1000]], ignore_index=True)

    files = evidently_report(reference, current, NUMERIC, CATEGORICAL, tmp_path, max_rows=1200, seed=5)

    assert (files.rows_reference, files.rows_current) == (1200, 1200)
    assert (files.rows_reference_total, files.rows_current_total) == (ROWS, ROWS + 1000)
    assert files.sampled
    assert "1,200 of 4,000 current rows" in files.html.read_text(encoding="utf-8")
    meta = json.loads(files.json.read_text())["mlcycle"]
    assert (meta["rows_reference"], meta["rows_current"]) == (1200, 1200)
