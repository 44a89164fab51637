"""Benchmark: sustained load and a memory soak on the BentoML ScoringService.

Project. A copy of this project with a champion, built exactly as ``bench/serving.py`` builds it
(generated data, features published to the SQLite online store, the ``train`` flow), in a temporary
directory; or kept in ``--project DIR`` (built there if DIR is empty or missing, reused if it
already holds a project with a champion, so repeated runs skip the setup).

Load (default). ``bench/serving.py``'s two servers, its client and its request bodies (real
transactions of the last two days): ``bentoml serve services.service:ScoringService`` as
deployed, and the baseline, bench/serving.py's raw app: a bare ASGI app on uvicorn that reads the
entity rows straight from the SQLite online store, computes the request-time features in plain
Python and calls ``booster.inplace_predict`` (no Feast, pandas or MLflow on its path). After a score check (the
same bodies give the same scores on both) and 100 warm-up requests each, ``--requests`` POST
/predict per app at ``--concurrency`` in flight, in rounds of ``--round-requests`` that alternate
between the two apps (order swapped every round) so the neighbours' load hits both alike.
Reports non-200, p50/p90/p99 latency and throughput per app, and the service's RSS before/after.

Soak (``--soak-seconds N``). Only the service (``mlcycle.service_process.ServiceProcess``),
``--concurrency`` clients sending without pause for N seconds. Every ``--sample-seconds`` the RSS is
summed over the service's processes: the ``bentoml serve`` arbiter's process group and all its
descendants (BentoML starts each worker in a session of its own, outside the group); psutil, else
/proc. A table row every ~N/10 s gives requests so far, RSS and the p99 of that interval. The growth
is the mean RSS of the samples in the last third minus that of the first third, so the start-up and
warm-up allocations (first third) are not counted as a leak.

    uv run python bench/load.py [--requests 5000] [--concurrency 8] [--project DIR]
    uv run python bench/load.py --soak-seconds 300 [--concurrency 8] [--project DIR]

Targets. Load: no non-200 from the service, and service throughput at least 0.5x the baseline's.
Soak: RSS growth (last third - first third) at most 50 MB, with no non-200.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

import mlcycle  # noqa: F401  (telemetry off)
from mlcycle import TELEMETRY_OFF
from mlcycle.ops.service_process import ServiceProcess
from mlcycle.project.config import DEFAULT_CONFIG_NAME, ProjectConfig, load_config
from mlcycle.registry import aliases as registry
from serving import (
    BODY_POOL,
    CHECK_REQUESTS,
    DATA,
    REQUEST_TIMEOUT_S,
    WARMUP_REQUESTS,
    Measurement,
    Server,
    bench_project,
    check_same_scores,
    check_transactions,
    load,
    running_servers,
    setup,
    transactions_of,
    verdict,
)


def request_bodies(cfg: ProjectConfig, n: int) -> list[bytes]:
    """JSON bodies from real transactions of the last two days, as bench/serving.py sends them."""
    return [json.dumps({"request": tx}).encode() for tx in transactions_of(cfg, n)]


try:
    import psutil
except ImportError:  # not a dependency of ours: read /proc instead
    psutil = None
PSUTIL_ERRORS = (psutil.Error,) if psutil is not None else ()

TARGET_ERRORS = 0
TARGET_RPS_RATIO = 0.5
# Soak bound. The service holds the champion, the Feast registry, the online-store connection and a
# prediction-log queue flushed every second; nothing it keeps should grow with the number of
# requests. Start-up and warm-up are excluded (first third vs last third), so what remains is
# allocator noise: measured here, RSS settles within the first ~500 requests (+3 MB) and then moves
# by under 1 MB. 50 MB is far above that noise yet catches a leak of ~3.5 KB per request in a 300 s
# run at ~50 req/s (15k requests; ~8 KB at the ~20 req/s of a busy machine), e.g. a per-request
# record kept in a list.
SOAK_GROWTH_BOUND_MB = 50.0
SOAK_ROWS = 10  # table rows over the run


# ------------------------------------------------------------------------------------- project
def project(dest: Path | None, tmp: Path) -> ProjectConfig:
    """The bench project: in ``tmp``; or at ``dest``, reused if it has a champion, else built there."""
    if dest is not None and (dest / DEFAULT_CONFIG_NAME).exists():
        cfg = load_config(dest / DEFAULT_CONFIG_NAME)
        champion = registry.version_by_alias(registry.client_for(cfg), cfg.model.name, registry.CHAMPION)
        if champion is not None:
            print(f"setup: reusing {dest} (champion v{champion.version})", flush=True)
            return cfg
    elif dest is not None and dest.exists() and any(dest.iterdir()):
        raise SystemExit(f"--project {dest}: not empty and no {DEFAULT_CONFIG_NAME}; give an empty or new directory")
    else:
        cfg = bench_project(dest or tmp)
    started = time.perf_counter()
    version = setup(cfg)
    print(f"setup: {DATA['n_transactions']:,} transactions, features published, champion v{version} "
          f"trained in {time.perf_counter() - started:.0f}s at {cfg.root}", flush=True)  # fmt: skip
    return cfg


# ------------------------------------------------------------------------------------- memory
def _process_table() -> dict[int, tuple[int, int]]:
    """pid → (parent pid, process group) of every live process."""
    table: dict[int, tuple[int, int]] = {}
    if psutil is not None:
        for proc in psutil.process_iter(["ppid"]):
            with contextlib.suppress(psutil.Error, OSError):
                table[proc.pid] = (proc.info["ppid"], os.getpgid(proc.pid))
        return table
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                after_name = stat[stat.rindex(")") + 2 :].split()  # state, ppid, pgrp, ...
                table[int(entry.name)] = (int(after_name[1]), int(after_name[2]))
    return table


def service_pids(leader: int) -> set[int]:
    """The service's processes: the leader's process group and all its descendants.

    Both are needed: ``bentoml serve`` starts each worker (the process that scores) in a session of
    its own, outside the leader's group."""
    table = _process_table()
    pids = {pid for pid, (_, pgid) in table.items() if pgid == leader}
    frontier = [pid for pid in {leader, *pids} if pid in table]
    while frontier:
        parent = frontier.pop()
        pids.add(parent)
        frontier += [pid for pid, (ppid, _) in table.items() if ppid == parent and pid not in pids]
    return pids


