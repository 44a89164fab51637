"""Benchmark: `mlcycle init` + `features build` on a 1M-row table, against a raw script doing the
minimum of the same work in the same run.

The table is the delivery-times example's generator at ``--rows`` (default 1,000,000 orders,
parquet). Each side runs in its own fresh process (so peak memory is that side's alone,
``ru_maxrss``), alternately, ``--repeat`` times; the best time of each is reported.

- mlcycle: ``init_project`` (read, check, infer the contract, write config, Feast repo, flows and
  the table as parquet) then ``pipeline.build_features`` (load + contract validation + the declared
  per-restaurant aggregations + write).
- raw: read the parquet, write it back as parquet, run one hand-written DuckDB window query for
  the same aggregations over it and write the result: no checks, no contract, no config.

    PYTHONPATH=. uv run python bench/init_features.py [--rows 1000000] [--repeat 2]

Target: mlcycle within 2x of the raw script (it also infers and validates a contract, which the
raw script does not do at all); the absolute seconds and peak MB of both are printed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 2.0
ROOT = Path(__file__).resolve().parents[1]

MLCYCLE_SIDE = """
import json, resource, sys, time
from pathlib import Path
t = time.perf_counter()
import mlcycle  # noqa: F401
from mlcycle.features import pipeline
from mlcycle.project.config import load_config
from mlcycle.project.scaffold import init_project
table, out = Path(sys.argv[1]), Path(sys.argv[2])
t0 = time.perf_counter()
init_project(out, table, "ordered_at", "delivery_minutes", entities=["restaurant_id"], task="regression",
             label_available_at="delivered_at", event_id="order_id")
t1 = time.perf_counter()
build = pipeline.build_features(load_config(out / "mlcycle.yaml"))
t2 = time.perf_counter()
assert build.report.ok, build.report.summary()
print(json.dumps({"import_s": t0 - t, "init_s": t1 - t0, "features_s": t2 - t1, "work_s": t2 - t0,
                  "rows": build.rows, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

RAW_SIDE = """
import json, resource, sys, time
from pathlib import Path
import duckdb, pandas as pd
table, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
t0 = time.perf_counter()
frame = pd.read_parquet(table)
frame.to_parquet(out / "table.parquet", index=False)
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
windows = {"1h": "1 HOUR", "24h": "24 HOUR", "7d": "7 DAY", "30d": "30 DAY"}
cols = []
for name, interval in windows.items():
    frame_sql = (f"(PARTITION BY restaurant_id ORDER BY ordered_at RANGE BETWEEN INTERVAL {interval} "
                 "- INTERVAL 1 MICROSECOND PRECEDING AND CURRENT ROW)")
    cols.append(f"count(*) OVER {frame_sql} AS count_{name}")
    for col in ("distance_km", "items"):
        cols.append(f"avg({col}) OVER {frame_sql} AS {col}_mean_{name}")
sql = (f"COPY (SELECT restaurant_id, ordered_at + INTERVAL 1 MICROSECOND AS event_timestamp, {', '.join(cols)} "
       f"FROM (SELECT * REPLACE (ordered_at::TIMESTAMPTZ AS ordered_at) FROM read_parquet('{out / 'table.parquet'}'))) "
       f"TO '{out / 'stats.parquet'}' (FORMAT parquet)")
con.execute(sql)
t1 = time.perf_counter()
print(json.dumps({"work_s": t1 - t0, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(code: str, table: Path, out: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", code, str(table), str(out)], capture_output=True, text=True,
                          cwd=ROOT, check=False)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"side failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "examples" / "delivery_times"))
    from generate import generate  # the example's seeded generator

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mlcycle-bench-init-") as tmp:
        table = Path(tmp) / "deliveries.parquet"
        frame = generate(rows=args.rows, days=365, restaurants=3000, seed=1, drift_day=None)
        frame.to_parquet(table, index=False)
        print(f"setup: {len(frame):,} rows generated in {time.perf_counter() - started:.0f}s")
        del frame
        mine, raw = [], []
        for i in range(args.repeat):
            mine.append(run(MLCYCLE_SIDE, table, Path(tmp) / f"project{i}"))
            raw.append(run(RAW_SIDE, table, Path(tmp) / f"raw{i}"))
            print(f"round {i + 1}: mlcycle {mine[-1]['work_s']:.1f}s (init {mine[-1]['init_s']:.1f}s + features "
                  f"{mine[-1]['features_s']:.1f}s), raw {raw[-1]['work_s']:.1f}s")  # fmt: skip
    best_mine = min(mine, key=lambda r: r["work_s"])
    best_raw = min(raw, key=lambda r: r["work_s"])
    ratio = best_mine["work_s"] / best_raw["work_s"]
    print()
    print(f"init + features build on {args.rows:,} rows (best of {args.repeat}, alternating, fresh processes)")
    print(f"{'path':<58} | {'best s':>7} | {'peak MB':>8}")
    print(
        f"{'mlcycle init + features build':<58} | {best_mine['work_s']:>7.1f} | {max(r['peak_mb'] for r in mine):>8.0f}"
    )
    print(f"{'  of which init (read, check, infer contract, write)':<58} | {best_mine['init_s']:>7.1f} |")
    print(f"{'  of which features build (validate, aggregate, write)':<58} | {best_mine['features_s']:>7.1f} |")
    print(f"{'raw: read/write parquet + one DuckDB window query':<58} | {best_raw['work_s']:>7.1f} | "
          f"{max(r['peak_mb'] for r in raw):>8.0f}")  # fmt: skip
    print(
        f"(import of the library, not counted: {best_mine['import_s']:.1f}s); "
        f"total {time.perf_counter() - started:.0f}s"
    )
    verdict = "PASS" if ratio <= TARGET_RATIO else "FAIL"
    print(f"RESULT init_features_ratio {ratio:.2f} x target {TARGET_RATIO} {verdict}")
    if verdict == "FAIL":
        sys.exit(1)


if __name__ == "__main__":
    main()
