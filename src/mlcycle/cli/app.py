"""The ``mlcycle`` command line: every lifecycle step, and ``demo`` that runs them in order."""

from __future__ import annotations

import logging
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

import mlcycle  # noqa: F401  (switches telemetry off before the stack is imported)
from mlcycle.project.config import ConfigError, ProjectConfig, load_config

app = typer.Typer(
    help="mlcycle: data → validation → Feast features → training → registry → serving → monitoring.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Generate example data and validate tables against the contract.", no_args_is_help=True)
features_app = typer.Typer(help="Build, publish and read features (Feast).", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")

# Wider than the 80 columns rich assumes when the output is a pipe or a CI log.
# MLflow logs at INFO what it infers about the environment when saving a model: not news here.
logging.getLogger("mlflow").setLevel(logging.ERROR)
console = Console(highlight=False, width=None if sys.stdout.isatty() else 110)
err_console = Console(highlight=False, stderr=True)  # notes beside output meant for a pipe
ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="Project config file (default: ./mlcycle.yaml).")
]


def _config(path: Path | None) -> ProjectConfig:
    import os

    given = path or os.environ.get("MLCYCLE_CONFIG")
    file = Path(given) if given else Path.cwd() / "mlcycle.yaml"
    if not file.is_file():  # the defaults would run a project nobody made, writing data/ wherever we are
        where = f"{file} does not exist" if given else f"no mlcycle.yaml in {Path.cwd()}"
        console.print(
            f"{where}: not an mlcycle project. Make one from a table with `mlcycle init DIR --data TABLE "
            "--timestamp COL --label COL`, then run commands in DIR (or pass --config DIR/mlcycle.yaml)",
            style="red", markup=False, soft_wrap=True,
        )  # fmt: skip
        raise typer.Exit(2)
    try:
        return load_config(path)
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def _run_flow(cfg: ProjectConfig, module: str, function: str, what: str, **parameters: Any) -> Any:
    """Run one of the project's flows in this process; a failure prints the flow's own error (it
    says what failed and the fix) without a traceback and exits 1. Prefect has logged the details."""
    from mlcycle.flows import load_flow

    try:
        flow = load_flow(cfg.root, module, function)
        return flow(config=str(cfg.root / "mlcycle.yaml"), **parameters)
    except ModuleNotFoundError:
        raise  # a missing dependency: the console script names it (mlcycle.cli.main)
    except Exception as exc:
        console.print(f"{what} stopped: {exc}", style="red", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _fail_contract(exc: Exception) -> None:
    console.print(f"[red]{exc}[/red]")
    console.print("Nothing was written to the feature store. Fix the upstream data and run again.")
    raise typer.Exit(1)


def _overrides(pairs: list[str]) -> dict:
    """``key=value`` pairs (dotted keys nest: ``drift.start_day=60``), values read as YAML."""
    import yaml

    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            console.print(f"[red]--set {pair!r}: expected key=value, e.g. --set seed=7[/red]")
            raise typer.Exit(2)
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


@data_app.command("generate")
def data_generate(
    config: ConfigOption = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Generator parameter as key=value (dotted keys nest), over the config's data:."),
    ] = None,
) -> None:
    """Write example data with the project's own generator (``generator:`` in mlcycle.yaml).

    Its parameters are the project's own (the reference project's are in its mlcycle.yaml under data:),
    e.g. --set seed=7 --set drift.start_day=60 (deterministic for a seed)."""
    from mlcycle.features.pipeline import generate_data

    cfg = _config(config)
    t = time.perf_counter()
    try:
        summary = generate_data(cfg, _overrides(set_ or []))
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    console.print(f"{summary} (in {time.perf_counter() - t:.1f}s)")


@data_app.command("validate")
def data_validate(
    path: Annotated[
        Path | None, typer.Argument(help="A table file (parquet or CSV); default: the project's table.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Check a table against the project's data contract; exit 1 naming every broken check."""
    from mlcycle.data.validation import load_table, validate_table

    cfg = _config(config)
    report = validate_table(load_table(cfg, path), cfg)
    console.print(report.summary(), style="green" if report.ok else "red")
    if not report.ok:
        raise typer.Exit(1)


@features_app.command("build")
def features_build(
    config: ConfigOption = None,
    table: Annotated[Path | None, typer.Option(help="A new table file (default: table.path of the config).")] = None,
) -> None:
    """Validate the project's table, then write the feature tables (parquet) Feast reads."""
    from mlcycle.data.validation import ContractViolation
    from mlcycle.features.pipeline import build_features

    cfg = _config(config)
    try:
        build = build_features(cfg, table)
    except ContractViolation as exc:
        _fail_contract(exc)
    for name, path in build.tables.items():
        console.print(f"{name}: {build.rows[name]:,} rows → {path}")


@features_app.command("publish")
def features_publish(
    config: ConfigOption = None,
    fresh: Annotated[
        bool,
        typer.Option(
            "--fresh",
            help="Reload the online store from scratch: after the feature tables were rebuilt, or to refill "
            "a Redis that restarted empty (only this project's rows are deleted).",
        ),
    ] = False,
    end: Annotated[
        datetime | None,
        typer.Option(help="Load feature rows up to this time (UTC; default now): e.g. a replay's start."),
    ] = None,
) -> None:
    """Register the feature repo (feast apply) and load the online store (materialize-incremental)."""
    from mlcycle.features.pipeline import publish_features

    cfg = _config(config)
    end = publish_features(cfg, end=end, fresh=fresh)
    console.print(f"applied {cfg.feature_repo_path} and materialized up to {end:%Y-%m-%d %H:%M:%S} UTC")


@features_app.command("training-set")
def features_training_set(
    out: Annotated[Path | None, typer.Option(help="Parquet file (default data/training_set.parquet).")] = None,
    config: ConfigOption = None,
) -> None:
    """Build the point-in-time training set of every matured labelled event."""
    from mlcycle.features.pipeline import build_training_set
    from mlcycle.features.store import open_project_store, plan_for

    cfg = _config(config)
    t = time.perf_counter()
    frame = build_training_set(cfg)
    out = out or cfg.data_path / "training_set.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out, index=False)
    plan = plan_for(open_project_store(cfg), cfg.features.feature_service)
    console.print(
        f"{len(frame):,} rows × {len(plan.model_features)} features, label mean "
        f"{frame[cfg.table.label].mean():.4g}, in {time.perf_counter() - t:.1f}s → {out}"
    )


@features_app.command("online")
def features_online(
    values: Annotated[
        list[str],
        typer.Argument(help="The request as name=value pairs: every entity key and request field (see /docs)."),
    ],
    config: ConfigOption = None,
) -> None:
    """Show the online feature vector the model would get for one request now, e.g.
    ``mlcycle features online customer_id=42 plan=basic monthly_fee=30``."""
    from mlcycle.features.store import REQUEST_TIME, online_vector, open_project_store, plan_for

    cfg = _config(config)
    fs = open_project_store(cfg)
    plan = plan_for(fs, cfg.features.feature_service)
    given = _overrides(values)
    missing = [k for k in (*plan.join_keys, *plan.request_fields) if k != REQUEST_TIME and k not in given]
    if missing:
        console.print(f"[red]missing: {', '.join(missing)} (give each as name=value)[/red]")
        raise typer.Exit(2)
    keys = {k: given[k] for k in plan.join_keys}
    request = {k: given[k] for k in plan.request_fields if k != REQUEST_TIME}
    row = online_vector(fs, [keys], [request], cfg.features.feature_service).iloc[0]
    table = Table("feature", "value")
    for name in plan.model_features:
        table.add_row(name, str(row[name]))
    console.print(table)
    if row["features_missing"]:
        console.print(f"features_missing: {', '.join(row['features_missing'])}")


@app.command()
def demo(
    config: ConfigOption = None,
    requests: Annotated[int, typer.Option(help="Live requests sent before the first monitoring check.")] = 1500,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Generator parameter as key=value, over the config's data:.")
    ] = None,
) -> None:
    """Run the project's narrated story (``demo:`` in mlcycle.yaml). The reference project's: data with
    injected drift → v1 champion → service + traffic → monitoring → event-triggered retraining →
    canary → promotion, then a broken-upstream day that retraining refuses. Starts (and stops) its
    own Prefect server, worker and scoring service; 3–8 minutes on 2 cores."""
    import warnings

    from mlcycle.data.validation import ContractViolation
    from mlcycle.project.hooks import ProjectHookError, project_object

    # Deprecation notices of the stack's own dependencies (numpy.core in Evidently, litestar) are
    # not the demo's news.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*deprecated.*")
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="numpy")

    cfg = _config(config)
    if not cfg.demo:
        console.print("[red]this project names no story (demo: 'module:function' in mlcycle.yaml)[/red]")
        raise typer.Exit(2)
    if set_:
        cfg.data = {**cfg.data, **_overrides(set_)}
    try:
        story = project_object(cfg, cfg.demo)
    except ProjectHookError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    try:
        story(cfg, console, requests)
    except ContractViolation as exc:
        _fail_contract(exc)
    except RuntimeError as exc:  # the story's own failure (DemoFailed is one): said, not a traceback
        console.print(f"[red]demo stopped: {exc}[/red]")
        raise typer.Exit(1) from None


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Project directory to create (absent or empty unless --force).")],
    data: Annotated[Path, typer.Option("--data", help="The table: .parquet or .csv.")],
    timestamp: Annotated[str, typer.Option(help="Column: when each event happened.")],
    label: Annotated[str, typer.Option(help="Column: what the model predicts.")],
    entity: Annotated[
        list[str] | None,
        typer.Option("--entity", help="Entity key (repeatable); none: every feature comes in the request."),
    ] = None,
    label_delay: Annotated[
        str | None, typer.Option(help="How long after its event a label is known, e.g. 30d.")
    ] = None,
    label_available_at: Annotated[str | None, typer.Option(help="Column: when each row's label became known.")] = None,
    task: Annotated[str, typer.Option(help="classification (binary) or regression.")] = "classification",
    protected: Annotated[str | None, typer.Option(help="Column: protected attribute for the fairness gate.")] = None,
    event_id: Annotated[str | None, typer.Option(help="Column: the row's id (default: a unique *_id column).")] = None,
    name: Annotated[str | None, typer.Option(help="Project name (default: the directory's name).")] = None,
    force: Annotated[bool, typer.Option(help="Write into a directory that holds files.")] = False,
) -> None:
    """Make a runnable project from a table: data contract, Feast repo, config, prefect.yaml, README.

    Every command then works in that directory: features build|publish, train, serve, replay,
    monitor, retrain, batch-score, rollout, history, reproduce, prefect deploy --all, feast apply."""
    from mlcycle.project.contract_inference import TableError
    from mlcycle.project.scaffold import InitError, init_project

    try:
        r = init_project(directory, data, timestamp, label, entities=entity or (), label_delay=label_delay,
                         label_available_at=label_available_at, task=task, protected=protected,
                         event_id=event_id, name=name, force=force)  # fmt: skip
    except (TableError, InitError) as exc:
        console.print(str(exc), style="red", markup=False, soft_wrap=True)
        console.print("Nothing was written.")
        raise typer.Exit(2) from None
    console.print(f"project {r.project} in {r.directory}", style="green", markup=False)
    console.print(f"  request fields: {', '.join(r.request_fields) or 'none'}", markup=False, soft_wrap=True)
    console.print(f"  model inputs ({len(r.model_features)}): {', '.join(r.model_features)}", markup=False,
                  soft_wrap=True)  # fmt: skip
    for col, why in r.left_out.items():
        console.print(f"  left out {col}: {why}", markup=False, soft_wrap=True)
    for note in r.notes:
        console.print(f"  - {note}", markup=False, soft_wrap=True)
    console.print(f"next: cd {r.directory} && mlcycle features build && mlcycle features publish && mlcycle train",
                  markup=False, soft_wrap=True)  # fmt: skip


