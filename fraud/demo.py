"""The reference project's story (``demo: fraud.demo:run``; ``mlcycle demo``): the loop end to end on
embedded defaults, narrated step by step.

data (with drift injected) → contract → features → Feast → train/serve check → v1 champion →
service + traffic → monitoring finds the drift → the event starts retraining → v2 challenger →
canary → promoted (or not) → a broken-upstream day → retraining refused, waiting for a person.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from datetime import UTC, datetime, timedelta

from rich.console import Console
from rich.table import Table

from fraud.generator import DriftSpec, break_upstream, generate, spec_of
from mlcycle.cli.console import Steps, mlflow_ui_command, print_check, print_training, progress
from mlcycle.features import pipeline, store
from mlcycle.flows import load_flow
from mlcycle.project.config import ProjectConfig


class DemoFailed(RuntimeError):
    pass


# The story's world: the configured stream, longer, with a change from day 80 on (70 days ago):
# amounts inflate (covariate shift) and half the fraud rings switch to card testing (concept
# drift). v1 is trained as of day 80, before the change; retraining learns from the latest 60
# matured days, which hold 40 days of the new world.
STORY_DAYS = 150
STORY_DRIFT = DriftSpec(start_day=80, amount_inflation=1.5, concept_drift=True, concept_drift_share=0.5)


def run(cfg: ProjectConfig, console: Console, requests: int = 1500) -> None:
    from mlcycle.net import free_port
    from mlcycle.ops import stack

    running = [c.name for c in stack.status(cfg) if c.running]
    if running:
        raise DemoFailed(f"the local stack is running ({', '.join(running)}): `make down` first — the demo "
                         "starts from a clean data/ directory and its own servers")  # fmt: skip
    steps = Steps(console, total=13)
    console.rule("[bold]mlcycle demo[/bold]")
    console.print(f"project {cfg.project!r}, profile {cfg.profile!r}, state in {cfg.data_path}")
    if cfg.profile == "scale":
        _require_empty_registry(cfg)
    if cfg.data_path.exists():
        console.print("starting from a clean data/ directory (generated state only)")
        shutil.rmtree(cfg.data_path)
    base = spec_of(cfg)
    world = base.model_copy(
        update={
            "days": STORY_DAYS,
            "n_transactions": base.n_transactions * STORY_DAYS // base.days,
            "drift": STORY_DRIFT,
        }
    )
    # One start for the data and the story's dates, even if midnight passes while the demo runs.
    start = world.resolved_start()
    world = world.model_copy(update={"start": start})
    drift_at = start + timedelta(days=STORY_DRIFT.start_day)
    out = lambda message: console.print(f"      {message.strip()}")  # noqa: E731
    # The Prefect server takes long to start cold: it starts now and comes up while data is built.
    prefect_port = 4200 if stack.port_free(4200) else free_port()
    prefect_url = stack.start_prefect_server(cfg, prefect_port, wait=False, out=out)
    try:
        _story(cfg, console, steps, world, drift_at, prefect_url, requests, out)
    finally:
        console.print("stopping the servers the demo started …")
        stack.down(cfg, out=lambda m: None)


def _story(cfg, console, steps, world, drift_at, prefect_url, requests, out) -> None:
    pager = _Pager()
    try:
        _chapters(cfg, console, steps, world, drift_at, prefect_url, requests, out, pager)
    finally:
        pager.close()


def _chapters(cfg, console, steps, world, drift_at, prefect_url, requests, out, pager) -> None:
    from fraud.traffic import replay
    from mlcycle.monitoring import retraining
    from mlcycle.net import free_port
    from mlcycle.ops import stack
    from mlcycle.registry import aliases as registry
    from mlcycle.serving import batch

    with steps.step(
        f"Generating {world.n_transactions:,} card transactions over {world.days} days (seed {world.seed})"
    ):
        dataset = generate(world)
        dataset.write(cfg.raw_dir)
        tx = dataset.transactions
        console.print(
            f"      {len(tx):,} transactions, {len(dataset.users):,} users, {tx['event_timestamp'].min():%Y-%m-%d} → "
            f"{tx['event_timestamp'].max():%Y-%m-%d}, fraud {tx['is_fraud'].mean():.2%}\n"
            f"      drift injected from {drift_at:%Y-%m-%d} (day {STORY_DRIFT.start_day}): amounts × "
            f"{STORY_DRIFT.amount_inflation} (covariate), {STORY_DRIFT.concept_drift_share:.0%} of fraud rings "
            "switch to card testing: tiny purchases minutes apart (concept)"
        )
    online = "Redis online store, PostgreSQL registry" if cfg.profile == "scale" else "SQLite online store"
    with steps.step(f"Data contract, feature tables, feast apply + materialize ({online})"):
        build = pipeline.build_features(cfg)
        console.print(f"      {build.report.summary()}")
        end = pipeline.publish_features(cfg, fresh=True)
        console.print(f"      online store loaded up to {end:%Y-%m-%d %H:%M:%S} UTC")
    with steps.step("Train/serve check: online vector vs offline row for the same moment"):
        _skew_check(cfg, tx, console)
    with steps.step(f"Waiting for the Prefect server ({prefect_url}) — flows below show in its UI"):
        results = stack.wait_healthy(cfg, [stack.PREFECT_SERVER], out)
        if isinstance(results[stack.PREFECT_SERVER], Exception):
            raise DemoFailed(str(results[stack.PREFECT_SERVER]))
    api_url = prefect_url + "/api"
    os.environ["PREFECT_API_URL"] = api_url
    from prefect.settings import PREFECT_API_URL, temporary_settings

    config_path = str(cfg.root / "mlcycle.yaml")
    with temporary_settings({PREFECT_API_URL: api_url}):
        with steps.step(f"Training v1 as of {drift_at:%Y-%m-%d}, before the change: flow `train` → gates → registry"):
            v1 = load_flow(cfg.root, "training", "train")(config=config_path, as_of=drift_at)
            print_training(console, v1)
            if v1["alias"] != registry.CHAMPION:
                raise DemoFailed("v1 did not become champion: the story cannot go on")
        service_port = 3000 if stack.port_free(3000) else free_port()
        with steps.step("Event broker, scoring service, deployments, worker; v1's production history since the change"):
            stack.start_broker(cfg, wait=True, out=out)  # the service publishes every scored request to it
            service_url = stack.start_service(cfg, service_port, wait=False, out=out)
            deployed = stack.deploy(cfg, api_url, out=out)
            console.print(f"      deployments: {', '.join(deployed)}")
            if cfg.alerts.routes:  # the on-call's pager: a loopback webhook the alerts' automations post to
                from mlcycle.ops import alerts

                os.environ.setdefault(cfg.alerts.channels["oncall"].url_env, pager.url)
                synced = alerts.sync(cfg, api_url)
                console.print(f"      alerts: {len(synced.automations)} Prefect automations paging the on-call "
                              f"({os.environ[cfg.alerts.channels['oncall'].url_env]})")  # fmt: skip
            _pause_schedules(deployed)
            console.print(
                "      their schedules are paused for the demo (the story drives the runs); `make up` keeps them"
            )
            stack.start_worker(cfg, api_url, out=out)
            n, _ = batch.backfill_prediction_log(cfg, drift_at - timedelta(days=14), datetime.now(UTC))
            console.print(f"      {n:,} answers of v1 logged at their own time (what the online path would "
                          "have answered: point-in-time features)")  # fmt: skip
            results = stack.wait_healthy(cfg, [stack.SERVICE], out)
            if isinstance(results[stack.SERVICE], Exception) or not _wait_ready(service_url):
                raise DemoFailed(f"the scoring service did not become ready; log {stack.log_path(cfg, stack.SERVICE)}")
        recent = tx[tx["event_timestamp"] >= tx["event_timestamp"].max() - timedelta(days=3)]
        with steps.step(f"Live traffic: {requests:,} of the last days' transactions through {service_url}/predict"):
            with progress(console) as bar:
                task = bar.add_task("requests", total=requests)
                stats = replay(service_url, recent, requests, concurrency=4, on_response=lambda: bar.advance(task))
            console.print(f"      {stats.status.get(200, 0):,}/{stats.sent:,} answered 200, p50 {stats.p(50):.1f} ms, "
                          f"p99 {stats.p(99):.1f} ms")  # fmt: skip
        with steps.step(
            "A card-testing burst on the event stream: ten tiny purchases minutes apart, scored as they arrive"
        ):
            _stream_burst(cfg, console, tx)
        monitor = load_flow(cfg.root, "monitoring", "monitor")
        with steps.step("Monitoring flow `monitor` over the last 7 days (events start retraining)"):
            since_events = datetime.now(UTC)
            checked = monitor(config=config_path, window_days=7)
            print_check(console, checked)
            if cfg.alerts.routes:
                from prefect.events.worker import EventsWorker

                EventsWorker.drain_all()
                pages = pager.wait(1, timeout=90)
                for message in pages[:2]:
                    _print_page(console, message)
                if not pages:
                    console.print("      no page arrived within 90 s (the Prefect server's automations are slow "
                                  "to start on a busy machine)")  # fmt: skip
        with steps.step("Retraining started by the event (deployment `retrain` on the worker) → canary"):
            traffic = _Traffic(service_url, recent)
            try:
                final = _wait_for_retraining(console, since_events, timeout=900,
                                             on_paused=lambda: _approve_as_a_person(cfg, console))  # fmt: skip
            finally:
                traffic.stop()
            console.print(f"      ({traffic.sent:,} live requests sent meanwhile)")
            client = registry.client_for(cfg)
            _print_retraining(cfg, console, client, since_events)
            champion = registry.version_by_alias(client, cfg.model.name, registry.CHAMPION)
            console.print(f"      retraining runs {final}: champion is now v{champion.version}")
        with steps.step("A day of broken upstream data: channel no longer sent, categories in a new code list"):
            broken_since = datetime.now(UTC)
            champion_before = str(champion.version)
            broken = break_upstream(recent.sample(min(len(recent), 800), random_state=1))
            stats = replay(service_url, broken, len(broken), concurrency=4)
            console.print(f"      {stats.status.get(200, 0):,} broken requests answered (the service cannot know)")
            since_events = datetime.now(UTC)
            checked = monitor(config=config_path, since=broken_since)
            print_check(console, checked)
            run = _wait_for_pause(console, since_events, timeout=600)
            console.print(f"      [red]ALERT[/red] retraining {run.name} blocked and waiting for a person:")
            console.print(f"        uv run mlcycle approve {run.id}    # the data is right, retrain")
            console.print(f"        uv run mlcycle reject {run.id}     # it is broken upstream")
            console.print("      the demo answers as the on-call engineer: reject")
            retraining.decide(str(run.id), approve=False, who="demo:on-call", note="upstream schema change")
            state = _wait_final(run.id, timeout=120)
            champion = registry.version_by_alias(client, cfg.model.name, registry.CHAMPION)
            console.print(f"      retraining {state}; champion still v{champion.version} "
                          f"({'unchanged' if str(champion.version) == champion_before else 'CHANGED'})")  # fmt: skip
        with steps.step("Summary"):
            _summary(cfg, console, client, prefect_url)
    console.rule(f"[bold green]demo finished in {steps.elapsed():.0f}s[/bold green]")


def _stream_burst(cfg: ProjectConfig, console: Console, tx) -> None:
    """Ten purchases of 0.50-5.00 on one card, three minutes apart, arrive on the stream. The consumer
    (``mlcycle stream``, here in-process) scores each with the burst so far in its features — the
    "transactions in the last hour" the model sees goes 0, 1, 2, … — where features as last
    materialized (batch alone) would show none of it. Both scores are printed, whatever they say."""
    import numpy as np
    import pandas as pd

    from mlcycle.serving.prediction_store import read_logged_predictions
    from mlcycle.streaming.consumer import StreamConsumer, open_stream
    from mlcycle.streaming.events import encode

    consumer = StreamConsumer(cfg, open_stream(cfg), name="demo")
    try:
        seeded = consumer.bootstrap()
        backlog = 0
        while batch := consumer.stream.read(consumer.name, 500, 0):  # /predict's requests, published by the service
            backlog += consumer.process(batch).read
        rng = np.random.default_rng(3)
        quiet = tx.groupby("user_id")["event_timestamp"].max()
        user = int(quiet[quiet < quiet.max() - pd.Timedelta(days=2)].index[0])  # a card idle for days
        base = tx[tx["user_id"] == user].iloc[-1].to_dict()
        now = pd.Timestamp(datetime.now(UTC)).floor("s")
        merchants = tx["merchant_id"].drop_duplicates().sample(10, random_state=3).to_numpy()
        burst = [
            {**{k: v for k, v in base.items() if k not in (cfg.table.label, cfg.table.label_available_at)},
             "transaction_id": int(9 * 10**12 + k), "event_timestamp": now - pd.Timedelta(minutes=3 * (9 - k)),
             "amount": round(float(rng.uniform(0.5, 5.0)), 2), "merchant_id": int(merchants[k])}
            for k in range(10)
        ]  # fmt: skip
        requests = [{**row, "timestamp": row["event_timestamp"].to_pydatetime()} for row in burst]
        batch_only = [a.score for a in consumer.scorer.score(requests)]  # features as last materialized
        consumer.stream.publish_many([encode(row) for row in burst])
        while batch := consumer.stream.read(consumer.name, 500, 0):
            consumer.process(batch)
    finally:
        if consumer.scorer is not None:
            consumer.scorer.close()  # flushes the prediction log
    decided = {
        fields[b"event_id"].decode(): float(fields[b"score"])
        for _, fields in consumer.client.xrange(consumer.keys.decisions)
    }
    logged = read_logged_predictions(cfg)
    logged = logged[logged["event_id"].isin([str(r["transaction_id"]) for r in burst]) & ~logged["shadow"]]
    seen = {e: json.loads(f).get("txn_count_1h") for e, f in zip(logged["event_id"], logged["features"], strict=True)}
    console.print(
        f"      consumer: {seeded:,} recent events seeded, {backlog:,} requests /predict had published applied"
    )
    table = Table("#", "time", "amount", "txns in the last hour (stream)", "score, batch features", "score, stream")
    for k, row in enumerate(burst):
        event_id = str(row["transaction_id"])
        count = seen.get(event_id)
        table.add_row(str(k + 1), f"{row['event_timestamp']:%H:%M}", f"{row['amount']:.2f}",
                      "—" if count is None else str(count), f"{batch_only[k]:.3f}",
                      f"{decided[event_id]:.3f}" if event_id in decided else "not scored")  # fmt: skip
    console.print(table)
    last = str(burst[-1]["transaction_id"])
    if last in decided:
        rise = decided[last] - batch_only[-1]
        console.print(
            f"      the tenth purchase: score {decided[last]:.3f} with the burst in its features, "
            f"{batch_only[-1]:.3f} with batch features alone ({'+' if rise >= 0 else ''}{rise:.3f})"
        )


def _pause_schedules(deployments: list[str]) -> None:
    """A scheduled monitor run crossing the story would start a retraining of its own."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        for name in deployments:
            deployment = client.read_deployment_by_name(name)
            for schedule in deployment.schedules:
                client.update_deployment_schedule(deployment.id, schedule.id, active=False)


