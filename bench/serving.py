"""Benchmark: the BentoML ScoringService against a raw app at the physical limit, in profile local or scale.

Both apps run as real servers in their own subprocess on loopback, against the same temporary
project (generated data, features published to the SQLite online store, a champion trained by the
``train`` flow):

- BentoML: ``bentoml serve services.service:ScoringService`` as deployed (pydantic validation,
  Feast ``get_online_features`` through ``mlcycle.features.store.online_vector``, TTL nulling, the
  on-demand pandas transform, rollout routing, registry refresh every 2 s, Prometheus metrics,
  asynchronous prediction log).
- raw: a bare ASGI callable on uvicorn (no access log) doing only the physical work of a score, with
  the service's shape: as many uvicorn workers as the service has (``service_workers``: one per
  core in profile scale, one in local, ``MLCYCLE_WORKERS`` for both), and the service's batching
  rule written out with asyncio (no mlcycle code): the ``/predict`` calls that reach a worker within
  one turn of its event loop are scored in one call (one store read per view, one matrix, one
  ``inplace_predict``; at most the ``max_size`` of the service's ``MicroBatcher``), a lone call after
  one ``call_soon`` hop. Per score: one SQLite query per feature view on the online store file of
  ``feature_store.yaml`` (``<project>_<view>`` tables, by entity key serialized with Feast's
  ``serialize_entity_key`` at the repo's serialization version), ``ValueProto`` decode, the TTL
  applied as ``online_vector`` does (null when older than the view's TTL or stamped after the
  request), the on-demand features of ``feature_repo/fraud_features.py`` in plain Python, the vector
  in the order of the champion's ``mlcycle.features`` tag, and one ``inplace_predict`` (booster
  loaded once by alias with ``mlflow.xgboost.load_model``, ``nthread=1``). Feast metadata and MLflow
  are used at start-up only: no Feast call, pandas or MLflow per request. ``/predict_batch`` reads
  each view once for all the batch's keys (``IN``) and predicts the matrix in one call. In profile
  scale the read is one pipelined Redis ``HMGET`` per entity in Feast's layout.

Before measuring, the same requests are scored by both apps (``--check``, default 200, with a fixed
``timestamp`` so both see the same request time; a fifth each: now, three days later so a TTL
expires, a day earlier so rows are stamped after the request, an unknown user, an unknown merchant)
on ``/predict`` and on ``/predict_batch``, and then 16 at a time on ``/predict`` to each app (its
batching puts calls together: each must get the score it got alone); the run aborts unless the
scores agree (``np.allclose``). Both apps' worker counts and batching are printed.

Online: an httpx.AsyncClient (HTTP/1.1, no proxy, as many connections as clients) sends
``--requests`` POST /predict per app and level, bodies sampled from real transactions. Each app
gets 100 warm-up requests; then per level (1, 8, 32 clients) the apps are measured alternately
(3 rounds, order swapped every round) so machine noise hits both. Per app: p50, p99, req/s.
Batch: POST /predict_batch of 1,000 requests, one client, ``--batch-calls`` per app alternating;
rows/s from the median call.

    uv run python bench/serving.py [--profile local|scale] [--requests 2000] [--concurrency 1,8,32]
                                   [--batch-calls 10] [--workdir DIR]  # keep and reuse the set-up project

Targets (service / raw, issue 12): p50 at 1 client at most 2x; req/s at 8 clients at least 0.5x;
p99 at 8 clients at most 3x; /predict_batch rows/s at least 0.5x. A FAIL exits non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

import mlcycle  # noqa: F401  (telemetry off)
from mlcycle import TELEMETRY_OFF
from mlcycle.features import pipeline
from mlcycle.net import free_port
from mlcycle.project.config import ProjectConfig
from mlcycle.serving.workers import service_workers

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
DATA = {"seed": 3, "days": 60, "n_transactions": 100_000, "n_users": 10_000, "n_merchants": 1_000}
READY_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 20.0
REQUEST_TIMEOUT_S = 30.0
WARMUP_REQUESTS = 100
ROUNDS = 3
CHECK_REQUESTS = 200
CHECK_CONCURRENCY = 16  # the check's concurrent pass: calls in flight per app
BODY_POOL = 2000
BATCH_SIZE = 1000
BATCH_CALLS = 10
UNKNOWN_ID = 987_654_321  # no such user or merchant in the generated data
READY_MARKER = ".bench_ready"
RELAXED_LATENCY_GATE_MS = 1000.0

TARGET_P50 = 2.0  # service p50 at 1 client at most 2x the raw app's
TARGET_RPS = 0.5  # service req/s at 8 clients at least 0.5x the raw app's
TARGET_P99 = 3.0  # service p99 at 8 clients at most 3x the raw app's
TARGET_BATCH = 0.5  # service /predict_batch rows/s at least 0.5x the raw app's

RAW_MODULE = "raw_app"
RAW_APP = '''"""Raw app: the physical path of one score, on a bare ASGI callable served by uvicorn.

