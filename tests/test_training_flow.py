"""The training flow end to end: real Prefect (test harness), real MLflow (temporary SQLite store),
real Feast. Gates decide; a failed gate or a bad training set never moves an alias."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from tests.conftest import TRAINING_DATA, built_project, clone_project

from mlcycle.data.validation import ContractViolation
from mlcycle.flows import load_flow
from mlcycle.project.config import ConfigError, ProjectConfig
from mlcycle.registry import aliases as registry
from mlcycle.registry import tracking

pytestmark = pytest.mark.slow


def run_train(cfg: ProjectConfig) -> dict:
    return load_flow(cfg.root, "training", "train")(config=str(cfg.root / "mlcycle.yaml"))


def registered(cfg: ProjectConfig) -> list[str]:
    return [str(mv.version) for mv in registry.versions(registry.client_for(cfg), cfg.model.name)]


def champion(cfg: ProjectConfig) -> str | None:
    mv = registry.version_by_alias(registry.client_for(cfg), cfg.model.name, registry.CHAMPION)
    return str(mv.version) if mv else None


@pytest.fixture(scope="module")
def trained(training_project: ProjectConfig, prefect_server, tmp_path_factory) -> tuple[ProjectConfig, dict]:
    """A project whose first training run has made v1 the champion."""
    cfg = clone_project(training_project, tmp_path_factory.mktemp("trained") / "p")
    return cfg, run_train(cfg)


def test_first_model_passes_every_gate_and_becomes_champion(trained) -> None:
    cfg, result = trained
    assert result["passed"], result["failed"]
    assert (result["version"], result["alias"]) == ("1", registry.CHAMPION)
    assert champion(cfg) == "1"
    client = registry.client_for(cfg)
    run = client.get_run(result["run_id"])
    # Lineage and reports are on the run.
    for tag in ("mlcycle.data_hash", "mlcycle.git_commit", "mlcycle.lockfile_hash", "mlcycle.features"):
        assert run.data.tags[tag], tag
    assert run.data.tags["mlcycle.feature_service"] == cfg.features.feature_service
    assert run.data.metrics["test.roc_auc"] == pytest.approx(result["roc_auc"])
    assert any(k.startswith("slice.age_band.") for k in run.data.metrics)
    # The metrics are the registered model's too (MLflow 3's LoggedModel), not only the run's.
    version = client.get_model_version(cfg.model.name, "1")
    assert version.source.startswith("models:/m-")  # registered from the LoggedModel
    linked = {m.key: m.value for m in client.get_logged_model(version.source.removeprefix("models:/")).metrics}
    assert linked["test.roc_auc"] == pytest.approx(result["roc_auc"]) and "baseline.test.roc_auc" in linked
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"reports", "data", "config", "model_card"} <= artifacts
    assert Path(result["model_card"]).read_text().count("<table>") >= 4
    events = registry.PromotionLog(cfg.promotion_log_uri).history(cfg.model.name)
    assert [(e.alias, e.from_version, e.to_version) for e in events] == [("champion", None, "1")]
    assert events[0].actor.startswith("flow:train/")


def test_worse_model_is_recorded_but_champion_stays_and_a_good_one_becomes_challenger(trained, tmp_path: Path) -> None:
    cfg, _ = trained
    weak = clone_project(cfg, tmp_path / "weak", {"model": {"xgboost": {"max_depth": 1, "num_boost_round": 3}}})
    # Same registry as the trained project: point the weak config at it.
    weak.tracking.tracking_uri = cfg.tracking_uri
    weak.tracking.promotion_log_uri = cfg.promotion_log_uri
    weak_cfg_path = tmp_path / "weak" / "mlcycle.yaml"
    import yaml

    raw = yaml.safe_load(weak_cfg_path.read_text())
    raw["tracking"] = {"tracking_uri": cfg.tracking_uri, "promotion_log_uri": cfg.promotion_log_uri}
    weak_cfg_path.write_text(yaml.safe_dump(raw))

    worse = run_train(weak)
    assert not worse["passed"]
    assert {"no_regression_roc_auc", "no_regression_pr_auc"} & set(worse["failed"])
    client = MlflowClient(cfg.tracking_uri)
    run = client.get_run(worse["run_id"])
    assert run.data.tags["mlcycle.gates"] == "failed"
    assert "no_regression" in run.data.tags["mlcycle.failed_gates"]
    assert registered(cfg) == ["1"] and champion(cfg) == "1"

    better = run_train(cfg)
    assert better["passed"] and better["alias"] == registry.CHALLENGER
    assert registered(cfg) == ["1", "2"] and champion(cfg) == "1"
    challenger = registry.version_by_alias(registry.client_for(cfg), cfg.model.name, registry.CHALLENGER)
    assert str(challenger.version) == "2"


def test_reproduce_gives_identical_metrics(trained) -> None:
    cfg, _ = trained
    result = tracking.reproduce(cfg, "1")
    assert result.data_hash_matches
    assert len(result.rows) > 50  # overall and per slice
    assert result.identical, [r for r in result.rows if r[1] != r[2]][:5]


def corrupt_nulls(cfg: ProjectConfig) -> None:
    path = cfg.raw_dir / "transactions.parquet"
    tx = pd.read_parquet(path)
    tx.loc[tx.sample(500, random_state=1).index, "amount"] = np.nan
    tx.to_parquet(path, index=False)


def corrupt_renamed_column(cfg: ProjectConfig) -> None:
    path = cfg.raw_dir / "transactions.parquet"
    pd.read_parquet(path).rename(columns={"merchant_id": "merchant"}).to_parquet(path, index=False)


def corrupt_label_leak(cfg: ProjectConfig) -> None:
    """A buggy feature job: a row stamped at each transaction's own time whose 1h count encodes
    the transaction's label. Only the training-set checks can see it."""
    tx = pd.read_parquet(cfg.raw_dir / "transactions.parquet")
    stats_path = cfg.features_dir / "user_txn_stats.parquet"
    stats = pd.read_parquet(stats_path)
    leak = stats.sample(len(tx), replace=True, random_state=0).reset_index(drop=True)
    leak["user_id"] = tx["user_id"].to_numpy()
    leak["event_timestamp"] = tx["event_timestamp"].dt.as_unit("us").to_numpy()
    leak["txn_count_1h"] = (tx["is_fraud"].to_numpy() * 100 + 1).astype("int64")
    leak = leak.drop_duplicates(["user_id", "event_timestamp"], keep=False)
    leak.to_parquet(stats_path, index=False, coerce_timestamps="us")


