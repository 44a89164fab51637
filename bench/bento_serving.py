"""Benchmark: the built Bento, served from the BentoML store, against ``mlcycle serve`` of the same project.

Project: ``bench/serving.py``'s (generated data, features published to the SQLite online store, a
champion from the ``train`` flow), in a temporary directory or kept in ``--workdir``. Then:

- ``mlcycle build`` packs the project's service into a BentoML store of the run's own, and a scratch
  venv gets only the Bento's requirements (its ``env/python/install.sh``: the pinned requirements,
  then its wheels, through uv's cache). Both are timed.
- Two servers, both on loopback and both ready before anything is measured: the Bento, ``bentoml
  serve <tag>`` from that venv with ``MLCYCLE_CONFIG`` naming the project (how a profile-local Bento
  reaches the project's registry and online store), and ``mlcycle serve``'s process (``bentoml serve
  <service> --working-dir <project>`` from this checkout's venv, ``mlcycle.ops.service_process``).
  Same project, same stores, same champion, same worker count (``MLCYCLE_WORKERS`` for both).
- Check first: the same ``--check`` requests (real transactions, one fixed request time) get the
  same answers from both, else the run aborts (comparing throughput would mean nothing).
- Load: bench/serving.py's request bodies and client (HTTP/1.1 keep-alive, connections opened
  before measuring), ``--concurrency`` requests in flight, for ``--seconds`` per round and server;
  ``--rounds`` rounds alternate the servers (order swapped every round) after 100 warm-up requests
  each, so machine noise hits both; each round starts both servers at the same body.

Target: the Bento's throughput at least 0.95x ``mlcycle serve``'s (req/s over all rounds), with no
non-200 answer. The last line is ``RESULT bento_vs_serve_throughput <ratio> x target 0.95 PASS|FAIL``;
a FAIL exits non-zero.

    uv run python bench/bento_serving.py [--seconds 10] [--rounds 4] [--concurrency 8] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

import mlcycle  # noqa: F401  (telemetry off)
from mlcycle import TELEMETRY_OFF
from mlcycle.net import free_port
from mlcycle.ops.service_process import serve_command
from mlcycle.project.config import ProjectConfig
from serving import (
    LOOPBACK,
    WARMUP_REQUESTS,
    Measurement,
    Server,
    client_for_load,
    load,
    prepared_project,
    start_server,
    stop_server,
    transactions_of,
    wait_ready,
)

TARGET = 0.95
CHECK = 200
BODIES = 2000
VENV_BIN = Path(sys.executable).parent


def uv() -> str:
    found = shutil.which("uv") or str(Path.home() / ".local" / "bin" / "uv")
    if not Path(found).exists():
        raise SystemExit("uv is needed for the Bento's venv (curl -LsSf https://astral.sh/uv/install.sh | sh)")
    return found


def build_bento(cfg: ProjectConfig, home: Path) -> tuple[str, Path, float]:
    """``mlcycle build`` into the store at ``home``: (tag, Bento path, seconds)."""
    started = time.perf_counter()
    result = subprocess.run(
        [str(VENV_BIN / "mlcycle"), "build", "--config", str(cfg.root / "mlcycle.yaml")],
        env={**os.environ, **TELEMETRY_OFF, "BENTOML_HOME": str(home)}, capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"mlcycle build failed:\n{result.stdout}\n{result.stderr[-3000:]}")
    tag = re.search(r"Built Bento (\S+)", result.stdout).group(1)
    name, version = tag.split(":")
    return tag, home / "bentos" / name / version, time.perf_counter() - started


def bento_venv(bento: Path, venv: Path) -> float:
    """A venv with only the Bento's requirements, by the Bento's own install script; seconds."""
    started = time.perf_counter()
    tool = uv()
    subprocess.run([tool, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    env = {**os.environ, "VIRTUAL_ENV": str(venv), "PATH": f"{Path(tool).parent}:{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(["bash", str(bento / "env" / "python" / "install.sh")], env=env, capture_output=True,
                            text=True)  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"the Bento's install.sh failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def start_both(cfg: ProjectConfig, tag: str, home: Path, venv: Path, tmp: Path) -> tuple[Server, Server]:
    config = str(cfg.root / "mlcycle.yaml")
    base = {**os.environ, **TELEMETRY_OFF, "MLCYCLE_CONFIG": config}
    base.pop("PYTHONPATH", None)
    bento_port, serve_port = free_port(), free_port()
    bento_cmd = [str(venv / "bin" / "bentoml"), "serve", tag, "--host", LOOPBACK, "--port", str(bento_port)]
    bento_env = {**base, "BENTOML_HOME": str(home), "VIRTUAL_ENV": str(venv),
                 "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}  # fmt: skip
    serve_env = {**base, "BENTOML_HOME": str(cfg.data_path / "bentoml")}  # as ServiceProcess / mlcycle serve
    servers: list[Server] = []
    try:
        servers.append(start_server("bento", bento_cmd, bento_env, tmp, bento_port, tmp / "bento.log"))
        servers.append(start_server("mlcycle serve", serve_command(serve_port, LOOPBACK, cfg.root), serve_env,
                                    cfg.root, serve_port, tmp / "serve.log"))  # fmt: skip
        wait_ready(servers)
    except BaseException:
        for server in servers:
            stop_server(server)
        raise
    return servers[0], servers[1]


def check_same_answers(servers: Sequence[Server], bodies: Sequence[bytes]) -> None:
    """The same requests, one at a time, get the same answers from both (request ids aside)."""
    answers: list[list[dict]] = []
    with httpx.Client(trust_env=False, timeout=30) as client:
        for server in servers:
            got = []
            for body in bodies:
                r = client.post(
                    server.base_url + "/predict", content=body, headers={"content-type": "application/json"}
                )
                if r.status_code != 200:
                    raise SystemExit(f"ABORT: {server.name} answered {r.status_code}: {r.text[:300]}")
                got.append({k: v for k, v in r.json().items() if k != "request_id"})
            answers.append(got)
    differ = sum(a != b for a, b in zip(*answers, strict=True))
    if differ:
        raise SystemExit(f"ABORT: {differ} of {len(bodies)} answers differ between the Bento and mlcycle serve")
    print(f"check: {len(bodies)} requests, the same answers from both (scores identical)", flush=True)


async def load_for(url: str, bodies: Sequence[bytes], seconds: float, concurrency: int, offset: int) -> Measurement:
    """``concurrency`` clients sending without pause for ``seconds`` (connections opened first,
    unmeasured), bodies taken in order from ``offset``: bench/serving.py's client, time-boxed."""
    out = Measurement()
    async with client_for_load(concurrency) as client:
        await asyncio.gather(*(client.post(url, content=bodies[i % len(bodies)]) for i in range(concurrency)))
        counter = iter(range(offset, 10**12))
        started = time.perf_counter()
        deadline = started + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                body = bodies[next(counter) % len(bodies)]
                sent = time.perf_counter()
                try:
                    ok = (await client.post(url, content=body)).status_code == 200
                except httpx.HTTPError:
                    ok = False
                out.latencies.append(time.perf_counter() - sent)
                out.requests += 1
                out.errors += not ok

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        out.seconds = time.perf_counter() - started
    return out


