"""The human-readable drift report (Evidently 0.7), kept apart from the numbers that raise alerts.

Alerts are decided by ``mlcycle.monitoring`` (NumPy / SciPy over the whole window, against cached
reference statistics). People still want to *look* at a drift: per-column distributions side by
side, which test Evidently chose and what it scored. Evidently renders that well but is slow on
large frames and fragile on the frames a broken upstream produces, so this module:

- runs it on a seeded sample of each side (at most ``max_rows``) and says so in the title of the
  HTML, in the JSON and in the returned object — a reader must not mistake it for the full window;
- normalises the inputs first: numeric columns coerced to float, categoricals (pandas
  ``category`` dtype, ints, mixed) cast to ``str`` with ``None`` for missing, so a category
  spelled ``1`` on one side and ``"1"`` on the other is the same category, as it is for
  ``mlcycle.monitoring``;
- skips a column with no usable value in either sample (entirely null, absent, or only infinite
  numbers): Evidently 0.7 raises ``ValueError: An empty column ... was provided`` and loses the
  whole report. Skipped columns are named in the returned object, the JSON and the HTML title;
  the missing-rate change itself is flagged by ``mlcycle.monitoring``;
- reads "drifted" from Evidently's own per-column drift tests (``include_tests=True``), not from
  our thresholds, so ``drifted_columns`` is what the report shows;
- writes a self-contained HTML (Evidently inlines its JavaScript and font) and refuses to return
  a file that would fetch scripts or stylesheets from the network.

Evidently is imported on first use: importing it takes seconds, and most callers of the
monitoring code never render a report.
"""

from __future__ import annotations

import html as html_lib
import json
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HTML_NAME = "drift_report.html"
JSON_NAME = "drift_report.json"
SNAPSHOT_NAME = "drift_report.snapshot.json"  # Evidently's whole snapshot (widgets too): the dashboard's


@dataclass(frozen=True)
class DriftReportFiles:
    html: Path
    json: Path
    rows_reference: int  # rows the report ran on (after sampling)
    rows_current: int
    drifted_columns: tuple[str, ...]  # what Evidently itself judged drifted (its per-column drift tests)
    seconds: float  # whole call: sampling, Evidently, writing both files
    rows_reference_total: int = 0  # rows before sampling
    rows_current_total: int = 0
    skipped_columns: tuple[str, ...] = ()  # no usable value in one sample (all null / absent): not in the report

    @property
    def sampled(self) -> bool:
        return self.rows_reference < self.rows_reference_total or self.rows_current < self.rows_current_total


def _sample(frame: pd.DataFrame, columns: list[str], max_rows: int, seed: int) -> pd.DataFrame:
    present = [c for c in columns if c in frame.columns]
    if len(frame) <= max_rows:
        return frame[present].reset_index(drop=True)
    rows = np.sort(np.random.default_rng(seed).choice(len(frame), size=max_rows, replace=False))
    return frame[present].iloc[rows].reset_index(drop=True)


def _as_float(series: pd.Series) -> pd.Series:
    if isinstance(series.dtype, pd.CategoricalDtype):
        series = series.astype(object)
    return pd.to_numeric(series, errors="coerce").astype("float64")


def _as_str(series: pd.Series) -> pd.Series:
    values = series.astype(object)
    present = values.notna().to_numpy()
    out = np.full(len(values), None, dtype=object)
    out[present] = values[present].astype(str).to_numpy()
    return pd.Series(out, index=series.index, dtype=object)


def _prepare(frame: pd.DataFrame, numeric: list[str], categorical: list[str]) -> tuple[pd.DataFrame, set[str]]:
    """Evidently-safe columns, and the names of those with no usable value."""
    out: dict[str, pd.Series] = {}
    unusable: set[str] = set()
    for col in numeric:
        if col not in frame.columns:
            unusable.add(col)
            continue
        out[col] = _as_float(frame[col])
        if not np.isfinite(out[col].to_numpy()).any():
            unusable.add(col)
    for col in categorical:
        if col not in frame.columns:
            unusable.add(col)
            continue
        out[col] = _as_str(frame[col])
        if not out[col].notna().any():
            unusable.add(col)
    return pd.DataFrame(out, index=frame.index), unusable