@pytest.mark.parametrize(
    ("corrupt", "error", "message"),
    [
        (corrupt_nulls, ContractViolation, "column 'amount': check 'not null'"),
        # The config names merchant_id as an entity: the config no longer fits its table, at load.
        (corrupt_renamed_column, ConfigError, r"no column merchant_id \(entity\)"),
        (corrupt_label_leak, RuntimeError, "max_single_feature_auc"),
    ],
)
def test_bad_data_stops_the_flow_before_training_and_registers_nothing(
    training_project: ProjectConfig,
    prefect_server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    corrupt,
    error,
    message: str,
) -> None:
    cfg = clone_project(training_project, tmp_path / "p")
    corrupt(cfg)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with pytest.raises(error, match=message):
        run_train(cfg)
    # A rejected training set leaves no staged snapshot behind (it is written beside the checks).
    assert list(scratch.glob("mlcycle-snapshot-*")) == []
    assert registered(cfg) == []
    client = registry.client_for(cfg)
    runs = client.search_runs(
        [client.get_experiment_by_name(cfg.tracking.experiment).experiment_id],
        "tags.`mlcycle.stage` = 'training'",
    )
    assert runs == []  # nothing was trained
    assert registry.PromotionLog(cfg.promotion_log_uri).history() == []


def test_fairness_gate_trips_on_a_biased_world(prefect_server, tmp_path_factory) -> None:
    """Fraud against the 65+ band follows a pattern the features barely see: recall for that group
    collapses, the fairness gate fails, and nothing is registered."""
    cfg = built_project(tmp_path_factory.mktemp("biased"), {**TRAINING_DATA, "hard_fraud_age_band": "65+"})
    state = load_flow(cfg.root, "training", "train")(config=str(cfg.root / "mlcycle.yaml"), return_state=True)
    result = state.result()
    assert not result["passed"]
    assert result["failed"] == ["fairness_tpr_gap"]
    assert registered(cfg) == [] and champion(cfg) is None
    # Issue 22: the refusal states the gap, its interval and the bound, in the flow's result (what
    # `mlcycle train` prints) and its Prefect artifacts. Expected: statsmodels' Newcombe intervals
    # on the recorded per-group TPRs, lower bounds Bonferroni-adjusted over the pairs.
    expected = _fairness_refusal_by_statsmodels(cfg, result["run_id"])
    (reason,) = result["reasons"]
    pair, gap, low, high = expected
    assert reason.startswith(f"FAIL fairness_tpr_gap: measured {gap:.4g} for {pair} (95% CI {low:.4g} … {high:.4g}")
    assert reason.endswith(f"bound <= {cfg.gates.max_fairness_gap:.4g}")
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["training-summary", "evaluation-gates"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])),
        )
    assert sorted(a.key for a in artifacts) == ["evaluation-gates", "training-summary"]
    assert all(reason in a.data for a in artifacts), [a.data for a in artifacts]


