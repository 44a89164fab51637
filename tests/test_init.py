"""``mlcycle init`` and the library side of ``mlcycle replay``.

A table no example uses (orders of customers: a number with missing values, a count, a plan with
missing values, a yes/no, free text, an id, a binary label; 3k rows over 60 days from a fixed date)
becomes a project that ``load_config`` accepts and whose Feast repo applies and joins point in time,
with an entity, without one, and for regression. Each bad input is a named error that writes
nothing. Replay builds the requests a caller would send and sends them, in event-time order, to a
small in-process HTTP server that records them; pacing is checked on a fake clock.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mlcycle.project.config import load_config
from mlcycle.project.contract_inference import TableError, contract_from_yaml
from mlcycle.project.scaffold import InitError, InitResult, TargetNotEmpty, init_project, project_name
from mlcycle.serving.replay import ReplayError, replay, replay_rows, request_bodies

N = 3_000
START = pd.Timestamp("2021-03-01", tz="UTC")
DAYS = 60
PLANS = ("basic", "plus", "pro")
ROLES = {"timestamp": "ts", "label": "churned"}


def make_table(n: int = N, seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    seconds = np.sort(rng.choice(DAYS * 86_400, n, replace=False))  # distinct times: no key repeats at one time
    spend = rng.lognormal(3.0, 1.0, n)
    spend[rng.choice(n, n // 20, replace=False)] = np.nan
    plan = rng.choice(np.array(PLANS, dtype=object), n, p=[0.6, 0.3, 0.1])
    plan[rng.choice(n, n // 25, replace=False)] = None
    return pd.DataFrame(
        {
            "order_id": np.arange(1, n + 1) * 7,
            "customer_id": rng.integers(1, 300, n),
            "ts": START + pd.to_timedelta(seconds, unit="s"),
            "spend": spend,
            "visits": rng.poisson(4.0, n),
            "plan": plan,
            "is_member": rng.random(n) < 0.3,
            "comment": [f"note {i}" for i in range(n)],
            "churned": (rng.random(n) < 0.15).astype("int64"),
            "basket_value": rng.gamma(2.0, 30.0, n),
        }
    )


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return make_table()


@pytest.fixture(scope="module")
def table_file(table: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("input") / "orders.parquet"
    table.to_parquet(path, index=False)
    return path


@pytest.fixture(scope="module")
def entity_project(table_file: Path, tmp_path_factory: pytest.TempPathFactory) -> InitResult:
    return init_project(
        tmp_path_factory.mktemp("projects") / "Orders 2021", table_file, **ROLES, entities=["customer_id"]
    )


def _feature_tables(cfg) -> None:
    """What ``mlcycle features build`` writes for the declarations: the state after each event,
    stamped 1 µs later, as ``event_timestamp``, with the entity's last event as ``<table>_last_event_unix``."""
    from mlcycle.features.transform import declared_tables, write_tables

    write_tables(declared_tables(pd.read_parquet(cfg.table_path), cfg), cfg.features_dir)


@pytest.fixture(scope="module")
def applied(entity_project: InitResult):
    """The entity project's feature tables written and its Feast repo applied; its config and store."""
    from mlcycle.features.store import apply_repo, open_store

    cfg = load_config(entity_project.config)
    _feature_tables(cfg)
    apply_repo(cfg.feature_repo_path)
    return cfg, open_store(cfg.feature_repo_path)


