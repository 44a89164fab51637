"""Benchmark: training on a local Dask cluster, mlcycle's path against a raw ``xgboost.dask`` script
on the same partitions, in one run.

Setup (untimed, in a subprocess so that the driver's peak memory is its own): a copy of the project
with generated transactions, the feature tables built and the Feast repo applied (no online
materialization: the training set reads the offline store only). With ``--workdir`` the project of
each size is kept there and reused by later runs (generating data is the slow part); without it, a
temporary directory is removed at the end. The labels-known-at time (``as_of``) is fixed when the
data is generated and stored beside it, so a reused project gives the same training set on another
day.

Per size, on a ``LocalCluster`` of two single-threaded worker processes (``cluster_client(workers=2)``):

- build: ``features.distributed.placed_training_set`` (contract checked range by range, the
  point-in-time join in the workers), timed until every partition is in worker memory;
- mlcycle: ``training.distributed.train_candidate_on_cluster`` on those partitions (time split, the
  booster by ``fit_xgboost_dask``, threshold, evaluation by slice, the logistic baseline); the time
  inside ``fit_xgboost_dask`` is shown beside it;
- raw: a plain script on the same partition futures, each step on the partition's own worker: the
  timestamps gathered and cut at the same quantiles as ``fit.split_instants``, ``dd.from_delayed``
  of ``columns_of`` per partition for the training and validation rows, ``DaskQuantileDMatrix`` and
  ``xgb.dask.train`` with ``fit.xgboost_params`` (positives weighted as mlcycle weighs them), the
  same rounds and early stopping, the booster cut back to its best round;
- mlcycle and raw alternate for ``--rounds`` rounds (mlcycle first in odd rounds, raw first in even
  ones); the ratio is the median mlcycle time over the median raw time;
- peak resident memory (VmHWM, reset before each phase through ``/proc/<pid>/clear_refs``) of each
  worker process and of the driver, per phase;
- for comparison, one node: ``pipeline.build_training_set`` then ``fit.train_candidate`` in a fresh
  subprocess (its time per step and its own peak memory); ``--no-single-node`` skips it.

With several sizes (``--rows 1000000,4000000``) the cluster path's cost (build plus the median
mlcycle training) is given in seconds per million training rows per size, and its growth from the
smallest to the largest size is a second result, printed before the main one.

    PYTHONPATH=. .venv/bin/python bench/dask_training.py [--rows 1000000[,4000000]] [--rounds 3]
        [--partitions N] [--workdir DIR] [--no-single-node]

Targets: mlcycle's cluster training at most 1.3x the raw xgboost.dask script (median of the
rounds, at the largest size); cost per million rows growing at most 1.3x across the sizes. A FAIL
exits non-zero.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

import mlcycle  # noqa: F401  (telemetry off)

TARGET_RATIO = 1.3  # train_candidate_on_cluster / raw xgboost.dask
TARGET_GROWTH = 1.3  # seconds per million rows, largest size / smallest
ROUNDS = 3  # alternating runs of each side per size: three give a median that is one run
MIN_ROUNDS = 2
WORKERS = 2
MATURED_SHARE = 2 / 3  # 90-day stream, 30-day label maturity: about this share of events trains
READY = ".bench-ready.json"
REPO_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------- memory
def peak_kb() -> int:
    """This process's peak resident memory since the last reset (VmHWM), in KiB."""
    status = Path("/proc/self/status").read_text()
    found = re.search(r"VmHWM:\s+(\d+)", status)
    return int(found.group(1)) if found else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reset_peak() -> None:
    """Peak resident memory back to the current one (Linux: 5 > /proc/self/clear_refs)."""
    with contextlib.suppress(OSError):  # if refused, the peak stays the process's lifetime peak
        Path("/proc/self/clear_refs").write_text("5")


def mb(kb: float) -> str:
    return f"{kb / 1024:,.0f} MB"


# --------------------------------------------------------------------------------------------- setup
def parse_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(float(part.replace("_", ""))) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rows {text!r}: a number or a comma-separated list of numbers") from None
    if not sizes or min(sizes) < 10_000:
        raise argparse.ArgumentTypeError(f"--rows {text!r}: at least 10000 training rows per size")
    return sizes