@app.command()
def replay(
    since: Annotated[str, typer.Option(help="Rows with event time at or after this (date or ISO time; UTC).")],
    until: Annotated[str | None, typer.Option(help="...and before this (exclusive).")] = None,
    rate: Annotated[float | None, typer.Option(help="Requests per second (default: as fast as answered).")] = None,
    batch: Annotated[int, typer.Option(min=1, max=1000, help="Rows per request (>1: /predict_batch).")] = 1,
    url: Annotated[
        str | None,
        typer.Option(help="The scoring service (default: the one `mlcycle serve` or `up` runs for this project)."),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Send the table's rows from --since on to the running service as live traffic, each at its own
    event time (the prediction log and monitoring then run on the table's calendar). The API key, if
    the service needs one, comes from MLCYCLE_API_KEY (never an argument: ps shows arguments)."""
    import os

    from mlcycle.ops.stack import running_url
    from mlcycle.serving.replay import ReplayError
    from mlcycle.serving.replay import replay as send

    cfg = _config(config)
    url = url or running_url(cfg)
    if url is None:
        console.print(
            f"no scoring service runs for the project in {cfg.root}: start one with `mlcycle serve` (another "
            "terminal) or `mlcycle up`, or name a running one with --url",
            style="red", markup=False, soft_wrap=True,
        )  # fmt: skip
        raise typer.Exit(2)
    try:
        result = send(cfg, url, since, until, rate=rate, batch=batch, api_key=os.environ.get("MLCYCLE_API_KEY"))
    except ReplayError as exc:
        console.print(str(exc), style="red", markup=False, soft_wrap=True)
        raise typer.Exit(2) from None
    console.print(result.summary(), markup=False, soft_wrap=True)
    if result.stopped or result.ok == 0:
        raise typer.Exit(1)


@app.command()
def train(
    config: ConfigOption = None,
    as_of: Annotated[datetime | None, typer.Option(help="Train as if it were this time (labels known then).")] = None,
) -> None:
    """Run the Prefect flow `train`: contract → training set → checks → model (the configured flavor) → gates →
    registry."""

    cfg = _config(config)
    result = _run_flow(cfg, "training", "train", "training", as_of=as_of)
    _print_training_result(cfg, result)
    if not result["passed"]:
        raise typer.Exit(1)


def _print_training_result(cfg: ProjectConfig, result: dict) -> None:
    from mlcycle.cli.console import print_training

    print_training(console, result, indent="")
    console.print(f"MLflow run {result['run_id']} — browse with: {_mlflow_ui_command(cfg)}")


def _mlflow_ui_command(cfg: ProjectConfig) -> str:
    """Printed on the console: without the database password (profile scale puts one in the URI)."""
    from mlcycle.cli.console import mlflow_ui_command
    from mlcycle.settings import redact

    return redact(mlflow_ui_command(cfg))


@app.command()
def models(config: ConfigOption = None) -> None:
    """Registered versions with their aliases, key metrics and gate results."""
    from mlcycle.registry import aliases as registry

    cfg = _config(config)
    client = registry.client_for(cfg)
    aliases = registry.aliases_of(client, cfg.model.name)
    metrics = ("rmse", "mae") if cfg.task == "regression" else ("roc_auc", "pr_auc", "recall")
    names = {"rmse": "RMSE", "mae": "MAE", "roc_auc": "ROC-AUC", "pr_auc": "PR-AUC", "recall": "recall"}
    table = Table("version", "aliases", "created (UTC)", *(names[k] for k in metrics), "p99 ms", "gates", "data")
    count = 0
    for mv in registry.versions(client, cfg.model.name):
        s = registry.run_summary(client, mv)
        count += 1
        table.add_row(
            s["version"],
            aliases.get(s["version"], ""),
            f"{s['created']:%Y-%m-%d %H:%M}",
            *(f"{s[k]:.4g}" if s[k] is not None else "n/a" for k in metrics),
            f"{s['p99_ms']:.2f}" if s["p99_ms"] is not None else "n/a",
            s["gates"],
            s["data_hash"],
        )
    if not count:
        console.print(f"no registered versions of {cfg.model.name!r} yet: run `mlcycle train`")
        return
    console.print(table)


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="Registered version to make champion.")],
    reason: Annotated[str, typer.Option(help="Why: recorded in the promotion log.")] = "manual promotion",
    config: ConfigOption = None,
) -> None:
    """Point `champion` at VERSION (recorded in the promotion log). Needs the approver role; with
    rollout.require_approval, an approval of VERSION as it is now; never a rejected version."""
    from mlflow.exceptions import MlflowException

    from mlcycle.registry import aliases as registry
    from mlcycle.registry import governance

    cfg = _config(config)
    try:
        if gate := _gate():  # the gate checks who we are and the rules, and moves the alias
            _print_moves(gate.promote(version, reason))
            return
        client = registry.client_for(cfg)
        log = registry.PromotionLog(cfg.promotion_log_uri)
        principal = governance.current_principal()
        events = governance.promote(client, log, cfg.governance, cfg.model.name, version, reason, principal,
                                    cfg.rollout.require_approval)  # fmt: skip
    except governance.Refused as exc:
        console.print(str(exc), style="red", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except MlflowException as exc:
        console.print(f"[red]cannot promote {cfg.model.name} v{version}: {exc.message}[/red]")
        raise typer.Exit(1) from None
    _print_moves(events)


def _gate() -> Any:
    """The registry gate this process must go through (``MLCYCLE_REGISTRY_GATE_URL``: profile scale
    with an authenticating MLflow server), as the MLflow user of MLFLOW_TRACKING_USERNAME; None
    where the registry is reached directly (profile local: the principal is the OS user)."""
    import os

    from mlcycle.registry import gate

    return gate.GateClient.from_env() if os.environ.get(gate.GATE_URL_ENV) else None


def _print_moves(events: list[Any]) -> None:
    for e in events:  # PromotionEvents, or the gate's answer ({alias, from, to, reason, …})
        e = e if isinstance(e, dict) else {**e.__dict__, "from": e.from_version, "to": e.to_version}
        line = f"{e['alias']}: v{e['from'] or '-'} → v{e['to'] or '-'} ({e['reason']})"
        console.print(line, markup=False, soft_wrap=True)


@app.command()
def history(
    limit: Annotated[int, typer.Option(help="Most recent entries to show.")] = 50,
    config: ConfigOption = None,
) -> None:
    """The append-only promotion log: every alias move, when, by whom and why."""
    from mlcycle.registry import aliases as registry

    cfg = _config(config)
    events = registry.PromotionLog(cfg.promotion_log_uri).history(cfg.model.name, limit)
    if not events:
        console.print("no alias has moved yet")
        return
    table = Table("when (UTC)", "alias", "action", "from", "to", "who", "why")
    for e in events:
        table.add_row(
            f"{e.at:%Y-%m-%d %H:%M:%S}", e.alias, e.action, e.from_version or "-", e.to_version or "-", e.actor,
            e.reason,
        )  # fmt: skip
    console.print(table)


@app.command()
def audit(
    version: Annotated[
        str | None,
        typer.Argument(help="A version: who trained it on what, its gates and canary, who decided, every move."),
    ] = None,
    verify: Annotated[bool, typer.Option(help="Check the promotion log's hash chain; exit 1 if broken.")] = False,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    config: ConfigOption = None,
) -> None:
    """Who did what, from the registry and the promotion log. Without VERSION: the whole log with
    its hash chain (each row carries the hash of the one before, so an edited, deleted or reordered
    row shows; `--verify` names the first). With VERSION: that version's whole record."""
    import json

    from mlcycle.registry import aliases as registry

    cfg = _config(config)
    log = registry.PromotionLog(cfg.promotion_log_uri)
    if verify:
        result = log.verify()
        if as_json:
            typer.echo(json.dumps(result.as_dict(), indent=2))
        elif result.ok:
            console.print(f"promotion log intact: {result.checked} rows checked, head {result.head[:12]}")
            for note in result.notes:
                console.print(f"note: {note}", markup=False)
        else:
            console.print(f"promotion log broken at {result.reason}", style="red", markup=False, soft_wrap=True)
        raise typer.Exit(0 if result.ok else 1)
    if version is not None:
        _audit_version(cfg, log, version, as_json)
        return
    rows = log.rows(cfg.model.name)
    if as_json:
        out = [{"id": r.id, **r.content, "prev_hash": r.prev_hash, "row_hash": r.row_hash} for r in rows]
        typer.echo(json.dumps(out, indent=2, default=str))
        return
    if not rows:
        console.print("no alias has moved yet")
        return
    table = Table("id", "when (UTC)", "alias", "action", "from", "to", "who", "why", "prev", "hash")
    for r in rows:
        c = r.content
        table.add_row(
            str(r.id), f"{c['at']:%Y-%m-%d %H:%M:%S}", c["alias"], c["action"] or "legacy", c["from_version"] or "-",
            c["to_version"] or "-", c["actor"], c["reason"], (r.prev_hash or "-")[:12], (r.row_hash or "-")[:12],
        )  # fmt: skip
    console.print(table)


def _audit_version(cfg: ProjectConfig, log: Any, version: str, as_json: bool) -> None:
    import json

    from mlcycle.registry import aliases as registry
    from mlcycle.registry import audit as audits

    try:
        record = audits.version_audit(registry.client_for(cfg), log, cfg.model.name, version)
    except audits.UnknownVersion as exc:
        console.print(f"{exc}: `mlcycle history` lists the versions that moved", style="red", markup=False)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(record.to_dict(), indent=2, default=str))
        return
    a = record.approval
    verified = {True: "authenticated", False: "unauthenticated", None: "-"}[record.authenticated]
    facts = Table("", f"{record.model} v{record.version}", show_header=True)
    for key, value in (
        ("registered", record.created), ("run", record.run_id), ("trained by", record.trained_by),
        ("triggered by", record.triggered_by), ("last changed by", record.last_changed_by),
        ("data hash", record.data_hash), ("git commit", record.git_commit),
        ("aliases now", ", ".join(record.aliases) or "none"),
        ("approval", f"{a.state}" + (f" by {a.by} ({verified}) at {a.at}: {a.note}" if a.by else "")
         + ("" if a.current or a.state != "approved" else " — VOID: the version changed since")),
    ):  # fmt: skip
        facts.add_row(key, str(value) if value is not None else "-")
    console.print(facts)
    gates = Table("gate", "status", "measured", title=f"gates ({record.gate_source})")
    for g in record.gates:
        gates.add_row(g["name"], g["status"], g["line"].split(":", 1)[-1].strip())
    console.print(gates)
    if record.canary:
        canary = Table("step", "state", "checks", title="canary")
        for step in record.canary:
            name = "shadow" if step.get("percent", 0) <= 0 else f"{step['percent']:g}%"
            canary.add_row(name, str(step.get("state")), "\n".join(step.get("checks", [])))
        console.print(canary)
    else:
        console.print("canary: none recorded for this version")
    moves = Table("id", "when (UTC)", "alias", "action", "from", "to", "who", "why", title="promotion log")
    for e in record.events:
        moves.add_row(str(e["id"]), str(e["at"])[:19], e["alias"], e["action"] or "move", e["from_version"] or "-",
                      e["to_version"] or "-", e["actor"], e["reason"])  # fmt: skip
    console.print(moves)
    chain = record.chain
    state = "intact" if chain["ok"] else f"BROKEN at {chain['reason']}"
    console.print(f"promotion log {state} ({chain['rows_checked']} rows checked)", markup=False)


@app.command()
def reproduce(
    version: Annotated[str, typer.Argument(help="Registered version to retrain.")],
    config: ConfigOption = None,
) -> None:
    """Retrain VERSION from its recorded data snapshot, config and seed; show the metrics match."""
    from mlcycle.registry import tracking

    cfg = _config(config)
    try:
        result = tracking.reproduce(cfg, version)
    except tracking.SnapshotExpired as exc:
        console.print(str(exc), style="red", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    table = Table("metric", "recorded", "reproduced", "")
    for name, recorded, again in result.rows:
        if name.startswith("test.") or name == "threshold":
            same = recorded == again or (recorded != recorded and again != again)
            table.add_row(name, f"{recorded:.6f}", f"{again:.6f}", "=" if same else "[red]≠[/red]")
    console.print(table)
    console.print(
        f"data snapshot {result.data_hash[:12]}… {'matches' if result.data_hash_matches else '[red]DIFFERS[/red]'}; "
        f"{len(result.rows)} metrics compared (slices included): "
        + ("[green]identical[/green]" if result.identical else "[red]different[/red]")
    )
    if not result.identical:
        raise typer.Exit(1)


rollout_app = typer.Typer(help="Traffic between champion and challenger (shadow, canary, A/B).", no_args_is_help=True)
app.add_typer(rollout_app, name="rollout")


@rollout_app.command("status")
def rollout_status(config: ConfigOption = None) -> None:
    """Aliases, the traffic policy, the last traffic/alias moves and the latest canary analysis."""
    from mlcycle.registry import aliases as registry
    from mlcycle.serving import canary, rollout
    from mlcycle.serving.prediction_store import read_logged_predictions

    cfg = _config(config)
    client = registry.client_for(cfg)
    policy = rollout.read_policy(client, cfg.model.name)
    aliases = {
        a: registry.version_by_alias(client, cfg.model.name, a) for a in (registry.CHAMPION, registry.CHALLENGER)
    }
    for alias, mv in aliases.items():
        console.print(f"{alias:<11} {'v' + str(mv.version) if mv else '-'}")
    split = f" ({policy.percent:g}% of routing keys on the challenger)" if policy.mode in ("canary", "ab") else ""
    console.print(f"traffic     {policy.mode}{split}; set by {policy.updated_by or '-'}: {policy.reason or '-'}")
    champion, challenger = aliases[registry.CHAMPION], aliases[registry.CHALLENGER]
    if policy.mode == "champion-only" or champion is None or challenger is None:
        # Rows a replica logged just after the change (before its next refresh) are not a canary.
        console.print("\nno canary running: nothing to analyse")
        return
    # The window starts at the current policy's change and holds only the two aliased versions' rows.
    versions = {"challenger_version": str(challenger.version), "champion_version": str(champion.version)}
    predictions = read_logged_predictions(cfg, policy.updated_at)
    verdict = canary.analyze(predictions, cfg.canary, **versions, task=cfg.task)
    console.print(
        f"\nanalysis of v{challenger.version} against v{champion.version} since the last traffic change "
        f"({policy.updated_at:%Y-%m-%d %H:%M:%S} UTC; labels not attached here, see the rollout flow's report):"
    )
    if cfg.privacy.capture.rate < 1:
        console.print(f"  (read from a {cfg.privacy.capture.rate:.0%} capture sample of the requests: the counts are "
                      "of logged requests)", markup=False)  # fmt: skip
    if not canary.enough_data(verdict):
        counts = ", ".join(f"{c.name.removeprefix('requests_')} {c.value:.0f}" for c in verdict.checks)
        console.print(f"  not enough requests for a verdict yet ({counts}; need {cfg.canary.min_requests} each)")
    for check in verdict.checks if canary.enough_data(verdict) else ():
        console.print(f"  {check.line()}")
    if policy.mode == "ab":
        _ab_look(cfg, policy, predictions, str(champion.version), str(challenger.version))


def _ab_look(cfg: Any, policy: Any, predictions: Any, champion: str, challenger: str) -> None:
    """The A/B's sequential test: this analysis is a look (recorded in data/rollout/ab-looks.json)."""
    from datetime import UTC

    from mlcycle.monitoring import ab
    from mlcycle.serving import canary

    spec = cfg.canary
    fixed = canary.ab_report(predictions, spec, challenger_version=challenger, champion_version=champion)
    planned = spec.ab_planned_per_arm or fixed.n_required_per_arm
    metric = spec.ab_metric
    if metric == ab.FLAG_RATE:
        arms = ab.arm_values(predictions, champion, challenger)
    else:
        from mlcycle.monitoring.job import kpi_outcomes

        arms = ab.arm_values(predictions, champion, challenger, metric, outcomes=kpi_outcomes(cfg),
                             metric_spec=cfg.kpis.metrics[metric], as_of=datetime.now(UTC))  # fmt: skip
    key = ab.ab_key(cfg.model.name, policy.updated_at, champion, challenger, metric)
    result = ab.look(ab.looks_path(cfg), key, *arms, metric=metric, planned_per_arm=planned, alpha=spec.ab_alpha)
    console.print(f"  A/B on {metric}: {len(arms[0]):,} champion / {len(arms[1]):,} challenger values, planned "
                  f"{planned:,} per arm", markup=False)  # fmt: skip
    console.print(f"  {result.line()}", markup=False, soft_wrap=True)
    for i, taken in enumerate(result.looks, 1):
        console.print(f"    look {i}: n {taken.n_champion:,} / {taken.n_challenger:,}, difference "
                      f"{taken.difference:+.4g}, z {taken.z:+.2f}, bound ±{taken.bound:.2f}", markup=False)  # fmt: skip


@rollout_app.command("set")
def rollout_set(
    mode: Annotated[str, typer.Argument(help="champion-only | shadow | canary | ab")],
    percent: Annotated[float, typer.Option(help="Share of routing keys on the challenger (canary, ab).")] = 0.0,
    reason: Annotated[str, typer.Option(help="Why: recorded in the promotion log.")] = "manual traffic change",
    config: ConfigOption = None,
) -> None:
    """Change the traffic policy; running services obey within seconds."""
    from pydantic import ValidationError

    from mlcycle.registry import aliases as registry
    from mlcycle.serving import rollout

    cfg = _config(config)
    try:
        policy = rollout.RolloutPolicy(mode=mode, percent=percent)
    except ValidationError as exc:
        console.print(f"[red]{exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}[/red]")
        raise typer.Exit(2) from None
    client = registry.client_for(cfg)
    rollout.write_policy(client, registry.PromotionLog(cfg.promotion_log_uri), cfg.model.name, policy, reason)
    console.print(f"traffic: {policy.label()}")


@rollout_app.command("run")
def rollout_run(
    wait_seconds: Annotated[float, typer.Option(help="Minimum wait per canary step.")] = 20.0,
    max_wait_seconds: Annotated[float, typer.Option(help="Give up waiting for traffic after this.")] = 600.0,
    config: ConfigOption = None,
) -> None:
    """Run the Prefect flow `rollout`: canary the challenger 5→25→50% → promote, or roll back."""

    cfg = _config(config)
    result = _run_flow(cfg, "rollout", "rollout_flow", "rollout", wait_seconds=wait_seconds,
                       max_wait_seconds=max_wait_seconds)  # fmt: skip
    from mlcycle.cli.console import print_rollout

    print_rollout(console, result, indent="")


@app.command()
def rollback(
    reason: Annotated[str, typer.Option(help="Why: recorded in the promotion log.")] = "manual rollback",
    config: ConfigOption = None,
) -> None:
    """Champion back to the champion before it (v3 → v2 → v1, from the promotion log), traffic to
    champion-only, challenger cleared; services obey within seconds. Needs the approver or operator
    role; recorded under the principal you are. Exit 1 when there is nothing left to roll back to."""
    from mlcycle.registry import aliases as registry
    from mlcycle.registry import governance
    from mlcycle.serving import rollout

    cfg = _config(config)
    if gate := _gate():
        try:
            moves = gate.rollback(reason)
        except governance.Refused as exc:
            console.print(str(exc), style="red", markup=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except RuntimeError as exc:  # the gate's 409: nothing to roll back to
            console.print(f"not rolled back: {exc}", style="red", markup=False, soft_wrap=True)
            raise typer.Exit(1) from None
        console.print("traffic: champion-only")
        _print_moves(moves)
        return
    client = registry.client_for(cfg)
    log = registry.PromotionLog(cfg.promotion_log_uri)
    principal = governance.current_principal()
    try:
        governance.require_role(cfg.governance, principal, ("approver", "operator"), "roll back")
    except governance.Refused as exc:
        governance.record_refusal(log, cfg.model.name, None, principal, exc)
        console.print(str(exc), style="red", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    try:
        events = rollout.rollback(client, log, cfg.model.name, reason, str(principal))
    except rollout.NothingToRollBack as exc:
        console.print(f"[red]not rolled back: {exc}[/red]")
        raise typer.Exit(1) from None
    console.print("traffic: champion-only")
    for e in events:
        console.print(f"{e.alias}: v{e.from_version or '-'} → v{e.to_version or '-'} (by {e.actor})", markup=False)


@app.command("batch-score")
def batch_score(
    day: Annotated[datetime | None, typer.Option(help="UTC day to score (default: yesterday).")] = None,
    config: ConfigOption = None,
) -> None:
    """Run the Prefect flow `batch_score`: score a day's events with the champion."""

    cfg = _config(config)
    result = _run_flow(cfg, "batch_score", "batch_score", "batch scoring", day=day.date() if day else None)
    console.print(f"{result['rows']:,} events of {result['day']} scored by v{result['model_version']} → "
                  f"{result['path']}")  # fmt: skip


@app.command()
def monitor(
    window_days: Annotated[float | None, typer.Option(help="Current window: the last N days of predictions.")] = None,
    since: Annotated[datetime | None, typer.Option(help="Current window from this time (UTC) instead.")] = None,
    until: Annotated[
        datetime | None, typer.Option(help="End of the window (UTC; default: the latest event time in the log).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Run the Prefect flow `monitor`: drift, score drift and matured-label quality of the champion.

    The window is the latest one of the prediction log by event time (a replayed table from 2019 is
    monitored as 2019; live traffic's latest event is now), unless --since/--until say otherwise.

    Writes a summary and an Evidently report under data/monitoring/, logs an MLflow run and emits
    `mlcycle.drift.detected` / `mlcycle.performance.decayed` events (which start the `retrain`
    deployment when a Prefect server with the deployments runs: `make up`)."""

    cfg = _config(config)
    result = _run_flow(cfg, "monitoring", "monitor", "monitoring", as_of=until, window_days=window_days, since=since)
    console.print(Path(result["summary_path"]).with_suffix(".md").read_text())
    console.print(f"\nsummary {result['summary_path']}\nreport  {result['report_html']}")
    console.print(f"events: {', '.join(result['events']) or 'none'}")


@app.command()
def retrain(
    summary: Annotated[str | None, typer.Option(help="summary.json of the monitoring check that asks for it.")] = None,
    rollout: Annotated[bool, typer.Option(help="Canary a new challenger afterwards.")] = True,
    ignore_cooldown: Annotated[
        bool, typer.Option(help="Retrain even within retraining.cooldown_hours of the last one (never two at once).")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Run the Prefect flow `retrain` by hand: guard → train → gates → challenger → canary.

    Retraining is single-flight (one at a time across events, schedules and hosts) with a cooldown;
    a skipped run says why. If the data looks broken the flow pauses for `mlcycle approve RUN` /
    `mlcycle reject RUN` (needs a Prefect server: `make up`)."""

    cfg = _config(config)
    result = _run_flow(cfg, "retraining", "retrain", "retraining", trigger="manual", summary_path=summary,
                       rollout=rollout, ignore_cooldown=ignore_cooldown)  # fmt: skip
    console.print(f"retraining: {result['outcome']}" + (f" ({result['reason']})" if result.get("reason") else ""))


token_app = typer.Typer(help="Per-principal tokens for the service's admin API (/admin/traffic, /admin/rollback).")
app.add_typer(token_app, name="token")


@token_app.command("issue")
def token_issue(
    principal: Annotated[str, typer.Argument(help="Who the token is for: the name the promotion log records.")],
    config: ConfigOption = None,
) -> None:
    """Issue a token (replacing the principal's old one). Shown once; the service keeps its digest.
    What it may do is the principal's role in governance.roles (operator: traffic and rollback)."""
    from mlcycle.serving import tokens

    cfg = _config(config)
    path = tokens.tokens_file(cfg.data_path)
    try:
        token = tokens.issue(path, principal)
    except tokens.TokenError as exc:
        console.print(str(exc), style="red", markup=False)
        raise typer.Exit(2) from None
    typer.echo(token)
    err_console.print(f"admin token for {principal}: shown once, kept as a digest in {path}; send it as "
                      "the x-admin-token header. `mlcycle token revoke` ends it.", markup=False)  # fmt: skip


@token_app.command("revoke")
def token_revoke(principal: Annotated[str, typer.Argument(help="Whose token to end.")], config: ConfigOption = None):
    """End a principal's token: the service refuses it from its next request."""
    from mlcycle.serving import tokens

    cfg = _config(config)
    try:
        tokens.revoke(tokens.tokens_file(cfg.data_path), principal)
    except tokens.TokenError as exc:
        console.print(str(exc), style="red", markup=False)
        raise typer.Exit(1) from None
    console.print(f"revoked the admin token of {principal}", markup=False)


@token_app.command("list")
def token_list(config: ConfigOption = None) -> None:
    """The principals holding an admin token (never the tokens)."""
    from mlcycle.serving import tokens

    cfg = _config(config)
    path = tokens.tokens_file(cfg.data_path)
    held = sorted(tokens.read(path))
    console.print("\n".join(held) if held else f"no admin tokens in {path}", markup=False)


def _decide_version(cfg: ProjectConfig, version: str, approve: bool, note: str) -> None:
    """A person's decision on the candidate: checked and recorded in the registry (who is the
    principal this process runs as, never a typed name), then any rollout waiting for it is woken."""
    from mlcycle.monitoring import retraining
    from mlcycle.ops import stack
    from mlcycle.registry import aliases as registry
    from mlcycle.registry import governance

    try:
        if gate := _gate():  # the gate verifies the caller against the MLflow server and decides
            principal = gate.whoami()
            line = gate.approve(version, note) if approve else gate.reject(version, note)
        else:
            principal = governance.current_principal()
            client = registry.client_for(cfg)
            log = registry.PromotionLog(cfg.promotion_log_uri)
            line = governance.decide(client, log, cfg.governance, cfg.model.name, version, principal, approve,
                                     note).line()  # fmt: skip
    except governance.Refused as exc:
        console.print(str(exc), style="red", markup=False, soft_wrap=True)
        console.print("Nothing moved; the refusal is in the audit log (mlcycle history).", markup=False)
        raise typer.Exit(1) from None
    console.print(line, markup=False, soft_wrap=True)
    if not principal.authenticated:
        console.print(f"recorded as {principal}: nothing here verified who you are (no authenticating server)",
                      markup=False, soft_wrap=True)  # fmt: skip
    api = stack.api_url(cfg)
    woken: list[str] = []
    if api:
        try:
            woken = retraining.resume_paused("rollout", {"version": version, "approve": approve}, api)
        except Exception as exc:  # the decision stands in the registry; a rollout re-reads it when woken
            console.print(f"could not wake a waiting rollout at {api}: {exc}", markup=False, soft_wrap=True)
    if woken:
        console.print(f"rollout run {', '.join(woken)} resumes", markup=False)
    elif approve:
        console.print(f"no rollout waits for it; `mlcycle promote {version}` makes it champion", markup=False)


def _decide(run: str, approve: bool, who: str | None, note: str, config: Path | None) -> None:
    import getpass

    from mlcycle.monitoring import retraining
    from mlcycle.ops import stack

    cfg = _config(config)
    if run.isdigit():  # a model version, not a flow-run id
        if who:
            console.print("--who does not apply to a model version: the decision is recorded under the principal "
                          "you are (MLflow login, else the OS user)", style="red", markup=False)  # fmt: skip
            raise typer.Exit(2)
        _decide_version(cfg, run, approve, note)
        return
    try:
        retraining.decide(run, approve, who or f"cli:{getpass.getuser()}", note, stack.api_url(cfg))
    except Exception as exc:
        console.print(f"[red]could not resume {run}: {exc}[/red]")
        console.print("List the runs that wait for a decision with: mlcycle blocked")
        raise typer.Exit(1) from None
    console.print(f"{'approved' if approve else 'rejected'}: retraining run {run} resumes")


WhoOption = Annotated[str | None, typer.Option(help="Who decides (recorded in the run's log).")]


DecisionTarget = Annotated[
    str,
    typer.Argument(help="A model VERSION (the candidate, after its canary), or the flow-run id of a blocked "
                        "retraining (see `mlcycle blocked`)."),
]  # fmt: skip


@app.command()
def approve(
    target: DecisionTarget,
    who: WhoOption = None,
    note: Annotated[str, typer.Option(help="Why: recorded with the decision.")] = "",
    config: ConfigOption = None,
) -> None:
    """Approve the candidate VERSION (it may become champion), or let a blocked retraining go ahead.

    A version's approval needs the approver role, and not to have trained, triggered or last changed
    it (separation of duties); it is recorded on the version and in the promotion log, and wakes the
    rollout waiting for it."""
    _decide(target, True, who, note, config)


@app.command()
def reject(
    target: DecisionTarget,
    who: WhoOption = None,
    note: Annotated[str, typer.Option(help="Why: recorded with the decision.")] = "",
    config: ConfigOption = None,
) -> None:
    """Reject the candidate VERSION (it loses `challenger` and never serves), or stop a blocked retraining."""
    _decide(target, False, who, note, config)


@app.command()
def blocked(config: ConfigOption = None) -> None:
    """Retraining runs paused for a person's decision."""

    from mlcycle.monitoring import retraining
    from mlcycle.ops import stack

    cfg = _config(config)
    runs = retraining.blocked_runs(stack.api_url(cfg))
    if not runs:
        console.print("no retraining waits for a decision")
    for r in runs:
        console.print(f"{r['id']}  {r['name']}  paused since {r['since']}")


@app.command()
def serve(
    port: Annotated[int, typer.Option(help="HTTP port.")] = 3000,
    host: Annotated[
        str,
        typer.Option(help="Interface to listen on. Anything but loopback (e.g. 0.0.0.0) needs MLCYCLE_API_KEY set."),
    ] = "127.0.0.1",
    config: ConfigOption = None,
) -> None:
    """Start the BentoML scoring service (POST /predict, /metrics, /readyz, docs at /docs) for this project.

    Listens on 127.0.0.1 unless --host says otherwise; exposed, it requires the x-api-key header."""
    import os

    from mlcycle.ops.service_process import ExposedWithoutKey, check_exposure, serve_command

    cfg = _config(config)
    try:
        check_exposure(host)
    except ExposedWithoutKey as exc:
        console.print(str(exc), style="red", markup=False, soft_wrap=True)
        raise typer.Exit(2) from None
    from mlcycle.ops.stack import SERVICE, TOKEN_VAR, ServiceAlreadyRunning, record_foreground

    cmd = serve_command(port, host, cfg.root)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    try:  # recorded like `up`'s service, so `replay`, `status` and `down` find it
        token = record_foreground(cfg, SERVICE, cmd, url)
    except ServiceAlreadyRunning as exc:
        console.print(str(exc), style="red", markup=False, soft_wrap=True)
        raise typer.Exit(2) from None
    env = {**os.environ, "MLCYCLE_CONFIG": str(cfg.root / "mlcycle.yaml"), TOKEN_VAR: token}
    os.chdir(cfg.root)
    os.execvpe(cmd[0], cmd, env)


@app.command()
def build(
    wheel: Annotated[
        Path | None,
        typer.Option(help="The mlcycle wheel to put in the Bento (default: the running mlcycle, packed into one)."),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Package the project's scoring service as a Bento in the BentoML store ($BENTOML_HOME).

    It carries the mlcycle wheel, the requirements pinned to this environment, the config, contract and
    Feast definitions; not the data: the output says how to serve it against the project's stores."""
    from mlcycle.ops import bento

    try:
        cfg = bento.project_config(config)
        result = bento.build(cfg, wheel=wheel)
    except (bento.BuildError, ConfigError) as exc:
        console.print(str(exc), style="red", markup=False, soft_wrap=True)
        console.print("No Bento was built.")
        raise typer.Exit(2) from None
    console.print(
        f"Built Bento [bold]{result.tag}[/bold] in {result.seconds:.1f}s: champion v{result.champion} serves; "
        f"{result.wheel.name} and {result.requirements} pinned requirements; {result.path}"
    )
    console.print("Serve it where the project's registry and online store are:", markup=False)
    console.print("  " + result.serve, markup=False, soft_wrap=True)


# ----------------------------------------------------------------------------- CI (mlcycle ci)
ci_app = typer.Typer()  # its help: the docstring of `ci` below
app.add_typer(ci_app, name="ci")


def _print_ci_step(step: Any) -> None:
    style = {"pass": "green", "fail": "red", "not_measurable": "yellow", "skipped": "dim"}[step.status]
    mark = {"pass": "PASS", "fail": "FAIL", "not_measurable": "N/M", "skipped": "SKIP"}[step.status]
    console.print(f"{mark:<5}{step.name:<12}{step.seconds:6.1f}s  {step.detail}", style=style, markup=False,
                  soft_wrap=True)  # fmt: skip
    for check in step.checks:
        console.print(f"{'':<24}{check.line()}", markup=False, soft_wrap=True)


@ci_app.callback(invoke_without_command=True)
def ci(
    ctx: typer.Context,
    junit: Annotated[Path | None, typer.Option(help="Write JUnit XML here (one test case per step).")] = None,
    skip: Annotated[
        list[str] | None,
        typer.Option(
            help="A step not to run (repeatable): config, contract, skew, smoke_train, golden_set, champion, "
            "behaviour, bento."
        ),
    ] = None,
    strict: Annotated[
        bool | None, typer.Option("--strict/--no-strict", help="Fail on a step the data cannot decide (ci.strict).")
    ] = None,
    bento_home: Annotated[
        Path | None, typer.Option(help="Build the Bento into this BentoML store (default: a scratch one, removed).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Check the project as it is in the working tree: config and `feast plan`, the contract on the latest
    rows, train/serve skew on N entities, a smoke training with the `ci` profile (nothing registered), the
    gates on the pinned golden set and against the champion, behavioural checks, the Bento build.

    Exit 1 when a step fails (with --strict also when one is not measurable, e.g. no champion yet)."""
    if ctx.invoked_subcommand is not None:
        return
    from mlcycle.ops import ci as ci_ops

    cfg = _config(config)
    try:
        report = ci_ops.run_ci(cfg, skip=skip or (), strict=strict, bento_home=bento_home, on_step=_print_ci_step)
    except ci_ops.CIError as exc:
        console.print(str(exc), style="red", markup=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if junit:
        console.print(f"JUnit XML: {report.write_junit(junit)}", markup=False)
    counts = {s: sum(step.status == s for step in report.steps) for s in ("pass", "fail", "not_measurable", "skipped")}
    summary = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in counts.items() if n)
    if report.ok:
        console.print(f"ci passed: {summary}", style="green", markup=False)
        return
    console.print(f"ci failed ({', '.join(s.name for s in report.failed)}): {summary}", style="red", markup=False)
    raise typer.Exit(1)


@ci_app.command("golden")
def ci_golden(
    rows: Annotated[int, typer.Option(min=10, help="Latest matured labelled rows of the table to freeze.")] = 2000,
    repin: Annotated[bool, typer.Option(help="Pin the golden set file as it is now (a deliberate change).")] = False,
    rewrite: Annotated[bool, typer.Option(help="Freeze the table's latest rows again, and pin them.")] = False,
    config: ConfigOption = None,
) -> None:
    """Make the golden set (the table's latest matured labelled rows, frozen in golden/golden_set.parquet) and
    pin its sha256 as evaluation.golden_set in mlcycle.yaml; commit both. A pinned one changes only with
    --repin or --rewrite."""
    from mlcycle.ops import ci as ci_ops

    cfg = _config(config)
    try:
        pinned = ci_ops.pin_golden_set(cfg, rows=rows, rewrite=rewrite, repin=repin)
    except (ci_ops.CIError, ConfigError) as exc:
        console.print(str(exc), style="red", markup=False, soft_wrap=True)
        console.print("Nothing was pinned.")
        raise typer.Exit(2) from None
    what = "written and pinned" if pinned.written else "pinned as it is"
    console.print(f"golden set {pinned.path} ({pinned.rows:,} rows) {what}: sha256 {pinned.sha256}", markup=False,
                  soft_wrap=True)  # fmt: skip
    console.print("evaluation.golden_set in mlcycle.yaml holds the pin: commit both files.", markup=False)


@ci_app.command("workflow")
def ci_workflow(
    force: Annotated[bool, typer.Option(help="Overwrite an existing .github/workflows/mlcycle.yml.")] = False,
    config: ConfigOption = None,
) -> None:
    """Write the GitHub Actions workflow into the project (.github/workflows/mlcycle.yml), as `mlcycle init`
    does: `mlcycle ci` on pull requests; on main, train → gates → challenger → staging → approval → canary."""
    from mlcycle.project.workflow import WORKFLOW_FILE, workflow_yaml

    cfg = _config(config)
    path = cfg.root / WORKFLOW_FILE
    if path.exists() and not force:
        console.print(f"{path} exists: pass --force to overwrite it", style="red", markup=False, soft_wrap=True)
        raise typer.Exit(2)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(workflow_yaml(cfg.project, generator=cfg.generator is not None))
    console.print(f"wrote {path}", markup=False, soft_wrap=True)


@ci_app.command("staging")
def ci_staging(
    alias: Annotated[str, typer.Option(help="The registered model alias to check on its own.")] = "challenger",
    junit: Annotated[Path | None, typer.Option(help="Write JUnit XML here.")] = None,
    config: ConfigOption = None,
) -> None:
    """Integration check of the version an alias names, alone: the golden set's requests through the online
    feature path, scored by that version; every answer must be a valid score. Prints `version=N` (and writes
    it to $GITHUB_OUTPUT when set) for the approval step."""
    import os

    from mlcycle.ops import ci as ci_ops
    from mlcycle.training.golden import GoldenSetError

    cfg = _config(config)
    try:
        step = ci_ops.staging_check(cfg, alias)
    except (ci_ops.CIError, GoldenSetError) as exc:
        console.print(str(exc), style="red", markup=False, soft_wrap=True)
        console.print("Nothing was checked; nothing moved.")
        raise typer.Exit(1) from None
    _print_ci_step(step)
    if junit:
        ci_ops.CIReport(cfg.project, [step]).write_junit(junit)
    version = step.name.partition(":v")[2]
    console.print(f"version={version}", markup=False)
    if out := os.environ.get("GITHUB_OUTPUT"):
        with open(out, "a") as f:
            f.write(f"version={version}\n")
    if step.status != "pass":
        raise typer.Exit(1)


# ----------------------------------------------------------------------------- the event stream
stream_app = typer.Typer(
    help="The event stream (Redis Streams): run the consumer, publish events, read dead letters and figures."
)
app.add_typer(stream_app, name="stream")


@stream_app.callback(invoke_without_command=True)
def stream(
    ctx: typer.Context,
    consumer: Annotated[str | None, typer.Option(help="This consumer's name in the group (default host-pid).")] = None,
    max_events: Annotated[int | None, typer.Option(help="Stop after this many events (default: run until ^C).")] = None,
    idle_exit: Annotated[float | None, typer.Option(help="Stop after this many seconds without an event.")] = None,
    score: Annotated[bool, typer.Option(help="Score each event (streaming.score); --no-score: features only.")] = True,
    config: ConfigOption = None,
) -> None:
    """Consume the project's event stream: per event, update the entity's window aggregates in the
    online store (exactly once, by event id), append it to the offline source, score it with the
    model the rollout policy picks, write the decision to the output stream; poison events go to
    the dead-letter stream with their reason. Acknowledged only after all of that.

    Profile local reads the broker `make up` starts (127.0.0.1:streaming.local_port); profile scale
    the Redis at MLCYCLE_REDIS_URL. Several consumers (same group) share the stream."""
    if ctx.invoked_subcommand is not None:
        return
    import os
    import signal
    import threading

    from mlcycle.streaming.broker import BrokerError
    from mlcycle.streaming.consumer import StreamConsumer, broker_url
    from mlcycle.streaming.events import EventSchema, StreamConfigError

    cfg = _config(config)
    if not score:
        cfg = cfg.model_copy(update={"streaming": cfg.streaming.model_copy(update={"score": False})})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    from mlcycle.settings import redact

    token = os.environ.get("MLCYCLE_STACK_ID", "")
    try:
        EventSchema(cfg)
    except StreamConfigError as exc:  # the config itself: no wait can fix it
        console.print(f"cannot stream: {exc}", style="red", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(f"stream consumer started ({token}) on {redact(broker_url(cfg))}", markup=False, soft_wrap=True)
    worker = None
    while worker is None and not stop.is_set():
        try:
            worker = StreamConsumer(cfg, name=consumer, scorer=None if cfg.streaming.score else False)
        except (BrokerError, ValueError) as exc:  # the broker not up yet, the feature views not published yet
            console.print(f"waiting (retrying every 5 s): {exc}", markup=False, soft_wrap=True)
            stop.wait(5)
    if worker is None:
        return
    try:
        seeded = worker.bootstrap()
    except OSError as exc:  # no table yet: nothing to seed, the stream starts from empty windows
        console.print(f"no history seeded ({exc})", markup=False, soft_wrap=True)
        seeded = 0
    console.print(
        f"stream consumer ready: {worker.name} in group {cfg.streaming.group!r} of {worker.keys.events}; "
        f"{seeded} events of the table's recent history seeded",
        markup=False,
        soft_wrap=True,
    )
    totals = worker.run(stop, max_events=max_events, idle_exit_s=idle_exit)
    console.print(
        f"stopped: {totals['events']} events read, {totals['applied']} applied, {totals['duplicates']} duplicates, "
        f"{totals['dead']} dead-lettered, {totals['scored']} scored",
        markup=False,
    )


@stream_app.command("publish")
def stream_publish(
    path: Annotated[Path, typer.Argument(help="Events: a parquet or CSV file of the table's shape (labels ignored).")],
    rate: Annotated[float, typer.Option(help="Events per second (0: as fast as possible).")] = 0.0,
    config: ConfigOption = None,
) -> None:
    """Publish a file's rows as events, in file order (what an outside producer does)."""
    from mlcycle.data.validation import read_table_file
    from mlcycle.streaming.consumer import open_stream
    from mlcycle.streaming.events import encode

    cfg = _config(config)
    frame = read_table_file(path, [cfg.table.timestamp])
    frame = frame.drop(columns=[c for c in (cfg.table.label, cfg.table.label_available_at) if c and c in frame])
    stream = open_stream(cfg)
    rows = [encode(r) for r in frame.to_dict("records")]
    step = 500 if rate <= 0 else max(1, int(rate / 10))
    started = time.monotonic()
    for i in range(0, len(rows), step):
        stream.publish_many(rows[i : i + step])
        if rate > 0:
            time.sleep(max(0.0, started + (i + step) / rate - time.monotonic()))
    console.print(f"published {len(rows)} events to {stream.stream}")


@stream_app.command("dead")
def stream_dead(
    count: Annotated[int, typer.Option(help="How many, newest last.")] = 20, config: ConfigOption = None
) -> None:
    """The dead-letter stream: events that were not applied, with the reason (the field it names)."""
    from mlcycle.streaming.consumer import open_stream

    stream = open_stream(_config(config))
    letters = stream.dead_letters(count)
    if not letters:
        console.print("no dead letters")
    for letter in letters:
        console.print(f"{letter.get('id')}: {letter.get('reason')}", markup=False, soft_wrap=True)


# ----------------------------------------------------------------------------- local stack (make up / down)
def _stack_out(message: str) -> None:
    console.print(message, markup=False, soft_wrap=True)


@app.command()
def up(
    prefect_port: Annotated[
        int, typer.Option(envvar="MLCYCLE_PREFECT_PORT", help="Prefect server port (UI and API).")
    ] = 4200,
    mlflow_port: Annotated[int, typer.Option(envvar="MLCYCLE_MLFLOW_PORT", help="MLflow UI port.")] = 5000,
    service_port: Annotated[int, typer.Option(envvar="MLCYCLE_SERVICE_PORT", help="Scoring service port.")] = 3000,
    evidently_port: Annotated[
        int, typer.Option(envvar="MLCYCLE_EVIDENTLY_PORT", help="Evidently UI port (the monitoring dashboard).")
    ] = 8000,
    config: ConfigOption = None,
) -> None:
    """Start the local stack in the background and print its URLs (what `make up` runs).

    Prefect server (SQLite in data/prefect), work pool `mlcycle-local`, every deployment of prefect.yaml, a worker.

    The MLflow UI on the project's tracking store, the Evidently UI on the monitoring dashboard's workspace
    (data/monitoring/workspace), and the BentoML scoring service (the project's own services/, else mlcycle's
    generic one).

    The event broker and stream consumer, when the project can stream (table.event_id and
    features.aggregations set); otherwise they are not started, and why is printed.

    Each runs in its own process group; logs in data/run/<name>.log, pids in data/run/<name>.pid.

    Pieces already running are reused. Stop everything with `mlcycle down`.
    """
    from mlcycle.ops import stack

    cfg = _config(config)
    try:
        stack.up(cfg, prefect_port=prefect_port, mlflow_port=mlflow_port, service_port=service_port, out=_stack_out,
                 evidently_port=evidently_port)  # fmt: skip
    except stack.StackError as exc:
        console.print(str(exc), style="red", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None


@app.command()
def down(
    timeout: Annotated[float, typer.Option(help="Seconds to wait after SIGTERM before SIGKILL.")] = 20.0,
    config: ConfigOption = None,
) -> None:
    """Stop exactly what `mlcycle up` (or `mlcycle serve`) started: the processes recorded in data/run/*.pid.

    SIGTERM to each process group, SIGKILL after --timeout.

    A pid file whose process is gone, or whose pid now runs something else, is only removed.
    """
    from mlcycle.ops import stack

    stack.down(_config(config), timeout=timeout, out=_stack_out)


@app.command()
def status(config: ConfigOption = None) -> None:
    """What `mlcycle up` started and is still running: pid, URL, health, log; for a piece that
    exited, why (the last error line its log shows since it was started)."""
    from mlcycle.ops import stack

    cfg = _config(config)
    rows = stack.status(cfg)
    if not rows:
        console.print(f"nothing running: no pid files in {stack.run_dir(cfg)} (start the stack with `mlcycle up`)")
        return
    table = Table("name", "pid", "state", "url", "since (UTC)")
    notes = [f"logs: {stack.run_dir(cfg)}/<name>.log"]
    for row in rows:
        state, _, why = row.health.partition(": ")
        if why:
            notes.append(f"{row.name}: {row.health}")
        table.add_row(row.name, str(row.pid or ""), state, row.url, row.started_at.replace("T", " ")[:19])
    console.print(table)
    for note in notes:
        console.print(note, markup=False, soft_wrap=True)
    _print_stream_status(cfg)


def _print_stream_status(cfg: ProjectConfig) -> None:
    """The stream consumer's figures, when a broker answers: lag, events/s, freshness, scoring."""
    from mlcycle.streaming.broker import BrokerError, connect
    from mlcycle.streaming.consumer import broker_url, read_stats

    try:
        stats = read_stats(cfg, connect(broker_url(cfg)))
    except (BrokerError, OSError, ValueError):
        return
    except Exception:  # redis errors: no stream figures, the rest of the status stands
        return
    if not stats:
        return
    figures = [
        ("lag (events not yet read)", stats.get("lag", "")),
        ("pending (read, not acknowledged)", stats.get("pending", "")),
        ("events/s", stats.get("events_per_s", "")),
        ("events read / applied / duplicates / dead", "/".join(stats.get(f"{k}_total", "0")
                                                              for k in ("events", "applied", "duplicates", "dead"))),
        ("scored / not scored", f"{stats.get('scored_total', '0')} / {stats.get('unscored_total', '0')}"),
        ("freshness event→online p50 / p99 ms", f"{stats.get('freshness_ms_p50', '')} / "
                                                f"{stats.get('freshness_ms_p99', '')}"),
        ("scoring p50 / p99 ms", f"{stats.get('scoring_ms_p50', '')} / {stats.get('scoring_ms_p99', '')}"),
    ]  # fmt: skip
    table = Table("stream", "value", title="event stream")
    for name, value in figures:
        table.add_row(name, str(value))
    console.print(table)


@app.command()
def retention(config: ConfigOption = None) -> None:
    """Remove what each sink keeps past privacy.retention_days: prediction-log days (or rows),
    monitoring reports, training snapshots no live version needs, broker entries already in the
    offline event log. The scheduled `retention` deployment runs the same."""
    cfg = _config(config)
    result = _run_flow(cfg, "retention", "retention", "retention")
    for line in result["lines"]:
        console.print(line, markup=False, soft_wrap=True)


alerts_app = typer.Typer(
    help="Alerts that reach people: alerts: in mlcycle.yaml as Prefect notification blocks and automations.",
    no_args_is_help=True,
)
app.add_typer(alerts_app, name="alerts")


def _alerts_api(cfg: Any) -> str:
    from mlcycle.ops import stack

    api = stack.api_url(cfg)
    if not api:
        console.print("no Prefect server: start the stack (mlcycle up) or set PREFECT_API_URL", style="red")
        raise typer.Exit(1)
    return api


@alerts_app.command("sync")
def alerts_sync(config: ConfigOption = None) -> None:
    """Put the project's alert channels (notification blocks) and routes (automations) on the Prefect
    server, replacing what an earlier sync made; `mlcycle up` does it too."""
    from mlcycle.ops import alerts

    cfg = _config(config)
    try:
        synced = alerts.sync(cfg, _alerts_api(cfg))
    except alerts.AlertError as exc:
        console.print(f"alerts not set up: {exc}", style="red", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(f"channels: {', '.join(synced.blocks) or 'none'}", markup=False)
    console.print(f"automations: {', '.join(synced.automations) or 'none'}", markup=False)
    if synced.removed:
        console.print(f"removed: {', '.join(synced.removed)}", markup=False)


@alerts_app.command("test")
def alerts_test(config: ConfigOption = None) -> None:
    """Send one test message to each channel, from this machine; exits 1 if any could not be sent."""
    from mlcycle.ops import alerts

    cfg = _config(config)
    if not cfg.alerts.channels:
        console.print("no alert channels in mlcycle.yaml (alerts.channels)", style="red")
        raise typer.Exit(1)
    results = alerts.send_test(cfg)
    for name, outcome in results.items():
        console.print(f"{name}: {outcome}", markup=False, soft_wrap=True)
    if any(outcome != "sent" for outcome in results.values()):
        raise typer.Exit(1)


@alerts_app.command("remove")
def alerts_remove(config: ConfigOption = None) -> None:
    """Delete the project's alert automations from the Prefect server."""
    from mlcycle.ops import alerts

    cfg = _config(config)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: _alerts_api(cfg)}):
        gone = alerts.remove(cfg)
    console.print(f"removed: {', '.join(gone) or 'nothing'}", markup=False)


@app.command()
def forget(
    entity: Annotated[str, typer.Argument(help="COLUMN=KEY, e.g. customer_id=42: an entity key column and its value.")],
    config: ConfigOption = None,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Erase one entity: its rows leave the prediction log, the online store, the stream's event sets
    and entries, the offline event log, the feature tables and monitoring samples. Reports the
    training snapshots that still hold it (and the versions trained on them) and the input table's
    rows (yours to remove at the source). Recorded in the promotion log without the key. Needs the
    operator or approver role; exits 1 when a store could not be reached (run it again)."""
    import json

    from mlcycle.ops import forget as erasure
    from mlcycle.registry import governance

    cfg = _config(config)
    try:
        report = erasure.forget(cfg, entity, governance.current_principal())
    except (erasure.ForgetError, governance.Refused) as exc:
        console.print(f"not forgotten: {exc}", style="red", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        console.print(f"forgot {report.entity} (recorded as {report.reference}):", markup=False)
        for removed in report.removed:
            console.print(f"  {removed.line()}", markup=False, soft_wrap=True)
        for hit in report.snapshots:
            trained = ", ".join(f"v{v} ({state})" for v, state in hit.versions) or "no registered version"
            console.print(f"  still held: training snapshot of run {hit.run_id} ({hit.rows} rows), trained {trained}; "
                          "archive those versions and run mlcycle retention to expire it", markup=False,
                          soft_wrap=True)  # fmt: skip
        for path, rows in report.inputs.items():
            console.print(f"  still held: the input table {path} ({rows} rows): remove them at the source, then "
                          "mlcycle features build", markup=False, soft_wrap=True)  # fmt: skip
    for problem in report.incomplete:
        console.print(f"INCOMPLETE: {problem}", style="red", markup=False, soft_wrap=True)
    if report.incomplete:
        raise typer.Exit(1)


@app.command()
def backup(
    dest: Annotated[Path, typer.Argument(help="A new (or empty) directory for the backup.")],
    config: ConfigOption = None,
) -> None:
    """Back the project up: registry and tracking store, promotion log, artifacts, feature tables,
    prediction log, monitoring, Feast registry, config and contract, with a manifest of hashes.
    Restore with `mlcycle restore DEST`; what is left out (rebuilt by other commands) is listed."""
    from mlcycle.ops import backup as backups

    cfg = _config(config)
    name = config.name if config and config.suffix in (".yaml", ".yml") else "mlcycle.yaml"
    try:
        manifest = backups.backup(cfg, dest, name, out=lambda line: console.print(line, markup=False))
    except backups.BackupError as exc:
        console.print(f"not backed up: {exc}", style="red", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    size = f"{len(manifest.files)} files, {manifest.total_bytes / 1e6:.1f} MB in {manifest.seconds:.1f} s"
    console.print(f"backed up {cfg.project} to {dest.resolve()}: {size} (manifest.json)", markup=False)
    for prefix, why in sorted(manifest.left_out.items()):
        console.print(f"  left out data/{prefix}: {why}", markup=False)


@app.command()
def restore(
    src: Annotated[Path, typer.Argument(help="A directory `mlcycle backup` wrote.")],
    into: Annotated[Path, typer.Option(help="The project directory to restore into (its data/ empty).")] = Path("."),
) -> None:
    """Restore a backup into a project directory whose data/ is empty or absent (an empty machine, or
    after a loss): every file is checked against the manifest first, nothing is written over state.
    Then `mlcycle features publish --fresh` refills the online store, and the service serves the champion."""
    from mlcycle.ops import backup as backups

    try:
        manifest, cfg = backups.restore(src, into, out=lambda line: console.print(line, markup=False))
    except backups.BackupError as exc:
        console.print(f"not restored: {exc}", style="red", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    done = f"{len(manifest.files)} files checked, written in {manifest.seconds:.1f} s"
    console.print(f"restored {manifest.project} ({manifest.created_at}) into {cfg.root}: {done}", markup=False)
    console.print("next: mlcycle features publish --fresh   # the online store is not in a backup", markup=False)


@app.command("scale-env")
def scale_env(config: ConfigOption = None) -> None:
    """Print `export` lines for profile scale: the MLCYCLE_* connection settings (defaults filled in) and
    the variables feature_store.scale.yaml reads, so `feast -f feature_store.scale.yaml …` runs in a shell:
    eval "$(mlcycle scale-env)"."""
    from mlcycle.settings import ScaleConfigError, ScaleSettings

    _config(config)
    try:
        print(ScaleSettings.from_env().shell_exports())
    except ScaleConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


slo_app = typer.Typer(help="Service level objectives (serving.slo) as Prometheus rules.", no_args_is_help=True)
app.add_typer(slo_app, name="slo")


@slo_app.command("rules")
def slo_rules(
    out: Annotated[
        Path | None, typer.Option(help="Write the rules here (e.g. monitoring/prometheus-rules.yml).")
    ] = None,
    runbook_base: Annotated[
        str, typer.Option(help="Where docs/operations.md is (a path or URL): each alert links a section of it.")
    ] = "docs/operations.md",
    config: ConfigOption = None,
) -> None:
    """Print (or write with --out) the Prometheus recording and alerting rules of serving.slo: p99 latency,
    server-side error ratio, availability, the stream's lag and freshness; each alert with its runbook.
    Check them with `promtool check rules FILE`; load them with `rule_files:` in prometheus.yml."""
    from mlcycle.project.slo_rules import rules_yaml

    text = rules_yaml(_config(config), runbook_base=runbook_base)
    if out is None:
        typer.echo(text, nl=False)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    console.print(f"wrote {out}", markup=False, soft_wrap=True)


if __name__ == "__main__":
    app()