Per score: SQLite reads of the entity rows by serialized entity key (one query per feature view;
Redis HMGET in profile scale), ValueProto decode, TTL nulling, the on-demand features in plain
Python, one inplace_predict. Concurrent /predict calls of one event-loop turn share one score.
Feast, MLflow and the registry are used at start-up only (metadata, the champion); pandas never.
"""

import asyncio
import math
import mmap
import os
import sqlite3
import struct
import time
from datetime import UTC, datetime
from pathlib import Path

import mmh3
import numpy as np
import orjson
import yaml
from google.protobuf.timestamp_pb2 import Timestamp

import mlcycle  # noqa: F401  (telemetry off)
import mlflow.xgboost
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from mlcycle.features.store import open_project_store, service_plan
from mlcycle.project.config import load_config
from mlcycle.registry.aliases import client_for
from mlcycle.registry.tracking import FEATURES_TAG, THRESHOLD_TAG

cfg = load_config(os.environ["MLCYCLE_CONFIG"])
repo = cfg.feature_repo_path
fs_yaml = yaml.safe_load((repo / "feature_store.yaml").read_text())
KEY_VERSION = int(fs_yaml.get("entity_key_serialization_version", 3))

# ---- metadata, once: per feature view its table, join key, TTL and the features to read
_store = open_project_store(cfg)
PROJECT = _store.project
if cfg.profile == "local":
    if fs_yaml["online_store"]["type"] != "sqlite":
        raise SystemExit("raw app: the local profile's online store is not SQLite")
    db_path = Path(fs_yaml["online_store"]["path"])
    db_path = db_path if db_path.is_absolute() else repo / db_path
    REDIS = None
else:  # profile scale: Feast's Redis layout, one hash per entity key + project, a field per feature
    import redis

    REDIS = redis.Redis.from_url(cfg.scale.redis_url)
_plan = service_plan(_store, cfg.features.feature_service)
VIEWS = []  # (view, SQLite table, join key, ttl seconds or None, wanted features, numeric features)
for view_name, ttl in _plan.view_ttl.items():
    fv = _store.get_feature_view(view_name)
    if len(fv.join_keys) != 1:
        raise SystemExit(f"raw app: view {view_name} has join keys {fv.join_keys}; one expected")
    wanted = tuple(r.split(":", 1)[1] for r in _plan.view_refs if r.split(":", 1)[0] == view_name)
    VIEWS.append((view_name, f"{PROJECT}_{view_name}", fv.join_keys[0], ttl.total_seconds() if ttl else None,
                  wanted, frozenset(set(wanted) & _plan.numeric_features)))
VIEW_FEATURES = frozenset(r.split(":", 1)[1] for r in _plan.view_refs)
ODFV_OUTPUTS = {f.name for odfv in _plan.odfvs for f in odfv.features}
del _store, _plan

# ---- the champion, once
client = client_for(cfg)
version = client.get_model_version_by_alias(cfg.model.name, "champion")
booster = mlflow.xgboost.load_model(f"models:/{cfg.model.name}@champion")
booster.set_param({"nthread": 1})
FEATURES = orjson.loads(version.tags[FEATURES_TAG])
THRESHOLD = float(version.tags.get(THRESHOLD_TAG, 0.5))
MODEL_VERSION = str(version.version)
MISSING_CANDIDATES = [f for f in FEATURES if f in VIEW_FEATURES]

# ---- the on-demand view of feature_repo/fraud_features.py, in plain Python
CATEGORIES = {c: i for i, c in enumerate(("grocery", "restaurants", "fuel", "fashion", "electronics", "travel",
                                          "health", "gaming", "digital_goods", "home"))}
CHANNELS = {c: i for i, c in enumerate(("pos", "ecom", "contactless"))}
ON_DEMAND = {"log_amount", "amount_to_user_mean_30d", "hour_of_day", "is_foreign", "account_age_days",
             "secs_since_last_txn", "merchant_category_code", "channel_code"}
if ODFV_OUTPUTS != ON_DEMAND:
    raise SystemExit(f"raw app: the on-demand view gives {sorted(ODFV_OUTPUTS)}, this app {sorted(ON_DEMAND)}")
NAN = float("nan")


def _num(v):
    return NAN if v is None else float(v)


def on_demand(tx, request_unix, v):
    amount = float(tx["amount"])
    mean_30d = _num(v.get("amount_mean_30d"))
    last = _num(v.get("last_txn_unix"))
    signup = _num(v.get("signup_unix"))
    home = v.get("home_country")
    request = float(request_unix)
    return {
        "log_amount": math.log1p(amount if amount > 0 else 0.0),
        "amount_to_user_mean_30d": amount / mean_30d if mean_30d > 0 else NAN,
        "hour_of_day": (request_unix // 3600) % 24,
        "is_foreign": int(home is not None and str(tx["country"]) != str(home)),
        "account_age_days": (request - signup) / 86_400.0,
        "secs_since_last_txn": request - last,
        "merchant_category_code": CATEGORIES.get(str(tx["merchant_category"]), -1),
        "channel_code": CHANNELS.get(str(tx.get("channel")), -1),
    }


# ---- the online store
db = None if REDIS else sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, check_same_thread=False)
_value = ValueProto()
_stamp = Timestamp()
PROJECT_BYTES = PROJECT.encode()


def field_of(name):
    """Feast's Redis hash field: murmur3 (32 bit, little endian) of the name."""
    return struct.pack("<I", mmh3.hash(name, signed=False))


def decode(blob):
    _value.ParseFromString(blob)
    kind = _value.WhichOneof("val")
    return None if kind is None or kind == "null_val" else getattr(_value, kind)


def entity_key(join_key, value):
    proto = EntityKeyProto(join_keys=[join_key], entity_values=[ValueProto(int64_val=int(value))])
    return serialize_entity_key(proto, entity_key_serialization_version=KEY_VERSION)


def read_view(view, table, join_key, ids, wanted):
    """{id: (event unix seconds, {feature: decoded value})} for the ids found."""
    if REDIS is not None:
        return read_view_redis(view, join_key, ids, wanted)
    keys = {entity_key(join_key, i): i for i in set(ids)}
    marks = ",".join("?" * len(keys))
    rows = db.execute(
        f'SELECT entity_key, feature_name, value, event_ts FROM "{table}" WHERE entity_key IN ({marks})', list(keys)
    ).fetchall()
    out = {}
    for key, name, blob, ts in rows:
        entry = out.setdefault(keys[key], [0, {}])
        entry[0] = max(entry[0], int(ts))
        entry[1][name] = decode(blob)
    return out


def read_view_redis(view, join_key, ids, wanted):
    """One pipelined HMGET per entity of the view's fields and its timestamp field."""
    fields = [field_of(f"{view}:{name}") for name in wanted] + [f"_ts:{view}".encode()]
    unique = list(set(ids))
    pipe = REDIS.pipeline(transaction=False)
    for i in unique:
        pipe.hmget(entity_key(join_key, i) + PROJECT_BYTES, fields)
    out = {}
    for i, values in zip(unique, pipe.execute()):
        if values[-1] is None:
            continue
        _stamp.ParseFromString(values[-1])
        out[i] = [_stamp.seconds, {n: decode(b) for n, b in zip(wanted, values[:-1]) if b is not None}]
    return out


def request_unix_of(tx, now):
    stamp = tx.get("timestamp")
    if stamp is None:
        return now
    at = datetime.fromisoformat(stamp)
    return int((at if at.tzinfo is not None else at.replace(tzinfo=UTC)).timestamp())


