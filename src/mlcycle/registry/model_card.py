"""Model cards: what a model is for, what it was trained on, how it did, and what it cannot do.

Written per registered version as Markdown (for diffs and terminals) and self-contained HTML (no
network: inline CSS only), and logged to the version's MLflow run.

A model card is written once, when the version is registered, and never rewritten: it states only
what stays true (the alias it was registered under, and when), not which aliases it holds now — a
model card that said "Aliases: challenger" was wrong as soon as the version was promoted. The live aliases are
in the MLflow registry and the promotion log (``mlcycle history``).

Gates that the data could not decide and that were let through under the ``warn`` policy are listed
at the top of the model card, with why: a model must never pass such a gate silently.

The text follows the task: a classifier's model card speaks of scores and a decision threshold,
ROC-AUC and recall per slice; a regressor's of predicted values, RMSE, MAE and R². What the model is
for in the project's own words can be given (``CardInput.intended_use``, ``limitations``); the
defaults say only what holds for any project of the task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import markdown

from mlcycle.decisions import Verdict
from mlcycle.training.evaluation import EvaluationReport

CSS = """
body { font-family: system-ui, sans-serif; max-width: 62rem; margin: 2rem auto; padding: 0 1rem; color: #1d2330; }
table { border-collapse: collapse; margin: .5rem 0 1.2rem; font-size: .9rem; }
th, td { border: 1px solid #d0d5dd; padding: .25rem .6rem; text-align: left; }
th { background: #f2f4f7; } code { background: #f2f4f7; padding: 0 .25rem; }
h1 { border-bottom: 2px solid #1d2330; } h2 { margin-top: 2rem; }
"""

INTENDED_USE: dict[str, str] = {
    "classification": (
        "Scores each event with the probability that it belongs to the positive class. Scores at or above "
        "the decision threshold are meant to send an event to a closer look (a review, a further check), "
        "not to act irreversibly on it alone. Not intended for uses outside the project it was trained for."
    ),
    "regression": (
        "Predicts the label's value for each event. Its typical error on recent data is the RMSE and MAE "
        "below; read a single prediction with that error in mind. Not intended for uses outside the "
        "project it was trained for."
    ),
}

KNOWN_LIMITATIONS: dict[str, list[str]] = {
    "classification": [
        "Labels are what was recorded: a positive nobody reported is learnt as a negative.",
    ],
    "regression": [
        "Errors are summarised by RMSE (large errors weigh more) and MAE; a few large errors can hide behind "
        "a good MAE, and the reverse.",
    ],
}
COMMON_LIMITATIONS = [
    "Training uses matured rows only (older than the label delay), so the newest patterns reach the model "
    "late; monitoring watches for that.",
    "An entity's first event has no history features (they are null): the model may do worse on new entities.",
    "The protected attribute, when one is declared, measures fairness; other inputs may still correlate with it.",
    "Small slices have wide confidence intervals: read their metrics with their support.",
]


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


@dataclass
class CardInput:
    model_name: str
    version: str | None
    run_id: str
    feature_service: str
    features: list[str]
    training_window: dict[str, Any]
    data_hash: str
    git_commit: str
    lockfile_hash: str
    params: dict[str, Any]
    report: EvaluationReport
    baseline: EvaluationReport | None
    gates: Verdict
    quality: Verdict
    aliases: list[str] = field(default_factory=list)  # given at registration (they move later)
    registered_at: datetime | None = None  # default: when the model card is rendered
    intended_use: str | None = None  # the project's own words; default: the task's generic text
    limitations: list[str] | None = None  # the project's own; default: the task's generic list

    @property
    def task(self) -> str:
        return self.report.task


def registration_line(aliases: list[str], at: datetime) -> str:
    """What the model card says about aliases: the one given at registration, dated, and where to read the
    current ones — true for as long as the model card exists, unlike a list of "current" aliases."""
    given = " and ".join(f"`{a}`" for a in aliases) if aliases else "no alias"
    return (
        f"Registered with {given} on {at:%Y-%m-%d %H:%M} UTC. Aliases move after registration (promotion, "
        "rollback): the current ones are in the MLflow registry, and `mlcycle history` lists every move."
    )


def gates_status(gates: Verdict) -> str:
    if not gates.passed:
        return "gates **FAILED**"
    warned = ", ".join(c.name for c in gates.warnings)
    return f"gates **passed with warnings** ({warned})" if warned else "gates **passed**"


def warning_lines(*verdicts: Verdict) -> list[str]:
    """A "Warnings" section for checks the data could not decide but the policy let through."""
    warned = [c for v in verdicts for c in v.warnings]
    if not warned:
        return []
    return [
        "## Warnings",
        "These checks could not be decided on the evaluation data and were accepted under the `warn` "
        "policy (`gates.when_unmeasurable`); read the model's results with them in mind.",
        "",
        *[f"- **{c.name}**: {c.detail}" for c in warned],
        "",
    ]


CLASSIFICATION_KEYS = ("n", "positives", "roc_auc", "pr_auc", "precision", "recall", "f1", "fpr", "accuracy", "brier")
REGRESSION_KEYS = ("n", "mean_label", "rmse", "mae", "r2")


def _metric_lines(c: CardInput) -> list[str]:
    """The evaluation window's metrics beside the linear baseline's, and the slice table, per task."""
    o = c.report.overall
    base = c.baseline.overall if c.baseline else None
    if c.task == "regression":
        head = [
            "Predicted values against the label (error = prediction − label); no decision threshold.",
            "",
            "| metric | model | linear (ridge) baseline |",
            "|---|---|---|",
        ]
        keys, slice_head = (
            REGRESSION_KEYS,
            [
                "| attribute | group | n | mean label | RMSE | MAE | R² |",
                "|---|---|---|---|---|---|---|",
            ],
        )
    else:
        head = [
            f"Decision threshold {c.report.threshold:.4f} (chosen on the validation window); scores are the "
            "probability of the positive class.",
            "",
            "| metric | model | logistic baseline |",
            "|---|---|---|",
        ]
        keys, slice_head = (
            CLASSIFICATION_KEYS,
            [
                "| attribute | group | n | positives | ROC-AUC | PR-AUC | recall (TPR) | FPR |",
                "|---|---|---|---|---|---|---|---|",
            ],
        )
    lines = head + [f"| {k} | {_fmt(getattr(o, k))} | {_fmt(getattr(base, k) if base else None)} |" for k in keys]
    lines += ["", f"Single-row latency in-process: p50 {_fmt(c.report.latency_ms.get('p50'))} ms, "
              f"p99 {_fmt(c.report.latency_ms.get('p99'))} ms.", "", "## By slice", *slice_head]  # fmt: skip
    for attribute, groups in c.report.slices.items():
        for group, m in groups.items():
            if c.task == "regression":
                lines.append(f"| {attribute} | {group} | {m.n:,} | {_fmt(m.mean_label)} | {_fmt(m.rmse)} "
                             f"| {_fmt(m.mae)} | {_fmt(m.r2)} |")  # fmt: skip
            else:
                lines.append(f"| {attribute} | {group} | {m.n:,} | {m.positives:,} | {_fmt(m.roc_auc)} "
                             f"| {_fmt(m.pr_auc)} | {_fmt(m.recall)} | {_fmt(m.fpr)} |")  # fmt: skip
    return lines


def render_markdown(c: CardInput) -> str:
    at = (c.registered_at or datetime.now(UTC)).astimezone(UTC)
    limitations = c.limitations if c.limitations is not None else [*KNOWN_LIMITATIONS[c.task], *COMMON_LIMITATIONS]
    lines = [
        f"# Model card — {c.model_name} v{c.version or '(not registered)'}",
        "",
        f"{registration_line(c.aliases, at)} MLflow run `{c.run_id}` · {gates_status(c.gates)}",
        "",
        *warning_lines(c.gates, c.quality),
        "## Intended use",
        c.intended_use or INTENDED_USE[c.task],
        "",
        "## Training data",
        "| slice | rows | from | to |",
        "|---|---|---|---|",
        *[
            f"| {name} | {w['rows']:,} | {w['from']} | {w['to']} |"
            for name, w in c.training_window.items()
            if isinstance(w, dict)
        ],
        "",
        f"Data snapshot hash `{c.data_hash}`; split by time (train → validation → evaluation), never shuffled.",
        "",
        "## Features",
        f"From Feast FeatureService `{c.feature_service}` ({len(c.features)} inputs): "
        + ", ".join(f"`{f}`" for f in c.features),
        "",
        f"## Metrics on the evaluation window ({c.task})",
        *_metric_lines(c),
    ]
    lines += ["", "## Gates", c.gates.markdown(), "## Training-set checks", c.quality.markdown()]
    lines += ["## Known limitations", *[f"- {item}" for item in limitations], ""]
    lines += [
        "## Lineage",
        "| what | value |",
        "|---|---|",
        f"| git commit | `{c.git_commit}` |",
        f"| lockfile (uv.lock) sha256 | `{c.lockfile_hash}` |",
        f"| data snapshot sha256 | `{c.data_hash}` |",
        f"| MLflow run | `{c.run_id}` |",
        *[f"| param {k} | `{v}` |" for k, v in sorted(c.params.items())],
        "",
    ]
    return "\n".join(lines)


def render_html(md_text: str, title: str) -> str:
    body = markdown.markdown(md_text, extensions=["tables"])
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{CSS}</style></head><body>{body}</body></html>"
    )
