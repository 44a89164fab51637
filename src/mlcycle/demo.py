"""``mlcycle demo``: the loop end to end on embedded defaults, narrated step by step.

data → contract → features → Feast → training set → train/serve check → v1 champion → v2
challenger → service up → traffic → canary with live traffic → promoted or rolled back.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from mlcycle import pipeline
from mlcycle.config import ProjectConfig
from mlcycle.features import store
from mlcycle.project import load_flow


class DemoFailed(RuntimeError):
    pass


class Steps:
    """Numbered progress lines with timings, so a long run shows where it is."""

    def __init__(self, console: Console, total: int):
        self.console, self.total, self.n, self.t0 = console, total, 0, time.perf_counter()

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.n += 1
        self.console.print(f"[bold cyan][{self.n}/{self.total}][/bold cyan] {title} …")
        t = time.perf_counter()
        yield
        self.console.print(f"      done in {time.perf_counter() - t:.1f}s")

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def mlflow_ui_command(cfg: ProjectConfig) -> str:
    return f"uv run mlflow ui --backend-store-uri {cfg.tracking_uri} --port 5000"


def run(cfg: ProjectConfig, console: Console, requests: int = 2000) -> None:
    from mlcycle.service_process import ServiceProcess
    from mlcycle.traffic import replay

    steps = Steps(console, total=10)
    console.rule("[bold]mlcycle demo[/bold]")
    console.print(f"project {cfg.project!r}, profile {cfg.profile!r}, state in {cfg.data_path}")
    if cfg.data_path.exists():
        console.print("starting from a clean data/ directory (generated state only)")
        shutil.rmtree(cfg.data_path)

    with steps.step(f"Generating {cfg.data.n_transactions:,} card transactions (seed {cfg.data.seed})"):
        dataset, _ = pipeline.generate_data(cfg)
        tx = dataset.transactions
        console.print(
            f"      {len(tx):,} transactions, {len(dataset.users):,} users, {len(dataset.merchants):,} "
            f"merchants, {tx['event_timestamp'].min():%Y-%m-%d} → {tx['event_timestamp'].max():%Y-%m-%d}, "
            f"fraud {tx['is_fraud'].mean():.2%}"
        )
    with steps.step("Validating against the data contract, then building feature tables"):
        build = pipeline.build_features(cfg)
        console.print(f"      {build.report.summary()}")
        console.print("      " + " / ".join(f"{name}: {n:,} rows" for name, n in build.rows.items()))
    with steps.step("feast apply + materialize-incremental (SQLite online store)"):
        end = pipeline.publish_features(cfg, fresh=True)
        console.print(f"      online store loaded up to {end:%Y-%m-%d %H:%M:%S} UTC")
    with steps.step("Point-in-time training set through the FeatureService (matured labels)"):
        frame = pipeline.build_training_set(cfg)
        fs = store.open_store(cfg.feature_repo_path)
        plan = store.plan_for(fs, cfg.features.feature_service)
        summary = pipeline.summarize_training_set(frame, list(plan.model_features))
        console.print(
            f"      {len(frame):,} rows (every matured transaction kept) × {len(plan.model_features)} "
            f"features from '{plan.name}', label rate {frame['is_fraud'].mean():.2%}"
        )
        worst = summary.sort_values("null_rate", ascending=False).head(3)
        console.print(
            "      highest null rates: "
            + ", ".join(f"{k} {v:.1%}" for k, v in worst["null_rate"].items())
            + " (users' first transactions have no history)"
        )
        training_set_path = cfg.data_path / "training_set.parquet"
        frame.to_parquet(training_set_path, index=False)
    with steps.step("Train/serve check: online vector vs offline row for the same moment"):
        now = datetime.now(UTC).replace(microsecond=0)
        sample = tx.drop_duplicates("user_id").tail(200).reset_index(drop=True)
        entity_rows = sample[["user_id", "merchant_id"]].to_dict("records")
        request = store.entity_frame(sample).drop(columns=["user_id", "merchant_id", "event_timestamp"])
        request["request_unix"] = int(now.timestamp())
        online = store.online_vector(fs, entity_rows, request.to_dict("records"), plan.name, now=now)
        offline = store.training_set(
            fs, sample[["user_id", "merchant_id"]].assign(event_timestamp=now, **request), plan.name
        )
        skew = store.skew_report(online, offline, plan.model_features)
        console.print(
            f"      {len(sample)} entities × {len(plan.model_features)} features: "
            + ("identical" if not skew else f"[red]skew in {skew}[/red]")
        )
        if skew:
            raise DemoFailed(f"train/serve skew: {skew}")

    train = load_flow(cfg.root, "training", "train")
    config_path = str(cfg.root / "mlcycle.yaml")
    with steps.step("Training v1: Prefect flow `train` → gates → MLflow registry"):
        v1 = train(config=config_path)
        print_training(console, v1)
    with steps.step("Training v2 on the same data: it must not regress against v1 to become challenger"):
        v2 = train(config=config_path)
        print_training(console, v2)

    service = ServiceProcess(cfg)
    with steps.step("Starting the scoring service (bentoml serve) and sending traffic"):
        service.start()
        console.print(f"      {service.url} ready (POST /predict, /metrics, /readyz); log {service.log_path}")
        replayed = tx.sample(min(len(tx), 5000), random_state=0)
        with _progress(console) as progress:
            task = progress.add_task("requests", total=requests)
            stats = replay(service.url, replayed, requests, concurrency=4,
                           on_response=lambda: progress.advance(task))  # fmt: skip
        ok = stats.status.get(200, 0)
        console.print(
            f"      {ok:,}/{stats.sent:,} answered 200, p50 {stats.p(50):.1f} ms, p99 {stats.p(99):.1f} ms, "
            f"{stats.flagged} flagged, variants {stats.variants}"
        )
    try:
        with steps.step("Canary of the challenger: traffic 5% → 25% → 50% under automated analysis"):
            if not v2["passed"]:
                console.print("      no challenger (v2 was rejected): nothing to canary")
                outcome = None
            else:
                outcome = _canary(cfg, service.url, replayed, console)
    finally:
        service.stop()

    with steps.step("Summary"):
        table = Table("what", "where")
        table.add_row("raw data / features", f"{cfg.raw_dir} / {cfg.features_dir}")
        table.add_row("training set", str(training_set_path))
        table.add_row("model cards", str(cfg.data_path / "model_cards"))
        table.add_row("prediction log", str(cfg.predictions_dir))
        table.add_row("MLflow UI", mlflow_ui_command(cfg))
        table.add_row("versions / alias history", "uv run mlcycle models / uv run mlcycle history")
        table.add_row("rollout state", "uv run mlcycle rollout status")
        table.add_row("Prefect UI (flow runs)", "uv run prefect server start   → http://127.0.0.1:4200")
        table.add_row("serve it yourself", "uv run mlcycle serve --port 3000")
        console.print(table)
    verdict = f"canary: v{outcome['version']} {outcome['outcome']}" if outcome else "no canary"
    console.rule(f"[bold green]demo finished in {steps.elapsed():.0f}s — {verdict}[/bold green]")


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("      {task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=False,
    )  # fmt: skip


def print_training(console: Console, result: dict, indent: str = "      ") -> None:
    if result["passed"]:
        console.print(
            f"{indent}registered v{result['version']} as {result['alias']} "
            f"(ROC-AUC {result['roc_auc']:.4f}, PR-AUC {result['pr_auc']:.4f}); card {result['model_card']}"
        )
    else:
        console.print(f"{indent}[red]rejected by the gates: {', '.join(result['failed'])}[/red]; no alias moved")


def print_rollout(console: Console, result: dict, indent: str = "      ") -> None:
    for step in result["steps"]:
        console.print(f"{indent}{step['percent']:g}%: {'passed' if step['passed'] else '[red]FAILED[/red]'}")
        for line in step["checks"]:
            console.print(f"{indent}    {line}")
    color = "green" if result["outcome"] == "promoted" else "red"
    console.print(f"{indent}[{color}]v{result['version']} {result['outcome']}[/{color}]")


def _canary(cfg: ProjectConfig, url: str, transactions, console: Console) -> dict:
    """Run the rollout flow while a background thread keeps real traffic flowing."""
    from mlcycle.traffic import replay

    stop = threading.Event()
    sent = {"n": 0}

    def traffic() -> None:
        while not stop.is_set() and sent["n"] < 200_000:
            stats = replay(url, transactions.sample(400, random_state=sent["n"]), 400, concurrency=4, stop=stop)
            sent["n"] += stats.sent

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        flow = load_flow(cfg.root, "rollout", "rollout_flow")
        result = flow(config=str(cfg.root / "mlcycle.yaml"), wait_seconds=3.0, max_wait_seconds=180.0)
    finally:
        stop.set()
        thread.join(60)
    print_rollout(console, result)
    console.print(f"      ({sent['n']:,} requests sent during the canary)")
    return result