def service_rss_mb(leader: int) -> tuple[float, int]:
    """(RSS in MB summed over the service's processes, number of processes)."""
    total, count = 0, 0
    page = os.sysconf("SC_PAGE_SIZE")
    for pid in service_pids(leader):
        with contextlib.suppress(OSError, ValueError, IndexError, *PSUTIL_ERRORS):
            if psutil is not None:
                total += psutil.Process(pid).memory_info().rss
            else:
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
            count += 1
    return total / 2**20, count


def percentile_ms(latencies: Sequence[float], q: float) -> float:
    return float(np.percentile(latencies, q)) * 1000 if latencies else float("nan")


# ---------------------------------------------------------------------------------------- load
def round_plan(n: int, per_round: int) -> list[int]:
    """``n`` requests as rounds of at most ``per_round``, sizes as even as possible."""
    rounds = max(1, math.ceil(n / per_round))
    return [n // rounds + (i < n % rounds) for i in range(rounds)]


async def drive(
    bento: Server, base: Server, bodies: Sequence[bytes], n: int, concurrency: int, per_round: int
) -> tuple[dict[str, Measurement], dict[str, int]]:
    """Warm-up, then alternating rounds; returns the measurements and the warm-up non-200 per app."""
    apps = {"bentoml": bento, "baseline": base}
    warm = {}
    for name, server in apps.items():
        warm[name] = (await load(server.base_url + "/predict", bodies, WARMUP_REQUESTS, concurrency)).errors
    results = {name: Measurement() for name in apps}
    offset, plan = WARMUP_REQUESTS, round_plan(n, per_round)
    for r, size in enumerate(plan):
        order = list(apps.items())
        line = []
        for name, server in order if r % 2 == 0 else order[::-1]:
            measured = await load(server.base_url + "/predict", bodies, size, concurrency, offset)
            results[name].add(measured)
            line.append(f"{name} {measured.rps:.0f} req/s p50 {measured.p50_ms:.1f} ms {measured.errors} non-200")
        offset += size
        done = sum(plan[: r + 1])
        print(f"  round {r + 1}/{len(plan)} ({done}/{n} per app): {'; '.join(line)}", flush=True)
    return results, warm


def load_mode(cfg: ProjectConfig, scratch: Path, args: argparse.Namespace) -> list[str]:
    bodies = request_bodies(cfg, BODY_POOL)
    pids: set[int] = set()
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: reap(pids))  # runs after running_servers has stopped them
        bento, base = stack.enter_context(running_servers(cfg, scratch))
        pids |= service_pids(bento.proc.pid) | service_pids(base.proc.pid)
        rss_before, procs = service_rss_mb(bento.proc.pid)
        print(f"servers ready: bentoml {bento.startup_s:.0f}s ({procs} processes, {rss_before:.0f} MB RSS), "
              f"baseline {base.startup_s:.0f}s", flush=True)  # fmt: skip
        checked = check_transactions(transactions_of(cfg, CHECK_REQUESTS), CHECK_REQUESTS)
        report = asyncio.run(check_same_scores(bento, base, checked))
        check_errors, check_diff = len(report["non200"]), report["single_diff"]
        print(f"check: {CHECK_REQUESTS} bodies scored by both, {check_errors} non-200, "
              f"largest score difference {check_diff:.2e}", flush=True)  # fmt: skip
        print(f"load: {args.requests} requests per app at concurrency {args.concurrency}", flush=True)
        started = time.perf_counter()
        results, warm = asyncio.run(drive(bento, base, bodies, args.requests, args.concurrency, args.round_requests))
        elapsed = time.perf_counter() - started
        rss_after, _ = service_rss_mb(bento.proc.pid)

    b, a = results["bentoml"], results["baseline"]
    print()
    print(f"POST /predict, {args.requests} measured requests per app at concurrency {args.concurrency}, "
          f"{len(round_plan(args.requests, args.round_requests))} alternating rounds, {len(bodies)} distinct "
          f"real transactions, {elapsed:.0f}s; baseline = Starlette/uvicorn, same lookup + inplace_predict, "
          f"no validation, routing, metrics or prediction log")  # fmt: skip
    columns = ("requests", "non-200", "p50 ms", "p90 ms", "p99 ms", "req/s")
    header = f"{'app':<9} | " + " | ".join(f"{c:>8}" for c in columns)
    print(header)
    print("-" * len(header))
    for name, m in results.items():
        p90 = percentile_ms(m.latencies, 90)
        cells = (f"{m.requests}", f"{m.errors}", f"{m.p50_ms:.1f}", f"{p90:.1f}", f"{m.p99_ms:.1f}", f"{m.rps:.1f}")
        print(f"{name:<9} | " + " | ".join(f"{c:>8}" for c in cells))
    ratio = b.rps / a.rps
    print(f"throughput ratio bentoml / baseline: {ratio:.2f}")
    print(f"service RSS (all its processes): {rss_before:.0f} MB before the load, {rss_after:.0f} MB after")
    if any(warm.values()) or check_errors:
        print(f"note: non-200 in warm-up {warm}, in the score check {check_errors}")
    errors = b.errors + warm["bentoml"]  # every request the service got in this run, warm-up included
    comparable = a.errors + warm["baseline"] + check_errors == 0
    return [
        f"RESULT load_errors {errors} count target {TARGET_ERRORS} {verdict(errors <= TARGET_ERRORS)}",
        f"RESULT load_throughput_ratio {ratio:.2f} x target {TARGET_RPS_RATIO} "
        f"{verdict(ratio >= TARGET_RPS_RATIO and comparable and not errors)}",
    ]


