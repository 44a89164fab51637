"""Benchmark: the whole training flow on ~1M training rows vs a bare ``xgboost.train`` on the same matrix.

The flow (Prefect flow ``train``, against a temporary Prefect server started before timing) loads
and validates the transactions, builds the point-in-time training set through Feast, checks it,
splits by time, fits XGBoost and the logistic baseline, evaluates by slice, measures latency, logs
everything to MLflow, registers the model and writes its card. The raw side fits XGBoost on the
flow's own training matrix with the same parameters for the same number of rounds the flow
boosted (early stopping included). Overhead = flow time - bare fit time.

    uv run python bench/training_overhead.py [--train-rows 1000000]

Target: the flow's overhead (everything but the fit) at most 20% of the fit.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import xgboost as xgb
from prefect.testing.utilities import prefect_test_harness

import mlcycle  # noqa: F401  (telemetry off)
from mlcycle.features import apply_repo, pipeline
from mlcycle.project.files import copy_project, load_flow
from mlcycle.registry.aliases import client_for
from mlcycle.registry.tracking import SNAPSHOT_ARTIFACT
from mlcycle.training.fit import matrix, split_by_time

TARGET = 0.20
MATURED_SHARE = 2 / 3  # 90-day stream, 30-day label maturity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-rows", type=int, default=1_000_000, help="rows in the training set (about)")
    args = parser.parse_args()
    n_tx = int(args.train_rows / MATURED_SHARE)

    with tempfile.TemporaryDirectory(prefix="mlcycle-bench-") as tmp:
        data = {"seed": 5, "days": 90, "n_transactions": n_tx, "n_users": n_tx // 10, "n_merchants": n_tx // 100}
        cfg = copy_project(Path(__file__).resolve().parents[1], Path(tmp), data)
        t = time.perf_counter()
        pipeline.generate_data(cfg)
        pipeline.build_features(cfg)
        apply_repo(cfg.feature_repo_path)
        print(f"setup: {n_tx:,} transactions, features built, repo applied in {time.perf_counter() - t:.0f}s")

        with prefect_test_harness(server_startup_timeout=180):
            train = load_flow(cfg.root, "training", "train")
            t = time.perf_counter()
            state = train(config=str(cfg.root / "mlcycle.yaml"), return_state=True)
            flow_s = time.perf_counter() - t
            result = state.result()
            tasks = task_durations(state.state_details.flow_run_id)

        client = client_for(cfg)
        run = client.get_run(result["run_id"])
        rounds = int(run.data.params["trained_rounds"])
        snapshot = client.download_artifacts(result["run_id"], SNAPSHOT_ARTIFACT, tmp)
        frame = pd.read_parquet(snapshot)
        features = list(__import__("json").loads(run.data.tags["mlcycle.features"]))
        split = split_by_time(frame, cfg.model.valid_fraction, cfg.model.test_fraction)
        params = {k[len("xgb.") :]: _typed(v) for k, v in run.data.params.items() if k.startswith("xgb.")} | {
            "eval_metric": ["aucpr", "auc"]
        }
        dtrain = xgb.DMatrix(matrix(split.train, features), label=split.train["is_fraud"], feature_names=features)
        dvalid = xgb.DMatrix(matrix(split.valid, features), label=split.valid["is_fraud"], feature_names=features)
        t = time.perf_counter()
        xgb.train(params, dtrain, num_boost_round=rounds, evals=[(dvalid, "valid")], verbose_eval=False)
        fit_s = time.perf_counter() - t

    overhead = flow_s - fit_s
    ratio = overhead / fit_s
    print()
    print(f"training set: {len(frame):,} rows x {len(features)} features; XGBoost boosted {rounds} rounds "
          f"on {len(split.train):,} rows; gates {'passed' if result['passed'] else 'FAILED'}")  # fmt: skip
    print(f"{'what':<52}{'seconds':>10}")
    print(f"{'full flow `train` (Prefect, Feast, MLflow, registry)':<52}{flow_s:>10.1f}")
    print(f"{'bare xgboost.train, same matrix, params and rounds':<52}{fit_s:>10.1f}")
    print(f"{'overhead (flow - fit)':<52}{overhead:>10.1f}")
    print(f"{'overhead / fit':<52}{ratio:>10.2f}")
    print()
    print(f"{'flow task':<52}{'seconds':>10}")
    for name, seconds in tasks:
        print(f"{name:<52}{seconds:>10.2f}")
    print(f"{'(between tasks: Prefect, data passing)':<52}{flow_s - sum(s for _, s in tasks):>10.2f}")
    print(f"RESULT training_overhead {ratio:.2f} ratio target {TARGET} {'PASS' if ratio <= TARGET else 'FAIL'}")
    if ratio > TARGET:
        sys.exit(1)  # a benchmark that fails its target fails `make bench`


def task_durations(flow_run_id) -> list[tuple[str, float]]:
    """Each task's run time in the flow run, from Prefect's API, in start order."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    runs = sorted(runs, key=lambda r: r.start_time or r.expected_start_time)
    return [(r.name.rsplit("-", 1)[0], r.total_run_time.total_seconds()) for r in runs]


def _typed(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


if __name__ == "__main__":
    main()