def _entity_frame(cfg, rows: pd.DataFrame, request_fields) -> pd.DataFrame:
    """Entity rows as the training path builds them: keys, the event time, the request fields."""
    frame = pd.DataFrame({"event_timestamp": pd.to_datetime(rows[cfg.table.timestamp], utc=True).to_numpy()})
    for col in [*cfg.table.entities, *request_fields]:
        frame[col] = rows[col].to_numpy()
    frame["request_unix"] = (frame["event_timestamp"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    return frame


def _nothing_written(target: Path) -> None:
    assert not target.exists() or not any(target.iterdir()), sorted(target.iterdir())
    assert not list(target.parent.glob(f".{target.name}.init-*")), "a temporary directory was left behind"


# ------------------------------------------------------------------------------------------ init


def test_project_name_is_safe_everywhere():
    assert project_name("Orders 2021") == "orders_2021"
    assert project_name("2021-churn") == "p_2021_churn"
    assert project_name("--") == "project"


def test_init_writes_a_project_the_config_loader_accepts(entity_project: InitResult, table: pd.DataFrame):
    root = entity_project.directory
    assert entity_project.project == "orders_2021"
    repo = ("feature_store.yaml", "feature_store.scale.yaml", "features.py")
    for rel in ("mlcycle.yaml", "contract.yaml", "README.md", ".gitignore", "data/raw/orders.parquet", "prefect.yaml",
                *(f"feature_repo/{f}" for f in repo)):  # fmt: skip
        assert (root / rel).is_file(), rel
    assert not (root / "flows").exists(), "the project runs mlcycle's flows from the package, not a copy"
    assert "data/" in (root / ".gitignore").read_text()
    cfg = load_config(root / "mlcycle.yaml")
    assert (cfg.project, cfg.task) == ("orders_2021", "classification")
    assert (cfg.table.timestamp, cfg.table.label, cfg.table.entities) == ("ts", "churned", ["customer_id"])
    assert cfg.table.event_id == "order_id"  # unique per row, named like an id
    assert cfg.table.positive_label == 1
    assert cfg.features.feature_service == "orders_2021_v1"
    assert cfg.model.name == "orders_2021-model" and cfg.tracking.experiment == "orders_2021"
    assert cfg.routing_key == "customer_id"
    # Each entity's aggregations: counts over the windows the table supports, means of numeric fields.
    (name,) = cfg.features.aggregations
    spec = cfg.features.aggregations[name]
    assert name == "customer_id_stats" and spec.entities == ("customer_id",) and spec.timestamp == "ts"
    assert {a.function for a in spec.aggregations} == {"count", "mean"}
    assert len(spec.aggregations) <= 16
    assert max(spec.windows).days == 30  # the table spans 60 days: the 30d window fits
    # Positive rate ~15%: the label-rate check brackets it, the PR-AUC floor is above a random ranking's.
    assert cfg.quality.min_label_rate < 0.15 < cfg.quality.max_label_rate
    assert cfg.gates.min_pr_auc > 0.15
    # The table on disk: every row, UTC microsecond timestamps, values unchanged.
    written = pd.read_parquet(cfg.table_path)
    assert len(written) == len(table) and list(written.columns) == list(table.columns)
    assert str(written["ts"].dtype) == "datetime64[us, UTC]"
    pd.testing.assert_series_equal(written["spend"], table["spend"])
    # The contract is the file: the table passes it, with the id checked for presence only.
    contract = yaml.safe_load((root / "contract.yaml").read_text())
    assert contract["columns"]["order_id"]["role"] == "event_id"
    assert "min" not in contract["columns"]["order_id"]
    assert contract["columns"]["plan"]["values"] == list(PLANS)
    schema = contract_from_yaml((root / "contract.yaml").read_text())
    schema.validate(written.assign(ts=written["ts"].dt.as_unit("ns")))


def test_init_decides_each_column_and_says_so(entity_project: InitResult):
    r = entity_project
    # Request fields: the event's own attributes; roles, the id and free text are not among them.
    assert r.request_fields == ("spend", "visits", "plan", "is_member", "basket_value")
    assert set(r.left_out) == {"comment"}
    odfv = ["spend_value", "visits_value", "plan_code", "is_member_value", "basket_value_value"]
    assert [f for f in r.model_features if f in odfv] == odfv
    assert all(f.startswith("customer_") for f in r.model_features if f not in odfv)
    # Recency: the seconds since the customer's last event are a model input, its raw clock is not.
    assert "customer_id_stats_secs_since_last" in r.model_features
    assert "customer_id_stats_last_event_unix" not in r.model_features
    readme = (r.directory / "README.md").read_text()
    for text in ("`comment`", "mlcycle features build", "mlcycle replay --since", "mlcycle monitor", "contract.yaml",
                 "prefect.yaml", "mlcycle.flows", "prefect deploy --all", "prefect deployment run train/orders_2021",
                 "_secs_since_last"):  # fmt: skip
        assert text in readme, text
    assert any("order_id" in n for n in r.notes)


def test_feast_repo_applies_and_joins_point_in_time(applied, entity_project: InitResult, table: pd.DataFrame):
    from mlcycle.features.store import plan_for

    cfg, store = applied
    plan = plan_for(store, cfg.features.feature_service)
    assert set(plan.request_fields) == {*entity_project.request_fields, "request_unix"}
    assert set(plan.model_features) == set(entity_project.model_features)
    assert plan.join_keys == ("customer_id",)
    rows = table.sort_values("ts").iloc[::100].reset_index(drop=True)
    entity_df = _entity_frame(cfg, rows, entity_project.request_fields)
    service = store.get_feature_service(cfg.features.feature_service)
    out = store.get_historical_features(entity_df=entity_df, features=service).to_df()
    out = out.sort_values("event_timestamp", kind="stable").reset_index(drop=True)
    assert len(out) == len(rows)
    # Request features: numbers pass through, a category becomes its code (-1 when missing).
    np.testing.assert_allclose(out["spend_value"], rows["spend"])
    expected_codes = rows["plan"].map({p: i for i, p in enumerate(PLANS)}).fillna(-1).astype("int64")
    assert out["plan_code"].tolist() == expected_codes.tolist()
    assert out["is_member_value"].tolist() == rows["is_member"].astype(float).tolist()
    # Aggregations as of each event, never including it: the state the customer's latest earlier event
    # left (its events in the 7 days up to it), or missing when that state is older than the view's TTL.
    checked = 0
    for _, row in out.iterrows():
        earlier = table[(table["customer_id"] == row["customer_id"]) & (table["ts"] < row["event_timestamp"])]
        got = row["customer_count_7d"]
        if earlier.empty or earlier["ts"].max() <= row["event_timestamp"] - pd.Timedelta(days=30):
            assert pd.isna(got)
            continue
        last = earlier["ts"].max()
        assert got == int((earlier["ts"] > last - pd.Timedelta(days=7)).sum())
        checked += 1
    assert checked > len(out) // 2


def test_seconds_since_the_last_event_point_in_time(applied, entity_project: InitResult, table: pd.DataFrame):
    """Built by ``declared_tables`` (as ``mlcycle features build`` does), joined point in time by the
    project's own FeatureService: each training row's ``customer_id_stats_secs_since_last`` is its event
    time minus the customer's previous event (brute force), NaN for a first event; the clock itself is
    the on-demand view's input, not a model input."""
    from mlcycle.features.transform import LAST_EVENT_SUFFIX, declared_tables

    cfg, store = applied
    tables = declared_tables(pd.read_parquet(cfg.table_path), cfg)
    assert "customer_id_stats" + LAST_EVENT_SUFFIX in tables["customer_id_stats"]
    # Every customer's first event, and a sample of the rest: both kinds of row are checked.
    first = table.sort_values("ts").drop_duplicates("customer_id").iloc[:40]
    rows = pd.concat([first, table.iloc[7::60]]).drop_duplicates("order_id").sort_values("ts").reset_index(drop=True)
    service = store.get_feature_service(cfg.features.feature_service)
    entity_df = _entity_frame(cfg, rows, entity_project.request_fields)
    out = store.get_historical_features(entity_df=entity_df, features=service).to_df()
    out = out.sort_values("event_timestamp", kind="stable").reset_index(drop=True)
    assert len(out) == len(rows) and (out["customer_id"].to_numpy() == rows["customer_id"].to_numpy()).all()
    ttl = pd.Timedelta(days=30)  # the view's: a state older than that is not joined
    firsts = within = 0
    for got, (_, row) in zip(out["customer_id_stats_secs_since_last"], rows.iterrows(), strict=True):
        earlier = table.loc[(table["customer_id"] == row["customer_id"]) & (table["ts"] < row["ts"]), "ts"]
        if earlier.empty:
            assert np.isnan(got), (row["order_id"], got)
            firsts += 1
        elif row["ts"] - earlier.max() >= ttl:
            assert np.isnan(got)
        else:
            assert got == (row["ts"] - earlier.max()).total_seconds(), (row["order_id"], got)
            within += 1
    assert firsts >= 40 and within > len(rows) // 3
    assert out["customer_id_stats_secs_since_last"].dtype == np.float64


def test_generated_feature_repo_is_lint_clean(entity_project: InitResult, table_file: Path, tmp_path: Path):
    """A project's own lint passes on its generated Feast repo (the repository's ruff rules)."""
    import shutil
    import subprocess
    import sys

    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed")
    flat = init_project(tmp_path / "flat", table_file, **ROLES)
    files = [r.directory / "feature_repo" / "features.py" for r in (entity_project, flat)]
    config = Path(__file__).resolve().parents[1] / "pyproject.toml"
    for args in (["check"], ["format", "--check"]):
        done = subprocess.run([ruff, *args, "--config", str(config), *map(str, files)], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def test_scaffold_names_the_columns_the_feature_build_writes():
    from mlcycle.features import transform
    from mlcycle.project import scaffold

    assert scaffold.FEATURE_TIMESTAMP == transform.FEATURE_TIMESTAMP
    assert scaffold.LAST_EVENT_SUFFIX == transform.LAST_EVENT_SUFFIX


# ------------------------------------------------------------------------------------------ prefect


def _module_entrypoint(reference: str) -> str:
    """The reference project's file entrypoint (``flows/training.py:train``) as the module path into
    the package that init writes (``mlcycle.flows.training.train``)."""
    path, _, function = reference.partition(":")
    return f"mlcycle.flows.{Path(path).stem}.{function}"


def test_prefect_yaml_deploys_the_packages_flows(entity_project: InitResult):
    """The reference project's deployments, for this project: entrypoints are module paths into the
    installed mlcycle (no copy of the flows), named and tagged for it, each reading its mlcycle.yaml;
    schedules and the event trigger kept."""
    from prefect.flows import load_flow_from_entrypoint

    root = entity_project.directory
    repo = Path(__file__).resolve().parents[1]
    doc = yaml.safe_load((root / "prefect.yaml").read_text())
    reference = yaml.safe_load((repo / "prefect.yaml").read_text())
    assert doc["name"] == "orders_2021" and doc["build"] is None and doc["push"] is None
    assert "pull" not in doc  # `prefect deploy` records the project directory as the working directory
    deployments = doc["deployments"]
    expected = [_module_entrypoint(d["entrypoint"]) for d in reference["deployments"]]
    assert [d["entrypoint"] for d in deployments] == expected
    for d, ref in zip(deployments, reference["deployments"], strict=True):
        # No colon: Prefect 3 imports it as a module path (prefect.flows.load_flow_from_flow_run), and its
        # own loader finds the same flow the reference project's file entrypoint names.
        assert ":" not in d["entrypoint"]
        assert load_flow_from_entrypoint(d["entrypoint"]).name == load_flow_from_entrypoint(ref["entrypoint"]).name
        assert d["name"] == "orders_2021" and {"mlcycle", "orders_2021"} <= set(d["tags"])
        assert d["parameters"] == {"config": "mlcycle.yaml"} and (root / d["parameters"]["config"]).is_file()
        assert d["work_pool"] == reference["definitions"]["work_pool"]
        assert "fraud" not in d["description"]
    # Schedules as the reference's; the retrain trigger listens to this project's model only.
    by_entry = {d["entrypoint"]: d for d in deployments}
    for ref in reference["deployments"]:
        assert by_entry[_module_entrypoint(ref["entrypoint"])].get("schedules") == ref.get("schedules")
    (retrain,) = [d for d in deployments if d.get("triggers")]
    (ref_retrain,) = [d for d in reference["deployments"] if d.get("triggers")]
    (trigger,) = retrain["triggers"]
    (ref_trigger,) = ref_retrain["triggers"]
    assert retrain["entrypoint"] == "mlcycle.flows.retraining.retrain"
    cfg = load_config(root / "mlcycle.yaml")
    assert trigger["match"] == {"prefect.resource.id": f"mlcycle.model.{cfg.model.name}"}
    assert trigger["expect"] == ref_trigger["expect"] and trigger["type"] == "event" and trigger["enabled"]
    assert trigger["parameters"] == {**ref_trigger["parameters"], "config": "mlcycle.yaml"}


@pytest.mark.slow
def test_prefect_deploy_accepts_the_module_path_entrypoints(table_file: Path, tmp_path: Path, prefect_server: str):
    """``prefect deploy --all`` from an init'd project (no flows/ of its own) registers every
    deployment with its module-path entrypoint, the project directory as the working directory."""
    import subprocess
    import sys

    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    result = init_project(tmp_path / "deployed", table_file, **ROLES)
    with get_client(sync_client=True) as client:
        if not any(p.name == "mlcycle-local" for p in client.read_work_pools()):
            client.create_work_pool(WorkPoolCreate(name="mlcycle-local", type="process"))
    prefect = str(Path(sys.executable).parent / "prefect")
    deployed = subprocess.run([prefect, "--no-prompt", "deploy", "--all"], cwd=result.directory, capture_output=True,
                              text=True, timeout=600)  # fmt: skip
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    doc = yaml.safe_load((result.directory / "prefect.yaml").read_text())
    with get_client(sync_client=True) as client:
        for d in doc["deployments"]:
            flow = d["entrypoint"].rpartition(".")[2].removesuffix("_flow")  # rollout_flow is the flow "rollout"
            registered = client.read_deployment_by_name(f"{flow}/{result.project}")
            assert registered.entrypoint == d["entrypoint"]
            assert registered.pull_steps == [
                {"prefect.deployments.steps.set_working_directory": {"directory": str(result.directory.resolve())}}
            ]


def test_prefect_yaml_names_a_yaml_keyword_project_as_text(table_file: Path, tmp_path: Path):
    result = init_project(tmp_path / "yes", table_file, **ROLES)
    doc = yaml.safe_load((result.directory / "prefect.yaml").read_text())
    assert doc["name"] == "yes" and {d["name"] for d in doc["deployments"]} == {"yes"}
    assert all("yes" in d["tags"] for d in doc["deployments"])
    cfg = load_config(result.config)
    assert (cfg.project, cfg.tracking.experiment, cfg.model.name) == ("yes", "yes", "yes-model")


def _request_only_join(result: InitResult, table: pd.DataFrame) -> pd.DataFrame:
    from mlcycle.features.store import apply_repo, open_store, plan_for

    cfg = load_config(result.config)
    apply_repo(cfg.feature_repo_path)
    store = open_store(cfg.feature_repo_path)
    plan = plan_for(store, cfg.features.feature_service)
    assert plan.join_keys == () and plan.view_refs == ()
    rows = table.iloc[:50]
    entity_df = _entity_frame(cfg, rows, result.request_fields)
    service = store.get_feature_service(cfg.features.feature_service)
    out = store.get_historical_features(entity_df=entity_df, features=service).to_df()
    assert len(out) == len(rows)
    return out


def test_entityless_project_scores_from_the_request_alone(table_file: Path, table: pd.DataFrame, tmp_path: Path):
    result = init_project(tmp_path / "orders_flat", table_file, **ROLES)
    cfg = load_config(result.config)
    assert cfg.table.entities == [] and cfg.features.aggregations == {}
    assert cfg.routing_key is None  # each request routed on its own
    # customer_id is no key here: an id stored as a number is left out, not fed to the model as a quantity.
    assert "customer_id" in result.left_out and "customer_id" not in result.request_fields
    assert set(result.model_features) == {f"{c}_code" if c == "plan" else f"{c}_value" for c in result.request_fields}
    out = _request_only_join(result, table)
    np.testing.assert_allclose(out["basket_value_value"], table["basket_value"].iloc[:50])


def test_regression_project(table: pd.DataFrame, tmp_path: Path):
    frame = table.drop(columns=["churned"])
    path = tmp_path / "baskets.csv"
    frame.to_csv(path, index=False)  # CSV: timestamps come back as text and are parsed by init
    result = init_project(
        tmp_path / "baskets", path, "ts", "basket_value", entities=["customer_id"], task="regression", label_delay="2d"
    )
    cfg = load_config(result.config)
    assert cfg.task == "regression" and cfg.table.label == "basket_value" and cfg.table.label_delay == "2d"
    assert "basket_value_value" not in result.model_features
    # The RMSE bar: what predicting the mean scores (the label's standard deviation, rounded up).
    std = frame["basket_value"].std()
    assert std <= cfg.gates.max_rmse <= std * 1.01
    assert cfg.canary.rmse_without_matured_labels == "warn"
    written = pd.read_parquet(cfg.table_path)
    assert str(written["ts"].dtype) == "datetime64[us, UTC]"
    contract = yaml.safe_load((result.directory / "contract.yaml").read_text())
    assert contract["columns"]["basket_value"]["kind"] == "numeric"


def test_label_arrival_column_sets_the_delay(table: pd.DataFrame, tmp_path: Path):
    frame = table.assign(label_at=table["ts"] + pd.to_timedelta(np.arange(len(table)) % 5, unit="D"))
    path = tmp_path / "arrivals.parquet"
    frame.to_parquet(path, index=False)
    result = init_project(tmp_path / "arrivals", path, **ROLES, label_available_at="label_at")
    cfg = load_config(result.config)
    assert cfg.table.label_available_at == "label_at"
    assert cfg.table.label_delay == "4d"  # 99% of labels within 4 days (here: all)
    assert "label_at" not in result.request_fields


def test_protected_attribute_is_a_slice_not_an_input(table: pd.DataFrame, tmp_path: Path):
    frame = table.assign(region=np.where(np.arange(len(table)) % 3 == 0, "north", "south"))
    path = tmp_path / "regions.parquet"
    frame.to_parquet(path, index=False)
    result = init_project(tmp_path / "regions", path, **ROLES, protected="region", event_id="order_id")
    cfg = load_config(result.config)
    assert cfg.table.protected == "region" and [s.column for s in cfg.table.slices] == ["region"]
    assert "region" not in result.request_fields and "region_code" not in result.model_features


def test_a_protected_attribute_that_is_no_input_reaches_the_evaluation_and_the_fairness_gate(
    table: pd.DataFrame, tmp_path: Path
):
    """Issue 22: ``init --protected region`` rightly keeps region out of the model, and training then
    stopped ("evaluation slice 'region': column 'region' is not in the evaluation rows"). The
    training set must carry it beside the features, the model must not see it, and the fairness
    gate must compare its groups. The expected groups and TPRs are counted here from the source
    table (region looked up by each test row's order id) and scikit-learn's recall."""
    from sklearn.metrics import recall_score

    from mlcycle.features import pipeline
    from mlcycle.features.store import apply_repo, open_store, plan_for
    from mlcycle.project.config import GatesSpec
    from mlcycle.training.fit import train_candidate
    from mlcycle.training.gates import run_gates

    region = np.where(np.arange(len(table)) % 3 == 0, "north", "south")
    path = tmp_path / "regions.parquet"
    table.assign(region=region).to_parquet(path, index=False)
    result = init_project(tmp_path / "regions", path, **ROLES, entities=["customer_id"], protected="region",
                          event_id="order_id")  # fmt: skip
    cfg = load_config(result.config)
    _feature_tables(cfg)
    apply_repo(cfg.feature_repo_path)
    features = list(plan_for(open_store(cfg.feature_repo_path), cfg.features.feature_service).model_features)
    frame = pipeline.build_training_set(cfg)  # as the training flow builds it
    assert not any("region" in f for f in features)

    candidate = train_candidate(frame, features, cfg.model, label=cfg.table.label, task=cfg.task,
                                slices=cfg.table.slices, protected=cfg.table.protected)  # fmt: skip
    assert candidate.model.features == features and candidate.model.model.feature_names == features
    test = candidate.split.test
    truth = table.assign(region=region).set_index("order_id").loc[test["order_id"].to_numpy()]
    assert test["region"].tolist() == truth["region"].tolist()  # the table's own value, row by row
    flagged = candidate.model.predict(test) >= candidate.model.threshold
    expected = {
        g: recall_score(truth["churned"].to_numpy()[rows], flagged[rows])
        for g in ("north", "south")
        for rows in [truth["region"].to_numpy() == g]
    }
    slices = candidate.report.slices["region"]
    assert set(slices) == {"north", "south"}
    assert {g: m.n for g, m in slices.items()} == truth["region"].value_counts().to_dict()
    assert {g: m.recall for g, m in slices.items()} == pytest.approx(expected)

    verdict = run_gates(candidate.report, GatesSpec(fairness_min_support=5), protected=cfg.table.protected)
    fairness = next(c for c in verdict.checks if c.name == "fairness_tpr_gap")
    assert fairness.evidence.get("applicable", True) and fairness.evidence["groups"] == pytest.approx(expected)
    assert fairness.value == pytest.approx(abs(expected["north"] - expected["south"]))


# ------------------------------------------------------------------------------------------ bad input


def _write(tmp_path: Path, frame: pd.DataFrame, csv: bool = False) -> Path:
    path = tmp_path / ("in.csv" if csv else "in.parquet")
    if csv:
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


def _text_times(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(ts=frame["ts"].dt.strftime("%Y-%m-%dT%H:%M:%S"))


BAD: dict[str, tuple[Callable[[pd.DataFrame], pd.DataFrame], dict, type[Exception], str | None]] = {
    "missing column": (lambda t: t, {"timestamp": "event_time"}, TableError, "event_time"),
    "label not binary": (
        lambda t: t.assign(churned=np.arange(len(t)) % 3), {}, TableError, "churned"),
    "label not numeric for regression": (
        lambda t: t.assign(churned=np.where(np.arange(len(t)) % 2, "yes", "no")), {"task": "regression"},
        TableError, "churned"),
    "unparseable timestamps": (
        lambda t: _text_times(t).assign(ts=lambda f: f["ts"].where(np.arange(len(f)) % 500 != 7, "last tuesday")),
        {"csv": True}, TableError, "ts"),
    "timezone-mixed timestamps": (
        lambda t: _text_times(t).assign(ts=lambda f: f["ts"] + np.where(np.arange(len(f)) % 2, "+00:00", "+02:00")),
        {"csv": True}, TableError, "ts"),
    "duplicate entity keys at one time": (
        lambda t: t.assign(ts=t["ts"].iloc[0], customer_id=t["customer_id"] % 3), {"entities": ["customer_id"]},
        TableError, "ts"),
    "empty table": (lambda t: t.iloc[:0], {}, TableError, None),
    "a name Feast cannot use": (lambda t: t.rename(columns={"spend": "spend (EUR)"}), {}, TableError, "spend (EUR)"),
    "a name the service uses": (lambda t: t.rename(columns={"spend": "request_unix"}), {}, TableError, "request_unix"),
    "a name a generated feature takes": (
        lambda t: t.assign(plan_code=t["visits"]), {}, TableError, "plan_code"),
    "event id not unique": (lambda t: t, {"event_id": "customer_id"}, TableError, "customer_id"),
    "label delay longer than the table": (lambda t: t, {"label_delay": "90d"}, InitError, None),
    "bad label delay": (lambda t: t, {"label_delay": "a month"}, InitError, None),
    "protected attribute with many values": (lambda t: t, {"protected": "spend"}, TableError, "spend"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_named_error_and_writes_nothing(case: str, table: pd.DataFrame, tmp_path: Path):
    transform, options, error, column = BAD[case]
    options = dict(options)
    path = _write(tmp_path, transform(table.copy()), csv=options.pop("csv", False))
    target = tmp_path / "out" / "project"
    args = {**ROLES, **options}
    with pytest.raises(error) as raised:
        init_project(target, path, **args)
    assert raised.value.fix, "every error says how to fix it"
    if column is not None:
        assert raised.value.column == column and column in str(raised.value)
    _nothing_written(target)
    assert not (tmp_path / "out").exists(), "parents created for the project are removed again"


def test_a_directory_with_files_is_left_alone_unless_forced(table_file: Path, tmp_path: Path):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(TargetNotEmpty):
        init_project(target, table_file, **ROLES)
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]
    result = init_project(target, table_file, **ROLES, force=True)
    assert (target / "notes.txt").read_text() == "mine" and (target / "mlcycle.yaml").is_file()
    assert load_config(result.config).project == "busy"


# ------------------------------------------------------------------------------------------ replay


class _Recorder:
    """A tiny HTTP/1.1 server (keep-alive) that records each request and answers by ``answer(body)``."""

    def __init__(self, answer: Callable[[object], tuple[int, dict]] | None = None):
        self.requests: list[tuple[str, dict, object]] = []
        self.connections: set[tuple] = set()
        self.answer = answer or (lambda body: (200, {"score": 0.5}))
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # answer at once, not after a delayed ACK (40 ms)
            wbufsize = -1  # headers and body in one write; the handler flushes after each request

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                recorder.requests.append((self.path, dict(self.headers), body))
                recorder.connections.add(self.client_address)
                status, answer = recorder.answer(body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _Recorder:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[_Recorder]:
    with _Recorder() as r:
        yield r


SINCE = START + pd.Timedelta(days=DAYS - 2)


def test_replay_rows_are_the_later_ones_in_time_order(applied, table: pd.DataFrame):
    cfg, _ = applied
    rows = replay_rows(cfg, SINCE.strftime("%Y-%m-%d"), until=SINCE + pd.Timedelta(days=1))
    expected = table[(table["ts"] >= SINCE) & (table["ts"] < SINCE + pd.Timedelta(days=1))]
    assert len(rows) == len(expected) > 0
    assert rows["ts"].is_monotonic_increasing and rows["ts"].min() >= SINCE
    with pytest.raises(ReplayError):
        replay_rows(cfg, SINCE, until=SINCE)


def test_request_bodies_carry_what_a_caller_sends(applied, entity_project: InitResult):
    from mlcycle.serving.replay import request_fields

    cfg, _ = applied
    fields = request_fields(cfg)
    assert set(fields) == set(entity_project.request_fields) and "request_unix" not in fields
    rows = replay_rows(cfg, START)
    bodies = request_bodies(rows, cfg, fields)
    assert len(bodies) == len(rows)
    assert set(bodies[0]) == {"customer_id", "order_id", "timestamp", *fields}
    first = bodies[0]
    assert first["timestamp"] == rows["ts"].iloc[0].strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert isinstance(first["customer_id"], int) and isinstance(first["is_member"], bool)
    # Missing values are JSON null, never NaN (which is not JSON).
    i = int(rows["spend"].isna().to_numpy().argmax())
    j = int(rows["plan"].isna().to_numpy().argmax())
    assert bodies[i]["spend"] is None and bodies[j]["plan"] is None
    json.dumps(bodies, allow_nan=False)
    with pytest.raises(ReplayError, match="no column"):
        request_bodies(rows.drop(columns=["plan"]), cfg, fields)


def test_replay_posts_each_row_in_time_order(applied, recorder: _Recorder):
    cfg, _ = applied
    fields = ("spend", "plan")
    result = replay(cfg, recorder.url, SINCE, api_key="k3y", progress=False, fields=fields)
    rows = replay_rows(cfg, SINCE)
    assert (result.rows, result.requests, result.ok, result.failed) == (len(rows), len(rows), len(rows), 0)
    assert [p for p, _, _ in recorder.requests] == ["/predict"] * len(rows)
    assert all(h.get("x-api-key") == "k3y" for _, h, _ in recorder.requests)
    # The body names the API's argument, as BentoML maps it: {"request": {...}}.
    assert all(set(b) == {"request"} for _, _, b in recorder.requests)
    sent = [b["request"] for _, _, b in recorder.requests]
    assert [b["order_id"] for b in sent] == rows["order_id"].tolist()  # the table's order by event time
    assert [b["timestamp"] for b in sent] == sorted(b["timestamp"] for b in sent)
    assert set(sent[0]) == {"customer_id", "order_id", "spend", "plan", "timestamp"}
    assert len(recorder.connections) == 1  # one keep-alive connection
    assert result.first_event == sent[0]["timestamp"] and result.last_event == sent[-1]["timestamp"]


def test_replay_batches_and_envelopes(applied, recorder: _Recorder):
    cfg, _ = applied
    until = SINCE + pd.Timedelta(hours=12)
    n = len(replay_rows(cfg, SINCE, until))
    result = replay(cfg, recorder.url, SINCE, until, batch=4, progress=False, fields=("spend",))
    assert result.rows == n and result.requests == -(-n // 4)
    assert {p for p, _, _ in recorder.requests} == {"/predict_batch"}
    assert sum(len(b["requests"]) for _, _, b in recorder.requests) == n  # {"requests": [...]}
    recorder.requests.clear()
    replay(cfg, recorder.url, SINCE, until, progress=False, fields=("spend",), envelope=None)
    assert all("spend" in b and "timestamp" in b for _, _, b in recorder.requests)  # the bare row


def test_replay_counts_failures_and_keeps_the_first_bodies(applied):
    cfg, _ = applied

    def answer(body) -> tuple[int, dict]:
        order = body["request"]["order_id"]
        if order % 3 == 0:
            return 400, {"error": f"bad spend in {order}"}
        return (503, {"error": "not ready"}) if order % 3 == 1 else (200, {"score": 0.1})

    with _Recorder(answer) as server:
        result = replay(cfg, server.url, SINCE, progress=False, fields=("spend",))
    ids = replay_rows(cfg, SINCE)["order_id"]
    assert result.client_errors == int((ids % 3 == 0).sum()) and result.server_errors == int((ids % 3 == 1).sum())
    assert result.ok == int((ids % 3 == 2).sum()) and result.transport_errors == 0
    assert 0 < len(result.errors) <= 5
    failed = [i for i in ids if i % 3 != 2][: len(result.errors)]
    assert [e.event_id for e in result.errors] == failed  # the first ones, with the row's id
    assert [e.status for e in result.errors] == [400 if i % 3 == 0 else 503 for i in failed]
    first_400 = next(e for e in result.errors if e.status == 400)
    assert f"bad spend in {first_400.event_id}" in first_400.body
    assert "4xx" in result.summary()


def test_replay_stops_when_every_request_fails(applied):
    cfg, _ = applied
    with _Recorder(lambda body: (401, {"error": "missing or wrong x-api-key"})) as server:
        result = replay(cfg, server.url, START, progress=False, fields=("spend",), max_consecutive_failures=10)
    assert result.requests == 10 and result.client_errors == 10
    assert result.stopped and "API key" in result.stopped


def test_replay_paces_requests_on_a_fixed_schedule(applied, recorder: _Recorder):
    """At rate r, request i leaves at start + i/r: checked on a fake clock that only sleeping advances."""
    cfg, _ = applied
    now = [1000.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    until = SINCE + pd.Timedelta(hours=6)
    n = len(replay_rows(cfg, SINCE, until))
    assert n >= 3
    result = replay(cfg, recorder.url, SINCE, until, rate=4, progress=False, fields=("spend",),
                    clock=lambda: now[0], sleep=sleep)  # fmt: skip
    assert result.requests == n == len(recorder.requests)
    assert sleeps == pytest.approx([0.25] * (n - 1))
    assert result.elapsed_s == pytest.approx(0.25 * (n - 1))


def test_replay_refuses_an_empty_period(applied, recorder: _Recorder):
    cfg, _ = applied
    with pytest.raises(ReplayError, match="no rows"):
        replay(cfg, recorder.url, START + pd.Timedelta(days=365), progress=False, fields=("spend",))
    assert recorder.requests == []


def test_init_result_lists_written_files(entity_project: InitResult):
    assert all(p.is_file() and entity_project.directory in p.parents for p in entity_project.written)
    assert entity_project.config in entity_project.written