# ---------------------------------------------------------------------------------------- soak
@dataclass
class Soak:
    samples: list[tuple[float, float, int, int]] = field(default_factory=list)  # (t, RSS MB, processes, requests)
    done: list[tuple[float, float, bool]] = field(default_factory=list)  # (finished at t, latency s, 200)
    rows: list[tuple[float, int, int, float, float, float]] = field(default_factory=list)


SOAK_HEADER = f"{'t s':>5} | {'requests':>8} | {'non-200':>7} | {'req/s':>6} | {'RSS MB':>7} | {'p99 ms':>7}"


def print_row(row: tuple[float, int, int, float, float, float]) -> None:
    t, n, errors, rps, rss, p99 = row
    print(f"{t:>5.0f} | {n:>8} | {errors:>7} | {rps:>6.1f} | {rss:>7.1f} | {p99:>7.1f}", flush=True)


async def soak(
    url: str, bodies: Sequence[bytes], seconds: float, concurrency: int, sample_s: float, leader: int
) -> Soak:
    """``concurrency`` clients sending back to back for ``seconds``; RSS every ``sample_s``."""
    out = Soak()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"content-type": "application/json"}
    n_samples = math.ceil(seconds / sample_s)
    row_every = max(1, round(n_samples / SOAK_ROWS))
    async with httpx.AsyncClient(
        trust_env=False, http1=True, http2=False, limits=limits, timeout=REQUEST_TIMEOUT_S, headers=headers
    ) as client:
        await asyncio.gather(*(client.post(url, content=bodies[i % len(bodies)]) for i in range(concurrency)))
        start = time.perf_counter()
        end = start + seconds
        indices = itertools.count(WARMUP_REQUESTS)

        async def worker() -> None:
            while time.perf_counter() < end:
                body = bodies[next(indices) % len(bodies)]
                sent = time.perf_counter()
                try:
                    ok = (await client.post(url, content=body)).status_code == 200
                except httpx.HTTPError:
                    ok = False
                finished = time.perf_counter()
                out.done.append((finished - start, finished - sent, ok))

        async def sampler() -> None:
            rss, procs = await asyncio.to_thread(service_rss_mb, leader)
            out.samples.append((0.0, rss, procs, 0))
            print_row((0.0, 0, 0, 0.0, rss, float("nan")))
            last_t, last_i = 0.0, 0
            for k in range(1, n_samples + 1):
                t = min(k * sample_s, seconds)
                await asyncio.sleep(max(0.0, start + t - time.perf_counter()))
                rss, procs = await asyncio.to_thread(service_rss_mb, leader)
                i = len(out.done)
                out.samples.append((t, rss, procs, i))
                if k % row_every and k != n_samples:
                    continue
                interval = out.done[last_i:i]
                row = (
                    t, i, sum(not ok for *_, ok in out.done[:i]), len(interval) / (t - last_t),
                    rss, percentile_ms([lat for _, lat, _ in interval], 99),
                )  # fmt: skip
                out.rows.append(row)
                print_row(row)
                last_t, last_i = t, i

        await asyncio.gather(sampler(), *(worker() for _ in range(concurrency)))
    return out