def data_spec(rows: int) -> dict[str, int]:
    n_tx = int(rows / MATURED_SHARE)
    return {"seed": 21, "days": 90, "n_transactions": n_tx, "n_users": max(2000, n_tx // 10),
            "n_merchants": max(300, n_tx // 100)}  # fmt: skip


def prepare(root: Path, rows: int) -> dict[str, Any]:
    """In a subprocess: the project of ``rows`` training rows at ``root``, generated unless a
    finished one is there; returns what the marker file records."""
    marker = root / READY
    spec = data_spec(rows)
    if marker.is_file():
        ready = json.loads(marker.read_text())
        if ready.get("data") == spec:
            return {**ready, "reused": True}
    out = subprocess.run([sys.executable, __file__, "--_prepare", str(root), "--rows", str(rows)],
                         check=True, capture_output=True, text=True)  # fmt: skip
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "reused": False}


def prepare_here(root: Path, rows: int) -> None:
    """The subprocess's side of ``prepare``: generate, build, apply; the marker written last."""
    import shutil

    from mlcycle.features import pipeline, store
    from mlcycle.project.files import copy_project

    if root.exists():
        shutil.rmtree(root)  # a half-built project of an interrupted run
    spec = data_spec(rows)
    cfg = copy_project(REPO_ROOT, root, spec)
    started = time.perf_counter()
    pipeline.generate_data(cfg)
    generated = time.perf_counter() - started
    pipeline.build_features(cfg)
    built = time.perf_counter() - started - generated
    store.apply_repo(cfg.feature_repo_path, store.fs_yaml_for(cfg))
    ready = {"data": spec, "as_of": pipeline.default_as_of().isoformat(), "generate_s": round(generated, 2),
             "features_s": round(built, 2), "apply_s": round(time.perf_counter() - started - generated - built, 2),
             "peak_kb": peak_kb()}  # fmt: skip
    (root / READY).write_text(json.dumps(ready))
    print(json.dumps(ready))


# --------------------------------------------------------------------------------------------- one node
def single_node(config: Path, as_of: str) -> dict[str, Any]:
    """``build_training_set`` + ``train_candidate`` in a fresh process: its times and its own peak."""
    out = subprocess.run([sys.executable, __file__, "--_single-node", str(config), "--_as-of", as_of],
                         check=True, capture_output=True, text=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def single_node_here(config: Path, as_of: str) -> None:
    from mlcycle.features import open_project_store, pipeline, plan_for
    from mlcycle.project.config import load_config
    from mlcycle.training import fit

    cfg = load_config(config)
    features = list(plan_for(open_project_store(cfg), cfg.features.feature_service).model_features)
    before = peak_kb()
    started = time.perf_counter()
    frame = pipeline.build_training_set(cfg, pd.Timestamp(as_of))
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    candidate = fit.train_candidate(frame, features, cfg.model, label=cfg.table.label, task=cfg.task,
                                    slices=cfg.table.slices, protected=cfg.table.protected)  # fmt: skip
    train_s = time.perf_counter() - started
    print(json.dumps({"rows": len(frame), "build_s": build_s, "train_s": train_s, "import_peak_kb": before,
                      "peak_kb": peak_kb(), "rounds": candidate.model.trained_rounds,
                      "roc_auc": candidate.report.flat_metrics().get("test.roc_auc", float("nan"))}))  # fmt: skip


# --------------------------------------------------------------------------------------------- raw side
TIME = "event_timestamp"  # the training set's time column (fit.TIME_COLUMN)


def _stamps(frame: pd.DataFrame) -> pd.Series:
    return frame[TIME]


def _raw_columns(frame: pd.DataFrame, low: Any, high: Any, features: list[str], label: str) -> pd.DataFrame:
    from mlcycle.training.distributed import columns_of

    keep = pd.Series(True, index=frame.index)
    if low is not None:
        keep &= frame[TIME] >= low
    if high is not None:
        keep &= frame[TIME] < high
    return columns_of(frame[keep.to_numpy()], features, label)


@dataclass
class RawFit:
    seconds: float
    rounds: int
    best: int
    valid_aucpr: float
    train_rows: int


def run_raw(client: Any, parts: list[Any], owners: list[str], features: list[str], label: str, spec: Any) -> RawFit:
    """The raw xgboost.dask script on the cluster's partitions, each step on the partition's worker."""
    import dask
    import dask.dataframe as dd
    import xgboost as xgb
    import xgboost.dask  # registers xgb.dask

    from mlcycle.training.distributed import columns_of
    from mlcycle.training.fit import xgboost_params

    def pinned(fn: Callable[..., Any], *args: Any) -> list[Any]:
        return [client.submit(fn, part, *args, workers=[owner], allow_other_workers=False, pure=False)
                for part, owner in zip(parts, owners, strict=True)]  # fmt: skip

    started = time.perf_counter()
    stamps = pd.concat(client.gather(pinned(_stamps)), ignore_index=True)
    valid_start = pd.Timestamp(stamps.quantile(1 - spec.valid_fraction - spec.test_fraction))
    test_start = pd.Timestamp(stamps.quantile(1 - spec.test_fraction))
    meta = columns_of(pd.DataFrame({**{f: pd.Series(dtype="float64") for f in features},
                                    label: pd.Series(dtype="float64")}), features, label)  # fmt: skip
    train = dd.from_delayed(pinned(_raw_columns, None, valid_start, features, label), meta=meta, verify_meta=False)
    valid = dd.from_delayed(pinned(_raw_columns, valid_start, test_start, features, label), meta=meta,
                            verify_meta=False)  # fmt: skip
    positives, rows = dask.compute(train[label].sum(), train.shape[0])
    p = spec.xgboost
    params = xgboost_params(p, spec.seed, (rows - positives) / max(float(positives), 1.0))
    dtrain = xgb.dask.DaskQuantileDMatrix(client, train[features], train[label], feature_names=features)
    dvalid = xgb.dask.DaskQuantileDMatrix(client, valid[features], valid[label], feature_names=features, ref=dtrain)
    out = xgb.dask.train(client, params, dtrain, num_boost_round=p.num_boost_round, evals=[(dvalid, "valid")],
                         early_stopping_rounds=p.early_stopping_rounds, verbose_eval=False)  # fmt: skip
    booster = out["booster"]
    best = int(booster.best_iteration)
    booster = booster[: best + 1]
    seconds = time.perf_counter() - started
    history = out["history"].get("valid", {})
    aucpr = history.get("aucpr", [float("nan")])
    return RawFit(seconds, len(aucpr), best, float(aucpr[best]) if best < len(aucpr) else float("nan"), int(rows))


# --------------------------------------------------------------------------------------------- mlcycle side
@dataclass
class MlcycleFit:
    seconds: float
    fit_s: float
    rounds: int
    best: int
    valid_aucpr: float
    test_roc_auc: float
    train_rows: int


class FitTimer:
    """Wraps ``training.distributed.fit_xgboost_dask`` (in this process only) to time the booster's
    fit inside ``train_candidate_on_cluster``."""

    def __init__(self) -> None:
        from mlcycle.training import distributed as cluster

        self.module = cluster
        self.original = cluster.fit_xgboost_dask
        self.seconds = 0.0

    def __enter__(self) -> FitTimer:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return self.original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        self.module.fit_xgboost_dask = timed
        return self

    def __exit__(self, *exc: object) -> None:
        self.module.fit_xgboost_dask = self.original


def run_mlcycle(client: Any, parts: list[Any], owners: list[str], features: list[str], cfg: Any) -> MlcycleFit:
    from mlcycle.training.distributed import train_candidate_on_cluster

    with FitTimer() as timer:
        started = time.perf_counter()
        candidate = train_candidate_on_cluster(client, parts, owners, features, cfg.model, label=cfg.table.label,
                                               slices=cfg.table.slices, protected=cfg.table.protected)  # fmt: skip
        seconds = time.perf_counter() - started
    model = candidate.model
    aucpr = model.history.get("aucpr", [float("nan")])
    best = int(model.best_iteration or 0)
    roc = candidate.report.flat_metrics().get("test.roc_auc", float("nan"))
    return MlcycleFit(seconds, timer.seconds, model.trained_rounds or 0, best,
                      float(aucpr[best]) if best < len(aucpr) else float("nan"), float(roc),
                      len(candidate.split.train))  # fmt: skip


# --------------------------------------------------------------------------------------------- one size
@dataclass
class SizeResult:
    rows: int
    train_rows: int
    build_s: float
    mlcycle: list[MlcycleFit] = field(default_factory=list)
    raw: list[RawFit] = field(default_factory=list)
    worker_peaks: dict[str, dict[str, int]] = field(default_factory=dict)  # phase -> worker -> KiB
    driver_peaks: dict[str, int] = field(default_factory=dict)
    single: dict[str, Any] | None = None

    @property
    def mlcycle_s(self) -> float:
        return statistics.median(f.seconds for f in self.mlcycle)

    @property
    def raw_s(self) -> float:
        return statistics.median(f.seconds for f in self.raw)

    @property
    def ratio(self) -> float:
        return self.mlcycle_s / self.raw_s

    @property
    def per_million(self) -> float:
        return (self.build_s + self.mlcycle_s) / (self.rows / 1e6)


def worker_peaks(client: Any) -> dict[str, int]:
    return {addr.rsplit(":", 1)[-1]: kb for addr, kb in sorted(client.run(peak_kb).items())}


def reset_all(client: Any) -> None:
    client.run(reset_peak)
    reset_peak()


def measure_size(project: Path, ready: dict[str, Any], rounds: int, partitions: int | None, one_node: bool,
                 label: str) -> SizeResult:  # fmt: skip
    import gc

    from distributed import wait

    from mlcycle.features import open_project_store, plan_for
    from mlcycle.features.distributed import cluster_client, placed_training_set
    from mlcycle.project.config import load_config

    cfg = load_config(project / "mlcycle.yaml")
    as_of = pd.Timestamp(ready["as_of"])
    features = list(plan_for(open_project_store(cfg), cfg.features.feature_service).model_features)
    with cluster_client(workers=WORKERS) as client:
        client.wait_for_workers(WORKERS)
        nthreads = sorted(client.nthreads().values())
        gc.collect()
        reset_all(client)
        idle = worker_peaks(client)
        started = time.perf_counter()
        built = placed_training_set(cfg, client, as_of, None, partitions)
        if not built.contract.ok:
            raise SystemExit(f"{label}: the table broke its contract on the cluster: {built.contract}")
        wait(built.parts)
        build_s = time.perf_counter() - started
        sizes = client.gather([client.submit(len, p, workers=[o], pure=False)
                               for p, o in zip(built.parts, built.owners, strict=True)])  # fmt: skip
        result = SizeResult(sum(sizes), 0, build_s)
        result.worker_peaks["idle"] = idle
        result.worker_peaks["build"] = worker_peaks(client)
        result.driver_peaks["build"] = peak_kb()
        print(f"{label}: cluster of {len(nthreads)} workers x {nthreads[0]} thread; placed_training_set "
              f"{result.rows:,} rows x {len(features)} features in {len(sizes)} partitions "
              f"({', '.join(f'{n:,}' for n in sizes)}) in {build_s:.1f}s", flush=True)  # fmt: skip
        for r in range(rounds):
            order = ("mlcycle", "raw") if r % 2 == 0 else ("raw", "mlcycle")
            for side in order:
                gc.collect()
                reset_all(client)
                if side == "mlcycle":
                    result.mlcycle.append(run_mlcycle(client, built.parts, built.owners, features, cfg))
                else:
                    result.raw.append(run_raw(client, built.parts, built.owners, features, cfg.table.label,
                                              cfg.model))  # fmt: skip
                peaks = worker_peaks(client)
                phase = result.worker_peaks.setdefault(side, {})
                for worker, kb in peaks.items():
                    phase[worker] = max(phase.get(worker, 0), kb)
                result.driver_peaks[side] = max(result.driver_peaks.get(side, 0), peak_kb())
            m, w = result.mlcycle[-1], result.raw[-1]
            print(f"{label} round {r + 1}/{rounds} ({order[0]} first): mlcycle {m.seconds:.1f}s "
                  f"(fit_xgboost_dask {m.fit_s:.1f}s, {m.rounds} rounds, best {m.best}, valid aucpr "
                  f"{m.valid_aucpr:.4f}), raw {w.seconds:.1f}s ({w.rounds} rounds, best {w.best}, valid aucpr "
                  f"{w.valid_aucpr:.4f}), ratio {m.seconds / w.seconds:.3f}", flush=True)  # fmt: skip
        result.train_rows = result.raw[0].train_rows
        if result.mlcycle[0].train_rows != result.raw[0].train_rows:
            print(f"WARNING: {label}: mlcycle trained on {result.mlcycle[0].train_rows:,} rows, raw on "
                  f"{result.raw[0].train_rows:,}", file=sys.stderr)  # fmt: skip
        # Released, not cancelled: cancelling keys whose released dependents are still known to the
        # scheduler trips an assertion in distributed's stimulus_cancel and drops the client.
        del built
    if one_node:
        print(f"{label}: single node (build_training_set + train_candidate, in a subprocess) ...", flush=True)
        result.single = single_node(project / "mlcycle.yaml", ready["as_of"])
        s = result.single
        print(f"{label}: single node {s['rows']:,} rows: build {s['build_s']:.1f}s, train {s['train_s']:.1f}s, "
              f"peak RSS {mb(s['peak_kb'])} (after imports {mb(s['import_peak_kb'])})", flush=True)  # fmt: skip
    return result


def print_size(res: SizeResult) -> None:
    print(f"rows {res.rows:,} (training slice {res.train_rows:,}):")
    print(f"  cluster build (placed_training_set)           {res.build_s:>8.1f}s")
    print(f"  mlcycle train_candidate_on_cluster, median    {res.mlcycle_s:>8.1f}s "
          f"(fit_xgboost_dask {statistics.median(f.fit_s for f in res.mlcycle):.1f}s)")  # fmt: skip
    print(f"  raw xgboost.dask, median                      {res.raw_s:>8.1f}s")
    each = ", ".join(f"{m.seconds / w.seconds:.3f}" for m, w in zip(res.mlcycle, res.raw, strict=True))
    print(f"  ratio mlcycle / raw                           {res.ratio:>8.3f}  (rounds: {each})")
    print(f"  cluster path (build + mlcycle train)          {res.build_s + res.mlcycle_s:>8.1f}s = "
          f"{res.per_million:.1f}s per million rows")  # fmt: skip
    for phase in ("idle", "build", "mlcycle", "raw"):
        peaks = res.worker_peaks.get(phase, {})
        driver = f", driver {mb(res.driver_peaks[phase])}" if phase in res.driver_peaks else ""
        print(f"  peak RSS {phase:<8} workers {', '.join(f'{w}: {mb(kb)}' for w, kb in peaks.items())}{driver}")
    if res.single:
        s = res.single
        total = s["build_s"] + s["train_s"]
        print(f"  single node: build_training_set {s['build_s']:.1f}s + train_candidate {s['train_s']:.1f}s = "
              f"{total:.1f}s ({total / (s['rows'] / 1e6):.1f}s per million rows), peak RSS {mb(s['peak_kb'])}; "
              f"cluster path {res.build_s + res.mlcycle_s:.1f}s, driver peak "
              f"{mb(max(res.driver_peaks.values()))}, largest worker peak "
              f"{mb(max(kb for p in res.worker_peaks.values() for kb in p.values()))}")  # fmt: skip


# --------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=parse_sizes, default=[1_000_000],
                        help="training rows (about; the table holds 1.5x as many events): one size, or a "
                             "comma-separated list to measure the cost's growth (default 1000000)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=ROUNDS,
                        help=f"alternating timed runs of each side per size (at least {MIN_ROUNDS})")  # fmt: skip
    parser.add_argument("--partitions", type=int, default=None, help="training-set partitions (default: the "
                        "config's model.partitions)")  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the generated projects here (rows-<N>/) and reuse them; default: a temporary "
                             "directory, removed at the end")  # fmt: skip
    parser.add_argument("--no-single-node", action="store_true", help="skip the single-node comparison")
    parser.add_argument("--_prepare", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--_single-node", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--_as-of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._prepare:
        prepare_here(args._prepare, args.rows[0])
        return
    if args._single_node:
        single_node_here(args._single_node, args._as_of)
        return
    if args.rounds < MIN_ROUNDS:
        parser.error(f"--rounds must be at least {MIN_ROUNDS}: the result is a median of alternating runs")

    results: list[SizeResult] = []
    with tempfile.TemporaryDirectory(prefix="mlcycle-bench-dask-") as tmp:
        base = args.workdir.resolve() if args.workdir else Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        for rows in args.rows:
            label = f"rows {rows:,}"
            project = base / f"rows-{rows}"
            started = time.perf_counter()
            ready = prepare(project, rows)
            how = "reused" if ready["reused"] else f"generated in {time.perf_counter() - started:.0f}s"
            print(f"{label}: project at {project} {how} ({ready['data']['n_transactions']:,} transactions; "
                  f"generate {ready['generate_s']:.0f}s, build features {ready['features_s']:.0f}s, apply "
                  f"{ready['apply_s']:.0f}s, peak RSS {mb(ready['peak_kb'])} when generated); as_of "
                  f"{ready['as_of']}", flush=True)  # fmt: skip
            results.append(measure_size(project, ready, args.rounds, args.partitions, not args.no_single_node,
                                        label))  # fmt: skip

    print()
    for res in results:
        print_size(res)
    print()
    failed = False
    if len(results) > 1:
        first, last = results[0], results[-1]
        growth = last.per_million / first.per_million
        print(f"cost per million rows: {', '.join(f'{r.rows:,} rows {r.per_million:.1f}s' for r in results)}; "
              f"growth {growth:.3f}x from {first.rows:,} to {last.rows:,} rows")  # fmt: skip
        ok = growth <= TARGET_GROWTH
        failed |= not ok
        print(f"RESULT dask_cost_growth {growth:.3f} x target {TARGET_GROWTH} {'PASS' if ok else 'FAIL'}")
    ratio = results[-1].ratio
    ok = ratio <= TARGET_RATIO
    failed |= not ok
    print(f"RESULT dask_training_vs_raw_xgboost_dask {ratio:.3f} x target {TARGET_RATIO} {'PASS' if ok else 'FAIL'}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