def _fairness_refusal_by_statsmodels(cfg: ProjectConfig, run_id: str) -> tuple[str, float, float, float]:
    """The fairness gate's deciding pair, gap and interval, recomputed from the run's recorded
    per-group recall and positives: every pair of supported groups (``unknown`` excluded), Newcombe
    intervals by statsmodels; the pair with the largest Bonferroni-adjusted lower bound decides."""
    from itertools import combinations

    import mlflow
    from statsmodels.stats.proportion import confint_proportions_2indep

    evaluation = mlflow.artifacts.load_dict(f"runs:/{run_id}/reports/evaluation.json")
    groups = {g: (round(m["recall"] * m["positives"]), m["positives"])
              for g, m in evaluation["slices"][cfg.table.protected].items()
              if g != "unknown" and m["positives"] >= cfg.gates.fairness_min_support}  # fmt: skip
    pairs = list(combinations(sorted(groups), 2))
    judged = []
    for a, b in pairs:
        (ta, na), (tb, nb) = groups[a], groups[b]
        gap = abs(ta / na - tb / nb)
        joint = confint_proportions_2indep(ta, na, tb, nb, method="newcomb", alpha=0.05 / len(pairs))
        single = confint_proportions_2indep(ta, na, tb, nb, method="newcomb", alpha=0.05)
        sign = 1 if ta / na >= tb / nb else -1  # the interval of |gap|: of the difference, turned round
        low = min(sign * joint[0], sign * joint[1])
        high = max(sign * single[0], sign * single[1])
        judged.append((f"{a} vs {b}", gap, max(low, 0.0), high))
    return max(judged, key=lambda j: j[2])


def test_promote_moves_champion_clears_challenger_and_logs_both(tmp_path: Path) -> None:
    """Stands alone: its own registry with two versions (the registry only needs their records)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, name = MlflowClient(uri, uri), "promote-test"
    client.create_registered_model(name)
    for _ in range(2):
        client.create_model_version(name, source=str(tmp_path / "model"))
    log = registry.PromotionLog(f"sqlite:///{tmp_path / 'promotions.db'}")
    registry.move_alias(client, log, name, registry.CHAMPION, "1", "first", who="user:test")
    registry.move_alias(client, log, name, registry.CHALLENGER, "2", "passed its gates", who="user:test")
    events = registry.promote(client, log, name, "2", "canary looked good", who="user:test")
    assert [(e.alias, e.from_version, e.to_version) for e in events] == [
        ("champion", "1", "2"),
        ("challenger", "2", None),
    ]
    assert str(client.get_model_version_by_alias(name, registry.CHAMPION).version) == "2"
    assert registry.version_by_alias(client, name, registry.CHALLENGER) is None
    history = log.history(name)
    assert [(e.alias, e.to_version) for e in history][:2] == [("challenger", None), ("champion", "2")]
    assert history[1].actor == "user:test" and history[1].reason == "canary looked good"
    with pytest.raises(Exception, match=r"(?i)not found|does not exist"):
        registry.promote(client, log, name, "99", "typo")
    assert str(client.get_model_version_by_alias(name, registry.CHAMPION).version) == "2"


def _point_in_time_by_brute_force(cfg: ProjectConfig, rows: pd.DataFrame) -> pd.DataFrame:
    """The feature rows of ``rows`` the slow, obvious way, without mlcycle's or Feast's join code:
    for each row and each feature view, the latest feature row at or before the event time and
    within the view's TTL (both ends inclusive), then the project's own request-time transform."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("repo_defs", cfg.feature_repo_path / "fraud_features.py")
    defs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(defs)
    views = [(defs.user_txn_stats, "user_id"), (defs.merchant_stats, "merchant_id"), (defs.user_profile, "user_id")]
    tables = {v.name: pd.read_parquet(cfg.features_dir / f"{v.name}.parquet") for v, _ in views}
    out = []
    for row in rows.itertuples():
        values: dict = {
            "amount": row.amount, "country": str(row.country), "merchant_category": str(row.merchant_category),
            "channel": None if pd.isna(row.channel) else str(row.channel),
            "request_unix": int(row.event_timestamp.timestamp()),
        }  # fmt: skip
        for view, key in views:
            table = tables[view.name]
            ts = table["event_timestamp"]
            match = table[(table[key] == getattr(row, key)) & (ts <= row.event_timestamp)
                          & (ts >= row.event_timestamp - view.ttl)]  # fmt: skip
            latest = match.loc[match["event_timestamp"].idxmax()] if len(match) else None
            for field in view.schema:
                values[field.name] = None if latest is None else latest[field.name]
        out.append(values)
    inputs = pd.DataFrame(out)
    transform = defs.transaction_features.feature_transformation.udf
    # Called as Feast calls a python-mode view: columns as lists, None for missing.
    as_lists = {c: inputs[c].astype(object).where(inputs[c].notna(), None).tolist() for c in inputs}
    return pd.concat([inputs, pd.DataFrame(transform(as_lists))], axis=1)


