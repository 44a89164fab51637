"""Profile of one request: where each millisecond of a POST /predict goes, sampled, not guessed.

Starts the BentoML service on the bench project of ``bench/serving.py`` (same data, features and
champion; ``--workdir`` reuses one), warms it up, then sends requests one after another (one
client) for ``--seconds`` while ``py-spy record`` samples the service's worker process at
``--rate`` Hz (all its threads, native frames off). Each sample is put in one bucket by its
innermost frame that names a piece of the request path (the online read, the on-demand features,
the model, the prediction log…); the rest is the HTTP server and BentoML's framework.

    PYTHONPATH=. .venv/bin/python bench/profile_request.py [--seconds 20] [--workdir DIR] [--raw FILE]

Per bucket: CPU ms per request (samples / rate / requests) and its share of the wall time per
request the client measured (the remainder is time on no CPU of the worker: the client, the
loopback socket, waiting). ``--raw`` keeps py-spy's collapsed stacks (flamegraph.pl input).
Needs ptrace permission on the worker (root, or ``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving
from mlcycle import TELEMETRY_OFF
from mlcycle.net import free_port

# (bucket, pattern on one py-spy frame "function (file:line)"); the innermost matching frame wins.
BUCKETS: list[tuple[str, re.Pattern[str]]] = [
    ("online store read",
     re.compile(r"^(\w+\.)?(_read_views|get_online_features) \(.*(features/store|feast/feature_store)\.py")),
    ("on-demand features", re.compile(r"^(\w+\.)?(_on_demand_columns|_on_demand|transform_arrow) \(")),
    ("vector assembly (TTL, missing, types)", re.compile(r"^(\w+\.)?(_assemble|online_columns|online_vector) \(")),
    ("model predict", re.compile(r"^(\w+\.)?predict \(.*serving/scorer\.py")),
    ("prediction log (records, writer thread)",
     re.compile(r"^(\w+\.)?(_record|_shadow) \(.*scorer\.py|serving/prediction_(log|store)\.py")),
    ("registry refresh", re.compile(r"^(\w+\.)?(refresh|_refresh_models|_refresh_loop|load) \(.*serving/scorer\.py")),
    ("scoring bookkeeping (routing, answer)", re.compile(r"^(\w+\.)?score \(.*serving/scorer\.py")),
    ("request/response models (pydantic)", re.compile(r"pydantic")),
    ("metrics (prometheus_client)", re.compile(r"prometheus_client")),
]  # fmt: skip
FRAMEWORK = "HTTP + BentoML framework (uvicorn, starlette, bentoml)"
IDLE = "idle (a thread waiting: queue, lock, select)"
# A stack whose innermost frame is one of these is a thread waiting, not working (py-spy's own idle
# detection misses waits on Python locks with a timeout).
WAITS = re.compile(
    r"^(Condition\.wait|Event\.wait|Queue\.get|select|EpollSelector\.select|sleep|_wait_for_tstate_lock) \("
)


LOOP = "event loop in C (uvloop: socket I/O, epoll waits)"


def bucket_of(stack: list[str]) -> str:
    if stack and WAITS.search(stack[-1]):
        return IDLE
    if stack and stack[-1].startswith("Runner.run ("):  # nothing in Python below the loop: uvloop's C code
        return LOOP
    for frame in reversed(stack):  # innermost first
        for name, pattern in BUCKETS:
            if pattern.search(frame):
                return name
    return FRAMEWORK


def parse_collapsed(text: str) -> Counter[str]:
    """py-spy ``--format raw``: one ``frame;frame;... count`` line per distinct stack."""
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
            counts[bucket_of(frames)] += int(count)
    return counts


def worker_pid(parent: int) -> int:
    """The BentoML worker: the serving process's descendant running ``_bentoml_impl.worker``."""
    import psutil

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for child in psutil.Process(parent).children(recursive=True):
            if any("_bentoml_impl.worker" in part for part in child.cmdline()):
                return child.pid
        time.sleep(0.2)
    raise SystemExit("no BentoML worker process found")