def soak_mode(cfg: ProjectConfig, args: argparse.Namespace) -> list[str]:
    bodies = request_bodies(cfg, BODY_POOL)
    seconds, sample_s = args.soak_seconds, args.sample_seconds
    service = ServiceProcess(cfg, env=dict(TELEMETRY_OFF))
    started = time.perf_counter()
    service.start()
    leader = service.proc.pid  # started with start_new_session: also the group id
    pids = service_pids(leader)
    try:
        rss, procs = service_rss_mb(leader)
        print(f"service ready in {time.perf_counter() - started:.0f}s: {procs} processes, {rss:.0f} MB RSS; "
              f"RSS from {'psutil' if psutil is not None else '/proc'}", flush=True)  # fmt: skip
        url = service.url + "/predict"
        warm = asyncio.run(load(url, bodies, WARMUP_REQUESTS, args.concurrency)).errors
        print(f"soak: {seconds:.0f}s at concurrency {args.concurrency}, RSS every {sample_s:g}s "
              f"({warm} non-200 in {WARMUP_REQUESTS} warm-up requests)", flush=True)  # fmt: skip
        print(SOAK_HEADER)
        print("-" * len(SOAK_HEADER), flush=True)
        result = asyncio.run(soak(url, bodies, seconds, args.concurrency, sample_s, leader))
    finally:
        pids |= service_pids(leader)
        service.stop()
        reap(pids)

    latencies = [lat for _, lat, _ in result.done]
    errors = sum(not ok for *_, ok in result.done) + warm
    first = [rss for t, rss, *_ in result.samples if t <= seconds / 3]
    last = [rss for t, rss, *_ in result.samples if t >= 2 * seconds / 3]
    growth = float(np.mean(last) - np.mean(first))
    all_rss = [rss for _, rss, *_ in result.samples]
    processes = sorted({procs for _, _, procs, _ in result.samples})
    # RSS against requests served, least squares over all samples: a leak's cost per request.
    kb_per_request = float(np.polyfit([n for *_, n in result.samples], all_rss, 1)[0]) * 1024
    print()
    print(f"soak: {len(result.done)} requests in {seconds:.0f}s ({len(result.done) / seconds:.1f} req/s), "
          f"{errors} non-200 (warm-up included), p50 {percentile_ms(latencies, 50):.1f} ms, "
          f"p99 {percentile_ms(latencies, 99):.1f} ms")  # fmt: skip
    print(f"service RSS over {len(result.samples)} samples (service processes: "
          f"{'/'.join(map(str, processes))}): min {min(all_rss):.1f} MB, max {max(all_rss):.1f} MB; "
          f"mean first third {np.mean(first):.1f} MB, last third {np.mean(last):.1f} MB")  # fmt: skip
    print(f"growth last third - first third: {growth:+.1f} MB; linear fit of RSS on requests served: "
          f"{kb_per_request:+.2f} KB per request")  # fmt: skip
    ok = growth <= SOAK_GROWTH_BOUND_MB and errors == 0
    return [f"RESULT soak_rss_growth {growth:.1f} MB target {SOAK_GROWTH_BOUND_MB:g} {verdict(ok)}"]


