"""PII declared once (``privacy:`` in mlcycle.yaml), applied at every sink's write point.

A column tagged ``pii: direct | quasi`` gets, per sink (``SINKS``), one action:

- ``keep``: written as it is;
- ``hash``: a keyed HMAC-SHA256 of the value's text, ``HASH_PREFIX`` + 64 hex digits. The key comes
  from ``MLCYCLE_PII_KEY`` (hex, or any text), never from a file of the project: the same value gives
  the same token in every sink and process, so joins by id still work, and without the key nobody
  can test a guess against the token;
- ``drop``: the column is not written (a JSON field is removed);
- ``coarsen``: a number into its band (the column's ``bands``, left-closed: ``18-30``), a date to its
  ``year`` or ``month``.

Everything here is pure (frames and mappings in, frames and mappings out) and idempotent: a token
is not hashed again, a band not coarsened again, so a sink that reads another sink's output (monitoring
reads the prediction log and the snapshot) may apply its own rules on top without changing joins.

Capture sampling (``privacy.capture.rate``): the prediction log keeps a request when the SHA-256 of
its request id (a shadow answer's id without its suffix, so a pair is kept or dropped together)
falls below the rate; the same request is kept by every replica and every run.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from mlcycle.project.config import SINKS, PiiColumnSpec, PrivacySpec

KEY_ENV = "MLCYCLE_PII_KEY"
HASH_PREFIX = "hmac:"
_TOKEN = re.compile(r"^hmac:[0-9a-f]{64}$")
_HEX = re.compile(r"^(?:[0-9a-fA-F]{2}){16,}$")


class MissingKey(RuntimeError):
    """A ``hash`` rule is configured and ``MLCYCLE_PII_KEY`` is not set: nothing may be written."""


def missing_key_message(columns: list[str]) -> str:
    return (
        f"privacy: {', '.join(columns)} must be hashed (privacy.columns in mlcycle.yaml) but {KEY_ENV} is not "
        f"set; refusing to start rather than write the clear value. Make a key once and keep it secret (the same "
        f'key in every process, or tokens stop joining): export {KEY_ENV}=$(python -c "import secrets; '
        f'print(secrets.token_hex(32))")'
    )


def hashed_columns(policy: PrivacySpec, sinks: tuple[str, ...] = SINKS) -> list[str]:
    """Columns some of ``sinks`` hash."""
    return sorted(c for c, spec in policy.columns.items() if any(action(policy, spec, s) == "hash" for s in sinks))


def pii_key(policy: PrivacySpec | None = None, sinks: tuple[str, ...] = SINKS) -> bytes | None:
    """The HMAC key from the environment: hex when it reads as hex (32 digits or more), else the text's
    UTF-8 bytes. ``MissingKey`` when ``policy`` hashes a column in ``sinks`` and the key is absent —
    the check every writer makes when it starts."""
    raw = os.environ.get(KEY_ENV, "").strip()
    if not raw:
        if policy is not None and (columns := hashed_columns(policy, sinks)):
            raise MissingKey(missing_key_message(columns))
        return None
    return bytes.fromhex(raw) if _HEX.fullmatch(raw) else raw.encode()


def check_writer(policy: PrivacySpec, sink: str) -> None:
    """At a writer's start: refuse when its sink hashes a column and no key is set."""
    pii_key(policy, (sink,))


def action(policy: PrivacySpec, spec: PiiColumnSpec, sink: str) -> str:
    """What ``sink`` writes of a tagged column: its own rule, else the column's ``action``, else its
    class's default. The event log is the table's continuation (the next feature build reads it as
    input), so it keeps what the table keeps unless the column says otherwise: no class default."""
    if sink == "event_log":
        return spec.event_log or spec.action or "keep"
    return getattr(spec, sink) or spec.action or policy.defaults[spec.pii]


def _text(value: Any) -> str:
    """The text a value is hashed as: one text per value whatever its type on the way (an id read as
    7, np.int64(7) or 7.0 is "7"), so a token made from a request joins one made from a table."""
    if isinstance(value, np.datetime64):
        value = pd.Timestamp(value)
    if hasattr(value, "item") and not isinstance(value, str | bytes | pd.Timestamp):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return str(value)


as_text = _text  # public: what other modules compare a value as (``forget`` matches a key by it)


def _missing(value: Any) -> bool:
    if value is None or value is pd.NaT or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def hash_value(value: Any, key: bytes) -> Any:
    if _missing(value) or (isinstance(value, str) and _TOKEN.match(value)):
        return value
    return HASH_PREFIX + hmac.new(key, _text(value).encode(), hashlib.sha256).hexdigest()