def _require_empty_registry(cfg: ProjectConfig) -> None:
    """Profile scale keeps its state in PostgreSQL and Redis, which the demo does not delete (mlcycle
    never drops a database): the story needs an empty registry, so a used database is refused."""
    from mlcycle.registry import aliases as registry

    if next(registry.versions(registry.client_for(cfg), cfg.model.name), None) is not None:
        raise DemoFailed(
            f"profile scale: the database of MLCYCLE_PG_URL ({cfg.scale.database}) already holds versions of "
            f"'{cfg.model.name}', and the demo's story starts from an empty registry. Point MLCYCLE_PG_URL at a new "
            "database and MLCYCLE_REDIS_PREFIX at a new prefix (both are created on first use), or drop that "
            "database yourself."
        )


def _skew_check(cfg: ProjectConfig, tx, console: Console) -> None:
    fs = store.open_project_store(cfg)
    plan = store.plan_for(fs, cfg.features.feature_service)
    now = datetime.now(UTC).replace(microsecond=0)
    sample = tx.drop_duplicates("user_id").tail(200).reset_index(drop=True)
    entity_rows = sample[["user_id", "merchant_id"]].to_dict("records")
    keys = list(cfg.table.entities)
    request = store.entity_frame(sample, keys, plan.request_fields).drop(columns=[*keys, "event_timestamp"])
    request["request_unix"] = int(now.timestamp())
    online = store.online_vector(fs, entity_rows, request.to_dict("records"), plan.name, now=now)
    offline = store.training_set(
        fs, sample[["user_id", "merchant_id"]].assign(event_timestamp=now, **request), plan.name
    )
    skew = store.skew_report(online, offline, plan.model_features)
    console.print(f"      {len(sample)} entities × {len(plan.model_features)} features: "
                  + ("identical" if not skew else f"[red]skew in {skew}[/red]"))  # fmt: skip
    if skew:
        raise DemoFailed(f"train/serve skew: {skew}")