def score(transactions):
    now = int(time.time())
    request_unix = [request_unix_of(tx, now) for tx in transactions]
    values = [{} for _ in transactions]
    for view, table, join_key, ttl, wanted, numeric in VIEWS:
        found = read_view(view, table, join_key, [tx[join_key] for tx in transactions], wanted)
        for tx, req, v in zip(transactions, request_unix, values):
            hit = found.get(tx[join_key])
            fresh = hit is not None and not (hit[0] > req or (ttl is not None and (hit[0] <= 0 or req - hit[0] > ttl)))
            for name in wanted:
                value = hit[1].get(name) if fresh else None
                v[name] = _num(value) if name in numeric else value
    rows = []
    for tx, req, v in zip(transactions, request_unix, values):
        v.update(on_demand(tx, req, v))
        rows.append([v.get(f, NAN) for f in FEATURES])
    scores = booster.inplace_predict(np.asarray(rows, dtype=np.float32))
    return [
        {"score": float(s), "decision": bool(s >= THRESHOLD), "model_version": MODEL_VERSION,
         "features_missing": [f for f in MISSING_CANDIDATES if v[f] is None or v[f] != v[f]]}
        for s, v in zip(scores.tolist(), values)
    ]


# ---- server-side figures, summed over the workers: each worker writes its own slot (a small
# memory-mapped file, as the service's Prometheus counters are) and /stats adds every worker's up.
STATS_DIR = Path(os.environ["RAW_STATS_DIR"])
STATS_DIR.mkdir(parents=True, exist_ok=True)
_STATS_FORMAT = "<dqq"  # seconds inside /predict's scoring, /predict calls, model calls for them
_stats_file = (STATS_DIR / f"{os.getpid()}.stats").open("w+b")
_stats_file.write(bytes(struct.calcsize(_STATS_FORMAT)))
_stats_file.flush()
_stats_map = mmap.mmap(_stats_file.fileno(), struct.calcsize(_STATS_FORMAT))
_stats = [0.0, 0, 0]


def count(seconds=0.0, calls=0, batches=0):
    _stats[0] += seconds
    _stats[1] += calls
    _stats[2] += batches
    struct.pack_into(_STATS_FORMAT, _stats_map, 0, *_stats)


def all_stats():
    total = [0.0, 0, 0]
    for path in STATS_DIR.glob("*.stats"):
        data = path.read_bytes()
        if len(data) >= struct.calcsize(_STATS_FORMAT):
            for k, v in enumerate(struct.unpack_from(_STATS_FORMAT, data)):
                total[k] += v
    return {"seconds": total[0], "calls": total[1], "batches": total[2]}


# ---- micro-batching, the service's rule written out with asyncio: the /predict calls that reach
# this worker before its event loop's next turn are scored in one score() call (one store read per
# view, one matrix, one inplace_predict), at most BATCH_MAX per call; a lone call waits one
# call_soon hop, never a timer. RAW_BATCH_MAX=0: every call scored alone.
BATCH_MAX = int(os.environ.get("RAW_BATCH_MAX", "0"))
_pending = []  # (transaction, future)
_scheduled = False


def _flush():
    global _scheduled
    _scheduled = False
    pending = _pending[:]
    _pending.clear()
    for start in range(0, len(pending), BATCH_MAX):
        batch = [(tx, future) for tx, future in pending[start : start + BATCH_MAX] if not future.done()]
        if not batch:
            continue
        try:
            results = score([tx for tx, _ in batch])
        except Exception as exc:  # every call of this batch answers it; the next batch goes on
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            continue
        count(batches=1)
        for (_, future), result in zip(batch, results):
            if not future.done():
                future.set_result(result)


async def score_one(tx):
    global _scheduled
    if not BATCH_MAX:
        count(batches=1)
        return score([tx])[0]
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    _pending.append((tx, future))
    if not _scheduled:
        _scheduled = True
        loop.call_soon(_flush)
    return await future


JSON_HEADERS = [(b"content-type", b"application/json")]