def coarsen_value(value: Any, spec: PiiColumnSpec) -> Any:
    if _missing(value):
        return None
    if spec.bands is not None:
        if isinstance(value, str):  # already a band (or text that is no number): left as it is
            try:
                number = float(value)
            except ValueError:
                return value
        else:
            number = float(value)
        edges = spec.bands
        if number < edges[0]:
            return f"<{edges[0]:g}"
        for low, high in itertools.pairwise(edges):
            if number < high:
                return f"{low:g}-{high:g}"
        return f">={edges[-1]:g}"
    try:
        when = pd.Timestamp(value)
    except (ValueError, TypeError):
        return value
    if isinstance(value, str) and re.fullmatch(r"\d{4}(-\d{2})?", value):  # already coarse
        return value
    return f"{when.year:04d}" if spec.unit == "year" else f"{when.year:04d}-{when.month:02d}"


def _apply(value: Any, what: str, spec: PiiColumnSpec, key: bytes | None, column: str) -> Any:
    if what == "hash":
        if key is None:  # never the clear value
            raise MissingKey(missing_key_message([column]))
        return hash_value(value, key)
    if what == "coarsen":
        return coarsen_value(value, spec)
    return value


def rules(policy: PrivacySpec | None, sink: str) -> dict[str, tuple[str, PiiColumnSpec]]:
    """Column → (action, spec) for ``sink``, the ``keep`` ones left out."""
    if policy is None:
        return {}
    out = {}
    for column, spec in policy.columns.items():
        what = action(policy, spec, sink)
        if what != "keep":
            out[column] = (what, spec)
    return out


def redact(frame: pd.DataFrame, policy: PrivacySpec | None, sink: str, key: bytes | None = None) -> pd.DataFrame:
    """``frame`` as ``sink`` may write it: each tagged column kept, hashed, dropped or coarsened. A copy
    when anything changes; ``frame`` itself when nothing does (no policy, no tagged column present)."""
    todo = {c: r for c, r in rules(policy, sink).items() if c in frame.columns}
    if not todo:
        return frame
    if key is None and any(what == "hash" for what, _ in todo.values()):
        key = pii_key(policy, (sink,))
    out = frame.drop(columns=[c for c, (what, _) in todo.items() if what == "drop"])
    for column, (what, spec) in todo.items():
        if what == "drop":
            continue
        values = out[column]
        uniques = pd.unique(values.dropna())
        mapping = {u: _apply(u, what, spec, key, column) for u in uniques}
        out[column] = values.map(mapping).astype(object).where(values.notna(), None)
    return out


def as_logged(values: pd.Series, column: str, policy: PrivacySpec | None, sink: str = "prediction_log") -> pd.Series:
    """``values`` of ``column`` as ``sink`` writes them (all missing when it drops them): what a
    table's ids must become to join that sink's rows (labels to logged predictions by event id)."""
    todo = rules(policy, sink)
    if column not in todo:
        return values
    if todo[column][0] == "drop":
        return pd.Series([None] * len(values), index=values.index, dtype=object)
    return redact(values.to_frame(column), policy, sink)[column]


def redact_mapping(
    values: Mapping[str, Any], policy: PrivacySpec | None, sink: str, key: bytes | None = None
) -> dict[str, Any]:
    """One record's fields (a request, an event, a feature vector) as ``sink`` may write them."""
    out = dict(values)
    todo = {c: r for c, r in rules(policy, sink).items() if c in out}
    if key is None and any(what == "hash" for what, _ in todo.values()):
        key = pii_key(policy, (sink,))
    for column, (what, spec) in todo.items():
        if what == "drop":
            del out[column]
        else:
            out[column] = _apply(out[column], what, spec, key, column)
    return out


def redact_json(text: str | None, policy: PrivacySpec | None, sink: str, key: bytes | None = None) -> str | None:
    """A JSON object's text (the log's ``entities``, ``request``, ``features``) redacted; other text as it is."""
    if not text or not rules(policy, sink):
        return text
    try:
        values = json.loads(text)
    except (TypeError, ValueError):
        return text
    if not isinstance(values, dict):
        return text
    return json.dumps(redact_mapping(values, policy, sink, key), default=str)


def sampled(request_id: str, rate: float, suffix: str = "") -> bool:
    """Deterministic capture sampling: keep ``request_id`` (its ``suffix`` removed) at ``rate``."""
    if rate >= 1:
        return True
    if suffix and request_id.endswith(suffix):
        request_id = request_id[: -len(suffix)]
    digest = hashlib.sha256(request_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate
