"""``mlcycle replay``: the project's table, from a date on, sent to a running service as live traffic.

For trying a model on history and for demos. Each request carries its row's own event time
(``timestamp``), so the service logs the prediction at that time and the online features it reads are
those "as of" that time: the prediction log, the monitoring windows and label maturity then run on the
table's calendar (a table from 2019 is monitored as 2019), not on the wall clock.

A request is what a caller would send: the entity keys, the request fields the project's
FeatureService declares (its RequestSource, less ``request_unix``, which the service derives from
``timestamp``), the event id when the config names one, and ``timestamp``. Rows go out in event-time
order on one keep-alive connection, as fast as the service answers or at ``rate`` requests per second;
missing values are JSON ``null``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import httpx

    from mlcycle.project.config import ProjectConfig

MAX_ERRORS_KEPT = 5
MAX_ERROR_BODY = 500
TIMESTAMP_FIELD = "timestamp"
ISO_UTC = "%Y-%m-%dT%H:%M:%S.%fZ"


class ReplayError(ValueError):
    """Replay cannot start: no rows in the period, a field the service needs that the table lacks, bad arguments."""


@dataclass(frozen=True)
class FailedRequest:
    """One failed request: HTTP status (0: no answer), the answer's start, and the row it carried."""

    status: int
    body: str
    timestamp: str
    event_id: Any = None