def _wait_ready(url: str, timeout: float = 120) -> bool:
    import httpx

    deadline = time.monotonic() + timeout
    with httpx.Client(trust_env=False, timeout=5) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url + "/readyz").status_code == 200:
                    return True
            time.sleep(1)
    return False


class _Pager:
    """The on-call's pager for the story: a loopback webhook that keeps what the alerts deliver
    (``alerts.channels.oncall`` in mlcycle.yaml reads its URL from MLCYCLE_ONCALL_URL)."""

    def __init__(self) -> None:
        import http.server

        self.messages: list[dict] = []
        self.arrived = threading.Condition()
        messages, arrived = self.messages, self.arrived

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the http.server API names it
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with arrived:
                    messages.append(json.loads(body or b"{}"))
                    arrived.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/pager"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int, timeout: float) -> list[dict]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _print_page(console: Console, message: dict) -> None:
    lines = str(message.get("body", "")).splitlines()
    console.print("      [red]PAGE[/red] ", end="")
    console.print(str(message.get("subject", "")), markup=False)  # "[page] …": not rich markup
    for line in lines:
        if line.startswith(("Version:", "Drifted features:", "Estimate", "Runbook:", "Act:")):
            console.print(f"        {line[:160]}", markup=False)


class _Traffic:
    """Live requests in the background while a canary needs them."""

    def __init__(self, url: str, transactions) -> None:
        from fraud.traffic import replay

        self.sent, self._stop = 0, threading.Event()

        def loop() -> None:
            while not self._stop.is_set() and self.sent < 200_000:
                stats = replay(
                    url, transactions.sample(400, random_state=self.sent), 400, concurrency=4, stop=self._stop
                )
                self.sent += stats.sent

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)


