"""``mlcycle stream``: events from the broker into the online features, the offline source and a score.

Per batch of events read from the consumer group:

1. **Check** each event (``events.EventSchema``); a poison one goes to the dead-letter stream with
   its reason and is acknowledged there. An event for an entity never seen is applied: its windows
   start empty, as offline.
2. **Score** it, before its own state is written (a training row joins the state its event left
   *before* it, stamped one microsecond later): ``Scorer.score`` — the same feature read, rollout
   routing, shadow and canary as ``/predict`` — then the decision goes to the output stream with a
   marker ``scored:<event id>`` in one transaction, so a redelivered event is not scored twice. An
   event ``/predict`` published (``source=api``) was scored there and is not scored again.
3. **Apply** it: the event goes into its entity's event set in Redis (``HSETNX`` by event id:
   a redelivered or replayed event changes nothing), the entity's aggregates are recomputed from
   that set by the declarations (``aggregate_at``), and written to the online store through
   Feast's write path. The set keeps the events inside the longest window of the entity's newest.
   A consumer keeps each entity's decoded events in memory (bounded, least recently used dropped)
   under the set's version token, which every writer whose ``HSETNX`` inserted replaces in the same
   script: the set is read again only when the token moved (another consumer, a bootstrap).
4. **Append** the batch's events to the offline source (``mlcycle.data.event_log``).
5. **Acknowledge** — only now. Killed anywhere before, the batch comes back (to this consumer on
   restart, or to another once ``claim_idle_ms`` passes), and every step above is idempotent.

Two events of one entity in one batch are taken in rounds, so the second is scored with the first
already in its features: a burst is seen as it arrives.

**Order rule (the same offline and online).** An event counts by its event time, whatever order it
arrives in: the online row is the state after the entity's newest event, computed over the events
inside each window of that instant; offline, the point-in-time join after that instant gives the
row stamped after the same newest event, over the same events. A late event older than the longest
window of the entity's newest event can change no current aggregate: it is appended offline (older
training rows see it) and leaves the online row as it is.

The consumer's own figures (events/s, lag, freshness from event time to online write, scoring
latency) go to a Redis hash that the service's ``/metrics`` and ``mlcycle status`` read.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import socket
import threading
import time
import uuid
from bisect import bisect_right, insort
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import redis

from mlcycle.data import event_log
from mlcycle.features import open_project_store
from mlcycle.features.aggregations import AggregationSpec, aggregate_at
from mlcycle.features.store import OnlineWriter
from mlcycle.features.transform import last_event_column
from mlcycle.project.config import ProjectConfig
from mlcycle.streaming.broker import EventStream, Message, connect
from mlcycle.streaming.events import SOURCE_API, Event, EventSchema, Poison

log = logging.getLogger("mlcycle.stream")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Drop a fired expiry (only if no one moved it since) and keep the earliest pending one (ZADD LT).
_TIMER_SCRIPT = """
if ARGV[2] ~= '' then
  local current = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if current and tonumber(current) == tonumber(ARGV[2]) then redis.call('ZREM', KEYS[1], ARGV[1]) end