def external_resources(document: str) -> list[str]:
    """URLs of scripts, stylesheets, frames or images the page would load from the network."""

    class _Finder(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.found: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag not in {"script", "link", "iframe", "img", "embed", "object", "source"}:
                return
            for name, value in attrs:
                if (
                    name in {"src", "href", "data"}
                    and value
                    and value.strip().lower().startswith(("http://", "https://", "//"))
                ):
                    self.found.append(value)

    finder = _Finder()
    finder.feed(document)
    finder.close()
    return finder.found


def _drifted(payload: dict[str, Any]) -> tuple[str, ...]:
    """Columns whose Evidently drift test failed (status FAIL = drift detected)."""
    drifted = []
    for test in payload.get("tests", []):
        params = (test.get("metric_config") or {}).get("params") or {}
        if params.get("type") == "evidently:metric_v2:ValueDrift" and test.get("status") == "FAIL":
            drifted.append(params["column"])
    return tuple(dict.fromkeys(drifted))


def _with_banner(document: str, title: str, lines: list[str]) -> str:
    """Evidently's page has no <title> and no header: add both, so the sample size is visible."""
    head = f"<title>{html_lib.escape(title)}</title>"
    banner = (
        '<div style="font-family:sans-serif;padding:12px 16px;border-bottom:1px solid #ddd">'
        f'<h2 style="margin:0 0 6px 0">{html_lib.escape(title)}</h2>'
        + "".join(f'<div style="color:#444">{html_lib.escape(line)}</div>' for line in lines)
        + "</div>"
    )
    document = document.replace("<head>", "<head>\n" + head, 1)
    return document.replace("<body>", "<body>\n" + banner, 1)


def evidently_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    out_dir: Path,
    score: str | None = None,
    max_rows: int = 20_000,
    seed: int = 0,
    title: str | None = None,
) -> DriftReportFiles:
    """Render Evidently's data-drift report for ``current`` against ``reference`` into ``out_dir``.

    Each side is sampled (seeded) down to ``max_rows``. ``score``, when given and present in both
    frames, gets its own value-drift section (prediction drift). Writes ``drift_report.html`` and
    ``drift_report.json`` (Evidently's metrics and tests, plus an ``mlcycle`` block describing the
    sample and the skipped columns).
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    started = time.perf_counter()
    out_dir = Path(out_dir)
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    overlap = set(numeric) & set(categorical)
    if overlap:
        raise ValueError(f"columns both numeric and categorical: {sorted(overlap)}")
    score_col = score if score and score in reference.columns and score in current.columns else None
    extra_numeric = [score_col] if score_col and score_col not in numeric and score_col not in categorical else []
    nums = [*numeric, *extra_numeric]
    wanted = [*nums, *categorical]

    ref_sample = _sample(reference, wanted, max_rows, seed)
    cur_sample = _sample(current, wanted, max_rows, seed + 1)
    ref, ref_bad = _prepare(ref_sample, nums, categorical)
    cur, cur_bad = _prepare(cur_sample, nums, categorical)
    unusable = ref_bad | cur_bad
    skipped = tuple(c for c in wanted if c in unusable)
    features = [c for c in [*numeric, *categorical] if c not in unusable]
    score_used = score_col is not None and score_col not in unusable

    name = title or "Data drift report"
    sample_note = (
        f"Evidently on a sample: {len(ref):,} of {len(reference):,} reference rows and "
        f"{len(cur):,} of {len(current):,} current rows (seed {seed})"
        if len(ref) < len(reference) or len(cur) < len(current)
        else f"Evidently on all rows: {len(ref):,} reference, {len(cur):,} current"
    )
    notes = [sample_note, "Alerts are decided by mlcycle.monitoring on the full window; this report is for reading."]
    if score and score_col is None:
        notes.append(f"Score column {score!r} is not in both frames: no prediction-drift section.")
    if skipped:
        notes.append(f"Skipped (no usable value in one side's sample: all null or absent): {', '.join(skipped)}")
    metadata = {
        "title": name,
        "rows_reference": len(ref),
        "rows_current": len(cur),
        "rows_reference_total": len(reference),
        "rows_current_total": len(current),
        "seed": seed,
        "skipped_columns": list(skipped),
        "score": score_col if score_used else None,
    }

    out_dir.mkdir(parents=True, exist_ok=True)
    html_path, json_path = out_dir / HTML_NAME, out_dir / JSON_NAME
    items: list[Any] = []
    if features:
        items.append(DataDriftPreset(columns=features))
    if score_used and score_col not in features:
        items.append(ValueDrift(column=score_col))

    if items:
        used = [c for c in [*features, *extra_numeric] if c not in unusable]
        definition = DataDefinition(
            numerical_columns=[c for c in nums if c in used],
            categorical_columns=[c for c in categorical if c in used],
        )
        snapshot = Report(items, include_tests=True).run(
            current_data=Dataset.from_pandas(cur[used], data_definition=definition),
            reference_data=Dataset.from_pandas(ref[used], data_definition=definition),
            metadata={"sample": sample_note, "skipped_columns": list(skipped)},  # Evidently: str / list[str]
            name=name,
        )
        # snapshot.json() carries NumPy scalars and enums through Evidently's own encoder.
        payload: dict[str, Any] = json.loads(snapshot.json())
        document = snapshot.get_html_str(as_iframe=False)
        (out_dir / SNAPSHOT_NAME).write_text(snapshot.dumps(), encoding="utf-8")  # for monitoring.dashboard
    else:
        payload = {"metrics": [], "tests": []}
        notes.append("No column had usable values on both sides: nothing to compare.")
        document = '<!DOCTYPE html><html lang="en"><head><meta charset="UTF-8"></head><body></body></html>'

    document = _with_banner(document, name, notes)
    external = external_resources(document)
    if external:
        raise RuntimeError(f"the Evidently report would load {external[:3]} from the network; not written")
    drifted = _drifted(payload)
    payload["mlcycle"] = {**metadata, "drifted_columns": list(drifted), "notes": notes}
    html_path.write_text(document, encoding="utf-8")
    json_path.write_text(json.dumps(payload), encoding="utf-8")
    return DriftReportFiles(
        html=html_path,
        json=json_path,
        rows_reference=len(ref),
        rows_current=len(cur),
        drifted_columns=drifted,
        seconds=time.perf_counter() - started,
        rows_reference_total=len(reference),
        rows_current_total=len(current),
        skipped_columns=skipped,
    )
