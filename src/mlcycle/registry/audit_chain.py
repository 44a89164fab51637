"""The promotion log's hash chain: what makes an edit, a deletion or a reordering of its rows show.

Every row carries ``prev_hash`` (the ``row_hash`` of the row before it, by id; the first row links
to ``GENESIS``) and ``row_hash`` = SHA-256 of the row's content and its ``prev_hash``, serialized
canonically (``canonical``). One chain per log table, not per model: a deleted row of any model
breaks it. The ``id`` is not hashed: the order is held by the links, so a database that renumbers
ids on a dump and reload still verifies.

What the chain cannot show, without a secret or an anchor kept elsewhere: someone with write access
who recomputes every hash after the rows they changed, or drops the newest rows. ``Verification.head``
is the last ``row_hash``; written down elsewhere (a ticket, a commit), it pins the log up to there.

Migration (``PromotionLog`` opens a log written before the chain): the old rows are sealed once —
hashed in id order — and a ``seal`` row records how many and when. From then on they are as
tamper-evident as new ones, but the chain vouches for them only from the moment of sealing. Rows
without a hash found after the chain has started are never sealed: they were written around mlcycle
(or by an older one still running), and ``verify`` names the first of them.

This module is pure (no database): ``PromotionLog`` reads the rows and calls it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64
# The hashed columns, in the order of the log table; ``action`` is NULL in rows from before it existed.
CONTENT = ("at", "model", "alias", "from_version", "to_version", "actor", "reason", "action")
SEAL = "seal"  # the ``action`` of the row that records the sealing of legacy rows


def utc(at: datetime) -> datetime:
    """``at`` in UTC; a naive value (SQLite keeps no zone) is taken as UTC, which is what was written."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def canonical(content: Mapping[str, Any], prev_hash: str) -> bytes:
    """The bytes a row's hash covers: JSON with sorted keys, ``at`` as UTC with microseconds (the
    precision both SQLite and PostgreSQL keep), other values as text, None as null."""
    doc: dict[str, Any] = {"prev_hash": prev_hash}
    for name in CONTENT:
        value = content.get(name)
        if isinstance(value, datetime):
            value = utc(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        doc[name] = None if value is None else str(value)
    return json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def row_hash(content: Mapping[str, Any], prev_hash: str) -> str:
    return hashlib.sha256(canonical(content, prev_hash)).hexdigest()


@dataclass(frozen=True)
class ChainRow:
    """One row as stored: its id, content (the ``CONTENT`` columns) and the two hashes."""

    id: int
    content: Mapping[str, Any]
    prev_hash: str | None
    row_hash: str | None


@dataclass(frozen=True)
class Verification:
    """What ``verify`` found. ``problem`` is ``edited`` (the row's content no longer matches its
    hash), ``link`` (its ``prev_hash`` is not the row before it: a row was deleted, reordered or
    inserted before it) or ``unhashed`` (a row written around the chain)."""

    ok: bool
    checked: int
    head: str  # the last good row_hash (GENESIS for an empty log)
    broken_id: int | None = None
    problem: str | None = None
    reason: str | None = None
    notes: list[str] = field(default_factory=list)  # the seal rows' reasons

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "rows_checked": self.checked,
            "head": self.head,
            "broken_row_id": self.broken_id,
            "problem": self.problem,
            "reason": self.reason,
            "notes": self.notes,
        }


def verify(rows: Iterable[ChainRow]) -> Verification:
    """Walk ``rows`` (in id order) and stop at the first one that breaks the chain."""
    prev, prev_id, checked, notes = GENESIS, None, 0, []
    for row in rows:
        checked += 1
        if found := _problem(row, prev, prev_id):
            problem, reason = found
            return Verification(False, checked, prev, row.id, problem, f"row {row.id}: {reason}", notes)
        if row.content.get("action") == SEAL:
            notes.append(str(row.content.get("reason")))
        prev, prev_id = str(row.row_hash), row.id
    return Verification(True, checked, prev, notes=notes)


def _problem(row: ChainRow, prev: str, prev_id: int | None) -> tuple[str, str] | None:
    if row.row_hash is None or row.prev_hash is None:
        return "unhashed", "has no hash: written around the chain (raw SQL or an older mlcycle)"
    if row.prev_hash != prev:
        before = f"row {prev_id}" if prev_id is not None else "the start of the chain"
        return "link", f"prev_hash does not match {before}: a row was deleted, reordered or inserted"
    if row_hash(row.content, row.prev_hash) != row.row_hash:
        return "edited", "content does not match its hash: the row was edited"
    return None