end
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[1], 'LT', ARGV[3], ARGV[1]) end
return 1
"""
# Each entity's events of a batch into its event set, by event id (HSETNX: a redelivered or replayed
# event changes nothing), and what the consumer needs to recompute its row, in one atomic step.
# Per entity (KEYS: its set, the set's version, its last written stamp; ARGV: the token the caller
# has cached, the number of events, then id and payload of each): the flags (1: inserted), the set's
# version (a token each writer whose HSETNX inserted replaces, so an unchanged token means no event
# came in since), the last written stamp, and the whole set only when the caller's cached token is
# not the current one (its cache may miss events). ARGV[1]: this call's token.
_APPLY_SCRIPT = """
local token = ARGV[1]
local out = {}
local a = 2
for e = 1, #KEYS, 3 do
  local set, vkey, wkey = KEYS[e], KEYS[e + 1], KEYS[e + 2]
  local cached = ARGV[a]
  local n = tonumber(ARGV[a + 1])
  a = a + 2
  local before = redis.call('GET', vkey)
  local flags = {}
  local inserted = 0
  for i = 1, n do
    local f = redis.call('HSETNX', set, ARGV[a], ARGV[a + 1])
    a = a + 2
    flags[i] = f
    inserted = inserted + f
  end
  local version = before
  if inserted > 0 or not before then
    redis.call('SET', vkey, token)
    version = token
  end
  local state = false
  if not before or before ~= cached then state = redis.call('HGETALL', set) end
  out[#out + 1] = {flags, version, redis.call('GET', wkey) or false, state}
end
return out
"""
CACHE_ENTITIES = 100_000  # entities whose decoded events a consumer keeps (least recently used dropped)
# A decision is emitted once per event: the scored marker is set (NX) and the decision added together.
_DECIDE_SCRIPT = """
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'EX', tonumber(ARGV[1])) then
  local fields = {}
  for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('XADD', KEYS[1], '*', unpack(fields))
  return 1
end
return 0
"""
SCORED_TTL_S = 7 * 86_400  # a redelivery comes within minutes; a week covers a replay of old entries
RECENT = 5_000  # events whose freshness / scoring latency the quantiles describe


@dataclass(frozen=True)
class StreamKeys:
    """Every key the stream uses, under one namespace per project (and ``MLCYCLE_REDIS_PREFIX``)."""

    ns: str

    @property
    def events(self) -> str:
        return f"{self.ns}:events"

    @property
    def decisions(self) -> str:
        return f"{self.ns}:decisions"

    @property
    def dead(self) -> str:
        return f"{self.ns}:dead"

    @property
    def stats(self) -> str:
        return f"{self.ns}:stats"

    @property
    def timers(self) -> str:
        return f"{self.ns}:timers"

    def state(self, table: str, entity: str) -> str:
        return f"{self.ns}:state:{table}:{entity}"

    def scored(self, event_id: str) -> str:
        return f"{self.ns}:scored:{event_id}"


def stream_keys(cfg: ProjectConfig) -> StreamKeys:
    prefix = cfg.scale.redis_prefix if cfg.profile == "scale" else ""
    return StreamKeys(f"mlcycle:{cfg.project}{prefix}:stream")


def broker_url(cfg: ProjectConfig) -> str:
    """Profile scale: the Redis it runs on; local: the project's own broker (``make up`` starts it)."""
    if cfg.profile == "scale":
        return cfg.scale.redis_url
    return f"redis://127.0.0.1:{cfg.streaming.local_port}/0"


def open_stream(cfg: ProjectConfig, client: redis.Redis | None = None) -> EventStream:
    keys = stream_keys(cfg)
    stream = EventStream(
        client or connect(broker_url(cfg)),
        keys.events,
        cfg.streaming.group,
        dead_letter=keys.dead,
        claim_idle_ms=cfg.streaming.claim_idle_ms,
    )
    stream.ensure_group()
    return stream


@dataclass(frozen=True)
class _Table:
    name: str
    spec: AggregationSpec
    view: str
    window_us: int  # the longest window
    columns: tuple[str, ...]
    last_event: str
    writer: OnlineWriter
    windows_us: tuple[int, ...]


@dataclass
class BatchResult:
    read: int = 0
    applied: int = 0
    duplicates: int = 0
    dead: int = 0
    scored: int = 0
    rounds: int = 0
    entities: int = 0
    freshness_ms: list[float] = field(default_factory=list)
    scoring_ms: list[float] = field(default_factory=list)