async def respond(send, status, payload):
    body = orjson.dumps(payload)
    await send({"type": "http.response.start", "status": status,
                "headers": [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    try:
        if path == "/predict":
            started = time.perf_counter()  # as the service's histogram: the wait for the batch included
            out = await score_one(orjson.loads(b"".join(chunks))["request"])
            count(seconds=time.perf_counter() - started, calls=1)
            await respond(send, 200, out)
        elif path == "/predict_batch":
            await respond(send, 200, score(orjson.loads(b"".join(chunks))["requests"]))
        elif path == "/readyz":
            await respond(send, 200, {"ready": True})
        elif path == "/stats":
            await respond(send, 200, all_stats())
        else:
            await respond(send, 404, {"error": f"no route {path}"})
    except Exception as exc:  # a bench app: the error in the answer
        await respond(send, 500, {"error": f"{type(exc).__name__}: {exc}"})
'''


# --------------------------------------------------------------------------------------------- servers
@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    startup_s: float = 0.0
    workers: int = 1
    batch_max: int = 0  # micro-batching: at most this many concurrent /predict calls per model call; 0: none

    @property
    def batching(self) -> str:
        if not self.batch_max:
            return "each /predict call scored alone"
        return f"concurrent /predict calls of one event-loop turn scored together (at most {self.batch_max})"

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "<no log>"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def start_server(name: str, cmd: Sequence[str], env: Mapping[str, str], cwd: Path, port: int, log: Path) -> Server:
    """Start ``cmd`` in its own process group (so stopping it also stops the workers it spawns)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(cmd), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=dict(env), cwd=cwd,
            start_new_session=True,
        )  # fmt: skip
    return Server(name, proc, f"http://{LOOPBACK}:{port}", log)


def wait_ready(servers: Sequence[Server], timeout: float = READY_TIMEOUT_S) -> None:
    """Poll each server's /readyz until it answers 200; fail with the log tail on exit or timeout."""
    started = time.monotonic()
    pending = list(servers)
    last: dict[str, str] = {}
    with httpx.Client(trust_env=False, timeout=5.0) as client:
        for _ in range(int(timeout / 0.5) + 1):
            for server in list(pending):
                if server.proc.poll() is not None:
                    raise RuntimeError(
                        f"{server.name} exited with {server.proc.returncode} before /readyz answered; "
                        f"log tail:\n{server.log_tail()}"
                    )
                try:
                    response = client.get(server.base_url + "/readyz")
                    if response.status_code == 200:
                        server.startup_s = time.monotonic() - started
                        pending.remove(server)
                        continue
                    last[server.name] = f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    last[server.name] = repr(exc)
            if not pending or time.monotonic() - started > timeout:
                break
            time.sleep(0.5)
    if pending:
        names = ", ".join(f"{s.name} ({last.get(s.name, 'no answer')})" for s in pending)
        raise RuntimeError(f"not ready after {timeout:.0f}s: {names}; log tail:\n{pending[0].log_tail()}")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_server(server: Server, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the server's process group, wait for every member, SIGKILL what is left."""
    pgid = server.proc.pid  # start_new_session: the leader's pid is the group id
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.proc.wait(timeout=timeout)
    for _ in range(int(timeout / 0.2)):
        if not _group_alive(pgid):
            break
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.proc.wait(timeout=timeout)


SERVICE_SOURCE = ROOT / "services" / "service.py"


def service_batch_max(source: Path = SERVICE_SOURCE) -> int:
    """How many concurrent ``/predict`` calls the service scores in one call: the ``max_size`` of its
    ``MicroBatcher`` (read from its source, so the raw app follows it); 0 when it does not batch."""
    text = source.read_text()
    if "MicroBatcher(" not in text:
        return 0
    found = re.search(r"MicroBatcher\([^)]*max_size\s*=\s*(\d+)", text)
    if found is None:
        from mlcycle.serving.batching import MicroBatcher

        return int(MicroBatcher(lambda items: items).max_size)  # the default
    return int(found.group(1))


@contextlib.contextmanager
def running_servers(cfg: ProjectConfig, tmp: Path) -> Iterator[tuple[Server, Server]]:
    """The BentoML service and the raw app, both ready; always stopped on the way out.

    The raw app runs as many worker processes as the service (``service_workers``, as
    services/service.py sizes it: MLCYCLE_WORKERS, else one per core in profile scale, one in
    local) and batches concurrent ``/predict`` calls by the same rule as the service's
    ``MicroBatcher`` (written out in the raw app with asyncio), so the two differ only in what
    each does per call."""
    env = {**os.environ, **TELEMETRY_OFF, "MLCYCLE_CONFIG": str(cfg.root / "mlcycle.yaml")}
    (tmp / f"{RAW_MODULE}.py").write_text(RAW_APP)
    workers = service_workers(cfg.profile, os.environ.get("MLCYCLE_WORKERS"), os.cpu_count())
    batch_max = service_batch_max()
    stats_dir = tmp / "raw-stats"
    shutil.rmtree(stats_dir, ignore_errors=True)  # a directory used before: no stopped workers' figures
    bento_port, raw_port = free_port(), free_port()
    bento_cmd = [sys.executable, "-m", "bentoml", "serve", "services.service:ScoringService"]
    raw_cmd = [sys.executable, "-m", "uvicorn", f"{RAW_MODULE}:app", "--workers", str(workers), "--no-access-log",
               "--log-level", "warning"]  # fmt: skip
    bento_env = {**env, "BENTOML_HOME": str(tmp / "bentoml_home"), "BENTOML_DO_NOT_TRACK": "True"}
    raw_env = {**env, "RAW_STATS_DIR": str(stats_dir), "RAW_BATCH_MAX": str(batch_max)}
    servers: list[Server] = []
    try:
        bento_cmd += ["--host", LOOPBACK, "--port", str(bento_port)]
        servers.append(start_server("bentoml", bento_cmd, bento_env, ROOT, bento_port, tmp / "bentoml.log"))
        raw_cmd += ["--host", LOOPBACK, "--port", str(raw_port)]
        servers.append(start_server("raw", raw_cmd, raw_env, tmp, raw_port, tmp / "raw.log"))
        for server in servers:
            server.workers, server.batch_max = workers, batch_max
        wait_ready(servers)
        yield servers[0], servers[1]
    finally:
        for server in servers:
            stop_server(server)


# ------------------------------------------------------------------------------------------ load
@dataclass
class Measurement:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    requests: int = 0
    seconds: float = 0.0
    scoring_s: float = 0.0  # server-side, inside the scoring call (priming requests included)
    scoring_calls: int = 0
    model_calls: int = 0  # the model calls that answered those /predict calls (0: not known)

    def add(self, other: Measurement) -> None:
        self.latencies += other.latencies
        self.errors += other.errors
        self.requests += other.requests
        self.seconds += other.seconds
        self.scoring_s += other.scoring_s
        self.scoring_calls += other.scoring_calls
        self.model_calls += other.model_calls

    @property
    def calls_per_model_call(self) -> float | None:
        return self.scoring_calls / self.model_calls if self.model_calls > 0 else None

    @property
    def scoring_ms(self) -> float | None:
        return self.scoring_s / self.scoring_calls * 1000 if self.scoring_calls > 0 else None

    @property
    def p50_ms(self) -> float:
        return float(np.percentile(self.latencies, 50)) * 1000

    @property
    def p99_ms(self) -> float:
        return float(np.percentile(self.latencies, 99)) * 1000

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def client_for_load(concurrency: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(
        trust_env=False, http1=True, http2=False, limits=limits, timeout=REQUEST_TIMEOUT_S,
        headers={"content-type": "application/json"},
    )  # fmt: skip


async def load(url: str, bodies: Sequence[bytes], n: int, concurrency: int, offset: int = 0) -> Measurement:
    """``n`` POSTs at ``concurrency`` in flight; connections are opened (unmeasured) first."""
    out = Measurement(requests=n)
    async with client_for_load(concurrency) as client:

        async def one(i: int) -> None:
            body = bodies[(offset + i) % len(bodies)]
            started = time.perf_counter()
            try:
                ok = (await client.post(url, content=body)).status_code == 200
            except httpx.HTTPError:
                ok = False
            out.latencies.append(time.perf_counter() - started)
            out.errors += not ok

        await asyncio.gather(*(client.post(url, content=bodies[i % len(bodies)]) for i in range(concurrency)))
        indices = iter(range(n))  # shared: each worker takes the next index, so all stay busy

        async def worker() -> None:
            for i in indices:
                await one(i)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        out.seconds = time.perf_counter() - started
    return out


def round_sizes(n: int, rounds: int = ROUNDS) -> list[int]:
    return [n // rounds + (i < n % rounds) for i in range(rounds)]


def transactions_of(cfg: ProjectConfig, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Requests from real transactions of the last two days (fresh features), fixed sample."""
    tx = pd.read_parquet(cfg.raw_dir / "transactions.parquet")
    recent = tx[tx["event_timestamp"] >= tx["event_timestamp"].max() - pd.Timedelta(days=2)]
    recent = recent[(recent["amount"] > 0) & (recent["amount"] < 1_000_000)]
    rows = recent.sample(n=min(n, len(recent)), random_state=seed)
    return [
        {
            "user_id": int(r.user_id),
            "merchant_id": int(r.merchant_id),
            "amount": float(r.amount),
            "country": str(r.country),
            "merchant_category": str(r.merchant_category),
            "channel": None if pd.isna(r.channel) else str(r.channel),
        }
        for r in rows.itertuples(index=False)
    ]


def check_transactions(transactions: Sequence[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """``n`` requests with a fixed ``timestamp`` (so both apps see the same request time, to the
    second), varied so the TTL and the missing paths are exercised too: now; three days later
    (merchant_stats, TTL 2 days, expired); a day earlier (rows stamped after the request: unknown);
    an unknown user; an unknown merchant."""
    now = datetime.now(UTC).replace(microsecond=0)
    shifts = [timedelta(0), timedelta(days=3), timedelta(days=-1), timedelta(0), timedelta(0)]
    out = []
    for i, tx in enumerate(transactions[:n]):
        kind = i % len(shifts)
        body = {**tx, "timestamp": (now + shifts[kind]).isoformat().replace("+00:00", "Z")}
        if kind == 3:
            body["user_id"] = UNKNOWN_ID
        elif kind == 4:
            body["merchant_id"] = UNKNOWN_ID
        out.append(body)
    return out


async def concurrent_scores(server: Server, transactions: Sequence[dict[str, Any]]) -> list[float | str]:
    """Each transaction's /predict score, sent ``CHECK_CONCURRENCY`` at a time (an error text for a
    non-200), in the transactions' order."""
    async with client_for_load(CHECK_CONCURRENCY) as client:

        async def one(tx: dict[str, Any]) -> float | str:
            response = await client.post(server.base_url + "/predict", json={"request": tx})
            if response.status_code != 200:
                return f"{response.status_code}: {response.text[:300]}"
            return float(response.json()["score"])

        return list(await asyncio.gather(*(one(tx) for tx in transactions)))


async def check_same_scores(bento: Server, raw: Server, transactions: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The same requests on both apps: one by one on /predict, all at once on /predict_batch, and
    ``CHECK_CONCURRENCY`` at a time on /predict (so each app's micro-batching puts calls together;
    each call must get the score it got alone)."""
    report: dict[str, Any] = {"n": len(transactions), "non200": [], "missing_differ": 0, "with_missing": 0}
    a_scores, b_scores = [], []
    alone: dict[str, list[float | None]] = {"bentoml": [], "raw": []}
    async with httpx.AsyncClient(trust_env=False, timeout=REQUEST_TIMEOUT_S) as client:
        for tx in transactions:
            answers = []
            for server in (bento, raw):
                response = await client.post(server.base_url + "/predict", json={"request": tx})
                if response.status_code != 200:
                    report["non200"].append(f"{server.name} /predict {response.status_code}: {response.text[:300]}")
                answers.append(response.json() if response.status_code == 200 else None)
                alone[server.name].append(answers[-1]["score"] if answers[-1] is not None else None)
            if None in answers:
                continue
            a_scores.append(answers[0]["score"])
            b_scores.append(answers[1]["score"])
            report["missing_differ"] += set(answers[0]["features_missing"]) != set(answers[1]["features_missing"])
            report["with_missing"] += bool(answers[1]["features_missing"])
        batch = []
        for server in (bento, raw):
            response = await client.post(server.base_url + "/predict_batch", json={"requests": list(transactions)})
            if response.status_code != 200:
                report["non200"].append(f"{server.name} /predict_batch {response.status_code}: {response.text[:300]}")
            batch.append([r["score"] for r in response.json()] if response.status_code == 200 else None)
        report["concurrent_diff"], report["concurrent_ok"] = 0.0, True
        for server in (bento, raw):
            before = await scoring_totals(client, server)
            together = await concurrent_scores(server, transactions)
            after = await scoring_totals(client, server)
            report[f"{server.name}_concurrent_calls"] = after[1] - before[1]
            report[f"{server.name}_concurrent_model_calls"] = after[2] - before[2]
            differ = []
            for i, (x, y) in enumerate(zip(alone[server.name], together, strict=True)):
                if isinstance(y, str):
                    report["non200"].append(f"{server.name} concurrent /predict: {y}")
                    report["concurrent_ok"] = False
                elif x is not None:
                    report["concurrent_diff"] = max(report["concurrent_diff"], abs(x - y))
                    if not np.isclose(x, y):
                        differ.append(f"#{i} {x:.4f} alone, {y:.4f} together")
            if differ:
                report["concurrent_ok"] = False
                report["non200"].append(f"{server.name}: {len(differ)} concurrent /predict calls scored otherwise "
                                        f"than alone: {', '.join(differ[:5])}")  # fmt: skip
    a, b = np.asarray(a_scores, dtype=float), np.asarray(b_scores, dtype=float)
    report["compared"] = len(a)
    report["single_ok"] = len(a) == len(transactions) and bool(np.allclose(a, b))
    report["single_diff"] = float(np.max(np.abs(a - b))) if len(a) else float("nan")
    report["batch_ok"] = None not in batch and bool(np.allclose(batch[0], batch[1]))
    report["batch_diff"] = float(np.max(np.abs(np.subtract(*batch)))) if None not in batch else float("nan")
    report["batch_vs_single_ok"] = None not in batch and len(a) == len(batch[1]) and bool(np.allclose(batch[1], b))
    return report


async def scoring_totals(client: httpx.AsyncClient, server: Server) -> tuple[float, int, int]:
    """(seconds, calls, model calls) of /predict's scoring so far, as the server measures it, over
    all its workers: from the call's submission to its result (the wait for the batch included).

    BentoML: the service's ``mlcycle_predict_seconds`` histogram around ``MicroBatcher.submit``, and
    the count of its ``mlcycle_predict_batch_size`` histogram (0 where the service has none); raw
    app: its own counters around ``score_one`` and ``score``. (0, 0, 0) when unreadable."""
    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
        if server.name == "raw":
            stats = (await client.get(server.base_url + "/stats")).json()
            return float(stats["seconds"]), int(stats["calls"]), int(stats["batches"])
        text = (await client.get(server.base_url + "/metrics")).text
        found = {
            kind: re.search(rf'mlcycle_predict_seconds_{kind}\{{[^}}]*endpoint="predict"[^}}]*\}}\s+(\S+)', text)
            for kind in ("sum", "count")
        }
        batches = re.search(r"^mlcycle_predict_batch_size_count(?:\{[^}]*\})?\s+(\S+)", text, re.MULTILINE)
        if found["sum"] and found["count"]:
            model_calls = int(float(batches.group(1))) if batches else 0
            return float(found["sum"].group(1)), int(float(found["count"].group(1))), model_calls
    return 0.0, 0, 0


async def measure(
    bento: Server, raw: Server, bodies: Sequence[bytes], n: int, levels: Sequence[int]
) -> tuple[dict[int, dict[str, Measurement]], int]:
    """Warm both apps up, then per level ``ROUNDS`` alternating rounds. Returns results, warm-up errors."""
    warm = 0
    for server in (bento, raw):
        warm += (await load(server.base_url + "/predict", bodies, WARMUP_REQUESTS, max(levels))).errors
    results: dict[int, dict[str, Measurement]] = {}
    offset = WARMUP_REQUESTS
    async with httpx.AsyncClient(trust_env=False, timeout=10.0) as stats:
        for c in levels:
            results[c] = {"bento": Measurement(), "raw": Measurement()}
            for r, size in enumerate(round_sizes(n)):
                order = [("bento", bento), ("raw", raw)]
                for name, server in order if r % 2 == 0 else order[::-1]:
                    before = await scoring_totals(stats, server)
                    measured = await load(server.base_url + "/predict", bodies, size, c, offset)
                    after = await scoring_totals(stats, server)
                    measured.scoring_s, measured.scoring_calls, measured.model_calls = (
                        a - b for a, b in zip(after, before, strict=True)
                    )
                    results[c][name].add(measured)
                offset += size
            m = results[c]
            print(
                f"  {c:>2} clients: bento p50 {m['bento'].p50_ms:.2f} ms p99 {m['bento'].p99_ms:.2f} ms "
                f"{m['bento'].rps:.0f} req/s; raw p50 {m['raw'].p50_ms:.2f} ms p99 {m['raw'].p99_ms:.2f} ms "
                f"{m['raw'].rps:.0f} req/s",
                flush=True,
            )
    return results, warm


async def measure_batch(bento: Server, raw: Server, body: bytes, calls: int) -> dict[str, list[float] | int]:
    """POST /predict_batch with the same body, one call at a time, alternating apps (order swapped
    every round) after one unmeasured call each. Per app: the call times and the non-200 count."""
    out: dict[str, Any] = {"bento": [], "raw": [], "bento_errors": 0, "raw_errors": 0}
    async with client_for_load(1) as client:
        for server in (bento, raw):
            await client.post(server.base_url + "/predict_batch", content=body)
        for r in range(calls):
            order = [("bento", bento), ("raw", raw)]
            for name, server in order if r % 2 == 0 else order[::-1]:
                started = time.perf_counter()
                response = await client.post(server.base_url + "/predict_batch", content=body)
                out[name].append(time.perf_counter() - started)
                out[f"{name}_errors"] += response.status_code != 200
    return out


# ------------------------------------------------------------------------------------------ main
def bench_project(dest: Path) -> ProjectConfig:
    """A copy of this project at ``dest`` with the bench's data sizes.

    The copy's model-latency gate is relaxed: on a shared 2-core machine the training flow's p99
    measurement can exceed it, and a rejected model would leave nothing to serve."""
    import yaml

    from mlcycle.project.config import load_config
    from mlcycle.project.files import copy_project

    cfg = copy_project(ROOT, dest, DATA)
    path = cfg.root / "mlcycle.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["gates"] = {**(raw.get("gates") or {}), "max_p99_latency_ms": RELAXED_LATENCY_GATE_MS}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_config(path)


def setup(cfg: ProjectConfig) -> str:
    """Data, features, online store, and a champion from the ``train`` flow; returns its version."""
    from prefect.testing.utilities import prefect_test_harness

    from mlcycle.flows import load_flow

    pipeline.generate_data(cfg)
    pipeline.build_features(cfg)
    pipeline.publish_features(cfg)
    with prefect_test_harness(server_startup_timeout=180):
        result = load_flow(cfg.root, "training", "train")(config=str(cfg.root / "mlcycle.yaml"))
    if result.get("alias") != "champion":
        raise SystemExit(f"training did not register a champion: {result}")
    return str(result["version"])


def prepared_project(
    workdir: Path | None, tmp: Path, created: list[ProjectConfig] | None = None
) -> tuple[ProjectConfig, str, float]:
    """The bench project, set up; with ``workdir``, one set up by an earlier run is reused.
    Returns (config, champion version, setup seconds). ``created`` gets the config as soon as it
    exists, so a set-up that fails half-way is cleaned up too (its online rows)."""
    from mlcycle.project.config import load_config

    started = time.perf_counter()
    root = (workdir or tmp).resolve()
    marker = root / READY_MARKER
    if workdir is not None and marker.exists():
        return load_config(root / "project" / "mlcycle.yaml"), marker.read_text().strip(), 0.0
    root.mkdir(parents=True, exist_ok=True)
    cfg = bench_project(root / "project")
    if created is not None:
        created.append(cfg)
    version = setup(cfg)
    marker.write_text(version)
    return cfg, version, time.perf_counter() - started


STORES = {"local": "SQLite online store", "scale": "Redis online store, PostgreSQL registries"}
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextlib.contextmanager
def profile_environment(profile: str, keep: bool) -> Iterator[list[ProjectConfig]]:
    """The MLCYCLE_* environment of ``profile`` (the servers inherit it). Scale: a PostgreSQL
    database and a Redis prefix of the bench's own, on the server of MLCYCLE_PG_URL / MLCYCLE_REDIS_URL
    (default: local ones); unless ``keep``, the project's Redis rows are deleted and the database
    dropped afterwards (the bench created both). Yields a list the caller puts the project's config in."""
    saved = dict(os.environ)
    configs: list[ProjectConfig] = []
    os.environ["MLCYCLE_PROFILE"] = profile
    name = ""
    if profile == "scale":
        from urllib.parse import urlsplit, urlunsplit

        name = "mlcycle_bench_serving" if keep else f"mlcycle_bench_serving_{os.getpid()}"
        base = urlsplit(os.environ.get("MLCYCLE_PG_URL") or DEFAULT_PG)
        os.environ["MLCYCLE_PG_URL"] = urlunsplit((base.scheme, base.netloc, f"/{name}", base.query, ""))
        os.environ["MLCYCLE_REDIS_PREFIX"] = name
    try:
        yield configs
    finally:
        if profile == "scale" and not keep:
            drop_scale_state(configs, os.environ["MLCYCLE_PG_URL"], name)
        os.environ.clear()
        os.environ.update(saved)


def drop_scale_state(configs: Sequence[ProjectConfig], url: str, name: str) -> None:
    """Delete what this run created in Redis (the project's entity keys) and PostgreSQL (its database)."""
    from urllib.parse import urlsplit, urlunsplit

    import psycopg
    from psycopg import sql

    from mlcycle.features.store import clear_online, open_project_store

    for cfg in configs:
        with contextlib.suppress(Exception):
            clear_online(open_project_store(cfg))
    parts = urlsplit(url)
    maintenance = urlunsplit(("postgresql", parts.netloc, "/postgres", parts.query, ""))
    with psycopg.connect(maintenance, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def fail_check(report: dict[str, Any], bento: Server, raw: Server) -> None:
    problems = [*report["non200"][:5]]
    if not report["single_ok"]:
        problems.append(f"/predict scores differ (largest difference {report['single_diff']:.3g}, "
                        f"{report['compared']} of {report['n']} compared)")  # fmt: skip
    if not report["batch_ok"]:
        problems.append(f"/predict_batch scores differ (largest difference {report['batch_diff']:.3g})")
    if not report["batch_vs_single_ok"]:
        problems.append("the raw app's /predict_batch and /predict disagree")
    if not report["concurrent_ok"]:
        problems.append(f"concurrent /predict calls did not get the scores they got alone (largest difference "
                        f"{report['concurrent_diff']:.3g}): a batcher mixed calls up")  # fmt: skip
    raise SystemExit(
        "ABORT: the raw app does not compute what the service computes, so the comparison would mean "
        "nothing:\n  " + "\n  ".join(problems) + f"\nbentoml log tail:\n{bento.log_tail(15)}\n"
        f"raw log tail:\n{raw.log_tail(15)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per app and concurrency")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated levels; must include 1 and 8")
    parser.add_argument("--batch-calls", type=int, default=BATCH_CALLS, help="measured /predict_batch calls per app")
    parser.add_argument("--check", type=int, default=CHECK_REQUESTS, help="requests scored by both apps first")
    parser.add_argument(
        "--workdir", type=Path, default=None,
        help="keep the bench project here and reuse it on the next run (default: a temporary directory)",
    )  # fmt: skip
    parser.add_argument(
        "--profile", choices=("local", "scale"), default="local",
        help="local: SQLite online store; scale: Redis online store, PostgreSQL registries (a database and "
        "Redis prefix of the bench's own, dropped after a run without --workdir)",
    )  # fmt: skip
    args = parser.parse_args()
    suffix = "" if args.profile == "local" else f"_{args.profile}"
    if args.workdir is not None:
        args.workdir = args.workdir / args.profile
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if args.requests < ROUNDS or not levels or min(levels) < 1 or not {1, 8} <= set(levels):
        parser.error(f"--requests must be at least {ROUNDS}; --concurrency must include 1 and 8, all at least 1")
    if args.batch_calls < 1 or args.check < 1:
        parser.error("--batch-calls and --check must be at least 1")

    total_started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="mlcycle-bench-") as tmp_name,
        profile_environment(args.profile, keep=args.workdir is not None) as cleanup,
    ):
        tmp = Path(tmp_name)
        cfg, version, setup_s = prepared_project(args.workdir, tmp, cleanup)
        if cfg not in cleanup:  # reused from --workdir
            cleanup.append(cfg)
        reused = " (reused from --workdir)" if not setup_s else f" in {setup_s:.0f}s"
        print(f"setup: {DATA['n_transactions']:,} transactions, features published, champion v{version}{reused}",
              flush=True)  # fmt: skip
        transactions = transactions_of(cfg, max(BODY_POOL, BATCH_SIZE, args.check))
        bodies = [json.dumps({"request": tx}).encode() for tx in transactions[:BODY_POOL]]
        batch_body = json.dumps({"requests": transactions[:BATCH_SIZE]}).encode()

        with running_servers(cfg, tmp) as (bento, raw):
            print(f"servers ready: bentoml {bento.startup_s:.0f}s, raw {raw.startup_s:.0f}s; load average (1 min) "
                  f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)  # fmt: skip
            for server in (bento, raw):
                print(f"  {server.name}: {server.workers} worker{'s' * (server.workers > 1)}; batching: "
                      f"{server.batching}", flush=True)  # fmt: skip
            report = asyncio.run(check_same_scores(bento, raw, check_transactions(transactions, args.check)))
            checks = ("single_ok", "batch_ok", "batch_vs_single_ok", "concurrent_ok")
            if report["non200"] or not all(report[k] for k in checks):
                fail_check(report, bento, raw)
            print(
                f"check: {report['n']} requests (now, +3 days, -1 day, unknown user, unknown merchant) scored by "
                f"both on /predict and /predict_batch: scores equal (np.allclose; largest difference "
                f"{report['single_diff']:.2e} single, {report['batch_diff']:.2e} batch); {report['with_missing']} "
                f"with features missing, features_missing differs on {report['missing_differ']}; "
                f"{CHECK_CONCURRENCY} at a time on /predict: each app's scores as alone (largest difference "
                f"{report['concurrent_diff']:.2e}); model calls for them: bentoml "
                f"{report['bentoml_concurrent_model_calls'] or 'n/a'}, raw {report['raw_concurrent_model_calls']}",
                flush=True,
            )
            results, warm_errors = asyncio.run(measure(bento, raw, bodies, args.requests, levels))
            batch = asyncio.run(measure_batch(bento, raw, batch_body, args.batch_calls))
            print("  batch measured", flush=True)

    print()
    read = "SQLite by entity key" if args.profile == "local" else "Redis HMGET by entity key"
    print(f"online: POST /predict, {args.requests} measured requests per app and level in {ROUNDS} alternating "
          f"rounds, {len(bodies)} distinct bodies, profile {args.profile} ({STORES[args.profile]}). raw = bare ASGI on "
          f"uvicorn: {read} + ValueProto decode + TTL + plain-Python on-demand features + inplace_predict; no "
          f"Feast, pandas or MLflow per request, no validation, routing, metrics or prediction log (the BentoML "
          f"service: all of them)")  # fmt: skip
    for server in (bento, raw):
        print(f"  {server.name}: {server.workers} worker{'s' * (server.workers > 1)}; {server.batching}")
    header = (
        f"{'clients':>7} | {'bento p50 ms':>12} | {'raw p50 ms':>10} | {'p50 ratio':>9} | {'bento p99':>9} | "
        f"{'raw p99':>8} | {'p99 ratio':>9} | {'bento rps':>9} | {'raw rps':>8} | {'rps ratio':>9} | "
        f"{'errors b/raw':>12}"
    )
    print(header)
    print("-" * len(header))
    errors = 0
    for c, m in results.items():
        b, a = m["bento"], m["raw"]
        errors += b.errors + a.errors
        print(
            f"{c:>7} | {b.p50_ms:>12.2f} | {a.p50_ms:>10.2f} | {b.p50_ms / a.p50_ms:>9.2f} | {b.p99_ms:>9.2f} | "
            f"{a.p99_ms:>8.2f} | {b.p99_ms / a.p99_ms:>9.2f} | {b.rps:>9.0f} | {a.rps:>8.0f} | "
            f"{b.rps / a.rps:>9.2f} | {f'{b.errors}/{a.errors}':>12}"
        )
    print()
    print("server-side mean ms per request from its submission to its score (the wait for its batch included;")
    print("bento: MicroBatcher.submit → Scorer.score incl. routing and log records; raw: score_one → score),")
    print("what the rest of the stack adds to the p50 (HTTP, framework, client, queueing), and the /predict")
    print("calls per model call (how much each app's batching put together; bento: mlcycle_predict_batch_size):")
    print(f"{'clients':>7} | {'bento score':>11} | {'raw score':>9} | {'bento p50 - score':>17} | "
          f"{'raw p50 - score':>15} | {'calls/model call b/raw':>22}")  # fmt: skip
    for c, m in results.items():
        b, a = m["bento"].scoring_ms, m["raw"].scoring_ms
        if b is None or a is None:
            print(f"{c:>7} | (server-side timings unavailable)")
            continue
        per = "/".join("n/a" if x is None else f"{x:.2f}" for x in (m["bento"].calls_per_model_call,
                                                                    m["raw"].calls_per_model_call))  # fmt: skip
        print(f"{c:>7} | {b:>11.2f} | {a:>9.2f} | {m['bento'].p50_ms - b:>17.2f} | {m['raw'].p50_ms - a:>15.2f} | "
              f"{per:>22}")  # fmt: skip
    if warm_errors:
        print(f"note: {warm_errors} non-200 in warm-up (not measured)")

    bento_s, raw_s = statistics.median(batch["bento"]), statistics.median(batch["raw"])
    bento_rows, raw_rows = BATCH_SIZE / bento_s, BATCH_SIZE / raw_s
    batch_errors = batch["bento_errors"] + batch["raw_errors"]
    print()
    print(f"batch: POST /predict_batch of {BATCH_SIZE:,} requests, {args.batch_calls} calls per app alternating, "
          f"one client; median call time (errors b/raw {batch['bento_errors']}/{batch['raw_errors']})")  # fmt: skip
    print(f"{'app':<10}{'median ms':>12}{'rows/s':>12}")
    print(f"{'bento':<10}{bento_s * 1000:>12.1f}{bento_rows:>12,.0f}")
    print(f"{'raw':<10}{raw_s * 1000:>12.1f}{raw_rows:>12,.0f}")
    print(f"total runtime {time.perf_counter() - total_started:.0f}s; load average (1 min) at the end "
          f"{os.getloadavg()[0]:.2f}")  # fmt: skip
    print()
    one, eight = results[1], results[8]
    p50_1 = one["bento"].p50_ms / one["raw"].p50_ms
    rps_8 = eight["bento"].rps / eight["raw"].rps
    p99_8 = eight["bento"].p99_ms / eight["raw"].p99_ms
    batch_ratio = bento_rows / raw_rows
    lines = [
        (f"serving_p50_ratio_1client{suffix}", p50_1, TARGET_P50, p50_1 <= TARGET_P50 and not errors),
        (f"serving_throughput_ratio_8clients{suffix}", rps_8, TARGET_RPS, rps_8 >= TARGET_RPS and not errors),
        (f"serving_p99_ratio_8clients{suffix}", p99_8, TARGET_P99, p99_8 <= TARGET_P99 and not errors),
        (f"serving_batch_ratio{suffix}", batch_ratio, TARGET_BATCH, batch_ratio >= TARGET_BATCH and not batch_errors),
    ]
    for name, value, target, ok in lines:
        print(f"RESULT {name} {value:.2f} x target {target} {verdict(ok)}")
    if not all(ok for *_, ok in lines):
        sys.exit(1)  # a benchmark that fails its target fails `make bench`


if __name__ == "__main__":
    main()
