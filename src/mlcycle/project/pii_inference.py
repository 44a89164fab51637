"""Columns that look like personal data, proposed for ``privacy:`` by ``mlcycle init``.

By name and by value: ids (entity keys, the event id, ``*_id``), names, e-mail addresses, phone
numbers, exact dates of birth, ages, addresses and free text. A proposal is a guess with its
evidence; ``mlcycle init`` writes it commented out, for a person to confirm (mlcycle.data.privacy
applies what the config then says). Pure: a frame in, a mapping out.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from typing import Any

import pandas as pd

SAMPLE = 2000
EMAIL = re.compile(r"^[\w.+-]+@[\w-]+(\.[\w-]+)+$")
PHONE = re.compile(r"^\+?[\d\s().-]{7,20}$")
NAME_WORDS = ("name", "surname", "firstname", "lastname", "fullname")
YEAR_BANDS = [0, 18, 30, 45, 65, 120]


def _words(column: str) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9]+", re.sub(r"([a-z])([A-Z])", r"\1_\2", column).lower()) if w]


def _share(values: pd.Series, pattern: re.Pattern[str]) -> float:
    text = values.astype(str).str.strip()
    return float(text.map(lambda v: bool(pattern.match(v))).mean()) if len(text) else 0.0


def _phone(values: pd.Series) -> float:
    text = values.astype(str).str.strip()
    digits = text.str.count(r"\d")
    return float((text.map(lambda v: bool(PHONE.match(v))) & (digits >= 7)).mean()) if len(text) else 0.0


def _free_text(values: pd.Series) -> bool:
    text = values.astype(str)
    return (
        bool(len(text))
        and text.str.len().mean() >= 25
        and text.str.contains(" ").mean() >= 0.5
        and (text.nunique() >= 0.5 * len(text))
    )


def _birth_dates(values: pd.Series, now: pd.Timestamp) -> bool:
    with warnings.catch_warnings():  # text that is no date: parsed value by value, and missing
        warnings.simplefilter("ignore")
        when = pd.to_datetime(values, errors="coerce", utc=True)
    if when.notna().mean() < 0.9:
        return False
    years = (now - when.dropna()).dt.days / 365.25
    return bool(len(years)) and years.min() >= 10 and years.max() <= 120 and years.median() >= 16


def propose_pii(frame: pd.DataFrame, roles: Mapping[str, str], now: pd.Timestamp | None = None) -> dict[str, dict]:
    """Column → ``{pii, action?, unit?, bands?, why}`` for the columns that look personal. ``roles``:
    column → its role in the table (entity, event_id, timestamp, label, ...)."""
    now = now or pd.Timestamp.now(tz="UTC")
    out: dict[str, dict[str, Any]] = {}
    for column in frame.columns:
        role = roles.get(column)
        if role in ("timestamp", "label", "label_available_at"):
            continue
        words = _words(str(column))
        joined = "".join(words)
        values = frame[column].dropna()
        values = values.sample(SAMPLE, random_state=0) if len(values) > SAMPLE else values
        text = values.dtype == object or pd.api.types.is_string_dtype(values.dtype)
        proposal: dict[str, Any] | None = None
        if text and len(values) and _share(values, EMAIL) >= 0.8:
            proposal = {"pii": "direct", "why": "values are e-mail addresses"}
        elif "email" in joined or "mail" in words:
            proposal = {"pii": "direct", "why": "named like an e-mail address"}
        elif text and len(values) and not pd.api.types.is_numeric_dtype(values.dtype) and _phone(values) >= 0.8:
            proposal = {"pii": "direct", "why": "values are phone numbers"}
        elif {"phone", "mobile", "tel", "telephone"} & set(words):
            proposal = {"pii": "direct", "why": "named like a phone number"}
        elif (
            {"dob", "birth", "birthday", "birthdate"} & set(words)
            or "dateofbirth" in joined
            or (not pd.api.types.is_numeric_dtype(values.dtype) and len(values) and _birth_dates(values, now))
        ):
            proposal = {"pii": "quasi", "action": "coarsen", "unit": "year", "why": "an exact date of birth"}
        elif "age" in words and pd.api.types.is_numeric_dtype(values.dtype):
            proposal = {"pii": "quasi", "action": "coarsen", "bands": YEAR_BANDS, "why": "an age"}
        elif any(w in NAME_WORDS for w in words) or joined in NAME_WORDS:
            proposal = {"pii": "direct", "why": "named like a person's name"}
        elif {"address", "street", "zip", "zipcode", "postcode", "postal"} & set(words):
            proposal = {"pii": "quasi", "action": "drop", "why": "named like an address"}
        elif {"ssn", "passport", "iban", "ip", "license", "licence"} & set(words):
            proposal = {"pii": "direct", "why": "named like an identity document or address"}
        elif text and len(values) and _free_text(values):
            proposal = {"pii": "direct", "action": "drop", "why": "free text (may hold anything)"}
        elif role in ("entity", "event_id") or (words and words[-1] == "id"):
            why = {"entity": "an entity key", "event_id": "the event id"}.get(role or "", "named like an id")
            proposal = {"pii": "direct", "why": why}
        if proposal is not None:
            out[str(column)] = proposal
    return out
