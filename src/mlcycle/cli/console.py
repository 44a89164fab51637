"""What the command line and a project's narrated story print: numbered steps, training and rollout
results, a monitoring check. Shared so a project's own demo prints like the CLI."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mlcycle.project.config import ProjectConfig
from mlcycle.settings import redact


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
    """The command to print: the store's password is never on a screen or a command line (MLflow
    reads the full URI from MLFLOW_BACKEND_STORE_URI, which `make up` sets)."""
    return f"uv run mlflow ui --backend-store-uri '{redact(cfg.tracking_uri)}' --port 5000"


def print_check(console: Console, result: dict) -> None:
    head = "[red]drift detected[/red]" if result["drift_detected"] else "no drift"
    console.print(f"      v{result['champion_version']}: {head} on {result['rows']:,} answers; drifted: "
                  f"{', '.join(result['drifted_features'][:8]) or 'none'}"
                  + (" …" if len(result["drifted_features"]) > 8 else ""))  # fmt: skip
    if result["prediction_drift"]:
        p = result["prediction_drift"]
        console.print(f"      scores: PSI {p['psi']:.3f}, mean {p['mean_reference']:.4f} → {p['mean_current']:.4f} "
                      f"({p['mean_change']:+.0%}){' [red]alert[/red]' if p['alert'] else ''}")  # fmt: skip
    decay = result["decay"]
    if decay.get("judged") and decay.get("rmse") is not None:
        console.print(f"      matured labels: RMSE {decay['rmse']:.4g} (test at training "
                      f"{decay.get('baseline_rmse') or float('nan'):.4g})"
                      + (" [red]decayed[/red]" if decay["alert"] else ""))  # fmt: skip
    elif decay.get("judged"):
        console.print(f"      matured labels: ROC-AUC {decay['roc_auc']:.3f} (test at training "
                      f"{decay['baseline_roc_auc']:.3f}) on {decay['positives']} positives"
                      + (" [red]decayed[/red]" if decay["alert"] else ""))  # fmt: skip
    estimate = result.get("estimate") or {}
    if estimate.get("roc_auc") is not None:
        ci = estimate.get("roc_auc_ci")
        interval = f"{ci[0]:.3f}–{ci[1]:.3f}" if ci else "no interval: " + "; ".join(estimate.get("reasons") or [])
        console.print(f"      label-free estimate: ROC-AUC {estimate['roc_auc']:.3f} ({interval}) on "
                      f"{estimate['rows']:,} answers, bound {estimate['bound']:.3f}"
                      + (" [red]estimated decay[/red]" if estimate.get("alert") else f": {estimate['state']}"),
                      )  # fmt: skip
    windows = [w for w in result.get("decay_windows") or [] if w.get("estimated_roc_auc") is not None]
    if windows:
        pairs = ", ".join(f"{w['start'][5:10]} {w['roc_auc']:.3f}/{w['estimated_roc_auc']:.3f}" for w in windows[-7:])
        console.print(f"      matured days, realized/estimated ROC-AUC: {pairs}")
    for metric in (result.get("kpis") or {}).get("metrics") or []:
        value = "n/a" if metric["value"] is None else f"{metric['value']:,.4g} {metric['unit']}"
        state = {"fail": "[red]BREACHED[/red]", "pass": "pass"}.get(metric["state"], "not measurable yet")
        console.print(f"      KPI {metric['name']}: {value} ({metric['comparison']} {metric['bound']:,.4g}): {state}")
    for anomaly in result["upstream_anomalies"]:
        console.print(f"      [red]broken upstream?[/red] {anomaly}")
    console.print(f"      report {result['report_html']}\n      events: {', '.join(result['events']) or 'none'}")


def progress(console: Console) -> Progress:
    return Progress(
        TextColumn("      {task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=False,
    )  # fmt: skip


def print_training(console: Console, result: dict, indent: str = "      ") -> None:
    if result["passed"]:
        console.print(
            f"{indent}registered v{result['version']} as {result['alias']} "
            + (
                f"(RMSE {result['rmse']:.4g}, MAE {result['mae']:.4g})"
                if result.get("task") == "regression"
                else f"(ROC-AUC {result['roc_auc']:.4f}, PR-AUC {result['pr_auc']:.4f})"
            )
            + f"; card {result['model_card']}"
        )
    elif any(f.startswith("refused (") for f in result["failed"]):  # the gates passed; the rules refused
        console.print(f"{indent}not registered: {'; '.join(result['failed'])}", style="red", markup=False)
    else:
        console.print(f"{indent}[red]rejected by the gates: {', '.join(result['failed'])}[/red]; no alias moved")
        # What each refusing gate measured, how sure, against which bound (text, not rich markup).
        for reason in result.get("reasons", []):
            console.print(f"{indent}  {escape(reason)}")


def print_rollout(console: Console, result: dict, indent: str = "      ") -> None:
    for step in result["steps"]:
        console.print(f"{indent}{step['percent']:g}%: {'passed' if step['passed'] else '[red]FAILED[/red]'}")
        for line in step["checks"]:
            console.print(f"{indent}    {line}")
    color = "green" if result["outcome"] == "promoted" else "red"
    console.print(f"{indent}[{color}]v{result['version']} {result['outcome']}[/{color}]")