def drive(url: str, bodies: list[bytes], stop: threading.Event, latencies: list[float]) -> None:
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as client:
        i = 0
        while not stop.is_set():
            started = time.perf_counter()
            r = client.post("/predict", content=bodies[i % len(bodies)], headers={"content-type": "application/json"})
            if r.status_code != 200:
                raise SystemExit(f"/predict answered {r.status_code}: {r.text[:300]}")
            latencies.append(time.perf_counter() - started)
            i += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="sampling window")
    parser.add_argument("--rate", type=int, default=1000, help="samples per second")
    parser.add_argument("--workdir", type=Path, default=None, help="bench project to reuse (as bench/serving.py)")
    parser.add_argument("--raw", type=Path, default=None, help="keep py-spy's collapsed stacks here")
    args = parser.parse_args()
    py_spy = Path(sys.executable).with_name("py-spy")
    if not py_spy.exists():
        raise SystemExit(f"py-spy not found beside {sys.executable}: `uv sync --extra dev` installs it")

    with tempfile.TemporaryDirectory(prefix="mlcycle-profile-") as tmp_name:
        tmp = Path(tmp_name)
        workdir = args.workdir / "local" if args.workdir else None  # as bench/serving.py keeps it
        cfg, version, _ = serving.prepared_project(workdir, tmp)
        bodies = [json.dumps({"request": tx}).encode() for tx in serving.transactions_of(cfg, serving.BODY_POOL)]
        port = free_port()
        env = {**os.environ, **TELEMETRY_OFF, "MLCYCLE_CONFIG": str(cfg.root / "mlcycle.yaml"),
               "BENTOML_HOME": str(tmp / "bentoml_home"), "BENTOML_DO_NOT_TRACK": "True"}  # fmt: skip
        cmd = [sys.executable, "-m", "bentoml", "serve", "services.service:ScoringService",
               "--host", serving.LOOPBACK, "--port", str(port)]  # fmt: skip
        server = serving.start_server("bentoml", cmd, env, serving.ROOT, port, tmp / "bentoml.log")
        try:
            serving.wait_ready([server])
            pid = worker_pid(server.proc.pid)
            warm: list[float] = []
            stop = threading.Event()
            timer = threading.Timer(3.0, stop.set)
            timer.start()
            drive(server.base_url, bodies, stop, warm)
            raw_path = args.raw or tmp / "profile.txt"
            spy = subprocess.Popen(
                [str(py_spy), "record", "-p", str(pid), "-r", str(args.rate), "-d", str(int(args.seconds)),
                 "-f", "raw", "-o", str(raw_path), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            time.sleep(0.5)  # py-spy attached
            latencies: list[float] = []
            stop = threading.Event()
            started = time.perf_counter()
            timer = threading.Timer(args.seconds - 1.0, stop.set)
            timer.start()
            drive(server.base_url, bodies, stop, latencies)
            window = time.perf_counter() - started
            _, err = spy.communicate(timeout=120)
            if spy.returncode != 0 or not raw_path.exists():
                raise SystemExit(f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')[-500:]}")
        finally:
            serving.stop_server(server)
        counts = parse_collapsed(raw_path.read_text())

    n = len(latencies)
    wall_ms = window / n * 1000
    sampled = sum(counts.values())
    # py-spy sampled for its own duration; scale the sample count to the requests' window.
    idle = counts.pop(IDLE, 0)
    per_request = {name: c / args.rate * 1000 / n for name, c in counts.items()}
    on_cpu = sum(per_request.values())
    lat = sorted(latencies)
    print(f"champion v{version}; {n} sequential POST /predict in {window:.1f}s: client mean {wall_ms:.2f} ms, "
          f"p50 {lat[n // 2] * 1000:.2f} ms; {sampled} samples at {args.rate} Hz")  # fmt: skip
    print(f"{'where':<66} {'ms/request':>10} {'share':>6}")
    for name, ms in sorted(per_request.items(), key=lambda kv: -kv[1]):
        print(f"{name:<66} {ms:>10.2f} {ms / wall_ms:>6.0%}")
    rest = max(wall_ms - on_cpu, 0.0)
    print(f"{'(worker on no CPU: client, loopback socket, waiting)':<66} {rest:>10.2f} {rest / wall_ms:>6.0%}")
    print(f"{'total per request (client-measured)':<66} {wall_ms:>10.2f}")
    print(f"({idle} samples of threads waiting left out: {idle / args.rate * 1000 / n:.2f} ms/request)")


if __name__ == "__main__":
    main()