def test_batch_scores_a_day_with_the_champion_on_offline_features(trained) -> None:
    import mlflow.xgboost
    import xgboost as xgb

    from mlcycle.serving import batch

    cfg, _ = trained
    tx = pd.read_parquet(cfg.raw_dir / "transactions.parquet")
    day = (tx["event_timestamp"].max() - pd.Timedelta(days=3)).date()
    path, rows, version = batch.score_day(cfg, day)
    scores = pd.read_parquet(path)
    expected_rows = tx[tx["event_timestamp"].dt.date == day]
    assert rows == len(scores) == len(expected_rows) > 0
    assert set(scores["transaction_id"]) == set(expected_rows["transaction_id"])
    assert (scores["model_version"] == version).all() and version == champion(cfg)
    # Independent check: 40 of the day's rows joined by brute force, scored through xgboost's own
    # DMatrix path (not inplace_predict on mlcycle's matrix), give the same scores.
    mv = registry.version_by_alias(registry.client_for(cfg), cfg.model.name, registry.CHAMPION)
    booster = mlflow.xgboost.load_model(f"models:/{cfg.model.name}/{mv.version}")
    features = json.loads(mv.tags["mlcycle.features"])
    sample = expected_rows.sample(40, random_state=0)
    frame = _point_in_time_by_brute_force(cfg, sample)
    data = xgb.DMatrix(frame[features].apply(pd.to_numeric, errors="coerce").astype("float64"), missing=np.nan)
    by_id = scores.set_index("transaction_id").loc[sample["transaction_id"], "score"].to_numpy()
    np.testing.assert_allclose(by_id, booster.predict(data), rtol=1e-5)


SKLEARN_MODEL = {
    "flavor": "sklearn",
    "estimator": "sklearn.ensemble.HistGradientBoostingClassifier",
    "params": {"max_iter": 100},
}


