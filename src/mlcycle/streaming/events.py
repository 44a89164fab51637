"""Events on the wire: one JSON object per stream entry, checked at the edge.

An event is a row of the project's table without its label: the event id, the event time, the
entity keys, the columns the declared window aggregations read and the request fields the model's
on-demand features need. It travels as the stream entry's ``event`` field (JSON text), with
``source`` saying who published it (``stream``: an outside producer; ``api``: a ``/predict`` request,
already scored).

A *poison* event — not JSON, a missing or malformed id, time or entity key, a number that is not
a number, a value the data contract refuses, a time further ahead than ``streaming.max_future`` —
is never applied: the consumer dead-letters it with the reason, naming the field, and goes on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pandera.errors
import pandera.pandas

from mlcycle.data import validation
from mlcycle.project.config import ProjectConfig

SOURCE_STREAM = "stream"
SOURCE_API = "api"


class StreamConfigError(ValueError):
    """The project cannot stream: it names no event id, or declares no window aggregations."""


@dataclass(frozen=True)
class Event:
    message_id: str
    event_id: str
    timestamp: pd.Timestamp  # UTC
    row: dict[str, Any]  # the event's columns as received (the time as a UTC timestamp)
    source: str = SOURCE_STREAM

    @property
    def micros(self) -> int:
        return self.timestamp.value // 1_000


@dataclass(frozen=True)
class Poison:
    message_id: str
    reason: str
    fields: dict[str, str] = field(default_factory=dict)


def encode(row: Mapping[str, Any], source: str = SOURCE_STREAM) -> dict[str, str]:
    """A row as a stream entry's fields: timestamps as ISO 8601 with their offset, NaN as null."""
    return {"event": json.dumps({k: _plain(v) for k, v in row.items()}), "source": source}


def _plain(value: Any) -> Any:
    if isinstance(value, pd.Timestamp | datetime):
        stamp = pd.Timestamp(value)
        return (stamp.tz_localize("UTC") if stamp.tz is None else stamp).isoformat()
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):  # NumPy scalars
        return value.item()
    if value is pd.NA or value is pd.NaT:
        return None
    return value