@dataclass
class ReplayResult:
    """Counts by outcome, in requests (``rows`` counts table rows: ``batch`` per request)."""

    rows: int = 0
    requests: int = 0
    ok: int = 0
    client_errors: int = 0  # 4xx: the service refused the request (bad field, auth)
    server_errors: int = 0  # 5xx: the service failed (not ready, store down)
    transport_errors: int = 0  # no answer (refused connection, timeout)
    errors: list[FailedRequest] = field(default_factory=list)
    first_event: str | None = None
    last_event: str | None = None
    elapsed_s: float = 0.0
    stopped: str | None = None  # why replay stopped before the last row, if it did

    @property
    def failed(self) -> int:
        return self.client_errors + self.server_errors + self.transport_errors

    def summary(self) -> str:
        head = (
            f"{self.rows:,} rows in {self.requests:,} requests over {self.elapsed_s:.1f}s: {self.ok:,} ok, "
            f"{self.client_errors:,} 4xx, {self.server_errors:,} 5xx, {self.transport_errors:,} without answer"
        )
        span = f" (events {self.first_event} → {self.last_event})" if self.first_event else ""
        lines = [head + span]
        if self.stopped:
            lines.append(f"stopped: {self.stopped}")
        for e in self.errors:
            what = f"HTTP {e.status}" if e.status else "no answer"
            row = f"event {e.event_id} at {e.timestamp}" if e.event_id is not None else f"row at {e.timestamp}"
            lines.append(f"  {what} for {row}: {e.body}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ rows


def as_utc(value: str | date | datetime | pd.Timestamp) -> pd.Timestamp:
    """A point in time; a date or a naive time is read as UTC."""
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise ReplayError(
            f"cannot read {value!r} as a date or time: write e.g. 2024-03-01 or 2024-03-01T12:00Z"
        ) from exc
    if ts is pd.NaT:
        raise ReplayError(f"{value!r} is not a point in time")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def replay_rows(
    cfg: ProjectConfig,
    since: str | date | datetime | pd.Timestamp,
    until: str | date | datetime | pd.Timestamp | None = None,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The table's rows with event time in ``[since, until)``, in event-time order (ties keep the
    table's order). The event time column is UTC; ``columns`` limits what is read."""
    path = cfg.table_path
    if not path.exists():
        raise ReplayError(f"no table at {path}: run `mlcycle features build` first (or check table.path)")
    ts_col = cfg.table.timestamp
    start = as_utc(since)
    end = as_utc(until) if until is not None else None
    if end is not None and end <= start:
        raise ReplayError(f"until ({end}) must be after since ({start})")
    wanted = None if columns is None else list(dict.fromkeys([ts_col, *columns]))
    frame = pd.read_parquet(path, columns=wanted)
    times = pd.to_datetime(frame[ts_col], utc=True)
    keep = times >= start
    if end is not None:
        keep &= times < end
    out = frame.loc[keep.to_numpy()].copy()
    out[ts_col] = times[keep]
    return out.sort_values(ts_col, kind="stable").reset_index(drop=True)


def request_fields(cfg: ProjectConfig) -> tuple[str, ...]:
    """The request fields of the project's FeatureService (from the Feast registry: run
    ``mlcycle features publish`` first), without ``request_unix``, which the service sets."""
    from mlcycle.features.store import open_project_store, plan_for

    try:
        store = open_project_store(cfg)
        plan = plan_for(store, cfg.features.feature_service)
    except Exception as exc:  # no registry yet, a service of another name: say what to do
        raise ReplayError(
            f"cannot read feature service '{cfg.features.feature_service}' from the Feast registry "
            f"({type(exc).__name__}: {exc}): run `mlcycle features publish` first"
        ) from exc
    return tuple(f for f in plan.request_fields if f != "request_unix")


def _json_values(series: pd.Series) -> list[Any]:
    """A column as JSON-ready Python values: NaN / NaT / NA → None, numpy scalars → Python ones,
    times → ISO 8601 UTC."""
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        text = pd.to_datetime(series, utc=True).dt.strftime(ISO_UTC)
        return text.astype(object).where(series.notna(), None).tolist()
    values = series.astype(object).where(series.notna(), None).tolist()
    out = []
    for v in values:
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, float) and not np.isfinite(v):
            v = None  # ±inf is not JSON either
        elif isinstance(v, pd.Timestamp | datetime):
            v = as_utc(v).strftime(ISO_UTC)
        out.append(v)
    return out


def request_bodies(rows: pd.DataFrame, cfg: ProjectConfig, fields: Sequence[str]) -> list[dict[str, Any]]:
    """One JSON object per row: entity keys, request fields, the event id, and ``timestamp``."""
    names = list(dict.fromkeys([*cfg.table.entities, *fields]))
    if cfg.table.event_id and cfg.table.event_id in rows.columns:
        names = list(dict.fromkeys([*names, cfg.table.event_id]))
    missing = [n for n in names if n not in rows.columns]
    if missing:
        raise ReplayError(
            f"the table has no column {', '.join(missing)}, which requests to feature service "
            f"'{cfg.features.feature_service}' carry: add it to the table, or remove it from the RequestSource"
        )
    if TIMESTAMP_FIELD in names:
        raise ReplayError(f"a request field is named '{TIMESTAMP_FIELD}', which carries the event time: rename it")
    columns = {n: _json_values(rows[n]) for n in names}
    columns[TIMESTAMP_FIELD] = _json_values(rows[cfg.table.timestamp])
    keys = list(columns)
    return [dict(zip(keys, values, strict=True)) for values in zip(*columns.values(), strict=True)]


# ------------------------------------------------------------------------------------------ sending


def _progress(total: int):  # pragma: no cover - display only
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("replay {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=False,
    )
    return bar, bar.add_task("", total=total)


def replay(
    cfg: ProjectConfig,
    url: str,
    since: str | date | datetime | pd.Timestamp,
    until: str | date | datetime | pd.Timestamp | None = None,
    rate: float | None = None,
    batch: int = 1,
    api_key: str | None = None,
    progress: bool = True,
    *,
    fields: Sequence[str] | None = None,
    envelope: str | None = "request",
    batch_envelope: str | None = "requests",
    timeout: float = 30.0,
    max_consecutive_failures: int = 50,
    client: httpx.Client | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ReplayResult:
    """POST the table's rows from ``since`` (to ``until``, exclusive) to ``{url}/predict`` in event-time order.

    ``rate``: requests per second (None: as fast as the service answers), paced on a fixed schedule
    (request ``i`` leaves at ``start + i / rate``, so a slow answer does not lower the average).
    ``batch`` > 1 sends that many rows per request to ``{url}/predict_batch`` as a JSON list.
    ``envelope`` / ``batch_envelope``: the body is an object with the row (the list of rows) under
    that key, as BentoML maps a JSON body onto the API's argument (``predict(self, request)``,
    ``predict_batch(self, requests)``); None sends the bare row (list). ``fields`` overrides the request
    fields read from the FeatureService. Stops early after ``max_consecutive_failures`` failed
    requests in a row (a service that is down or refuses the key fails them all).
    ``client``, ``clock`` and ``sleep`` are for tests.
    """
    import httpx

    if batch < 1:
        raise ReplayError(f"batch must be at least 1, not {batch}")
    if rate is not None and rate <= 0:
        raise ReplayError(f"rate must be a positive number of requests per second, not {rate}")
    fields = tuple(request_fields(cfg) if fields is None else fields)
    rows = replay_rows(cfg, since, until)
    if rows.empty:
        before = f" and before {as_utc(until)}" if until is not None else ""
        raise ReplayError(
            f"no rows of {cfg.table_path.name} at or after {as_utc(since)}{before}: pick a date inside the table"
        )
    bodies = request_bodies(rows, cfg, fields)
    event_id = cfg.table.event_id if cfg.table.event_id in rows.columns else None
    result = ReplayResult(first_event=bodies[0][TIMESTAMP_FIELD], last_event=bodies[-1][TIMESTAMP_FIELD])
    headers = {"content-type": "application/json"}
    if api_key:
        headers["x-api-key"] = api_key
    own = client is None
    http = client or httpx.Client(base_url=url.rstrip("/"), timeout=timeout, trust_env=False)
    path = "/predict" if batch == 1 else "/predict_batch"
    bar, task = _progress(len(bodies)) if progress else (None, None)
    consecutive = 0
    started = clock()
    try:
        if bar is not None:
            bar.start()
        for i, first in enumerate(range(0, len(bodies), batch)):
            chunk = bodies[first : first + batch]
            if rate is not None:
                wait = started + i / rate - clock()
                if wait > 0:
                    sleep(wait)
            if batch == 1:
                payload: Any = {envelope: chunk[0]} if envelope else chunk[0]
            else:
                payload = {batch_envelope: chunk} if batch_envelope else chunk
            content = json.dumps(payload, allow_nan=False, separators=(",", ":"))
            try:
                response = http.post(path, content=content, headers=headers)
                status, text = response.status_code, response.text
            except httpx.HTTPError as exc:
                status, text = 0, f"{type(exc).__name__}: {exc}"
            result.requests += 1
            result.rows += len(chunk)
            if 200 <= status < 300:
                result.ok += 1
                consecutive = 0
            else:
                consecutive += 1
                if status == 0:
                    result.transport_errors += 1
                elif status >= 500:
                    result.server_errors += 1
                else:
                    result.client_errors += 1
                if len(result.errors) < MAX_ERRORS_KEPT:
                    result.errors.append(
                        FailedRequest(
                            status,
                            text[:MAX_ERROR_BODY],
                            chunk[0][TIMESTAMP_FIELD],
                            chunk[0].get(event_id) if event_id else None,
                        )
                    )
            if bar is not None:
                bar.update(task, advance=len(chunk), description=str(chunk[-1][TIMESTAMP_FIELD])[:19])
            if consecutive >= max_consecutive_failures:
                result.stopped = (
                    f"{consecutive} requests in a row failed (last: {'HTTP ' + str(status) if status else 'no answer'}"
                    f"): is the service up at {url}, and the API key right?"
                )
                break
    finally:
        if bar is not None:
            bar.stop()
        if own:
            http.close()
        result.elapsed_s = clock() - started
    return result