async def measure(servers: Sequence[Server], bodies: Sequence[bytes], seconds: float, rounds: int,
                  concurrency: int) -> dict[str, Measurement]:  # fmt: skip
    for server in servers:
        await load(server.base_url + "/predict", bodies, WARMUP_REQUESTS, concurrency)
    totals = {s.name: Measurement() for s in servers}
    for r in range(rounds):
        order = list(servers) if r % 2 == 0 else list(servers)[::-1]
        offset = r * 7919  # both servers of a round start at the same body
        line = []
        for server in order:
            m = await load_for(server.base_url + "/predict", bodies, seconds, concurrency, offset)
            totals[server.name].add(m)
            line.append(
                f"{server.name} {m.rps:.0f} req/s p50 {m.p50_ms:.1f} ms p99 {m.p99_ms:.1f} ms ({m.errors} errors)"
            )
        print(f"  round {r + 1}/{rounds}: " + "; ".join(line), flush=True)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per round and server")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds (order swapped each round)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the bench project here and reuse it (bench/serving.py's set-up)")  # fmt: skip
    args = parser.parse_args()
    if args.seconds <= 0 or args.rounds < 2 or args.concurrency < 1:
        parser.error("--seconds must be positive, --rounds at least 2, --concurrency at least 1")

    total_started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mlcycle-bench-bento-") as tmp_name:
        tmp = Path(tmp_name)
        workdir = args.workdir / "local" if args.workdir is not None else None
        cfg, version, setup_s = prepared_project(workdir, tmp)
        reused = " (reused from --workdir)" if not setup_s else f" in {setup_s:.0f}s"
        print(f"setup: project with champion v{version}{reused}", flush=True)
        home = tmp / "bentoml"
        tag, bento, build_s = build_bento(cfg, home)
        print(f"build: Bento {tag} in {build_s:.1f}s", flush=True)
        install_s = bento_venv(bento, tmp / "bento-venv")
        print(f"venv: only the Bento's requirements, installed in {install_s:.1f}s (uv cache)", flush=True)

        transactions = transactions_of(cfg, BODIES)
        bodies = [json.dumps({"request": tx}).encode() for tx in transactions]
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        checked = [json.dumps({"request": {**tx, "timestamp": stamp}}).encode() for tx in transactions[:CHECK]]
        bento_server, serve_server = start_both(cfg, tag, home, tmp / "bento-venv", tmp)
        try:
            print(f"servers ready: bento {bento_server.startup_s:.0f}s, mlcycle serve {serve_server.startup_s:.0f}s; "
                  f"load average (1 min) {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)  # fmt: skip
            check_same_answers([bento_server, serve_server], checked)
            print(f"load: {args.concurrency} clients, {args.rounds} rounds x {args.seconds:.0f}s per server, "
                  "alternating", flush=True)  # fmt: skip
            totals = asyncio.run(measure([bento_server, serve_server], bodies, args.seconds, args.rounds,
                                         args.concurrency))  # fmt: skip
        finally:
            stop_server(bento_server)
            stop_server(serve_server)
    b, s = totals["bento"], totals["mlcycle serve"]
    ratio = b.rps / s.rps
    errors = b.errors + s.errors
    ok = ratio >= TARGET and errors == 0
    print(f"bento: {b.requests} requests, {b.rps:.1f} req/s, p50 {b.p50_ms:.1f} ms, p99 {b.p99_ms:.1f} ms, "
          f"{b.errors} non-200")  # fmt: skip
    print(f"mlcycle serve: {s.requests} requests, {s.rps:.1f} req/s, p50 {s.p50_ms:.1f} ms, p99 {s.p99_ms:.1f} ms, "
          f"{s.errors} non-200")  # fmt: skip
    print(f"total runtime {time.perf_counter() - total_started:.0f}s")
    print()
    print(f"RESULT bento_vs_serve_throughput {ratio:.3f} x target {TARGET} {'PASS' if ok else 'FAIL'}")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