def test_a_scikit_learn_flavor_trains_registers_batch_scores_monitors_and_reproduces(
    training_project: ProjectConfig, prefect_server, tmp_path: Path
) -> None:
    """The same lifecycle with a scikit-learn estimator named in the config: registered with the
    sklearn flavor (skops, never pickle), batch scores equal to a scikit-learn model fitted directly
    on the recorded training slice, a monitoring reference, and a reproduction with equal metrics."""
    import mlflow
    from sklearn.ensemble import HistGradientBoostingClassifier

    from mlcycle import flavors
    from mlcycle.monitoring import job as monitoring_job
    from mlcycle.serving import batch
    from mlcycle.serving import scorer as serving
    from mlcycle.training import fit as training

    cfg = clone_project(training_project, tmp_path / "p", {"model": SKLEARN_MODEL})
    result = run_train(cfg)
    assert result["passed"], result["failed"]
    assert (result["version"], result["alias"]) == ("1", registry.CHAMPION)
    client = registry.client_for(cfg)
    mv = client.get_model_version(cfg.model.name, "1")
    assert mv.tags[flavors.FLAVOR_TAG] == "sklearn"
    features = json.loads(mv.tags[tracking.FEATURES_TAG])
    run = client.get_run(mv.run_id)
    assert run.data.params["sklearn.estimator"] == SKLEARN_MODEL["estimator"]
    uri = f"models:/{cfg.model.name}/1"
    flavor = flavors.flavor_of(uri)
    assert isinstance(flavor, flavors.SklearnFlavor)
    model = flavor.load(uri)
    assert isinstance(model, HistGradientBoostingClassifier)

    tx = pd.read_parquet(cfg.raw_dir / "transactions.parquet")
    day = (tx["event_timestamp"].max() - pd.Timedelta(days=3)).date()
    path, rows, version = batch.score_day(cfg, day)
    scores = pd.read_parquet(path)
    assert version == "1" and rows == len(scores) > 0
    assert scores["score"].between(0, 1).all()
    # Independent path: the day's rows joined by brute force, scored by scikit-learn's own estimator
    # fitted here on the run's recorded snapshot (no flavor, no MLflow load): the same scores.
    sample = tx[tx["event_timestamp"].dt.date == day].sample(40, random_state=0)
    X = _point_in_time_by_brute_force(cfg, sample)[features].apply(pd.to_numeric, errors="coerce")
    X = X.to_numpy(dtype=np.float32, na_value=np.nan)
    snapshot = mlflow.artifacts.download_artifacts(
        run_id=mv.run_id, artifact_path=tracking.SNAPSHOT_ARTIFACT, dst_path=str(tmp_path)
    )
    split = training.split_by_time(pd.read_parquet(snapshot), cfg.model.valid_fraction, cfg.model.test_fraction)
    direct = HistGradientBoostingClassifier(max_iter=100, random_state=cfg.model.seed)
    direct.fit(training.matrix(split.train, features), split.train[cfg.table.label].to_numpy())
    by_id = scores.set_index("transaction_id").loc[sample["transaction_id"], "score"].to_numpy()
    np.testing.assert_allclose(by_id, direct.predict_proba(X)[:, 1], rtol=1e-6)
    np.testing.assert_allclose(by_id, flavor.predict(model, X), rtol=1e-6)

    # Serving: the scorer loads the sklearn champion by alias and answers a request with it.
    scorer = serving.Scorer(cfg, log_predictions=False)
    scorer.load()
    assert scorer.ready, scorer.not_ready_reason
    assert scorer.slots[registry.CHAMPION].flavor.name == "sklearn"
    row = sample.iloc[0]
    request = {"user_id": int(row.user_id), "merchant_id": int(row.merchant_id), "amount": float(row.amount),
               "country": str(row.country), "merchant_category": str(row.merchant_category)}  # fmt: skip
    (answer,) = scorer.score([request])
    assert answer.model_version == "1" and 0 <= answer.score <= 1
    scorer.close()

    reference = monitoring_job.champion_reference(cfg)
    assert reference.version == "1" and len(reference.scores) > 0
    assert ((reference.scores >= 0) & (reference.scores <= 1)).all()

    again = tracking.reproduce(cfg, "1")
    assert again.data_hash_matches and len(again.rows) > 50
    assert again.identical, [r for r in again.rows if r[1] != r[2]][:5]


def test_only_a_trainer_registers_and_only_an_approver_makes_the_first_champion(
    training_project: ProjectConfig, prefect_server, tmp_path_factory, monkeypatch
) -> None:
    """governance.roles declared: a principal without the trainer role gets its run logged and nothing
    registered (the refusal in the log); a trainer who is no approver registers v1 as the challenger,
    so no champion serves until an approver decides."""
    from mlcycle.registry import governance

    roles = {"governance": {"roles": {"trainer": ["bob"], "approver": ["alice"]}}}
    cfg = clone_project(training_project, tmp_path_factory.mktemp("roles") / "p", roles)
    monkeypatch.setenv("MLCYCLE_PRINCIPAL", "mallory")
    refused = run_train(cfg)
    assert not refused["passed"] and refused["version"] is None
    assert "refused (role): mallory" in " ".join(refused["failed"]) and "trainer role" in " ".join(refused["failed"])
    assert registered(cfg) == []
    row = registry.PromotionLog(cfg.promotion_log_uri).history(cfg.model.name)[0]
    assert (row.action, row.actor) == (governance.REFUSED_ACTION, "mallory (unauthenticated, environment)")

    monkeypatch.setenv("MLCYCLE_PRINCIPAL", "bob")
    result = run_train(cfg)
    assert (result["version"], result["alias"]) == ("1", registry.CHALLENGER), result
    assert champion(cfg) is None
    tags = registry.client_for(cfg).get_model_version(cfg.model.name, "1").tags
    assert (tags[governance.TRAINED_BY_TAG], tags[governance.STATE_TAG]) == ("bob", governance.PENDING)