class StreamConsumer:
    """One consumer of the group. ``scorer``: a ``Scorer`` (or anything with its ``score``), None to
    open the project's own when ``streaming.score`` is on, False for features only."""

    def __init__(
        self,
        cfg: ProjectConfig,
        stream: EventStream | None = None,
        name: str | None = None,
        scorer: Any = None,
        store: Any = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        event_log.check_privacy(cfg)  # no key for a hash rule: refuse before reading an event
        self.cfg = cfg
        self.keys = stream_keys(cfg)
        self.stream = stream or open_stream(cfg)
        self.client: redis.Redis = self.stream.client
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.schema = EventSchema(cfg)
        self.store = store or open_project_store(cfg)
        self.clock = clock or (lambda: datetime.now(UTC))
        views = {v.name for v in self.store.list_feature_views()}
        self.tables: list[_Table] = []
        for name, spec in cfg.features.aggregations.items():
            if name not in views:
                raise ValueError(
                    f"features.aggregations.{name}: no Feast feature view named '{name}' to write to "
                    "(run `mlcycle features publish` after declaring it)"
                )
            windows_us = tuple(w // pd.Timedelta(microseconds=1) for w in spec.windows)
            self.tables.append(
                _Table(
                    name,
                    spec,
                    name,
                    max(windows_us),
                    tuple(spec.columns),
                    last_event_column(name, spec),
                    OnlineWriter(self.store, name),
                    windows_us,
                )
            )
        if scorer is None and cfg.streaming.score:
            from mlcycle.serving.scorer import Scorer

            scorer = Scorer(cfg)
            scorer.load()
            scorer.start_refresh()
        self.scorer = scorer or None
        self._expiring = any(t.spec.expire_on_time for t in self.tables)
        self.totals = {"events": 0, "applied": 0, "duplicates": 0, "dead": 0, "scored": 0, "unscored": 0}
        self.freshness: deque[float] = deque(maxlen=RECENT)
        self.scoring: deque[float] = deque(maxlen=RECENT)
        self._rate: tuple[float, int] = (time.monotonic(), 0)
        # Each entity's decoded events (time, values, event id) sorted by time then id, with the
        # version token of its event set they reflect: valid while the token has not moved.
        self._cache: OrderedDict[str, tuple[bytes, list[tuple[int, tuple[Any, ...], bytes]]]] = OrderedDict()
        self.cache_entities = CACHE_ENTITIES
        self._apply_script = self.client.register_script(_APPLY_SCRIPT)
        self._decide_script = self.client.register_script(_DECIDE_SCRIPT)
        self._token_prefix = f"{uuid.uuid4().hex[:16]}:"
        self._token_seq = 0

    # ------------------------------------------------------------------ start
    def bootstrap(self, events: pd.DataFrame | None = None, now: datetime | None = None) -> int:
        """Seed the entities' event sets with the events already known offline (the table and what
        the stream appended), those inside the longest window of ``now``: the first streamed event
        of an entity then counts its history, as the offline engine does. By event id, like every
        write here, so running it again (each start does) adds nothing."""
        if events is None:
            from mlcycle.data import validation

            events = event_log.with_streamed(self.cfg, validation.load_table(self.cfg))
        moment = pd.Timestamp(now or self.clock())
        ts = pd.to_datetime(events[self.cfg.table.timestamp], utc=True)
        micros = (ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)
        ids = events[self.cfg.table.event_id].astype(str)
        seeded = 0
        for table in self.tables:
            since = (moment - pd.Timedelta(microseconds=table.window_us)).value // 1_000
            recent = (micros > since).to_numpy()
            if not recent.any():
                continue
            frame = events.loc[recent, [*table.spec.entities, *table.columns]]
            keys = [self.keys.state(table.name, json.dumps(k)) for k in _key_lists(frame, table.spec.entities)]
            values = frame[list(table.columns)].astype(object).where(frame[list(table.columns)].notna(), None)
            # In one transaction with the events, the sets' version tokens are dropped: a consumer's
            # cache of those entities is read again.
            pipe = self.client.pipeline(transaction=True)
            chunk: set[str] = set()
            for key, event_id, t, row in zip(keys, ids[recent], micros[recent], values.itertuples(index=False),
                                             strict=True):  # fmt: skip
                pipe.hsetnx(key, event_id, json.dumps([int(t), [_json_value(v) for v in row]]))
                chunk.add(key)
                if len(pipe) >= 5_000:
                    seeded += self._flush_seed(pipe, chunk)
            seeded += self._flush_seed(pipe, chunk)
            if table.spec.expire_on_time:  # their windows expire on time too, from the next round on
                timers = self.client.pipeline(transaction=False)
                for entity in dict.fromkeys(json.dumps(k) for k in _key_lists(frame, table.spec.entities)):
                    self._timer(timers, table, entity, fired=None, next_at=moment.value // 1_000)
                timers.execute()
        return seeded

    def _flush_seed(self, pipe: Any, keys: set[str]) -> int:
        """Run a transaction of HSETNX, with a new version token for each set they went into and
        its events read back: this consumer's cache starts with them (as if it had just inserted
        them), another consumer's cache of those sets is read again. How many events were new."""
        if not len(pipe):
            return 0
        seeded = len(pipe)
        token = self._next_token()
        order = list(keys)
        for key in order:
            pipe.set(key + ":v", token)
            pipe.hgetall(key)
        replies = pipe.execute()
        keys.clear()
        for key, state in zip(order, replies[seeded + 1 :: 2], strict=True):
            self._remember(key, token, _decoded(state.items()))
        return sum(replies[:seeded])

    def _next_token(self) -> bytes:
        """A version token no other write of any consumer uses."""
        self._token_seq += 1
        return f"{self._token_prefix}{self._token_seq}".encode()

    def _remember(self, key: str, version: bytes, decoded: list[tuple[int, tuple[Any, ...], bytes]]) -> None:
        self._cache[key] = (version, decoded)
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_entities:
            self._cache.popitem(last=False)

    # ------------------------------------------------------------------ loop
    def run(
        self, stop: threading.Event | None = None, max_events: int | None = None, idle_exit_s: float | None = None
    ) -> dict[str, int]:
        """Read, process and acknowledge until ``stop`` is set, ``max_events`` are read, or nothing
        arrives for ``idle_exit_s``. A broker that goes away is waited for (the client reconnects)."""
        stop = stop or threading.Event()
        idle_since = time.monotonic()
        from mlcycle.streaming.broker import BrokerUnavailable

        while not stop.is_set():
            try:
                messages = self.stream.read(self.name, self.cfg.streaming.batch_size, self.cfg.streaming.block_ms)
            except BrokerUnavailable as exc:
                log.warning("broker unavailable, retrying: %s", exc)
                stop.wait(0.5)
                continue
            if self._expiring:
                try:
                    self.expire()
                except redis.RedisError as exc:
                    log.warning("window expiries not written this round: %s", exc)
            if not messages:
                if idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s:
                    break
                continue
            idle_since = time.monotonic()
            self.process(messages)
            if max_events is not None and self.totals["events"] >= max_events:
                break
        return dict(self.totals)

    # ------------------------------------------------------------------ one batch
    def process(self, messages: Sequence[Message]) -> BatchResult:
        """One batch (see the module's docstring). The cyclic garbage collector is paused for the
        batch (and resumed after, if it was on): a batch's objects are freed by reference counting
        when it ends, while collections inside it would carry them to the oldest generation and set
        off full collections of the whole process's heap, about a sixth of a batch's time."""
        paused = gc.isenabled()
        if paused:
            gc.disable()
        try:
            return self._process(messages)
        finally:
            if paused:
                gc.enable()

    def _process(self, messages: Sequence[Message]) -> BatchResult:
        result = BatchResult(read=len(messages))
        by_id = {m.id: m for m in messages}
        events, poison = self.schema.decode(messages, now=self.clock())
        for bad in poison:
            self._dead(by_id[bad.message_id], bad)
        result.dead = len(poison)
        unique: list[Event] = []
        seen: set[str] = set()
        for event in events:  # the same event twice in one batch: once
            if event.event_id in seen:
                result.duplicates += 1
            else:
                seen.add(event.event_id)
                unique.append(event)
        # Rounds (no entity twice in one) matter for scoring only: each event is scored with the
        # ones before it applied. Features alone apply a batch at once, each entity read once.
        for round_events in self._rounds(unique) if self.scorer is not None else [unique] if unique else []:
            result.rounds += 1
            if self.scorer is not None:
                self._score(round_events, result)
            self._apply(round_events, result)
        if unique:
            event_log.append_events(
                self.cfg, pd.DataFrame([self._offline_row(e) for e in unique]), unique[0].message_id
            )
        if events:
            self.stream.ack([e.message_id for e in events])
        self._account(result)
        return result

    def _rounds(self, events: list[Event]) -> list[list[Event]]:
        """Events in stream order, split so that no entity appears twice in one round."""
        rounds: list[list[Event]] = []
        seen: dict[tuple[str, str], int] = {}
        for event in events:
            entities = [(t.name, self._entity(t, event)) for t in self.tables]
            index = max((seen.get(e, 0) for e in entities), default=0)
            for e in entities:
                seen[e] = index + 1
            while len(rounds) <= index:
                rounds.append([])
            rounds[index].append(event)
        return rounds

    @staticmethod
    def _entity(table: _Table, event: Event) -> str:
        return json.dumps([event.row[k] for k in table.spec.entities])

    def _dead(self, message: Message, poison: Poison) -> None:
        log.warning("dead-lettered %s: %s", message.id, poison.reason)
        self.stream.dead_letter(message, poison.reason)

    # ------------------------------------------------------------------ scoring
    def _score(self, events: list[Event], result: BatchResult) -> None:
        wanted = [e for e in events if e.source != SOURCE_API]
        if not wanted:
            return
        done = self.client.pipeline(transaction=False)
        for event in wanted:
            done.exists(self.keys.scored(event.event_id))
        fresh = [e for e, already in zip(wanted, done.execute(), strict=True) if not already]
        if not fresh:
            return
        requests = [{**e.row, "timestamp": e.timestamp.to_pydatetime()} for e in fresh]
        started = time.perf_counter()
        try:
            scored = self.scorer.score(requests)
        except Exception as exc:  # not ready (no champion yet), store down: the features still apply
            self.totals["unscored"] += len(fresh)
            log.warning("events not scored (%s: %s); their features are applied", type(exc).__name__, exc)
            return
        per_event_ms = (time.perf_counter() - started) * 1000 / len(fresh)
        pipe = self.client.pipeline(transaction=False)
        for event, answer in zip(fresh, scored, strict=True):
            fields = {
                "event_id": event.event_id,
                "score": repr(answer.score),
                "decision": "" if answer.decision is None else str(int(answer.decision)),
                "model_version": answer.model_version,
                "variant": answer.variant,
                "request_id": answer.request_id,
                "features_missing": ",".join(answer.features_missing),
            }
            # The marker and the decision in one step, the decision only if the marker was not
            # there: a second scorer of the same event (a consumer that took over a slow batch, a
            # retried call) emits nothing.
            args = [SCORED_TTL_S, answer.request_id, *(x for kv in fields.items() for x in kv)]
            self._decide_script(keys=[self.keys.decisions, self.keys.scored(event.event_id)], args=args, client=pipe)
        emitted = sum(1 for done in pipe.execute() if done)
        result.scored += emitted
        result.scoring_ms += [per_event_ms] * len(fresh)

    # ------------------------------------------------------------------ features
    def _apply(self, events: list[Event], result: BatchResult) -> None:
        # Per (table, entity): its events of this round, into its set in one script call each.
        touched: dict[tuple[str, str], tuple[_Table, str, str, dict[str, Any], list[tuple[Event, str]]]] = {}
        firsts: list[tuple[tuple[str, str], int]] = []  # per event: its first table's entity, position
        for event in events:
            for n, table in enumerate(self.tables):
                entity = self._entity(table, event)
                item = touched.get((table.name, entity))
                if item is None:
                    keys = {k: event.row[k] for k in table.spec.entities}
                    item = touched[(table.name, entity)] = (
                        table,
                        entity,
                        self.keys.state(table.name, entity),
                        keys,
                        [],
                    )
                if n == 0:
                    firsts.append(((table.name, entity), len(item[4])))
                values = [event.row.get(c) for c in table.columns]
                item[4].append((event, json.dumps([event.micros, values])))
        token = self._next_token()
        script_keys: list[str] = []
        args: list[Any] = [token]
        held: dict[str, list] = {}  # the cached lists sent as current: an eviction below cannot lose them
        for _, _, key, _, pending in touched.values():
            cached = self._cache.get(key)
            if cached is not None:
                held[key] = cached[1]
            script_keys += (key, key + ":v", key + ":written")
            args += (cached[0] if cached is not None else b"", len(pending))
            for event, payload in pending:
                args += (event.event_id, payload)
        replies = dict(zip(touched, self._apply_script(keys=script_keys, args=args), strict=True))
        for where, position in firsts:
            if replies[where][0][position]:
                result.applied += 1
            else:
                result.duplicates += 1
        result.entities += len(touched)
        rows: dict[str, list] = {t.name: [] for t in self.tables}
        after = self.client.pipeline(transaction=False)
        now_us = (self.clock() - _EPOCH) // timedelta(microseconds=1)
        for where, (table, entity, key, keys, pending) in touched.items():
            flags, version, before, state = replies[where]
            decoded = self._events(key, flags, version, state, pending, held.get(key))
            at = None
            if table.spec.expire_on_time and decoded:
                # The row describes the entity now: after its newest event, or where an event left
                # a window since (a late event must not bring back events already expired online).
                newest = decoded[-1][0]
                at = max((t + w for t, _, _ in decoded for w in table.windows_us if newest < t + w <= now_us),
                         default=None)  # fmt: skip
            computed = self._aggregate_sorted(table, decoded, at)
            if computed is None:
                continue
            values, at, next_expiry, stale = computed
            rows[table.name].append((keys, values, self._stamp(after, key, at, before)))
            if stale:
                after.hdel(key, *stale)
                del decoded[: len(stale)]  # the oldest ones: the cache forgets them too
            if table.spec.expire_on_time and next_expiry is not None:
                self._timer(after, table, entity, fired=None, next_at=next_expiry)
        for table in self.tables:
            table.writer.write(rows[table.name])
        written_us = (self.clock() - _EPOCH) // timedelta(microseconds=1)
        result.freshness_ms += [(written_us - e.micros) / 1000 for e in events]
        after.execute()

    def _events(
        self,
        key: str,
        flags: list[int],
        version: bytes,
        state: list[bytes] | None,
        pending: list[tuple[Event, str]],
        held: list | None,
    ) -> list[tuple[int, tuple[Any, ...], bytes]]:
        """The entity's events, sorted by (time, id), kept in the cache under the set's version: the
        whole set when the script returned it (the cache was missing or behind), else the cached
        events plus the ones this call inserted (the token did not move: no one else inserted).
        Values are kept as tuples of plain values, which the garbage collector stops tracking: a
        cache of lists would make every full collection walk it."""
        if state is not None:
            decoded = _decoded(zip(state[0::2], state[1::2], strict=True))
        else:
            decoded = held if held is not None else self._cache[key][1]
            for (event, payload), inserted in zip(pending, flags, strict=True):
                if inserted:
                    t, values = json.loads(payload)
                    insort(decoded, (t, tuple(values), event.event_id.encode()), key=_by_time_then_id)
        self._remember(key, version, decoded)
        return decoded

    def _stamp(self, pipe: Any, key: str, at: int, before: bytes | None) -> datetime:
        """The online row's time: one microsecond after the instant it describes, as offline. Feast's
        Redis store keeps a row only if it is newer than the stored one, so a late event that changes
        the state of the same instant is written a microsecond after the last write."""
        stamp_us = at + 1
        if before is not None and stamp_us <= int(before):
            stamp_us = int(before) + 1
        pipe.execute_command("SET", key + ":written", stamp_us)
        return _EPOCH + timedelta(microseconds=stamp_us)

    def _timer(self, pipe: Any, table: _Table, entity: str, fired: int | None, next_at: int | None) -> None:
        """Keep the entity's earliest pending expiry instant; drop a fired one (if unchanged)."""
        member = f"{table.name}\x1f{entity}"
        pipe.eval(_TIMER_SCRIPT, 1, self.keys.timers, member, "" if fired is None else str(fired),
                  "" if next_at is None else str(next_at))  # fmt: skip

    def _aggregate(
        self, table: _Table, state: dict[bytes, bytes], at: int | None = None
    ) -> tuple[dict[str, Any], int, int | None, list[bytes]] | None:
        """The entity's state at instant ``at`` (default: its newest event) from its event set: the
        row's values, the instant, the next instant an event leaves a window after it (None: none
        left, or windows do not expire on time), and the events no window reaches any more (to
        forget). None for an empty set."""
        if not state:
            return None
        # (time, values, event id), by time then id: ties in a fixed order, values never compared.
        decoded = sorted(((*json.loads(v), k) for k, v in state.items()), key=lambda e: (e[0], e[2]))
        return self._aggregate_sorted(table, decoded, at)

    def _aggregate_sorted(
        self, table: _Table, decoded: list[tuple[int, list[Any], bytes]], at: int | None = None
    ) -> tuple[dict[str, Any], int, int | None, list[bytes]] | None:
        """``_aggregate`` over the entity's events already sorted by (time, id)."""
        if not decoded:
            return None
        newest = decoded[-1][0]
        at = newest if at is None else at
        times = [t for t, _, _ in decoded]
        gone = bisect_right(times, newest - table.window_us)
        stale = [raw for _, _, raw in decoded[:gone]]
        end = bisect_right(times, at)
        if end == 0:
            return None
        last = times[end - 1]
        start = bisect_right(times, at - table.window_us, 0, end)
        live = [(t, values) for t, values, _ in decoded[start:end]]
        values = aggregate_at(table.spec, live, at)
        values = {k: (None if isinstance(v, float) and v != v else v) for k, v in values.items()}
        values[table.last_event] = last // 1_000_000
        leaving = None
        if table.spec.expire_on_time:
            leaving = min((t + w for t, _ in live for w in table.windows_us if t + w > at), default=None)
        return values, at, leaving, stale

    # ------------------------------------------------------------------ windows expiring on time
    def expire(self, at: datetime | None = None, limit: int = 500) -> int:
        """Write the state of every entity whose events left a window at or before ``at`` (default
        now), as offline has a row at that instant: a 1h count drops an event an hour later with no
        new event. Returns how many rows were written."""
        moment = at or self.clock()
        written = 0
        while (done := self._expire_round(moment, limit)) is not None:
            written += done
        return written

    def _expire_round(self, at: datetime, limit: int) -> int | None:
        """One round of due timers (None: none was due)."""
        now_us = pd.Timestamp(at).value // 1_000
        due = self.client.zrangebyscore(self.keys.timers, "-inf", now_us, start=0, num=limit, withscores=True)
        if not due:
            return None
        tables = {t.name: t for t in self.tables}
        items = []
        unknown = []
        for member, score in due:
            name, _, entity = member.decode().partition("\x1f")
            if name in tables:
                items.append((tables[name], entity, self.keys.state(name, entity), int(score)))
            else:  # a table no longer declared: its timers would be due forever
                unknown.append(member)
        if unknown:
            self.client.zrem(self.keys.timers, *unknown)
        pipe = self.client.pipeline(transaction=False)
        for _, _, key, _ in items:
            pipe.hgetall(key)
            pipe.get(key + ":written")
        replies = pipe.execute()
        rows: dict[str, list] = {t.name: [] for t in self.tables}
        after = self.client.pipeline(transaction=False)
        for (table, entity, key, fired), state, before in zip(items, replies[0::2], replies[1::2], strict=True):
            # Straight to the entity's last change at or before now: its state then is its state now,
            # and the row offline has at that instant (the instants in between were passed over).
            live = [json.loads(v)[0] for v in state.values()]
            windows_us = [w // pd.Timedelta(microseconds=1) for w in table.spec.windows]
            scheduled = fired
            fired = max([t + w for t in live for w in windows_us if fired <= t + w <= now_us], default=fired)
            if not state:
                self._timer(after, table, entity, fired=scheduled, next_at=None)
                continue
            newest = max(live)
            if newest >= fired:  # a later event's row already stands: only its next instant is due
                self._timer(after, table, entity, fired=scheduled, next_at=self._aggregate(table, state)[2])  # type: ignore[index]
                continue
            computed = self._aggregate(table, state, at=fired)
            if computed is None:
                self._timer(after, table, entity, fired=scheduled, next_at=None)
                continue
            values, _, next_expiry, _ = computed
            keys = dict(zip(table.spec.entities, json.loads(entity), strict=True))
            rows[table.name].append((keys, values, self._stamp(after, key, fired, before)))
            self._timer(after, table, entity, fired=scheduled, next_at=next_expiry)
        for table in self.tables:
            table.writer.write(rows[table.name])
        after.execute()
        return sum(len(r) for r in rows.values())

    def _offline_row(self, event: Event) -> dict[str, Any]:
        return dict(event.row)

    # ------------------------------------------------------------------ figures
    def _account(self, result: BatchResult) -> None:
        t = self.totals
        t["events"] += result.read
        t["applied"] += result.applied
        t["duplicates"] += result.duplicates
        t["dead"] += result.dead
        t["scored"] += result.scored
        self.freshness.extend(result.freshness_ms)
        self.scoring.extend(result.scoring_ms)
        now = time.monotonic()
        started, count = self._rate
        rate = (t["events"] - count) / max(now - started, 1e-9)
        if now - started >= 5:
            self._rate = (now, t["events"])
        stats = {**{f"{k}_total": v for k, v in t.items()}, "events_per_s": round(rate, 2),
                 "updated_unix": round(time.time(), 3), "consumer": self.name}  # fmt: skip
        for name, values in (("freshness_ms", self.freshness), ("scoring_ms", self.scoring)):
            if values:
                arr = np.fromiter(values, float)
                stats[f"{name}_p50"] = round(float(np.quantile(arr, 0.5)), 3)
                stats[f"{name}_p99"] = round(float(np.quantile(arr, 0.99)), 3)
        try:
            self.client.hset(self.keys.stats, mapping={k: str(v) for k, v in stats.items()})
        except redis.RedisError:
            log.warning("could not record the consumer's figures")


def _decoded(fields: Any) -> list[tuple[int, tuple[Any, ...], bytes]]:
    """An event set's (event id, payload) pairs as (time, values, event id), by time then id."""
    decoded = []
    for event_id, payload in fields:
        t, values = json.loads(payload)
        decoded.append((t, tuple(values), event_id))
    decoded.sort(key=_by_time_then_id)
    return decoded


def _by_time_then_id(event: tuple[int, Any, bytes]) -> tuple[int, bytes]:
    return event[0], event[2]


def _key_lists(frame: pd.DataFrame, keys: Sequence[str]) -> list[list[Any]]:
    return [[_json_value(v) for v in row] for row in frame[list(keys)].itertuples(index=False)]


def _json_value(value: Any) -> Any:
    """A value as the event's JSON carries it (NumPy scalars as Python numbers)."""
    return value.item() if hasattr(value, "item") else value


def read_stats(cfg: ProjectConfig, client: redis.Redis | None = None) -> dict[str, str]:
    """The consumer's last figures and the group's lag, for ``/metrics`` and ``mlcycle status``."""
    stream = EventStream(client or connect(broker_url(cfg)), stream_keys(cfg).events, cfg.streaming.group)
    raw = stream.client.hgetall(stream_keys(cfg).stats)
    out = {k.decode(): v.decode() for k, v in raw.items()}
    try:
        out["lag"] = str(stream.lag())
        out["pending"] = str(stream.pending())
    except Exception:  # no group yet
        out.setdefault("lag", "")
    return out