class EventSchema:
    """What an event of this project must hold, from its config (never from the event)."""

    def __init__(self, cfg: ProjectConfig) -> None:
        if not cfg.table.event_id:
            raise StreamConfigError(
                "streaming needs table.event_id in the config: the id that makes a redelivered event change nothing"
            )
        if not cfg.features.aggregations:
            raise StreamConfigError(
                "streaming updates the declared window aggregations: features.aggregations is empty"
            )
        self.event_id = cfg.table.event_id
        self.timestamp = cfg.table.timestamp
        self.keys = list(dict.fromkeys(k for spec in cfg.features.aggregations.values() for k in spec.entities))
        self.numeric = list(
            dict.fromkeys(
                a.column
                for spec in cfg.features.aggregations.values()
                for a in spec.aggregations
                if a.column and a.function in ("sum", "mean", "min", "max")
            )
        )
        self.max_future = cfg.streaming.max_future_delta
        self.cfg = cfg
        self.label_columns = {cfg.table.label, cfg.table.label_available_at}
        self.contract = self._contract_at(None)

    def _contract_at(self, now: datetime | None) -> Any:
        """The table's contract as of ``now``, column by column, minus the label (an event has none
        yet). A contract's checks may be relative to the moment of validation ("not in the future"):
        it is built for each batch's clock, never once at start. Checks across columns are the
        table's: they run when the events join it in a feature build."""
        contract = validation.table_schema(self.cfg, now=now)
        if contract is None:
            return None
        return pandera.pandas.DataFrameSchema(
            {name: column for name, column in contract.columns.items() if name not in self.label_columns}
        )

    def decode(self, messages: Sequence[Any], now: datetime | None = None) -> tuple[list[Event], list[Poison]]:
        """Events in stream order, and the poison ones with their reasons."""
        now_ts = pd.Timestamp(now or datetime.now(UTC))
        events: list[Event] = []
        poison: list[Poison] = []
        for message in messages:
            checked = self._one(message, now_ts)
            (poison if isinstance(checked, Poison) else events).append(checked)
        if events and self.contract is not None:
            self.contract = self._contract_at(now_ts.to_pydatetime())
            events, refused = self._contract(events)
            poison += refused
        return events, poison

    def _one(self, message: Any, now: pd.Timestamp) -> Event | Poison:
        fields = dict(message.fields)
        try:
            row = json.loads(fields.get("event", ""))
        except (json.JSONDecodeError, TypeError):
            return Poison(message.id, "field 'event': not a JSON object", fields)
        if not isinstance(row, dict):
            return Poison(message.id, "field 'event': not a JSON object", fields)
        event_id = row.get(self.event_id)
        if event_id is None or isinstance(event_id, bool) or not isinstance(event_id, str | int) or event_id == "":
            return Poison(message.id, f"'{self.event_id}' (the event id): missing or not a string/integer", fields)
        raw_time = row.get(self.timestamp)
        try:
            if raw_time is None or isinstance(raw_time, bool):
                raise ValueError
            stamp = pd.Timestamp(raw_time, unit="s") if isinstance(raw_time, int | float) else pd.Timestamp(raw_time)
            if stamp is pd.NaT:
                raise ValueError
        except (ValueError, TypeError, OverflowError):
            return Poison(message.id, f"'{self.timestamp}': missing or not a timestamp ({raw_time!r})", fields)
        stamp = stamp.tz_localize("UTC") if stamp.tz is None else stamp.tz_convert("UTC")
        if stamp - now > self.max_future:
            return Poison(
                message.id,
                f"'{self.timestamp}': {stamp.isoformat()} is in the future (more than {self.max_future} ahead of "
                f"the consumer's clock, {now.isoformat()})",
                fields,
            )
        for key in self.keys:
            value = row.get(key)
            if value is None or isinstance(value, bool) or not isinstance(value, str | int):
                return Poison(message.id, f"'{key}' (entity key): missing or not a string/integer ({value!r})", fields)
        for column in self.numeric:
            value = row.get(column)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                return Poison(message.id, f"'{column}': not a number ({value!r})", fields)
        row[self.timestamp] = stamp
        return Event(message.id, str(event_id), stamp, row, fields.get("source", SOURCE_STREAM))

    def _contract(self, events: list[Event]) -> tuple[list[Event], list[Poison]]:
        """The contract's column checks on the batch at once (pandera, lazily: every failure, by row)."""
        frame = pd.DataFrame([e.row for e in events])
        columns = [c for c in self.contract.columns if c in frame.columns]
        schema = self.contract.select_columns(columns)
        frame = validation.normalize_table(_json_numbers(frame[columns], schema), schema)
        try:
            schema.validate(frame, lazy=True)
            return events, []
        except pandera.errors.SchemaErrors as exc:
            cases = exc.failure_cases
        bad: dict[int, str] = {}
        whole_batch: list[str] = []
        for case in cases.itertuples(index=False):
            reason = f"'{case.column}': {case.check} (got {case.failure_case!r})"
            if pd.isna(case.index):
                whole_batch.append(reason)
            else:
                bad.setdefault(int(case.index), "data contract: " + reason)
        if whole_batch and len(events) > 1:  # a column-wide failure (a dtype): decide event by event
            kept: list[Event] = []
            refused: list[Poison] = []
            for event in events:
                one_kept, one_refused = self._contract([event])
                kept += one_kept
                refused += one_refused
            return kept, refused
        if whole_batch:
            return [], [Poison(events[0].message_id, "data contract: " + "; ".join(whole_batch))]
        kept = [e for i, e in enumerate(events) if i not in bad]
        return kept, [Poison(events[i].message_id, reason) for i, reason in sorted(bad.items())]


def _json_numbers(frame: pd.DataFrame, schema: Any) -> pd.DataFrame:
    """JSON has one kind of number and null: a float column whose values are all numbers or null
    (all null, say, in a batch of one) is made float, as a parquet file would give it."""
    out = frame.copy()
    for name, column in schema.columns.items():
        if name in out and str(column.dtype).startswith("float") and out[name].dtype == object:
            values = out[name]
            if values.map(lambda v: v is None or (isinstance(v, int | float) and not isinstance(v, bool))).all():
                out[name] = values.astype(float)
    return out