def _retrain_runs(since: datetime) -> list:
    """Retraining runs started by an event since ``since`` (not the weekly schedule's)."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
    )

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["retrain"])),
            flow_run_filter=FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(after_=since)),
        )
    return [r for r in runs if "trigger" in r.parameters]


def _approve_as_a_person(cfg: ProjectConfig, console: Console) -> None:
    """The rollout waits for an approver (rollout.require_approval): the demo decides as the person
    running it, through the same checks as `mlcycle approve` (role, separation of duties)."""
    from mlcycle.monitoring import retraining
    from mlcycle.registry import aliases as registry
    from mlcycle.registry import governance

    client = registry.client_for(cfg)
    log = registry.PromotionLog(cfg.promotion_log_uri)
    candidate = registry.version_by_alias(client, cfg.model.name, registry.CHALLENGER)
    if candidate is None:
        return
    version = str(candidate.version)
    trained_by = (candidate.tags or {}).get(governance.TRAINED_BY_TAG)
    person = governance.current_principal()
    console.print(f"      v{version} passed its canary and waits for an approver (evidence: the run's "
                  f"`approval-request` artifact, the version's tags); trained by {trained_by}")  # fmt: skip
    console.print(f"        uv run mlcycle approve {version} --note …   # or: uv run mlcycle reject {version} --note …")
    console.print(f"      the demo answers as the person running it, {person}: approve")
    governance.decide(client, log, cfg.governance, cfg.model.name, version, person, True,
                      "canary evidence read: every step passed")  # fmt: skip
    retraining.resume_paused("rollout", {"version": version, "approve": True})


def _wait_for_retraining(console: Console, since: datetime, timeout: float, on_paused=None) -> str:
    """Follow the retraining runs the events created until they are all final; print their states.
    A rollout paused for its approval is handed to ``on_paused`` once."""
    from mlcycle.monitoring import retraining

    deadline, seen, decided = time.monotonic() + timeout, {}, False
    while time.monotonic() < deadline:
        if on_paused is not None and not decided and retraining.blocked_runs(None, "rollout"):
            on_paused()
            decided = True
        runs = _retrain_runs(since)
        for r in runs:
            state = r.state.name if r.state else "?"
            if seen.get(r.name) != state:
                seen[r.name] = state
                console.print(f"      retrain run {r.name} ({r.parameters.get('trigger')}): {state}")
        if runs and all(r.state and r.state.is_final() for r in runs):
            main = [r for r in runs if r.state.is_completed()]
            return ", ".join(f"{r.name} {r.state.name}" for r in main or runs)
        time.sleep(3)
    raise DemoFailed(
        f"retraining did not finish within {timeout:.0f}s: see the Prefect UI and data/run/prefect-worker.log"
    )


def _wait_for_pause(console: Console, since: datetime, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for r in _retrain_runs(since):
            if r.state and r.state.is_paused():
                return r
        time.sleep(2)
    raise DemoFailed("no retraining paused for a decision: see data/run/prefect-worker.log")


def _wait_final(run_id, timeout: float) -> str:
    from prefect import get_client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(run_id)
        if run.state and run.state.is_final():
            return f"{run.state.name}"
        time.sleep(2)
    return "still running"


def _print_retraining(cfg: ProjectConfig, console: Console, client, since: datetime) -> None:
    """What the retraining run did, from the records it left: its MLflow run and the alias moves."""
    import mlflow

    from mlcycle.registry import aliases as registry

    mlflow.set_tracking_uri(cfg.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id], "attributes.run_name = 'train'",
                              order_by=["attributes.start_time DESC"], max_results=1)  # fmt: skip
    if runs:
        run, m = runs[0], runs[0].data.metrics
        verdict = ("passed every gate" if run.data.tags.get("mlcycle.gates") == "passed"
                   else f"[red]rejected by {run.data.tags.get('mlcycle.failed_gates')}[/red]")  # fmt: skip
        rows = run.data.params.get("train_rows")
        console.print(f"      retrained on {rows} rows: ROC-AUC {m.get('test.roc_auc', 0):.3f} "
                      f"vs the champion's {m.get('champion.test.roc_auc', float('nan')):.3f} on the same recent "
                      f"window — {verdict}")  # fmt: skip
    for event in sorted(registry.PromotionLog(cfg.promotion_log_uri).history(cfg.model.name), key=lambda e: e.at):
        if event.at >= since:
            prefix = "" if event.alias == "traffic" else "v"
            before, after = (prefix + v if v else "-" for v in (event.from_version, event.to_version))
            console.print(f"      {event.at:%H:%M:%S} {event.alias}: {before} → {after} ({event.reason})")


def _summary(cfg: ProjectConfig, console: Console, client, prefect_url: str) -> None:
    from mlcycle.registry import aliases as registry
    from mlcycle.serving import prediction_store

    aliases = registry.aliases_of(client, cfg.model.name)
    versions = Table("version", "aliases", "ROC-AUC (test)", "trained on rows")
    for mv in sorted(registry.versions(client, cfg.model.name), key=lambda v: int(v.version)):
        run = client.get_run(mv.run_id)
        versions.add_row(f"v{mv.version}", aliases.get(str(mv.version), "-"),
                         f"{run.data.metrics.get('test.roc_auc', float('nan')):.3f}",
                         run.data.params.get("train_rows", "?"))  # fmt: skip
    console.print(versions)
    table = Table("what", "where")
    table.add_row(
        "Prefect UI (flow runs, artifacts, events)", f"make up → http://127.0.0.1:4200 (this run: {prefect_url})"
    )
    table.add_row(
        "MLflow UI (runs, registry, monitoring)", "make up → http://127.0.0.1:5000, or " + mlflow_ui_command(cfg)
    )
    table.add_row("Evidently reports", f"{cfg.monitoring_dir}/<time>/drift_report.html")
    table.add_row("model cards", str(cfg.data_path / "model_cards"))
    scale_log = f"table {prediction_store.TABLE} in PostgreSQL ({cfg.scale.database})"
    table.add_row("prediction log", scale_log if cfg.profile == "scale" else str(cfg.predictions_dir))
    table.add_row("alias history", "uv run mlcycle history")
    console.print(table)