def reap(pids: set[int], timeout: float = 20.0) -> None:
    """After stopping a service, make sure none of ``pids`` (its processes, taken while it ran)
    outlives it: the stop signals the leader's group and waits for the leader, and BentoML's workers
    are outside that group (their arbiter stops them, normally)."""
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        pids = {pid for pid in pids if _alive(pid)}
        time.sleep(0.2)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------------------- main
@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mlcycle-bench-") as name:
        yield Path(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000, help="load: measured requests per app (default 5000)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight, both modes (default 8)")
    parser.add_argument("--round-requests", type=int, default=500,
                        help="load: requests per app per alternating round; progress is printed per round "
                        "(default 500)")  # fmt: skip
    parser.add_argument("--soak-seconds", type=float, default=0,
                        help="soak mode for this many seconds instead of the load mode (e.g. 300)")  # fmt: skip
    parser.add_argument("--sample-seconds", type=float, default=5, help="soak: RSS sampling interval (default 5)")
    parser.add_argument("--project", type=Path, default=None,
                        help="keep the bench project in DIR: built there if DIR is empty or missing, reused if it "
                        "holds one with a champion (default: a temporary directory, removed at the end)")  # fmt: skip
    args = parser.parse_args()
    if args.requests < 1 or args.concurrency < 1 or args.round_requests < 1:
        parser.error("--requests, --concurrency and --round-requests must be at least 1")
    if args.soak_seconds < 0 or args.sample_seconds <= 0 or (args.soak_seconds and args.soak_seconds < 3):
        parser.error("--soak-seconds must be 0 (load mode) or at least 3, --sample-seconds positive")

    total_started = time.perf_counter()
    with scratch_dir() as tmp:
        cfg = project(args.project.resolve() if args.project else None, tmp / "project")
        results = soak_mode(cfg, args) if args.soak_seconds else load_mode(cfg, tmp, args)
    print(f"total runtime {time.perf_counter() - total_started:.0f}s")
    print()
    print("\n".join(results))
    if any(line.endswith("FAIL") for line in results):
        sys.exit(1)  # a benchmark that fails its target fails `make bench`


if __name__ == "__main__":
    main()
